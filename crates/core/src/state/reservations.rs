//! Placement requests and the reservations they make: resume or choose a host
//! (`placement::choose`), then confirm, release, fail or let the reservation expire.

use super::{ClusterState, SessionEntry, Timer, check_name, not_found};
use crate::error::CoreError;
use crate::event::{Event, Placement, PlacementOutcome, ReservationEnd};
use crate::model::{
    HostId, PoolId, ReservationRecord, ResumePreference, SessionId, SessionState, UserId,
};
use crate::placement::PlacementReason;
use crate::placement::eligibility;
use crate::placement::members::PoolEntry;
use crate::time::Millis;
use std::cmp::Reverse;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub(super) struct ReservationEntry {
    pub(super) user: UserId,
    pub(super) host: HostId,
    pub(super) pool: PoolId,
    pub(super) client: Option<IpAddr>,
    pub(super) created_at: Millis,
    pub(super) expires_at: Millis,
}

impl ClusterState {
    /// The user's live sessions on the pool's hosts plus their reservations in the pool.
    pub(super) fn user_sessions_in_pool(&self, uid: UserId, pid: PoolId) -> u32 {
        let mut n = 0u32;
        for id in self.users.items(uid) {
            let counts = match (self.reservations.get(id), self.sessions.get(id)) {
                (Some(r), _) => r.pool == pid,
                (None, Some(s)) => {
                    s.state.is_live() && self.host_ref(s.host).is_some_and(|h| h.in_pool(pid))
                }
                _ => false,
            };
            n += u32::from(counts);
        }
        n
    }

    /// The user's reservation or session that a placement in this pool would hand back.
    pub(super) fn resume_candidate(
        &self,
        uid: UserId,
        pid: PoolId,
        prefer: ResumePreference,
    ) -> Option<(SessionId, Option<SessionState>)> {
        let ids = self.users.items(uid);
        let mut best: Option<(u8, Millis, SessionId, SessionState)> = None;
        for &id in ids {
            if let Some(r) = self.reservations.get(&id) {
                if r.pool == pid && self.host_ref(r.host).is_some_and(eligibility::resumable) {
                    return Some((id, None));
                }
                continue;
            }
            let Some(s) = self.sessions.get(&id) else {
                continue;
            };
            let Some(h) = self.host_ref(s.host) else {
                continue;
            };
            if !h.in_pool(pid) || !eligibility::resumable(h) {
                continue;
            }
            let rank = match (s.state, prefer) {
                (SessionState::Disconnected, ResumePreference::Disconnected)
                | (SessionState::Running, ResumePreference::Running) => 0,
                (SessionState::Running, ResumePreference::Disconnected)
                | (SessionState::Disconnected, ResumePreference::Running) => 1,
                (SessionState::Starting, _) => 2,
                _ => continue,
            };
            // Lower rank first; among equals the most recently active, then the lowest id.
            let better = match best {
                None => true,
                Some((br, bt, bid, _)) => {
                    (rank, Reverse(s.updated_at), id) < (br, Reverse(bt), bid)
                }
            };
            if better {
                best = Some((rank, s.updated_at, id, s.state));
            }
        }
        best.map(|(_, _, id, state)| (id, Some(state)))
    }

    fn reason(&self, pool: &PoolEntry, resumed: bool, used_penalized: bool) -> PlacementReason {
        PlacementReason {
            policy: pool.spec.policy,
            eligible: pool.eligible_count(),
            used_penalized,
            excluded: pool.excluded,
            resumed,
        }
    }

    pub(super) fn reserve(
        &mut self,
        user: &str,
        pool_name: &str,
        client: Option<IpAddr>,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        check_name("user", user)?;
        let pid = self.pool_id(pool_name)?;
        let Some(pool) = self.pool_ref(pid) else {
            return Err(not_found("pool", pool_name));
        };
        let pool_arc = pool.name.clone();
        let known_user = self.users.get(user);
        if let Some(uid) = known_user
            && let Some((id, state)) =
                self.resume_candidate(uid, pid, pool.spec.options.resume_prefer)
        {
            let (host, outcome, expires_at, backend_id) = match state {
                None => {
                    let r = &self.reservations[&id];
                    (
                        r.host,
                        PlacementOutcome::ExistingReservation,
                        Some(r.expires_at),
                        None,
                    )
                }
                Some(st) => {
                    let s = &self.sessions[&id];
                    (
                        s.host,
                        PlacementOutcome::Resumed(st),
                        None,
                        s.backend_id.clone(),
                    )
                }
            };
            let h = self.host_ref(host).ok_or_else(|| not_found("host", ""))?;
            events.push(Event::Placed(Placement {
                id,
                user: self.user_name(uid),
                pool: pool_arc,
                host: h.name.clone(),
                address: h.address.clone(),
                outcome,
                backend_id,
                expires_at,
                reason: self.reason(pool, state.is_some(), false),
            }));
            return Ok(());
        }
        if let (Some(limit), Some(uid)) =
            (pool.spec.options.limits.max_sessions_per_user, known_user)
        {
            let n = self.user_sessions_in_pool(uid, pid);
            if n >= limit {
                return Err(CoreError::UserLimit {
                    user: user.to_owned(),
                    pool: pool_name.to_owned(),
                    sessions: n,
                });
            }
        }
        let Some(pool) = self.pools.get_mut(pid.0 as usize).and_then(Option::as_mut) else {
            return Err(not_found("pool", pool_name));
        };
        pool.rerank(
            &self.hosts,
            self.now,
            self.settings.stale_after_intervals,
            &mut self.rng,
        );
        let Some((hid, used_penalized)) = pool.choose(&mut self.rng) else {
            return Err(CoreError::NoHostAvailable {
                pool: pool_name.to_owned(),
                excluded: pool.excluded,
            });
        };
        let reason = PlacementReason {
            policy: pool.spec.policy,
            eligible: pool.eligible_count(),
            used_penalized,
            excluded: pool.excluded,
            resumed: false,
        };
        let uid = match known_user {
            Some(uid) => uid,
            None => self.intern_user(user),
        };
        let id = self.alloc_id();
        let expires_at = self.now.after(self.settings.reservation_ttl.0);
        self.reservations.insert(
            id,
            ReservationEntry {
                user: uid,
                host: hid,
                pool: pid,
                client,
                created_at: self.now,
                expires_at,
            },
        );
        if let Some(items) = self.users.items_mut(uid) {
            items.push(id);
        }
        self.timers
            .push(Reverse((expires_at, Timer::ReservationExpiry(id))));
        let Some(h) = self.host_mut(hid) else {
            return Err(not_found("host", ""));
        };
        h.reservations += 1;
        h.pending = h.pending.saturating_add(1);
        let (host, address) = (h.name.clone(), h.address.clone());
        self.refresh_host(hid);
        events.push(Event::Placed(Placement {
            id,
            user: self.user_name(uid),
            pool: pool_arc,
            host,
            address,
            outcome: PlacementOutcome::Reserved,
            backend_id: None,
            expires_at: Some(expires_at),
            reason,
        }));
        Ok(())
    }

    /// Drops a reservation and gives its capacity back.
    pub(super) fn end_reservation(
        &mut self,
        id: SessionId,
        cause: ReservationEnd,
        events: &mut Vec<Event>,
    ) {
        let Some(r) = self.reservations.remove(&id) else {
            return;
        };
        if cause != ReservationEnd::Confirmed {
            self.unlink_user(r.user, id);
        }
        if let Some(h) = self.host_mut(r.host) {
            h.reservations = h.reservations.saturating_sub(1);
            events.push(Event::ReservationEnded {
                id,
                host: h.name.clone(),
                cause,
            });
        }
        self.refresh_host(r.host);
    }

    pub(super) fn confirm(
        &mut self,
        id: SessionId,
        backend_id: Option<String>,
        starting: bool,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        if self.sessions.contains_key(&id) {
            return Ok(()); // already confirmed: confirming is idempotent
        }
        let Some(r) = self.reservations.get(&id).cloned() else {
            return Err(CoreError::IdNotFound {
                kind: "reservation",
                id,
            });
        };
        let backend: Option<Arc<str>> = match backend_id {
            Some(b) => {
                check_name("backend id", &b)?;
                if self
                    .host_ref(r.host)
                    .is_some_and(|h| h.by_backend.contains_key(b.as_str()))
                {
                    return Err(CoreError::Invalid {
                        field: "backend id",
                        reason: format!("{b:?} is already a session on this host"),
                    });
                }
                Some(Arc::from(b))
            }
            None => None,
        };
        self.end_reservation(id, ReservationEnd::Confirmed, events);
        let state = if starting {
            SessionState::Starting
        } else {
            SessionState::Running
        };
        let entry = SessionEntry {
            user: r.user,
            host: r.host,
            pool: Some(r.pool),
            state,
            backend_id: backend,
            client: r.client,
            created_at: self.now,
            updated_at: self.now,
        };
        self.insert_session(id, entry, events, false);
        Ok(())
    }

    pub(super) fn release(
        &mut self,
        id: SessionId,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        if !self.reservations.contains_key(&id) {
            return Err(CoreError::IdNotFound {
                kind: "reservation",
                id,
            });
        }
        self.end_reservation(id, ReservationEnd::Released, events);
        Ok(())
    }

    pub(super) fn start_failed(
        &mut self,
        id: SessionId,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let Some(hid) = self.reservations.get(&id).map(|r| r.host) else {
            return Err(CoreError::IdNotFound {
                kind: "reservation",
                id,
            });
        };
        self.end_reservation(id, ReservationEnd::StartFailed, events);
        self.penalize(hid, events);
        self.refresh_host(hid);
        Ok(())
    }

    pub(super) fn reservation_record(
        &self,
        id: SessionId,
        r: &ReservationEntry,
    ) -> ReservationRecord {
        ReservationRecord {
            id,
            user: self.user_name(r.user),
            host: self.host_name(r.host),
            pool: self
                .pool_ref(r.pool)
                .map(|p| p.name.clone())
                .unwrap_or_else(|| Arc::from("")),
            client: r.client,
            created_at: r.created_at,
            expires_at: r.expires_at,
        }
    }
}
