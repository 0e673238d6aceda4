//! What the store does not hold: agent links and probe verdicts, report intervals, the latest
//! load, penalties and reservations. The broker rebuilds its state from the store after a failed
//! commit; it takes this part from the state first ([`ClusterState::volatile`]) and puts it back
//! after ([`Command::RestoreVolatile`](crate::Command::RestoreVolatile)), so that linked hosts
//! stay placeable and no reservation already promised to a client is dropped.

use super::{ClusterState, ReservationEntry, Timer};
use crate::event::Event;
use crate::model::{HostRuntime, Volatile};
use std::cmp::Reverse;
use std::time::Duration;

impl ClusterState {
    /// The volatile part of the state, to carry across a rebuild from the store.
    pub fn volatile(&self) -> Volatile {
        let hosts = self
            .hosts
            .iter()
            .flatten()
            .map(|h| HostRuntime {
                name: h.name.clone(),
                health: h.health,
                report_interval: h.report_interval,
                load: h.load.clone(),
                last_report_at: h.last_report_at,
                penalty_until: h.penalty_until,
                pending: h.pending,
            })
            .collect();
        Volatile {
            hosts,
            reservations: self.reservations(),
        }
    }

    /// Puts back what [`ClusterState::volatile`] took, onto a state rebuilt from the store.
    /// Hosts that are gone, or changed between agent and probe, keep their fresh state; a
    /// reservation is restored if its host and pool still exist, it has not lapsed and its id
    /// is not taken (a stored session has it).
    pub(super) fn restore_volatile(&mut self, v: Volatile, events: &mut Vec<Event>) {
        let intervals = self.settings.stale_after_intervals;
        let now = self.now;
        for rt in v.hosts {
            let Ok(hid) = self.host_id(&rt.name) else {
                continue;
            };
            let Some(h) = self.host_mut(hid) else {
                continue;
            };
            h.report_interval = rt.report_interval;
            h.load = rt.load;
            h.last_report_at = rt.last_report_at;
            h.pending = rt.pending;
            if let Some(t) = h.last_report_at {
                // Staleness goes on from the report's time, as before the rebuild.
                h.stale_timer = true;
                let due = t
                    .after(h.stale_window(intervals))
                    .after(Duration::from_millis(1));
                self.timers.push(Reverse((due, Timer::ReportStale(hid))));
            }
            if let Some(until) = rt.penalty_until.filter(|u| *u > now)
                && let Some(h) = self.host_mut(hid)
            {
                h.penalty_gen += 1;
                h.penalty_until = Some(until);
                let generation = h.penalty_gen;
                self.timers
                    .push(Reverse((until, Timer::PenaltyEnd(hid, generation))));
            }
            self.set_health(hid, rt.health, events);
            self.refresh_host(hid);
        }
        for r in v.reservations {
            if r.expires_at <= now
                || self.reservations.get(&r.id).is_some()
                || self.sessions.get(&r.id).is_some()
            {
                continue;
            }
            let (Ok(hid), Ok(pid)) = (self.host_id(&r.host), self.pool_id(&r.pool)) else {
                continue;
            };
            let uid = self.intern_user(&r.user);
            self.reservations.insert(
                r.id,
                ReservationEntry {
                    user: uid,
                    host: hid,
                    pool: pid,
                    client: r.client,
                    created_at: r.created_at,
                    expires_at: r.expires_at,
                },
            );
            if let Some(items) = self.users.items_mut(uid) {
                items.push(r.id);
            }
            self.timers
                .push(Reverse((r.expires_at, Timer::ReservationExpiry(r.id))));
            // Ids handed out before the rebuild are never handed out again.
            self.next_id = self.next_id.max(r.id.0.saturating_add(1));
            if let Some(h) = self.host_mut(hid) {
                h.reservations += 1;
            }
            self.refresh_host(hid);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::HostAddr;
    use crate::model::{
        AdminState, Health, HostSpec, LoadReport, PoolOptions, PoolSpec, SessionId, SessionState,
        Settings,
    };
    use crate::{ClusterState, Command, Event, Millis, PlacementOutcome, Policy};
    use std::time::Duration;

    fn host(name: &str, n: u8) -> HostSpec {
        let mut h = HostSpec::new(name, HostAddr::ip([127, 0, 0, n].into(), 22));
        h.agent = true;
        h.max_sessions = Some(10);
        h
    }

    fn load() -> LoadReport {
        LoadReport {
            load_avg: [0.5; 3],
            cpu_utilisation: 0.1,
            cpu_count: 4,
            cpu_mhz: 2400.0,
            mem_total_kib: 16_000_000,
            mem_available_kib: 8_000_000,
            ..LoadReport::default()
        }
    }

    /// A cluster as `build_state` makes it from the configuration: two agent hosts in one
    /// pool, nothing heard from them yet.
    fn fresh(now: Millis) -> ClusterState {
        let mut s = ClusterState::new(Settings::default());
        s.apply(Command::AddHost(host("a", 2)), now).unwrap();
        s.apply(Command::AddHost(host("b", 3)), now).unwrap();
        let pool = PoolSpec {
            name: "p".into(),
            policy: Policy::default(),
            options: PoolOptions::default(),
            hosts: vec!["a".into(), "b".into()],
        };
        s.apply(Command::DefinePool(pool), now).unwrap();
        s
    }

    /// The host's agent connects (5 s interval) and reports its load.
    fn linked(s: &mut ClusterState, host: &str, now: Millis) {
        s.apply(
            Command::AgentConnected {
                host: host.into(),
                report_interval: Duration::from_secs(5),
            },
            now,
        )
        .unwrap();
        s.apply(
            Command::ReportLoad {
                host: host.into(),
                report: load(),
            },
            now,
        )
        .unwrap();
    }

    fn reserve(s: &mut ClusterState, user: &str, now: Millis) -> (SessionId, String) {
        let ev = s
            .apply(
                Command::Reserve {
                    user: user.into(),
                    pool: "p".into(),
                    client: None,
                },
                now,
            )
            .unwrap();
        ev.iter()
            .find_map(|e| match e {
                Event::Placed(p) if p.outcome == PlacementOutcome::Reserved => {
                    Some((p.id, p.host.to_string()))
                }
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn a_rebuild_keeps_linked_hosts_up_their_load_and_the_reservations_promised() {
        let t0 = Millis(1_000_000);
        let mut before = fresh(t0);
        for h in ["a", "b"] {
            linked(&mut before, h, t0);
        }
        let (rid, rhost) = reserve(&mut before, "alice", t0);
        let carried = before.volatile();

        // The rebuild: the configuration again, and the store (which holds none of this).
        let t1 = t0.after(Duration::from_secs(2));
        let mut after = fresh(t1);
        assert_eq!(after.host("a").unwrap().health, Health::Unknown);
        let ev = after
            .apply(Command::RestoreVolatile(Box::new(carried)), t1)
            .unwrap();
        assert!(
            ev.iter().any(|e| matches!(
                e,
                Event::HealthChanged {
                    health: Health::Up,
                    ..
                }
            )),
            "{ev:?}"
        );
        after.check_invariants().unwrap();
        for h in ["a", "b"] {
            let v = after.host(h).unwrap();
            assert_eq!(v.health, Health::Up, "{h}");
            assert!(v.load.is_some(), "{h}: its latest load survives");
            assert!(v.exclusion.is_none(), "{h} is placeable: {:?}", v.exclusion);
        }
        let r = after.reservations();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].id, r[0].host.as_ref()), (rid, rhost.as_str()));
        // The promised reservation can still be confirmed, and new ids do not collide with it.
        let (next, _) = reserve(&mut after, "bob", t1);
        assert!(next > rid);
        after
            .apply(
                Command::Confirm {
                    id: rid,
                    backend_id: Some("x".into()),
                    starting: false,
                },
                t1,
            )
            .unwrap();
        after.check_invariants().unwrap();

        // Staleness still runs from the last report: silent hosts go stale on time.
        let late = t0.after(Duration::from_secs(5 * 3 + 1));
        after.apply(Command::Tick, late).unwrap();
        assert!(after.host("a").unwrap().exclusion.is_some());
    }

    #[test]
    fn a_rebuild_drops_lapsed_reservations_and_ids_the_store_already_has() {
        let t0 = Millis(1_000_000);
        let mut before = fresh(t0);
        linked(&mut before, "a", t0);
        before
            .apply(
                Command::SetAdminState {
                    host: "b".into(),
                    state: AdminState::Offline,
                },
                t0,
            )
            .unwrap();
        let (lapsing, _) = reserve(&mut before, "alice", t0);
        let carried = before.volatile();
        let ttl = Settings::default().reservation_ttl.0;
        let t1 = t0.after(ttl).after(Duration::from_secs(1));
        let mut after = fresh(t1);
        after
            .apply(Command::RestoreVolatile(Box::new(carried.clone())), t1)
            .unwrap();
        assert!(
            after.reservations().is_empty(),
            "a lapsed reservation is dropped"
        );

        // A stored session with the reservation's id (its confirmation was committed) wins.
        let mut stored = fresh(t0);
        stored
            .apply(
                Command::RestoreSession(crate::model::SessionRecord {
                    id: lapsing,
                    user: "alice".into(),
                    host: "a".into(),
                    pool: Some("p".into()),
                    state: SessionState::Running,
                    backend_id: Some("x".into()),
                    client: None,
                    created_at: t0,
                    updated_at: t0,
                }),
                t0,
            )
            .unwrap();
        stored
            .apply(Command::RestoreVolatile(Box::new(carried)), t0)
            .unwrap();
        assert!(stored.reservations().is_empty());
        stored.check_invariants().unwrap();
    }
}
