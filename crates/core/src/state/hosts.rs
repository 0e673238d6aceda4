//! Hosts: their entry in the state, the operator's commands about them (add, update, remove,
//! admin state, drain then offline, weight, credentials), settings, health and penalties.

use super::{ClusterState, StrMap, Timer, check_name, not_found};
use crate::config::HostAddr;
use crate::error::CoreError;
use crate::event::{Event, ReservationEnd};
use crate::model::{
    AdminState, DEFAULT_REPORT_INTERVAL, Health, HostId, HostSpec, LoadReport, PoolId, SessionId,
    Settings,
};
use crate::placement::score::ScoreInput;
use crate::time::Millis;
use rustc_hash::FxHashSet;
use smallvec::SmallVec;
use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

/// A host as the state holds it. Placement reads the `pub(crate)` parts: the eligibility rules
/// (`placement::eligibility`) and the ranking of pool members (`placement::members`).
#[derive(Debug)]
pub(crate) struct HostEntry {
    pub(super) name: Arc<str>,
    pub(crate) spec: HostSpec,
    pub(super) address: Arc<HostAddr>,
    pub(crate) admin: AdminState,
    pub(crate) health: Health,
    pub(super) report_interval: Duration,
    pub(super) load: Option<LoadReport>,
    pub(crate) last_report_at: Option<Millis>,
    /// Whether a stale-report timer is pending for this host. One timer per host is kept and
    /// re-armed when it fires early, instead of one per report.
    pub(super) stale_timer: bool,
    pub(crate) penalty_until: Option<Millis>,
    pub(super) penalty_gen: u64,
    pub(super) sessions: FxHashSet<SessionId>,
    pub(super) by_backend: StrMap<SessionId>,
    pub(super) reservations: u32,
    /// Placements since the last load report (least-load's optimistic adjustment).
    pub(super) pending: u32,
    /// (pool, position in that pool's member list).
    pub(super) pools: SmallVec<[(PoolId, u32); 2]>,
    /// Draining to go offline once empty: who asked.
    pub(super) offline_when_empty: Option<Arc<str>>,
}

impl HostEntry {
    pub(crate) fn occupancy(&self) -> u64 {
        self.sessions.len() as u64 + u64::from(self.reservations)
    }

    pub(crate) fn stale_window(&self, intervals: u32) -> Duration {
        self.report_interval.saturating_mul(intervals.max(1))
    }

    pub(super) fn in_pool(&self, pid: PoolId) -> bool {
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

impl ClusterState {
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

    pub(super) fn add_host(
        &mut self,
        spec: HostSpec,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
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

    pub(super) fn update_host(
        &mut self,
        spec: HostSpec,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
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

    pub(super) fn remove_host(
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

    pub(super) fn set_admin(
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

    pub(super) fn drain_then_offline(
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
    pub(super) fn offline_drained(&mut self, events: &mut Vec<Event>) {
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

    pub(super) fn set_weight(
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

    pub(super) fn update_settings(&mut self, settings: Settings) {
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

    pub(super) fn set_health(&mut self, hid: HostId, health: Health, events: &mut Vec<Event>) {
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

    pub(super) fn penalize(&mut self, hid: HostId, events: &mut Vec<Event>) {
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

    pub(super) fn issue_credential(
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
        let replaced = self
            .credentials
            .insert(host.clone(), hash.clone())
            .is_some_and(|old| old != hash);
        events.push(Event::CredentialIssued { host, hash });
        if replaced {
            // The agent linked with the old credential is being cut off.
            self.cut_off(hid, events);
        }
        Ok(())
    }

    /// A host whose agent credential went away: unreachable in the same command (not placeable
    /// while its old link is being closed), its sessions `unknown` until an agent with a valid
    /// credential reports them. A host that was not up stays as it was.
    fn cut_off(&mut self, hid: HostId, events: &mut Vec<Event>) {
        let Some(h) = self.host_ref(hid) else {
            return;
        };
        if h.health != Health::Up || !h.spec.agent {
            return;
        }
        let name = h.name.clone();
        // Cannot fail: the host exists and has an agent.
        let _ = self.host_lost(&name, true, events);
    }

    pub(super) fn revoke_credential(
        &mut self,
        name: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        match self.credentials.remove_entry(name) {
            Some((host, _)) => {
                events.push(Event::CredentialRevoked { host });
                if let Ok(hid) = self.host_id(name) {
                    self.cut_off(hid, events);
                }
                Ok(())
            }
            None => Err(not_found("credential for host", name)),
        }
    }
}
