//! The cluster state and its only mutator, [`ClusterState::apply`].
//!
//! Every command first advances the state's clock to `now`, which fires due timers (reservation
//! expiry, stale load reports, ended penalties), then does its own work. A refused command changes
//! nothing: all checks run before the first mutation.
//!
//! # Invariants (checked by [`ClusterState::check_invariants`] in tests)
//! - every live session is on exactly one host, and that host's session set holds it;
//! - a host's reservation count equals the reservations that name it;
//! - every pool member's place in the pool index matches the host's current eligibility;
//! - a user's index lists exactly that user's sessions and reservations.

use crate::command::Command;
use crate::config::HostAddr;
use crate::error::CoreError;
use crate::event::{Event, Placement, PlacementOutcome, ReservationEnd};
use crate::model::{
    AdminState, DEFAULT_REPORT_INTERVAL, Health, HostId, HostSpec, LoadReport, MAX_NAME_LEN,
    PoolId, PoolSpec, ReportedSession, ReservationRecord, ResumePreference, SessionId,
    SessionRecord, SessionState, Settings, UserId,
};
use crate::placement::eligibility;
use crate::placement::index::{PENALIZED, PoolIndex, RankKey};
use crate::placement::members::{Member, MemberStatus, PoolEntry};
use crate::placement::score::ScoreInput;
use crate::placement::{
    Exclusion, ExclusionCounts, Explanation, HostExplanation, PlacementReason, ResumeCandidate,
};
use crate::table::{IdTable, UserTable};
use crate::time::Millis;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use rustc_hash::FxHashSet;
use smallvec::SmallVec;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

type StrMap<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// Longest report interval an agent may announce.
const MAX_REPORT_INTERVAL: Duration = Duration::from_secs(3600);
/// Session ids are at least `now_ms * ID_PER_MS`, so ids handed out before a restart (volatile
/// reservations) are not handed out again after it, as long as the clock moves forward.
const ID_PER_MS: u64 = 1000;

/// The whole cluster as the broker knows it. Pure: no clock, no I/O, seeded randomness.
#[derive(Debug)]
pub struct ClusterState {
    /// Cluster-wide placement settings.
    settings: Settings,
    /// Tie-breaking and sampling randomness, seeded from `settings.seed`.
    rng: ChaCha8Rng,
    /// Latest time seen; never goes backwards.
    now: Millis,
    /// Next session/reservation id.
    next_id: u64,
    /// Host table; removed hosts leave `None` so ids stay stable.
    hosts: Vec<Option<HostEntry>>,
    host_names: StrMap<HostId>,
    /// Pool table; removed pools leave `None`.
    pools: Vec<Option<PoolEntry>>,
    pool_names: StrMap<PoolId>,
    /// Live sessions.
    sessions: IdTable<SessionEntry>,
    /// Live reservations.
    reservations: IdTable<ReservationEntry>,
    /// Interned user names with each user's live sessions and reservations (resume looks here).
    users: UserTable,
    /// Live sessions by state, indexed by `state_index`.
    by_state: [usize; 6],
    /// Due times, earliest first; stale entries are skipped by generation checks.
    timers: BinaryHeap<Reverse<(Millis, Timer)>>,
    /// Agent credential hashes by host name. Kept apart from the host table: a host that leaves
    /// the configuration and comes back keeps its credential, as the store does.
    credentials: StrMap<Arc<str>>,
    /// Hosts with `offline_when_empty` set: checked after every command.
    drains: Vec<HostId>,
    /// Events of timers that fired during a command that was then refused: handed out with the
    /// next accepted command, or by [`ClusterState::take_held`].
    held: Vec<Event>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ReservationExpiry(SessionId),
    ReportStale(HostId),
    PenaltyEnd(HostId, u64),
}

/// A host as the state holds it. Placement reads the `pub(crate)` parts: the eligibility rules
/// (`placement::eligibility`) and the ranking of pool members (`placement::members`).
#[derive(Debug)]
pub(crate) struct HostEntry {
    name: Arc<str>,
    pub(crate) spec: HostSpec,
    address: Arc<HostAddr>,
    pub(crate) admin: AdminState,
    pub(crate) health: Health,
    report_interval: Duration,
    load: Option<LoadReport>,
    pub(crate) last_report_at: Option<Millis>,
    /// Whether a stale-report timer is pending for this host. One timer per host is kept and
    /// re-armed when it fires early, instead of one per report.
    stale_timer: bool,
    pub(crate) penalty_until: Option<Millis>,
    penalty_gen: u64,
    sessions: FxHashSet<SessionId>,
    by_backend: StrMap<SessionId>,
    reservations: u32,
    /// Placements since the last load report (least-load's optimistic adjustment).
    pending: u32,
    /// (pool, position in that pool's member list).
    pools: SmallVec<[(PoolId, u32); 2]>,
    /// Draining to go offline once empty: who asked.
    offline_when_empty: Option<Arc<str>>,
}

impl HostEntry {
    pub(crate) fn occupancy(&self) -> u64 {
        self.sessions.len() as u64 + u64::from(self.reservations)
    }

    pub(crate) fn stale_window(&self, intervals: u32) -> Duration {
        self.report_interval.saturating_mul(intervals.max(1))
    }

    fn in_pool(&self, pid: PoolId) -> bool {
        self.pools.iter().any(|&(p, _)| p == pid)
    }

    pub(crate) fn score_input(&self, session_ref: u32) -> ScoreInput<'_> {
        ScoreInput {
            sessions: u32::try_from(self.sessions.len()).unwrap_or(u32::MAX),
            reservations: self.reservations,
            weight: self.spec.weight,
            max_sessions: self.spec.max_sessions,
            load: self.load.as_ref(),
            pending: self.pending,
            session_ref,
        }
    }
}

#[derive(Debug, Clone)]
struct SessionEntry {
    user: UserId,
    host: HostId,
    pool: Option<PoolId>,
    state: SessionState,
    backend_id: Option<Arc<str>>,
    client: Option<IpAddr>,
    created_at: Millis,
    updated_at: Millis,
}

#[derive(Debug, Clone)]
struct ReservationEntry {
    user: UserId,
    host: HostId,
    pool: PoolId,
    client: Option<IpAddr>,
    created_at: Millis,
    expires_at: Millis,
}

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

fn state_index(s: SessionState) -> usize {
    match s {
        SessionState::Starting => 0,
        SessionState::Running => 1,
        SessionState::Disconnected => 2,
        SessionState::Ending => 3,
        SessionState::Ended => 4,
        SessionState::Unknown => 5,
    }
}

fn check_name(field: &'static str, value: &str) -> Result<(), CoreError> {
    if value.is_empty() {
        return Err(CoreError::Invalid {
            field,
            reason: "must not be empty".into(),
        });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(CoreError::Invalid {
            field,
            reason: format!("longer than {MAX_NAME_LEN} bytes"),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(CoreError::Invalid {
            field,
            reason: "contains control characters".into(),
        });
    }
    Ok(())
}

fn not_found(kind: &'static str, name: &str) -> CoreError {
    CoreError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

impl ClusterState {
    /// An empty cluster.
    pub fn new(settings: Settings) -> ClusterState {
        ClusterState {
            rng: ChaCha8Rng::seed_from_u64(settings.seed),
            settings,
            now: Millis::ZERO,
            next_id: 1,
            hosts: Vec::new(),
            host_names: StrMap::default(),
            pools: Vec::new(),
            pool_names: StrMap::default(),
            sessions: IdTable::default(),
            reservations: IdTable::default(),
            users: UserTable::default(),
            by_state: [0; 6],
            timers: BinaryHeap::new(),
            credentials: StrMap::default(),
            drains: Vec::new(),
            held: Vec::new(),
        }
    }

    /// Applies one command at time `now`. The only way to change the state.
    pub fn apply(&mut self, command: Command, now: Millis) -> Result<Vec<Event>, CoreError> {
        let mut events = Vec::new();
        self.advance(now, &mut events);
        let result = match command {
            Command::AddHost(spec) => self.add_host(spec, &mut events),
            Command::UpdateHost(spec) => self.update_host(spec, &mut events),
            Command::RemoveHost { name, force } => self.remove_host(&name, force, &mut events),
            Command::DefinePool(spec) => self.define_pool(spec, &mut events),
            Command::RemovePool { name } => self.remove_pool(&name, &mut events),
            Command::SetAdminState { host, state } => self.set_admin(&host, state, &mut events),
            Command::DrainThenOffline { host, by } => {
                self.drain_then_offline(&host, by, &mut events)
            }
            Command::SetWeight { host, weight } => self.set_weight(&host, weight, &mut events),
            Command::UpdateSettings(settings) => {
                self.update_settings(settings);
                Ok(())
            }
            Command::ReportLoad { host, report } => self.report_load(&host, report, &mut events),
            Command::ReportInventory { host, sessions } => {
                self.report_inventory(&host, sessions, &mut events)
            }
            Command::ReportSession { host, session } => {
                self.report_session(&host, session, &mut events)
            }
            Command::ReportSessionGone { host, backend_id } => {
                self.report_session_gone(&host, &backend_id, &mut events)
            }
            Command::Reserve { user, pool, client } => {
                self.reserve(&user, &pool, client, &mut events)
            }
            Command::Confirm {
                id,
                backend_id,
                starting,
            } => self.confirm(id, backend_id, starting, &mut events),
            Command::Release { id } => self.release(id, &mut events),
            Command::ReportStartFailed { id, reason: _ } => self.start_failed(id, &mut events),
            Command::BeginEnding { id } => self.begin_ending(id, &mut events),
            Command::EndSession { id } => self.end_session(id, &mut events),
            Command::AgentConnected {
                host,
                report_interval,
            } => self.agent_connected(&host, report_interval, &mut events),
            Command::AgentLost { host } => self.host_lost(&host, true, &mut events),
            Command::ReportProbe { host, ok } => self.report_probe(&host, ok, &mut events),
            Command::RestoreSession(record) => self.restore_session(record),
            Command::Tick => Ok(()),
            Command::IssueCredential { host, hash } => {
                self.issue_credential(&host, hash, &mut events)
            }
            Command::RevokeCredential { host } => self.revoke_credential(&host, &mut events),
        };
        self.offline_drained(&mut events);
        match result {
            Ok(()) => {
                if !self.held.is_empty() {
                    events.splice(0..0, self.held.drain(..));
                }
                Ok(events)
            }
            Err(e) => {
                // Timers fired before the refusal; nothing of the command itself changed.
                self.held.append(&mut events);
                Err(e)
            }
        }
    }

    /// Events of timers that fired during refused commands and have not been handed out with
    /// an accepted one since. The engine takes them after a refusal, so that what they say (a
    /// reservation expired, a drained host went offline) reaches readers and the store.
    pub fn take_held(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.held)
    }

    // ----- time -----

    fn advance(&mut self, now: Millis, events: &mut Vec<Event>) {
        if now > self.now {
            self.now = now;
        }
        while let Some(Reverse((due, timer))) = self.timers.peek().copied()
            && due <= self.now
        {
            self.timers.pop();
            match timer {
                Timer::ReservationExpiry(id) => {
                    if self
                        .reservations
                        .get(&id)
                        .is_some_and(|r| r.expires_at <= self.now)
                    {
                        self.end_reservation(id, ReservationEnd::Expired, events);
                    }
                }
                Timer::ReportStale(hid) => {
                    let intervals = self.settings.stale_after_intervals;
                    let now = self.now;
                    let Some(h) = self.host_mut(hid) else {
                        continue;
                    };
                    h.stale_timer = false;
                    // A newer report (or a longer window) moved the deadline: wait for it.
                    if let Some(t) = h.last_report_at {
                        let due = t
                            .after(h.stale_window(intervals))
                            .after(Duration::from_millis(1));
                        if due > now {
                            h.stale_timer = true;
                            self.timers.push(Reverse((due, Timer::ReportStale(hid))));
                            continue;
                        }
                    }
                    self.refresh_host(hid);
                    events.push(Event::HostChanged {
                        host: self.host_name(hid),
                    });
                }
                Timer::PenaltyEnd(hid, generation) => {
                    if let Some(h) = self.host_mut(hid)
                        && h.penalty_gen == generation
                    {
                        h.penalty_until = None;
                        self.refresh_host(hid);
                        events.push(Event::HostChanged {
                            host: self.host_name(hid),
                        });
                    }
                }
            }
        }
    }

    fn alloc_id(&mut self) -> SessionId {
        let id = self.next_id.max(self.now.0.saturating_mul(ID_PER_MS));
        self.next_id = id + 1;
        SessionId(id)
    }

    // ----- lookups -----

    fn host_ref(&self, hid: HostId) -> Option<&HostEntry> {
        self.hosts.get(hid.0 as usize)?.as_ref()
    }

    fn host_mut(&mut self, hid: HostId) -> Option<&mut HostEntry> {
        self.hosts.get_mut(hid.0 as usize)?.as_mut()
    }

    fn host_id(&self, name: &str) -> Result<HostId, CoreError> {
        self.host_names
            .get(name)
            .copied()
            .ok_or_else(|| not_found("host", name))
    }

    fn pool_id(&self, name: &str) -> Result<PoolId, CoreError> {
        self.pool_names
            .get(name)
            .copied()
            .ok_or_else(|| not_found("pool", name))
    }

    fn pool_ref(&self, pid: PoolId) -> Option<&PoolEntry> {
        self.pools.get(pid.0 as usize)?.as_ref()
    }

    fn host_name(&self, hid: HostId) -> Arc<str> {
        self.host_ref(hid)
            .map(|h| h.name.clone())
            .unwrap_or_else(|| Arc::from(""))
    }

    fn intern_user(&mut self, user: &str) -> UserId {
        self.users.intern(user)
    }

    fn user_name(&self, uid: UserId) -> Arc<str> {
        self.users
            .name(uid)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }

    /// Re-ranks a host in every pool it belongs to after anything about it changed.
    fn refresh_host(&mut self, hid: HostId) {
        let now = self.now;
        let intervals = self.settings.stale_after_intervals;
        let Some(host) = self.hosts.get(hid.0 as usize).and_then(Option::as_ref) else {
            return;
        };
        let exclusion = eligibility::exclusion(host, now, intervals);
        let penalized = eligibility::penalized(host, now);
        for &(pid, pos) in &host.pools {
            if let Some(pool) = self.pools.get_mut(pid.0 as usize).and_then(Option::as_mut) {
                pool.update_member(pos, host, exclusion, penalized, &mut self.rng);
            }
        }
    }

    /// After a load report: hosts whose eligibility did not change only get their rank marked
    /// stale in load-ranked pools (it is recomputed before the next decision there).
    fn refresh_after_report(&mut self, hid: HostId) {
        let now = self.now;
        let intervals = self.settings.stale_after_intervals;
        let Some(host) = self.hosts.get(hid.0 as usize).and_then(Option::as_ref) else {
            return;
        };
        let exclusion = eligibility::exclusion(host, now, intervals);
        let penalized = eligibility::penalized(host, now);
        for &(pid, pos) in &host.pools {
            if let Some(pool) = self.pools.get_mut(pid.0 as usize).and_then(Option::as_mut) {
                pool.update_member_after_report(pos, host, exclusion, penalized, &mut self.rng);
            }
        }
    }

    // ----- hosts -----

    fn validate_host_spec(spec: &HostSpec) -> Result<(), CoreError> {
        check_name("host name", &spec.name)?;
        if spec.max_sessions == Some(0) {
            return Err(CoreError::Invalid {
                field: "max_sessions",
                reason: "must be at least 1 (use weight 0 or drain to stop new sessions)".into(),
            });
        }
        Ok(())
    }

    fn add_host(&mut self, spec: HostSpec, events: &mut Vec<Event>) -> Result<(), CoreError> {
        Self::validate_host_spec(&spec)?;
        if self.host_names.contains_key(spec.name.as_str()) {
            return Err(CoreError::AlreadyExists {
                kind: "host",
                name: spec.name,
            });
        }
        let hid = HostId(
            u32::try_from(self.hosts.len()).map_err(|_| CoreError::Invalid {
                field: "host",
                reason: "too many hosts".into(),
            })?,
        );
        let name: Arc<str> = Arc::from(spec.name.as_str());
        let entry = HostEntry {
            name: name.clone(),
            address: Arc::new(spec.address.clone()),
            admin: AdminState::Online,
            health: spec.initial_health(),
            report_interval: DEFAULT_REPORT_INTERVAL,
            load: None,
            last_report_at: None,
            stale_timer: false,
            penalty_until: None,
            penalty_gen: 0,
            sessions: FxHashSet::default(),
            by_backend: StrMap::default(),
            reservations: 0,
            pending: 0,
            pools: SmallVec::new(),
            offline_when_empty: None,
            spec: spec.clone(),
        };
        self.hosts.push(Some(entry));
        self.host_names.insert(name, hid);
        events.push(Event::HostAdded(spec));
        Ok(())
    }

    fn update_host(&mut self, spec: HostSpec, events: &mut Vec<Event>) -> Result<(), CoreError> {
        Self::validate_host_spec(&spec)?;
        let hid = self.host_id(&spec.name)?;
        let Some(h) = self.host_mut(hid) else {
            return Err(not_found("host", &spec.name));
        };
        let mut health_change = None;
        if (h.spec.agent, h.spec.probe) != (spec.agent, spec.probe) {
            let health = spec.initial_health();
            if health != h.health {
                h.health = health;
                health_change = Some(health);
            }
            h.load = None;
            h.last_report_at = None;
        }
        h.address = Arc::new(spec.address.clone());
        h.spec = spec.clone();
        let name = h.name.clone();
        events.push(Event::HostUpdated(spec));
        if let Some(health) = health_change {
            events.push(Event::HealthChanged { host: name, health });
        }
        self.refresh_host(hid);
        Ok(())
    }

    fn remove_host(
        &mut self,
        name: &str,
        force: bool,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        let live = self.host_ref(hid).map_or(0, |h| h.sessions.len());
        if live > 0 && !force {
            return Err(CoreError::HostHasSessions {
                host: name.to_owned(),
                sessions: live,
            });
        }
        let session_ids: Vec<SessionId> = self
            .host_ref(hid)
            .map(|h| h.sessions.iter().copied().collect())
            .unwrap_or_default();
        for id in session_ids {
            self.remove_session(id, events);
        }
        let reservation_ids: Vec<SessionId> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.host == hid)
            .map(|(id, _)| *id)
            .collect();
        for id in reservation_ids {
            self.end_reservation(id, ReservationEnd::Withdrawn, events);
        }
        let pools: Vec<PoolId> = self
            .host_ref(hid)
            .map(|h| h.pools.iter().map(|&(p, _)| p).collect())
            .unwrap_or_default();
        let host_name = self.host_name(hid);
        self.hosts[hid.0 as usize] = None;
        self.drains.retain(|d| *d != hid);
        self.host_names.remove(name);
        for pid in pools {
            if let Some(mut spec) = self.pool_ref(pid).map(|p| p.spec.clone()) {
                spec.hosts.retain(|h| h != name);
                self.install_pool(pid, spec);
            }
        }
        events.push(Event::HostRemoved { name: host_name });
        Ok(())
    }

    fn set_admin(
        &mut self,
        name: &str,
        state: AdminState,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        let Some(h) = self.host_mut(hid) else {
            return Err(not_found("host", name));
        };
        // An operator's own change replaces a pending "then offline".
        if h.offline_when_empty.take().is_some() {
            events.push(Event::OfflineWhenEmpty {
                host: h.name.clone(),
                by: None,
            });
            self.drains.retain(|d| *d != hid);
        }
        let Some(h) = self.host_mut(hid) else {
            return Err(not_found("host", name));
        };
        if h.admin == state {
            return Ok(());
        }
        h.admin = state;
        events.push(Event::AdminStateChanged {
            host: h.name.clone(),
            state,
        });
        self.refresh_host(hid);
        Ok(())
    }

    fn drain_then_offline(
        &mut self,
        name: &str,
        by: String,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        self.set_admin(name, AdminState::Draining, events)?;
        let Some(h) = self.host_mut(hid) else {
            return Err(not_found("host", name));
        };
        let by: Arc<str> = Arc::from(by);
        h.offline_when_empty = Some(by.clone());
        events.push(Event::OfflineWhenEmpty {
            host: h.name.clone(),
            by: Some(by),
        });
        self.drains.push(hid);
        Ok(())
    }

    /// Takes drained hosts that asked for it offline once they hold neither sessions nor
    /// reservations (the drain rule's last step: see `placement/eligibility.rs`).
    fn offline_drained(&mut self, events: &mut Vec<Event>) {
        if self.drains.is_empty() {
            return;
        }
        let drains = std::mem::take(&mut self.drains);
        for hid in drains {
            let Some(h) = self.host_mut(hid) else {
                continue;
            };
            let Some(by) = h.offline_when_empty.clone() else {
                continue;
            };
            if h.occupancy() > 0 || h.admin != AdminState::Draining {
                self.drains.push(hid);
                continue;
            }
            h.offline_when_empty = None;
            h.admin = AdminState::Offline;
            let host = h.name.clone();
            events.push(Event::AdminStateChanged {
                host: host.clone(),
                state: AdminState::Offline,
            });
            events.push(Event::OfflineWhenEmpty {
                host: host.clone(),
                by: None,
            });
            events.push(Event::Drained { host, by });
            self.refresh_host(hid);
        }
    }

    fn set_weight(
        &mut self,
        name: &str,
        weight: u32,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        let Some(h) = self.host_mut(hid) else {
            return Err(not_found("host", name));
        };
        if h.spec.weight == weight {
            return Ok(());
        }
        h.spec.weight = weight;
        events.push(Event::WeightChanged {
            host: h.name.clone(),
            weight,
        });
        self.refresh_host(hid);
        Ok(())
    }

    fn update_settings(&mut self, settings: Settings) {
        self.settings = settings;
        let intervals = self.settings.stale_after_intervals;
        for i in 0..self.hosts.len() {
            let hid = HostId(i as u32);
            // The staleness window may have shrunk: give every reporting host a timer at its new
            // deadline (a timer that fires early re-arms itself).
            if let Some(h) = self.host_mut(hid)
                && let Some(t) = h.last_report_at
            {
                h.stale_timer = true;
                let due = t
                    .after(h.stale_window(intervals))
                    .after(Duration::from_millis(1));
                self.timers.push(Reverse((due, Timer::ReportStale(hid))));
            }
            self.refresh_host(hid);
        }
    }

    fn set_health(&mut self, hid: HostId, health: Health, events: &mut Vec<Event>) {
        if let Some(h) = self.host_mut(hid)
            && h.health != health
        {
            h.health = health;
            events.push(Event::HealthChanged {
                host: h.name.clone(),
                health,
            });
        }
    }

    fn penalize(&mut self, hid: HostId, events: &mut Vec<Event>) {
        let until = self.now.after(self.settings.failure_penalty.0);
        if let Some(h) = self.host_mut(hid) {
            h.penalty_gen += 1;
            h.penalty_until = Some(until);
            let generation = h.penalty_gen;
            events.push(Event::HostPenalized {
                host: h.name.clone(),
                until,
            });
            self.timers
                .push(Reverse((until, Timer::PenaltyEnd(hid, generation))));
        }
    }

    fn report_load(
        &mut self,
        name: &str,
        report: LoadReport,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        report.validate().map_err(|reason| CoreError::Invalid {
            field: "load report",
            reason,
        })?;
        let now = self.now;
        let intervals = self.settings.stale_after_intervals;
        let Some(h) = self.host_mut(hid) else {
            return Err(not_found("host", name));
        };
        if !h.spec.agent {
            return Err(CoreError::Invalid {
                field: "load report",
                reason: format!("host {name:?} is configured without an agent"),
            });
        }
        h.load = Some(report);
        h.last_report_at = Some(now);
        h.pending = 0;
        let arm = !h.stale_timer;
        h.stale_timer = true;
        let due = now
            .after(h.stale_window(intervals))
            .after(Duration::from_millis(1));
        events.push(Event::LoadReported {
            host: h.name.clone(),
        });
        if arm {
            self.timers.push(Reverse((due, Timer::ReportStale(hid))));
        }
        self.refresh_after_report(hid);
        Ok(())
    }

    fn agent_connected(
        &mut self,
        name: &str,
        interval: Duration,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        if interval.is_zero() || interval > MAX_REPORT_INTERVAL {
            return Err(CoreError::Invalid {
                field: "report interval",
                reason: format!("must be above 0 and at most 1h (got {interval:?})"),
            });
        }
        let Some(h) = self.host_mut(hid) else {
            return Err(not_found("host", name));
        };
        if !h.spec.agent {
            return Err(CoreError::Invalid {
                field: "agent",
                reason: format!("host {name:?} is configured without an agent"),
            });
        }
        h.report_interval = interval;
        self.set_health(hid, Health::Up, events);
        self.refresh_host(hid);
        Ok(())
    }

    fn issue_credential(
        &mut self,
        name: &str,
        hash: String,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        let Some(h) = self.host_ref(hid) else {
            return Err(not_found("host", name));
        };
        if !h.spec.agent {
            return Err(CoreError::Invalid {
                field: "agent",
                reason: format!(
                    "host {name:?} is configured without an agent (agent = false); it needs no credential"
                ),
            });
        }
        if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(CoreError::Invalid {
                field: "credential",
                reason: "the hash must be 64 lowercase hex digits (SHA-256)".into(),
            });
        }
        let host = h.name.clone();
        let hash: Arc<str> = Arc::from(hash);
        self.credentials.insert(host.clone(), hash.clone());
        events.push(Event::CredentialIssued { host, hash });
        Ok(())
    }

    fn revoke_credential(&mut self, name: &str, events: &mut Vec<Event>) -> Result<(), CoreError> {
        match self.credentials.remove_entry(name) {
            Some((host, _)) => {
                events.push(Event::CredentialRevoked { host });
                Ok(())
            }
            None => Err(not_found("credential for host", name)),
        }
    }

    /// The host became unreachable: no new placements there, its sessions go `unknown`.
    fn host_lost(
        &mut self,
        name: &str,
        agent: bool,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        let Some(h) = self.host_ref(hid) else {
            return Err(not_found("host", name));
        };
        if h.spec.agent != agent {
            return Err(CoreError::Invalid {
                field: if agent { "agent" } else { "probe" },
                reason: format!(
                    "host {name:?} is configured {} an agent",
                    if h.spec.agent { "with" } else { "without" }
                ),
            });
        }
        let ids: Vec<SessionId> = h.sessions.iter().copied().collect();
        self.set_health(hid, Health::Unreachable, events);
        for id in ids {
            self.set_session_state(id, SessionState::Unknown, events);
        }
        self.refresh_host(hid);
        Ok(())
    }

    fn report_probe(
        &mut self,
        name: &str,
        ok: bool,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        if !ok {
            self.host_lost(name, false, events)?;
            self.penalize(hid, events);
            self.refresh_host(hid);
            return Ok(());
        }
        if self.host_ref(hid).is_some_and(|h| h.spec.agent) {
            return Err(CoreError::Invalid {
                field: "probe",
                reason: format!("host {name:?} is configured with an agent"),
            });
        }
        self.set_health(hid, Health::Up, events);
        self.refresh_host(hid);
        Ok(())
    }

    // ----- pools -----

    fn define_pool(&mut self, spec: PoolSpec, events: &mut Vec<Event>) -> Result<(), CoreError> {
        check_name("pool name", &spec.name)?;
        let mut seen = std::collections::HashSet::new();
        for h in &spec.hosts {
            self.host_id(h)?;
            if !seen.insert(h.as_str()) {
                return Err(CoreError::Invalid {
                    field: "pool hosts",
                    reason: format!("host {h:?} is listed twice in pool {:?}", spec.name),
                });
            }
        }
        if spec.options.session_ref == 0 {
            return Err(CoreError::Invalid {
                field: "session_ref",
                reason: "must be at least 1".into(),
            });
        }
        let pid = match self.pool_names.get(spec.name.as_str()) {
            Some(&pid) => pid,
            None => {
                let pid = PoolId(u32::try_from(self.pools.len()).unwrap_or(u32::MAX));
                self.pools.push(None);
                self.pool_names.insert(Arc::from(spec.name.as_str()), pid);
                pid
            }
        };
        self.install_pool(pid, spec.clone());
        events.push(Event::PoolDefined(spec));
        Ok(())
    }

    /// (Re)builds a pool's members and index from its spec. Host names must exist.
    fn install_pool(&mut self, pid: PoolId, spec: PoolSpec) {
        // Detach the previous membership.
        if let Some(old) = self.pools.get(pid.0 as usize).and_then(Option::as_ref) {
            let old_hosts: Vec<HostId> = old.members.iter().map(|m| m.host).collect();
            for hid in old_hosts {
                if let Some(h) = self.host_mut(hid) {
                    h.pools.retain(|&mut (p, _)| p != pid);
                }
            }
        }
        let members: Vec<Member> = spec
            .hosts
            .iter()
            .filter_map(|n| self.host_names.get(n.as_str()).copied())
            .map(Member::new)
            .collect();
        for (pos, m) in members.iter().enumerate() {
            if let Some(h) = self.host_mut(m.host) {
                h.pools.push((pid, pos as u32));
            }
        }
        let entry = PoolEntry::new(spec, members.clone());
        self.pools[pid.0 as usize] = Some(entry);
        for m in members {
            self.refresh_host(m.host);
        }
    }

    fn remove_pool(&mut self, name: &str, events: &mut Vec<Event>) -> Result<(), CoreError> {
        let pid = self.pool_id(name)?;
        let hosts: Vec<HostId> = self
            .pool_ref(pid)
            .map(|p| p.members.iter().map(|m| m.host).collect())
            .unwrap_or_default();
        for hid in hosts {
            if let Some(h) = self.host_mut(hid) {
                h.pools.retain(|&mut (p, _)| p != pid);
            }
        }
        let reservation_ids: Vec<SessionId> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.pool == pid)
            .map(|(id, _)| *id)
            .collect();
        for id in reservation_ids {
            self.end_reservation(id, ReservationEnd::Withdrawn, events);
        }
        for s in self.sessions.values_mut() {
            if s.pool == Some(pid) {
                s.pool = None;
            }
        }
        self.pools[pid.0 as usize] = None;
        let name: Arc<str> = self
            .pool_names
            .remove_entry(name)
            .map(|(k, _)| k)
            .unwrap_or_else(|| Arc::from(name));
        events.push(Event::PoolRemoved { name });
        Ok(())
    }

    // ----- placement -----

    /// The user's live sessions on the pool's hosts plus their reservations in the pool.
    fn user_sessions_in_pool(&self, uid: UserId, pid: PoolId) -> u32 {
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

    /// The user's reservation or session that a placement in this pool would hand back.
    fn resume_candidate(
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

    fn reserve(
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
            let (host, outcome, expires_at) = match state {
                None => {
                    let r = &self.reservations[&id];
                    (
                        r.host,
                        PlacementOutcome::ExistingReservation,
                        Some(r.expires_at),
                    )
                }
                Some(st) => (self.sessions[&id].host, PlacementOutcome::Resumed(st), None),
            };
            let h = self.host_ref(host).ok_or_else(|| not_found("host", ""))?;
            events.push(Event::Placed(Placement {
                id,
                user: self.user_name(uid),
                pool: pool_arc,
                host: h.name.clone(),
                address: h.address.clone(),
                outcome,
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
            expires_at: Some(expires_at),
            reason,
        }));
        Ok(())
    }

    fn unlink_user(&mut self, uid: UserId, id: SessionId) {
        if let Some(list) = self.users.items_mut(uid) {
            list.retain(|x| *x != id);
        }
    }

    /// Drops a reservation and gives its capacity back.
    fn end_reservation(&mut self, id: SessionId, cause: ReservationEnd, events: &mut Vec<Event>) {
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

    fn confirm(
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

    fn release(&mut self, id: SessionId, events: &mut Vec<Event>) -> Result<(), CoreError> {
        if !self.reservations.contains_key(&id) {
            return Err(CoreError::IdNotFound {
                kind: "reservation",
                id,
            });
        }
        self.end_reservation(id, ReservationEnd::Released, events);
        Ok(())
    }

    fn start_failed(&mut self, id: SessionId, events: &mut Vec<Event>) -> Result<(), CoreError> {
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

    // ----- sessions -----

    /// Adds a live session; `silent` skips the event (restoring what the store already holds).
    fn insert_session(
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

    fn remove_session(&mut self, id: SessionId, events: &mut Vec<Event>) {
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

    fn set_session_state(&mut self, id: SessionId, state: SessionState, events: &mut Vec<Event>) {
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

    fn begin_ending(&mut self, id: SessionId, events: &mut Vec<Event>) -> Result<(), CoreError> {
        if !self.sessions.contains_key(&id) {
            return Err(CoreError::IdNotFound {
                kind: "session",
                id,
            });
        }
        self.set_session_state(id, SessionState::Ending, events);
        Ok(())
    }

    fn end_session(&mut self, id: SessionId, events: &mut Vec<Event>) -> Result<(), CoreError> {
        if !self.sessions.contains_key(&id) {
            return Err(CoreError::IdNotFound {
                kind: "session",
                id,
            });
        }
        self.remove_session(id, events);
        Ok(())
    }

    /// Applies one reported session: update a known one, confirm the user's reservation on this
    /// host, or adopt it.
    fn apply_reported(&mut self, hid: HostId, rs: ReportedSession, events: &mut Vec<Event>) {
        let known = self
            .host_ref(hid)
            .and_then(|h| h.by_backend.get(rs.backend_id.as_str()).copied());
        if let Some(id) = known {
            let current = self.sessions.get(&id).map(|s| s.state);
            // A session being terminated stays `ending` until it is gone.
            if current != Some(SessionState::Ending) {
                self.set_session_state(id, rs.state.into(), events);
            }
            return;
        }
        let uid = self.intern_user(&rs.user);
        let reservation = self
            .users
            .items(uid)
            .iter()
            .copied()
            .filter(|id| self.reservations.get(id).is_some_and(|r| r.host == hid))
            .min_by_key(|id| self.reservations[id].created_at);
        let (id, pool, client) = match reservation {
            Some(id) => {
                let (pool, client) = {
                    let r = &self.reservations[&id];
                    (Some(r.pool), r.client)
                };
                self.end_reservation(id, ReservationEnd::Confirmed, events);
                (id, pool, client)
            }
            None => (self.alloc_id(), None, None),
        };
        let entry = SessionEntry {
            user: uid,
            host: hid,
            pool,
            state: rs.state.into(),
            backend_id: Some(Arc::from(rs.backend_id)),
            client,
            created_at: self.now,
            updated_at: self.now,
        };
        self.insert_session(id, entry, events, false);
    }

    fn check_reported(rs: &ReportedSession) -> Result<(), CoreError> {
        check_name("backend id", &rs.backend_id)?;
        check_name("user", &rs.user)
    }

    fn report_inventory(
        &mut self,
        name: &str,
        reported: Vec<ReportedSession>,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        let mut seen = std::collections::HashSet::new();
        for rs in &reported {
            Self::check_reported(rs)?;
            if !seen.insert(rs.backend_id.as_str()) {
                return Err(CoreError::Invalid {
                    field: "inventory",
                    reason: format!("backend id {:?} is reported twice", rs.backend_id),
                });
            }
        }
        let missing: Vec<SessionId> = self
            .host_ref(hid)
            .map(|h| {
                h.sessions
                    .iter()
                    .copied()
                    .filter(|id| {
                        self.sessions[id]
                            .backend_id
                            .as_deref()
                            .is_none_or(|b| !seen.contains(b))
                    })
                    .collect()
            })
            .unwrap_or_default();
        drop(seen);
        for id in missing {
            self.remove_session(id, events);
        }
        for rs in reported {
            self.apply_reported(hid, rs, events);
        }
        Ok(())
    }

    fn report_session(
        &mut self,
        name: &str,
        rs: ReportedSession,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        Self::check_reported(&rs)?;
        self.apply_reported(hid, rs, events);
        Ok(())
    }

    fn report_session_gone(
        &mut self,
        name: &str,
        backend_id: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        if let Some(id) = self
            .host_ref(hid)
            .and_then(|h| h.by_backend.get(backend_id).copied())
        {
            self.remove_session(id, events);
        }
        Ok(())
    }

    fn restore_session(&mut self, rec: SessionRecord) -> Result<(), CoreError> {
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

    fn record(&self, id: SessionId, s: &SessionEntry) -> SessionRecord {
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

    fn reservation_record(&self, id: SessionId, r: &ReservationEntry) -> ReservationRecord {
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

    // ----- queries -----

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

    /// Checks the internal invariants listed in the module doc; `Err` names the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, s) in self.sessions.iter() {
            let h = self
                .host_ref(s.host)
                .ok_or_else(|| format!("session {id} on a missing host"))?;
            if !h.sessions.contains(id) {
                return Err(format!("session {id} missing from its host's set"));
            }
            if let Some(b) = &s.backend_id
                && h.by_backend.get(&**b) != Some(id)
            {
                return Err(format!(
                    "session {id} missing from its host's backend index"
                ));
            }
            if !self.users.items(s.user).contains(id) {
                return Err(format!("session {id} missing from its user's index"));
            }
        }
        let mut on_hosts = 0usize;
        for (i, h) in self.hosts.iter().enumerate() {
            let Some(h) = h else { continue };
            on_hosts += h.sessions.len();
            let res = self
                .reservations
                .values()
                .filter(|r| r.host.0 as usize == i)
                .count();
            if res != h.reservations as usize {
                return Err(format!(
                    "host {} counts {} reservations, {} exist",
                    h.name, h.reservations, res
                ));
            }
            for id in &h.sessions {
                if self.sessions.get(id).map(|s| s.host.0 as usize) != Some(i) {
                    return Err(format!(
                        "host {} lists session {id} it does not hold",
                        h.name
                    ));
                }
            }
            let exclusion =
                eligibility::exclusion(h, self.now, self.settings.stale_after_intervals);
            for &(pid, pos) in &h.pools {
                let p = self
                    .pool_ref(pid)
                    .ok_or_else(|| format!("host {} in a missing pool", h.name))?;
                let status = p.members.get(pos as usize).map(|m| m.status);
                let ok = match (exclusion, status) {
                    (Some(c), Some(MemberStatus::Excluded(d))) => c == d,
                    (None, Some(MemberStatus::Eligible(s))) => {
                        (s.tier == PENALIZED) == eligibility::penalized(h, self.now)
                    }
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "host {} is {:?} in pool {} but should be {:?}",
                        h.name, status, p.name, exclusion
                    ));
                }
            }
        }
        let mut by_state = [0usize; 6];
        for s in self.sessions.values() {
            by_state[state_index(s.state)] += 1;
        }
        if by_state != self.by_state {
            return Err(format!(
                "session counts by state drifted: {:?} vs {by_state:?}",
                self.by_state
            ));
        }
        if on_hosts != self.sessions.len() {
            return Err(format!(
                "{} sessions on hosts, {} sessions exist",
                on_hosts,
                self.sessions.len()
            ));
        }
        for (uid, entry) in self.users.iter() {
            for id in &entry.items {
                let owner = self
                    .sessions
                    .get(id)
                    .map(|s| s.user)
                    .or_else(|| self.reservations.get(id).map(|r| r.user));
                if owner != Some(uid) {
                    return Err(format!("user index lists {id} for the wrong user"));
                }
            }
        }
        for p in self.pools.iter().flatten() {
            let mut counts = ExclusionCounts::default();
            for m in &p.members {
                match m.status {
                    MemberStatus::Excluded(c) => counts.add(c),
                    MemberStatus::Eligible(s) if s.tier == PENALIZED => counts.penalized += 1,
                    _ => {}
                }
            }
            if counts != p.excluded {
                return Err(format!("pool {} exclusion counts drifted", p.name));
            }
        }
        Ok(())
    }
}
