//! Read-only queries: views of hosts and pools, sessions and reservations, and `explain`.

use super::{ClusterState, HostEntry, not_found, state_index};
use crate::error::CoreError;
use crate::model::{
    AdminState, Health, HostId, HostSpec, LoadReport, PoolSpec, ReservationRecord, SessionId,
    SessionRecord, SessionState, Settings,
};
use crate::placement::eligibility;
use crate::placement::index::{PENALIZED, PoolIndex, RankKey};
use crate::placement::members::{MemberStatus, PoolEntry};
use crate::placement::{Exclusion, ExclusionCounts, Explanation, HostExplanation, ResumeCandidate};
use crate::time::Millis;
use std::sync::Arc;
use std::time::Duration;

/// A read-only view of one host, for queries.
#[derive(Debug, Clone)]
pub struct HostView<'a> {
    /// Host name.
    pub name: &'a Arc<str>,
    /// Its configuration.
    pub spec: &'a HostSpec,
    /// Admin state.
    pub admin: AdminState,
    /// Health.
    pub health: Health,
    /// Live sessions.
    pub sessions: u32,
    /// Live reservations.
    pub reservations: u32,
    /// Latest load report.
    pub load: Option<&'a LoadReport>,
    /// When it arrived.
    pub last_report_at: Option<Millis>,
    /// Report interval the agent announced (or the default).
    pub report_interval: Duration,
    /// End of a failure penalty in force.
    pub penalized_until: Option<Millis>,
    /// Who asked for it to go offline once empty, while that is pending.
    pub offline_when_empty: Option<&'a str>,
    /// Why it takes no new sessions now, if it does not.
    pub exclusion: Option<Exclusion>,
    /// Names of the pools it belongs to.
    pub pools: Vec<Arc<str>>,
}

/// A read-only view of one pool, for queries.
#[derive(Debug, Clone)]
pub struct PoolView<'a> {
    /// Pool name.
    pub name: &'a Arc<str>,
    /// Its definition.
    pub spec: &'a PoolSpec,
    /// Hosts that can take a new session now.
    pub eligible: u32,
    /// Hosts that cannot, by cause.
    pub excluded: ExclusionCounts,
}

impl ClusterState {
    /// Latest time the state has seen.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Cluster-wide placement settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn view<'a>(&'a self, h: &'a HostEntry) -> HostView<'a> {
        HostView {
            name: &h.name,
            spec: &h.spec,
            admin: h.admin,
            health: h.health,
            sessions: u32::try_from(h.sessions.len()).unwrap_or(u32::MAX),
            reservations: h.reservations,
            load: h.load.as_ref(),
            last_report_at: h.last_report_at,
            report_interval: h.report_interval,
            penalized_until: h.penalty_until.filter(|t| *t > self.now),
            offline_when_empty: h.offline_when_empty.as_deref(),
            exclusion: eligibility::exclusion(h, self.now, self.settings.stale_after_intervals),
            pools: h
                .pools
                .iter()
                .filter_map(|&(p, _)| self.pool_ref(p).map(|p| p.name.clone()))
                .collect(),
        }
    }

    /// The configured host a machine calling itself `name` is, matching short and fully
    /// qualified names tolerantly: an exact match first, then `name`'s short form (`x2go1` for
    /// `x2go1.example.org`), then the one configured host whose short form is `name`. `None`
    /// when nothing or more than one host matches.
    pub fn resolve_host_name(&self, name: &str) -> Option<Arc<str>> {
        if let Some((k, _)) = self.host_names.get_key_value(name) {
            return Some(k.clone());
        }
        let short = |n: &str| n.split('.').next().unwrap_or(n).to_ascii_lowercase();
        let wanted = short(name);
        if wanted.is_empty() {
            return None;
        }
        let mut found = None;
        for k in self.host_names.keys() {
            if short(k) == wanted {
                if found.is_some() {
                    return None;
                }
                found = Some(k.clone());
            }
        }
        found
    }

    /// The SHA-256 hash of a host's agent credential, if one was issued.
    pub fn credential(&self, host: &str) -> Option<&str> {
        self.credentials.get(host).map(|h| &**h)
    }

    /// One host by name.
    pub fn host(&self, name: &str) -> Option<HostView<'_>> {
        let hid = self.host_names.get(name)?;
        self.host_ref(*hid).map(|h| self.view(h))
    }

    /// Every host, in the order they were added.
    pub fn hosts(&self) -> impl Iterator<Item = HostView<'_>> {
        self.hosts.iter().flatten().map(|h| self.view(h))
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.host_names.len()
    }

    fn pool_view<'a>(&self, p: &'a PoolEntry) -> PoolView<'a> {
        PoolView {
            name: &p.name,
            spec: &p.spec,
            eligible: p.eligible_count(),
            excluded: p.excluded,
        }
    }

    /// One pool by name.
    pub fn pool(&self, name: &str) -> Option<PoolView<'_>> {
        let pid = self.pool_names.get(name)?;
        self.pool_ref(*pid).map(|p| self.pool_view(p))
    }

    /// Every pool, in the order they were defined.
    pub fn pools(&self) -> impl Iterator<Item = PoolView<'_>> {
        self.pools.iter().flatten().map(|p| self.pool_view(p))
    }

    /// One live session.
    pub fn session(&self, id: SessionId) -> Option<SessionRecord> {
        self.sessions.get(&id).map(|s| self.record(id, s))
    }

    /// Every live session, in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = SessionRecord> + '_ {
        self.sessions.iter().map(|(id, s)| self.record(*id, s))
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Live sessions by state (every state but `ended`), kept as sessions change, so metrics cost
    /// nothing per session.
    pub fn session_counts(&self) -> [(SessionState, usize); 5] {
        [
            SessionState::Starting,
            SessionState::Running,
            SessionState::Disconnected,
            SessionState::Ending,
            SessionState::Unknown,
        ]
        .map(|st| (st, self.by_state[state_index(st)]))
    }

    /// A user's live sessions, in id order.
    pub fn sessions_of_user(&self, user: &str) -> Vec<SessionRecord> {
        let Some(uid) = self.users.get(user) else {
            return Vec::new();
        };
        let mut out: Vec<SessionRecord> = self
            .users
            .items(uid)
            .iter()
            .filter_map(|id| self.session(*id))
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// The live sessions on a host, in id order.
    pub fn sessions_on_host(&self, host: &str) -> Vec<SessionRecord> {
        let Some(h) = self
            .host_names
            .get(host)
            .and_then(|&hid| self.host_ref(hid))
        else {
            return Vec::new();
        };
        let mut out: Vec<SessionRecord> = h
            .sessions
            .iter()
            .filter_map(|id| self.session(*id))
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// One live reservation.
    pub fn reservation(&self, id: SessionId) -> Option<ReservationRecord> {
        self.reservations
            .get(&id)
            .map(|r| self.reservation_record(id, r))
    }

    /// Every live reservation, in id order.
    pub fn reservations(&self) -> Vec<ReservationRecord> {
        let mut out: Vec<ReservationRecord> = self
            .reservations
            .iter()
            .map(|(id, r)| self.reservation_record(*id, r))
            .collect();
        out.sort_by_key(|r| r.id);
        out
    }

    /// Number of live reservations.
    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    /// Dry-run of a placement for `user` in `pool` on the current state: what would be resumed,
    /// and every host with its score or the reason it is excluded. Changes nothing.
    pub fn explain(&self, user: &str, pool: &str) -> Result<Explanation, CoreError> {
        let pid = self.pool_id(pool)?;
        let mut p = self
            .pool_ref(pid)
            .ok_or_else(|| not_found("pool", pool))?
            .clone();
        // Work on a copy so nothing moves: ranks made current, then the would-be decision.
        let mut rng = self.rng.clone();
        p.rerank(
            &self.hosts,
            self.now,
            self.settings.stale_after_intervals,
            &mut rng,
        );
        let resume = self.users.get(user).and_then(|uid| {
            self.resume_candidate(uid, pid, p.spec.options.resume_prefer)
                .map(|(id, state)| ResumeCandidate {
                    id,
                    host: self.host_name(
                        self.sessions
                            .get(&id)
                            .map(|s| s.host)
                            .or_else(|| self.reservations.get(&id).map(|r| r.host))
                            .unwrap_or(HostId(u32::MAX)),
                    ),
                    state,
                })
        });
        let ranked = !matches!(p.index, PoolIndex::Rotation { .. });
        let mut rows: Vec<(u8, usize, Option<RankKey>, HostExplanation)> = p
            .members
            .iter()
            .enumerate()
            .filter_map(|(pos, m)| {
                let h = self.host_ref(m.host)?;
                let (excluded, penalized, key) = match m.status {
                    MemberStatus::Eligible(s) => (None, s.tier == PENALIZED, Some(s.key)),
                    MemberStatus::Excluded(c) => (Some(c), false, None),
                    MemberStatus::New => (None, false, None),
                };
                let group = match (excluded, penalized) {
                    (None, false) => 0,
                    (None, true) => 1,
                    (Some(_), _) => 2,
                };
                Some((
                    group,
                    pos,
                    key,
                    HostExplanation {
                        host: h.name.clone(),
                        score: key.filter(|_| ranked).map(|k| k.score.to_f64()),
                        excluded,
                        penalized,
                        sessions: u32::try_from(h.sessions.len()).unwrap_or(u32::MAX),
                        reservations: h.reservations,
                        weight: h.spec.weight,
                    },
                ))
            })
            .collect();
        rows.sort_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                if matches!(p.index, PoolIndex::Ranked(_) | PoolIndex::Quota { .. }) {
                    a.2.cmp(&b.2)
                } else {
                    a.1.cmp(&b.1)
                }
            })
        });
        // What a real request would choose now, from copies so nothing moves.
        let next = p
            .clone()
            .choose(&mut rng)
            .map(|(hid, _)| self.host_name(hid));
        let user_sessions = self
            .users
            .get(user)
            .map_or(0, |uid| self.user_sessions_in_pool(uid, pid));
        let at_user_limit = resume.is_none()
            && p.spec
                .options
                .limits
                .max_sessions_per_user
                .is_some_and(|l| user_sessions >= l);
        Ok(Explanation {
            pool: p.name.clone(),
            policy: p.spec.policy,
            resume,
            next,
            hosts: rows.into_iter().map(|r| r.3).collect(),
            limits: p.spec.options.limits.clone(),
            user_sessions,
            at_user_limit,
        })
    }
}
