//! Live sessions: their entry in the state, their life cycle, restore from the store, and the
//! pools' session policies (which sessions to log off).

use super::{ClusterState, check_name};
use crate::error::CoreError;
use crate::event::Event;
use crate::model::{Health, HostId, PoolId, SessionId, SessionRecord, SessionState, UserId};
use crate::placement::members::PoolEntry;
use crate::time::Millis;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub(super) struct SessionEntry {
    pub(super) user: UserId,
    pub(super) host: HostId,
    pub(super) pool: Option<PoolId>,
    pub(super) state: SessionState,
    pub(super) backend_id: Option<Arc<str>>,
    pub(super) client: Option<IpAddr>,
    pub(super) created_at: Millis,
    pub(super) updated_at: Millis,
}

pub(super) fn state_index(s: SessionState) -> usize {
    match s {
        SessionState::Starting => 0,
        SessionState::Running => 1,
        SessionState::Disconnected => 2,
        SessionState::Ending => 3,
        SessionState::Ended => 4,
        SessionState::Unknown => 5,
    }
}

impl ClusterState {
    /// The pool whose session policies govern a session: the pool it was placed through, else
    /// the first configured pool that lists its host.
    fn governing_pool(&self, pool: Option<PoolId>, host: HostId) -> Option<&PoolEntry> {
        if let Some(p) = pool.and_then(|p| self.pool_ref(p)) {
            return Some(p);
        }
        let h = self.host_ref(host)?;
        self.pools
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((PoolId(u32::try_from(i).ok()?), p.as_ref()?)))
            .find(|(pid, _)| h.in_pool(*pid))
            .map(|(_, p)| p)
    }

    /// Sessions that their pool's session policies say to log off now. `idle_secs` tells how
    /// long a session's user has been idle, where its source reports it (host, backend id).
    /// Only running and disconnected sessions on hosts whose agent is up are considered (an
    /// `ending` one is on its way; without a linked agent nobody can carry a log-off out). Age wins over
    /// disconnected, which wins over idle, when several rules apply.
    pub fn policy_logoffs(
        &self,
        idle_secs: impl Fn(&str, &str) -> Option<u64>,
    ) -> Vec<crate::model::PolicyLogoff> {
        use crate::model::{LogoffRule, PolicyLogoff};
        let mut out = Vec::new();
        for (id, s) in self.sessions.iter() {
            if !matches!(s.state, SessionState::Running | SessionState::Disconnected) {
                continue;
            }
            // Policies act through agents: a host without one, or whose agent is not linked and
            // reporting now (unreachable, or not back yet after a restart), is not policed.
            if !self
                .host_ref(s.host)
                .is_some_and(|h| h.spec.agent && h.health == Health::Up)
            {
                continue;
            }
            let Some(pool) = self.governing_pool(s.pool, s.host) else {
                continue;
            };
            let limits = &pool.spec.options.limits;
            if !limits.logs_off() {
                continue;
            }
            let ms = |d: &crate::config::ConfigDuration| {
                u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX)
            };
            let age = self.now.0.saturating_sub(s.created_at.0);
            let since_change = self.now.0.saturating_sub(s.updated_at.0);
            let mut hit: Option<(LogoffRule, u64, u64)> = None;
            if let Some(limit) = &limits.max_session_age
                && age >= ms(limit)
            {
                hit = Some((LogoffRule::Age, age, ms(limit)));
            }
            if hit.is_none()
                && s.state == SessionState::Disconnected
                && let Some(limit) = &limits.logoff_disconnected_after
                && since_change >= ms(limit)
            {
                hit = Some((LogoffRule::Disconnected, since_change, ms(limit)));
            }
            if hit.is_none()
                && let Some(limit) = &limits.logoff_idle_after
                && let Some(backend) = &s.backend_id
                && let Some(host) = self.host_ref(s.host)
                && let Some(idle) = idle_secs(&host.name, backend)
                && idle.saturating_mul(1000) >= ms(limit)
            {
                hit = Some((LogoffRule::Idle, idle.saturating_mul(1000), ms(limit)));
            }
            if let Some((rule, for_ms, limit_ms)) = hit
                && let Some(record) = self.session(*id)
            {
                out.push(PolicyLogoff {
                    session: record,
                    pool: pool.name.clone(),
                    rule,
                    for_ms,
                    limit_ms,
                    grace: limits.logoff_grace.0,
                });
            }
        }
        out.sort_by_key(|p| p.session.id);
        out
    }

    pub(super) fn unlink_user(&mut self, uid: UserId, id: SessionId) {
        if let Some(list) = self.users.items_mut(uid) {
            list.retain(|x| *x != id);
        }
    }

    /// Adds a live session; `silent` skips the event (restoring what the store already holds).
    pub(super) fn insert_session(
        &mut self,
        id: SessionId,
        entry: SessionEntry,
        events: &mut Vec<Event>,
        silent: bool,
    ) {
        let hid = entry.host;
        let uid = entry.user;
        if let Some(h) = self.host_mut(hid) {
            h.sessions.insert(id);
            if let Some(b) = &entry.backend_id {
                h.by_backend.insert(b.clone(), id);
            }
        }
        if let Some(list) = self.users.items_mut(uid)
            && !list.contains(&id)
        {
            list.push(id);
        }
        let record = self.record(id, &entry);
        self.by_state[state_index(entry.state)] += 1;
        self.sessions.insert(id, entry);
        if !silent {
            events.push(Event::SessionStarted(record));
        }
        self.refresh_host(hid);
    }

    pub(super) fn remove_session(&mut self, id: SessionId, events: &mut Vec<Event>) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        self.by_state[state_index(s.state)] -= 1;
        self.unlink_user(s.user, id);
        if let Some(h) = self.host_mut(s.host) {
            h.sessions.remove(&id);
            if let Some(b) = &s.backend_id {
                h.by_backend.remove(b);
            }
            events.push(Event::SessionEnded {
                id,
                host: h.name.clone(),
                at: self.now,
            });
        }
        self.refresh_host(s.host);
    }

    pub(super) fn set_session_state(
        &mut self,
        id: SessionId,
        state: SessionState,
        events: &mut Vec<Event>,
    ) {
        let now = self.now;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.state == state {
            return;
        }
        self.by_state[state_index(s.state)] -= 1;
        self.by_state[state_index(state)] += 1;
        s.state = state;
        s.updated_at = now;
        let hid = s.host;
        events.push(Event::SessionStateChanged {
            id,
            host: self.host_name(hid),
            state,
            at: now,
        });
    }

    pub(super) fn begin_ending(
        &mut self,
        id: SessionId,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        if !self.sessions.contains_key(&id) {
            return Err(CoreError::IdNotFound {
                kind: "session",
                id,
            });
        }
        self.set_session_state(id, SessionState::Ending, events);
        Ok(())
    }

    pub(super) fn end_session(
        &mut self,
        id: SessionId,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        if !self.sessions.contains_key(&id) {
            return Err(CoreError::IdNotFound {
                kind: "session",
                id,
            });
        }
        self.remove_session(id, events);
        Ok(())
    }

    pub(super) fn restore_session(&mut self, rec: SessionRecord) -> Result<(), CoreError> {
        check_name("user", &rec.user)?;
        let hid = self.host_id(&rec.host)?;
        if !rec.state.is_live() {
            return Err(CoreError::Invalid {
                field: "session state",
                reason: "an ended session cannot be restored".into(),
            });
        }
        if self.sessions.contains_key(&rec.id) || self.reservations.contains_key(&rec.id) {
            return Err(CoreError::Invalid {
                field: "session id",
                reason: format!("{} exists already", rec.id),
            });
        }
        if let Some(b) = &rec.backend_id
            && self
                .host_ref(hid)
                .is_some_and(|h| h.by_backend.contains_key(&**b))
        {
            return Err(CoreError::Invalid {
                field: "backend id",
                reason: format!("{b:?} is already a session on host {:?}", rec.host),
            });
        }
        let pool = rec
            .pool
            .as_deref()
            .and_then(|p| self.pool_names.get(p).copied());
        let uid = self.intern_user(&rec.user);
        self.next_id = self.next_id.max(rec.id.0.saturating_add(1));
        let entry = SessionEntry {
            user: uid,
            host: hid,
            pool,
            state: rec.state,
            backend_id: rec.backend_id,
            client: rec.client,
            created_at: rec.created_at,
            updated_at: rec.updated_at,
        };
        let mut ignored = Vec::new();
        self.insert_session(rec.id, entry, &mut ignored, true);
        Ok(())
    }

    pub(super) fn record(&self, id: SessionId, s: &SessionEntry) -> SessionRecord {
        SessionRecord {
            id,
            user: self.user_name(s.user),
            host: self.host_name(s.host),
            pool: s
                .pool
                .and_then(|p| self.pool_ref(p))
                .map(|p| p.name.clone()),
            state: s.state,
            backend_id: s.backend_id.clone(),
            client: s.client,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}
