//! Property tests: invariants that hold over random command sequences.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod support;

use proptest::prelude::*;
use std::time::Duration;
use support::*;
use switchboard_core::model::{DEFAULT_RESERVATION_TTL, ReportedState};
use switchboard_core::{
    AdminState, ClusterState, Command, Event, Health, Millis, PlacementOutcome, Policy, SessionId,
    Settings,
};

#[derive(Debug, Clone)]
struct HostGen {
    weight: u32,
    cap: Option<u32>,
    agent: bool,
}

fn host_gen() -> impl Strategy<Value = HostGen> {
    (
        prop_oneof![Just(0u32), 1u32..400],
        proptest::option::of(1u32..8),
        any::<bool>(),
    )
        .prop_map(|(weight, cap, agent)| HostGen { weight, cap, agent })
}

#[derive(Debug, Clone)]
enum Op {
    Reserve(u8),
    Confirm(u8),
    Release(u8),
    StartFailed(u8),
    End(u8),
    BeginEnding(u8),
    Admin(u8, u8),
    Weight(u8, u32),
    Load(u8),
    AgentUp(u8),
    AgentLost(u8),
    Probe(u8, bool),
    Inventory(u8, Vec<(u8, bool)>),
    Advance(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<u8>().prop_map(Op::Reserve),
        4 => any::<u8>().prop_map(Op::Confirm),
        1 => any::<u8>().prop_map(Op::Release),
        1 => any::<u8>().prop_map(Op::StartFailed),
        2 => any::<u8>().prop_map(Op::End),
        1 => any::<u8>().prop_map(Op::BeginEnding),
        1 => (any::<u8>(), 0u8..3).prop_map(|(h, s)| Op::Admin(h, s)),
        1 => (any::<u8>(), 0u32..300).prop_map(|(h, w)| Op::Weight(h, w)),
        3 => any::<u8>().prop_map(Op::Load),
        1 => any::<u8>().prop_map(Op::AgentUp),
        1 => any::<u8>().prop_map(Op::AgentLost),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(h, ok)| Op::Probe(h, ok)),
        1 => (any::<u8>(), proptest::collection::vec((0u8..12, any::<bool>()), 0..6))
            .prop_map(|(h, s)| Op::Inventory(h, s)),
        2 => (0u32..40_000).prop_map(Op::Advance),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    proptest::sample::select(Policy::ALL.to_vec())
}

fn nth<T: Copy>(v: &[T], i: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[i as usize % v.len()])
}

/// Runs a random scenario, checking the invariants after every step; returns every event.
fn run(seed: u64, policy: Policy, hosts: &[HostGen], ops: &[Op]) -> Vec<Event> {
    let mut c = Cluster::seeded(seed);
    let names = names("h", hosts.len());
    for (i, g) in hosts.iter().enumerate() {
        let mut spec = host(&names[i], i as u32);
        spec.weight = g.weight;
        spec.max_sessions = g.cap;
        spec.agent = g.agent;
        spec.probe = !g.agent && i % 2 == 0;
        c.apply(Command::AddHost(spec));
    }
    c.define_pool("p", policy, &names);
    let mut all = Vec::new();
    for op in ops {
        let reservations: Vec<SessionId> = c.state.reservations().iter().map(|r| r.id).collect();
        let mut sessions: Vec<SessionId> = c.state.sessions().map(|s| s.id).collect();
        sessions.sort();
        let h = |i: u8| names[i as usize % names.len()].clone();
        let before: Vec<(u32, AdminState)> = names
            .iter()
            .map(|n| {
                let v = c.state.host(n).unwrap();
                (v.sessions, v.admin)
            })
            .collect();
        let cmd = match op {
            Op::Reserve(u) => Command::Reserve {
                user: format!("u{}", u % 12),
                pool: "p".into(),
                client: None,
            },
            Op::Confirm(i) => match nth(&reservations, *i) {
                Some(id) => Command::Confirm {
                    id,
                    backend_id: None,
                    starting: false,
                },
                None => continue,
            },
            Op::Release(i) => match nth(&reservations, *i) {
                Some(id) => Command::Release { id },
                None => continue,
            },
            Op::StartFailed(i) => match nth(&reservations, *i) {
                Some(id) => Command::ReportStartFailed {
                    id,
                    reason: "test".into(),
                },
                None => continue,
            },
            Op::End(i) => match nth(&sessions, *i) {
                Some(id) => Command::EndSession { id },
                None => continue,
            },
            Op::BeginEnding(i) => match nth(&sessions, *i) {
                Some(id) => Command::BeginEnding { id },
                None => continue,
            },
            Op::Admin(i, s) => Command::SetAdminState {
                host: h(*i),
                state: [
                    AdminState::Online,
                    AdminState::Draining,
                    AdminState::Offline,
                ][*s as usize],
            },
            Op::Weight(i, w) => Command::SetWeight {
                host: h(*i),
                weight: *w,
            },
            Op::Load(i) => Command::ReportLoad {
                host: h(*i),
                report: report(f64::from(*i % 5), 0.3, 0.6),
            },
            Op::AgentUp(i) => Command::AgentConnected {
                host: h(*i),
                report_interval: Duration::from_secs(3),
            },
            Op::AgentLost(i) => Command::AgentLost { host: h(*i) },
            Op::Probe(i, ok) => Command::ReportProbe {
                host: h(*i),
                ok: *ok,
            },
            Op::Inventory(i, list) => Command::ReportInventory {
                host: h(*i),
                sessions: {
                    let mut seen = std::collections::HashSet::new();
                    list.iter()
                        .filter(|(b, _)| seen.insert(*b))
                        .map(|(b, running)| {
                            reported(
                                &format!("b{b}"),
                                &format!("u{}", b % 6),
                                if *running {
                                    ReportedState::Running
                                } else {
                                    ReportedState::Disconnected
                                },
                            )
                        })
                        .collect()
                },
            },
            Op::Advance(ms) => {
                c.now = c.now.after(Duration::from_millis(u64::from(*ms)));
                Command::Tick
            }
        };
        let is_admin = matches!(cmd, Command::SetAdminState { .. });
        // try_apply checks the structural invariants (one host per session, counts, indexes).
        let Ok(events) = c.try_apply(cmd) else {
            continue;
        };
        for e in &events {
            if let Event::Placed(p) = e
                && p.outcome == PlacementOutcome::Reserved
            {
                let v = c.state.host(&p.host).unwrap();
                // New sessions only on online, healthy, weighted hosts, and never above the cap.
                assert_eq!(v.admin, AdminState::Online, "{p:?}");
                assert_eq!(v.health, Health::Up, "{p:?}");
                assert!(v.spec.weight > 0, "{p:?}");
                if let Some(cap) = v.spec.max_sessions {
                    assert!(v.sessions + v.reservations <= cap, "{} over cap", p.host);
                }
            }
        }
        if is_admin {
            // Draining or offlining a host keeps its sessions.
            for (n, (sessions, _)) in names.iter().zip(&before) {
                assert_eq!(c.state.host(n).unwrap().sessions, *sessions);
            }
        }
        // No reservation outlives its TTL.
        for r in c.state.reservations() {
            assert!(r.expires_at > c.now);
            assert!(r.expires_at.0 - r.created_at.0 <= DEFAULT_RESERVATION_TTL.as_millis() as u64);
        }
        all.extend(events);
    }
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn invariants_hold_over_random_command_sequences(
        seed in any::<u64>(),
        policy in policy(),
        hosts in proptest::collection::vec(host_gen(), 1..8),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(seed, policy, &hosts, &ops);
    }

    #[test]
    fn same_state_and_seed_give_the_same_decisions(
        seed in any::<u64>(),
        policy in policy(),
        hosts in proptest::collection::vec(host_gen(), 1..6),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        prop_assert_eq!(run(seed, policy, &hosts, &ops), run(seed, policy, &hosts, &ops));
    }

    #[test]
    fn expired_reservations_release_capacity(
        caps in proptest::collection::vec(1u32..5, 1..6),
        users in 1usize..40,
    ) {
        let mut c = Cluster::new();
        let names = names("h", caps.len());
        for (i, cap) in caps.iter().enumerate() {
            let mut s = host(&names[i], i as u32);
            s.max_sessions = Some(*cap);
            c.apply(Command::AddHost(s));
        }
        c.define_pool("p", Policy::WeightedLeastSessions, &names);
        let total: u32 = caps.iter().sum();
        let ok = (0..users).filter(|i| c.try_reserve(&format!("u{i}"), "p").is_ok()).count();
        prop_assert_eq!(ok, users.min(total as usize));
        c.advance(DEFAULT_RESERVATION_TTL);
        prop_assert_eq!(c.state.reservation_count(), 0);
        let again = (0..users).filter(|i| c.try_reserve(&format!("v{i}"), "p").is_ok()).count();
        prop_assert_eq!(again, users.min(total as usize));
    }

    #[test]
    fn wrr_shares_match_weights_within_two_percent(
        weights in proptest::collection::vec(1u32..20, 2..7),
        rounds in 20usize..60,
    ) {
        let mut c = Cluster::new();
        c.checked = false;
        let names = c.pool_with_weights(Policy::WeightedRoundRobin, &weights);
        let total_w: u32 = weights.iter().sum();
        let n = rounds * total_w as usize;
        let mut counts = vec![0usize; weights.len()];
        for i in 0..n {
            let p = c.reserve(&format!("u{i}"), "p");
            counts[names.iter().position(|h| **h == *p.host).unwrap()] += 1;
        }
        for (cnt, w) in counts.iter().zip(&weights) {
            let share = *cnt as f64 / n as f64;
            let want = f64::from(*w) / f64::from(total_w);
            prop_assert!((share - want).abs() <= 0.02, "{counts:?} vs {weights:?}");
        }
    }

    #[test]
    fn wlc_shares_match_weights_within_two_percent(
        weights in proptest::collection::vec(10u32..500, 2..8),
        n in 1000usize..3000,
    ) {
        let mut c = Cluster::new();
        c.checked = false;
        let names = c.pool_with_weights(Policy::WeightedLeastSessions, &weights);
        let total_w: u32 = weights.iter().sum();
        let mut counts = vec![0usize; weights.len()];
        for i in 0..n {
            let (_, h) = c.start(&format!("u{i}"), "p");
            counts[names.iter().position(|x| *x == h).unwrap()] += 1;
        }
        for (cnt, w) in counts.iter().zip(&weights) {
            let share = *cnt as f64 / n as f64;
            let want = f64::from(*w) / f64::from(total_w);
            prop_assert!((share - want).abs() <= 0.02, "{counts:?} vs {weights:?}");
        }
    }

    #[test]
    fn simultaneous_requests_spread_within_one_of_the_weighted_share(
        weights in proptest::collection::vec(proptest::sample::select(vec![50u32, 100, 150, 200, 300]), 2..10),
        n in 1usize..400,
        seed in any::<u64>(),
    ) {
        let mut c = Cluster::seeded(seed);
        c.checked = false;
        let names = c.pool_with_weights(Policy::WeightedLeastSessions, &weights);
        for i in 0..n {
            c.reserve(&format!("u{i}"), "p");
        }
        let total_w: u32 = weights.iter().sum();
        for (h, w) in names.iter().zip(&weights) {
            let got = f64::from(c.occupancy(h));
            let share = n as f64 * f64::from(*w) / f64::from(total_w);
            prop_assert!((got - share).abs() <= 1.0 + 1e-9, "{h}: {got} vs share {share:.2} ({weights:?}, n={n})");
        }
    }
}

#[test]
fn state_starts_empty() {
    let s = ClusterState::new(Settings::default());
    assert_eq!(s.session_count(), 0);
    assert_eq!(s.now(), Millis::ZERO);
}
