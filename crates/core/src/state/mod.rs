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
//!
//! # Layout
//! Each file adds the commands of one aggregate to [`ClusterState`]:
//! - this file: the state itself, [`ClusterState::apply`]'s dispatch, timers, lookups, and moving
//!   a changed host to its new place in each of its pools;
//! - `hosts.rs`: host entries and the operator's commands about hosts (admin state, drain then
//!   offline, weight, credentials), settings, health and penalties;
//! - `reports.rs`: what agents and probes report (load, health, the sessions a host runs);
//! - `pools.rs`: defining and removing pools;
//! - `reservations.rs`: placement requests (resume, or reserve the chosen host) and what becomes
//!   of a reservation (confirmed, released, failed, expired);
//! - `sessions.rs`: live sessions, restoring them from the store, and the pools' session policies;
//! - `queries.rs`: read-only views, and `explain`;
//! - `volatile.rs`: what the store does not hold (links, load, reservations), taken before a
//!   rebuild from the store and put back after it;
//! - `invariants.rs`: [`ClusterState::check_invariants`].
//!
//! The placement rules themselves (eligibility and the drain rule, the host choice) are in
//! [`crate::placement`].

mod hosts;
mod invariants;
mod pools;
mod queries;
mod reports;
mod reservations;
mod sessions;
mod volatile;

pub(crate) use hosts::HostEntry;
pub use queries::{HostView, PoolView};
use reservations::ReservationEntry;
use sessions::{SessionEntry, state_index};

use crate::command::Command;
use crate::error::CoreError;
use crate::event::{Event, ReservationEnd};
use crate::model::{HostId, MAX_NAME_LEN, PoolId, SessionId, Settings, UserId};
use crate::placement::Exclusion;
use crate::placement::eligibility;
use crate::placement::members::PoolEntry;
use crate::table::{IdTable, UserTable};
use crate::time::Millis;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

type StrMap<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

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
            Command::AgentAuthenticated {
                host,
                report_interval,
                credential,
            } => {
                if self.credentials.get(host.as_str()).map(|h| &**h) != Some(credential.as_str()) {
                    Err(CoreError::Invalid {
                        field: "credential",
                        reason: format!("host {host:?}'s credential was revoked or replaced"),
                    })
                } else {
                    self.agent_connected(&host, report_interval, &mut events)
                }
            }
            Command::AgentLost { host } => self.host_lost(&host, true, &mut events),
            Command::ReportProbe { host, ok } => self.report_probe(&host, ok, &mut events),
            Command::RestoreSession(record) => self.restore_session(record),
            Command::Tick => Ok(()),
            Command::IssueCredential { host, hash } => {
                self.issue_credential(&host, hash, &mut events)
            }
            Command::RevokeCredential { host } => self.revoke_credential(&host, &mut events),
            Command::RestoreVolatile(v) => {
                self.restore_volatile(*v, &mut events);
                Ok(())
            }
            Command::SeedIds { above } => {
                self.next_id = self.next_id.max(above.0.saturating_add(1));
                Ok(())
            }
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
        self.update_in_pools(hid, PoolEntry::update_member);
    }

    /// After a load report: hosts whose eligibility did not change only get their rank marked
    /// stale in load-ranked pools (it is recomputed before the next decision there).
    fn refresh_after_report(&mut self, hid: HostId) {
        self.update_in_pools(hid, PoolEntry::update_member_after_report);
    }

    /// Evaluates the host's eligibility once and hands it to each of its pools.
    fn update_in_pools(
        &mut self,
        hid: HostId,
        update: impl Fn(&mut PoolEntry, u32, &HostEntry, Option<Exclusion>, bool, &mut ChaCha8Rng),
    ) {
        let now = self.now;
        let intervals = self.settings.stale_after_intervals;
        let Some(host) = self.hosts.get(hid.0 as usize).and_then(Option::as_ref) else {
            return;
        };
        let exclusion = eligibility::exclusion(host, now, intervals);
        let penalized = eligibility::penalized(host, now);
        for &(pid, pos) in &host.pools {
            if let Some(pool) = self.pools.get_mut(pid.0 as usize).and_then(Option::as_mut) {
                update(pool, pos, host, exclusion, penalized, &mut self.rng);
            }
        }
    }
}
