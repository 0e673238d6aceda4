//! What agents and probes report: load, connection and loss, probe results, and the sessions a
//! host runs (inventory), which confirm reservations or adopt sessions the broker did not place.

use super::{ClusterState, SessionEntry, Timer, check_name, not_found};
use crate::error::CoreError;
use crate::event::{Event, ReservationEnd};
use crate::model::{Health, HostId, LoadReport, ReportedSession, SessionId, SessionState};
use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

/// Longest report interval an agent may announce.
const MAX_REPORT_INTERVAL: Duration = Duration::from_secs(3600);

impl ClusterState {
    pub(super) fn report_load(
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

    pub(super) fn agent_connected(
        &mut self,
        name: &str,
        interval: Duration,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        let intervals = self.settings.stale_after_intervals;
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
        let shorter = interval < h.report_interval;
        h.report_interval = interval;
        // A shorter interval shortens the staleness window of the report already received: a
        // timer at the new deadline (the one armed for the old, later deadline would keep the
        // host choosable past it; a timer that fires early re-arms itself).
        if shorter && let Some(t) = h.last_report_at {
            h.stale_timer = true;
            let due = t
                .after(h.stale_window(intervals))
                .after(Duration::from_millis(1));
            self.timers.push(Reverse((due, Timer::ReportStale(hid))));
        }
        self.set_health(hid, Health::Up, events);
        self.refresh_host(hid);
        Ok(())
    }

    /// The host became unreachable: no new placements there, its sessions go `unknown`.
    pub(super) fn host_lost(
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

    pub(super) fn report_probe(
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

    /// Reconciles a host's full inventory: sessions the broker knows there but the inventory
    /// lacks end, the rest are applied. A row that is not acceptable (backend id or user name
    /// refused by the name check) or repeats a backend id already listed is skipped, counts as
    /// not reported, and is counted in one [`Event::InventoryRowsRefused`]; one bad row never
    /// refuses the whole inventory (which would freeze the host's sessions).
    pub(super) fn report_inventory(
        &mut self,
        name: &str,
        reported: Vec<ReportedSession>,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let hid = self.host_id(name)?;
        let mut seen = std::collections::HashSet::with_capacity(reported.len());
        let mut kept = Vec::with_capacity(reported.len());
        let (mut invalid, mut duplicate) = (0u32, 0u32);
        let mut first: Option<String> = None;
        for rs in reported {
            if let Err(e) = Self::check_reported(&rs) {
                invalid = invalid.saturating_add(1);
                first.get_or_insert_with(|| e.to_string());
                continue;
            }
            // The first occurrence of a backend id wins; later ones are skipped.
            if !seen.insert(rs.backend_id.clone()) {
                duplicate = duplicate.saturating_add(1);
                first.get_or_insert_with(|| {
                    format!("backend id {:?} is reported twice", rs.backend_id)
                });
                continue;
            }
            kept.push(rs);
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
        for rs in kept {
            self.apply_reported(hid, rs, events);
        }
        if invalid > 0 || duplicate > 0 {
            let host = self
                .host_ref(hid)
                .map_or_else(|| Arc::from(name), |h| h.name.clone());
            events.push(Event::InventoryRowsRefused {
                host,
                invalid,
                duplicate,
                first: first.map(Arc::from).unwrap_or_else(|| Arc::from("")),
            });
        }
        Ok(())
    }

    pub(super) fn report_session(
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

    pub(super) fn report_session_gone(
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
}
