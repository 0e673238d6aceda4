//! Placement behaviour, one rule per test.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::*;
use switchboard_core::model::{PoolOptions, ReportedState, ResumePreference};
use switchboard_core::placement::Exclusion;
use switchboard_core::{
    AdminState, Command, CoreError, Health, PlacementOutcome, Policy, PoolSpec, SessionState,
};

fn counts(c: &mut Cluster, n: usize, pool: &str) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for i in 0..n {
        let (_, host) = c.start(&format!("u{i}"), pool);
        *m.entry(host).or_default() += 1;
    }
    m
}

#[test]
fn round_robin_walks_hosts_in_configured_order() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::RoundRobin, &[100, 100, 100]);
    let first = c.reserve("u0", "p").host.to_string();
    let start = first[1..].parse::<usize>().unwrap();
    for i in 1..9 {
        let h = c.reserve(&format!("u{i}"), "p").host.to_string();
        assert_eq!(h, format!("h{:02}", (start + i) % 3));
    }
}

#[test]
fn round_robin_skips_ineligible_hosts() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::RoundRobin, &[100, 0, 100]);
    c.apply(Command::SetAdminState {
        host: "h02".into(),
        state: AdminState::Draining,
    });
    for i in 0..5 {
        assert_eq!(&*c.reserve(&format!("u{i}"), "p").host, "h00");
    }
}

#[test]
fn weighted_round_robin_interleaves_like_ipvs() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedRoundRobin, &[4, 3, 2]);
    let seq: Vec<String> = (0..18)
        .map(|i| c.reserve(&format!("u{i}"), "p").host.to_string())
        .collect();
    let cycle = [
        "h00", "h00", "h01", "h00", "h01", "h02", "h00", "h01", "h02",
    ];
    let expected: Vec<&str> = cycle.iter().chain(cycle.iter()).copied().collect();
    assert_eq!(seq, expected);
}

#[test]
fn least_sessions_ignores_weight() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::LeastSessions, &[1000, 1]);
    let m = counts(&mut c, 10, "p");
    assert_eq!(m["h00"], 5);
    assert_eq!(m["h01"], 5);
}

#[test]
fn weighted_least_sessions_divides_by_weight() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[300, 100]);
    let m = counts(&mut c, 40, "p");
    assert_eq!(m["h00"], 30);
    assert_eq!(m["h01"], 10);
}

#[test]
fn shortest_expected_delay_counts_the_new_session() {
    // sed (n+1)/w: with weights 3:1 the first two go to the heavy host ((0+1)/3 < (0+1)/1, then
    // (1+1)/3 < 1/1); wlc would alternate at the start.
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::ShortestExpectedDelay, &[300, 100]);
    let first: Vec<String> = (0..3).map(|i| c.start(&format!("u{i}"), "p").1).collect();
    assert_eq!(first, ["h00", "h00", "h00"]);
    assert_eq!(c.start("u3", "p").1, "h01");
}

#[test]
fn weight_zero_takes_no_new_sessions() {
    for policy in Policy::ALL {
        let mut c = Cluster::new();
        c.pool_with_weights(policy, &[100, 0]);
        for i in 0..20 {
            assert_eq!(&*c.reserve(&format!("u{i}"), "p").host, "h00", "{policy}");
        }
    }
}

#[test]
fn drained_host_receives_no_new_sessions_but_resumes_its_own() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 100]);
    let (id, host) = c.start("alice", "p");
    c.apply(Command::SetAdminState {
        host: host.clone(),
        state: AdminState::Draining,
    });
    let other = if host == "h00" { "h01" } else { "h00" };
    for i in 0..10 {
        assert_eq!(&*c.reserve(&format!("u{i}"), "p").host, other);
    }
    let again = c.reserve("alice", "p");
    assert_eq!(again.id, id);
    assert_eq!(&*again.host, host.as_str());
    assert_eq!(
        again.outcome,
        PlacementOutcome::Resumed(SessionState::Running)
    );
}

#[test]
fn offline_host_neither_resumes_nor_takes_new_sessions() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 100]);
    let (id, host) = c.start("alice", "p");
    c.apply(Command::SetAdminState {
        host: host.clone(),
        state: AdminState::Offline,
    });
    let p = c.reserve("alice", "p");
    assert_ne!(p.id, id);
    assert_ne!(&*p.host, host.as_str());
    assert_eq!(p.outcome, PlacementOutcome::Reserved);
    assert_eq!(p.reason.excluded.get(Exclusion::Offline), 1);
}

#[test]
fn resume_prefers_a_disconnected_session_over_a_running_one() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 100]);
    c.add_agent_host("solo", 9);
    c.connect_agent("solo");
    c.load("solo", report(0.1, 0.1, 0.9));
    c.define_pool("q", Policy::WeightedLeastSessions, &["solo".to_string()]);
    c.apply(Command::ReportInventory {
        host: "solo".into(),
        sessions: vec![
            reported("x-1", "alice", ReportedState::Running),
            reported("x-2", "alice", ReportedState::Disconnected),
        ],
    });
    let p = c.reserve("alice", "q");
    assert_eq!(
        p.outcome,
        PlacementOutcome::Resumed(SessionState::Disconnected)
    );
    let s = c.state.session(p.id).unwrap();
    assert_eq!(s.backend_id.as_deref(), Some("x-2"));
}

#[test]
fn resume_prefers_running_when_the_pool_says_so() {
    let mut c = Cluster::new();
    c.add_agent_host("solo", 9);
    c.connect_agent("solo");
    c.load("solo", report(0.1, 0.1, 0.9));
    c.apply(Command::DefinePool(PoolSpec {
        name: "q".into(),
        policy: Policy::WeightedLeastSessions,
        options: PoolOptions {
            resume_prefer: ResumePreference::Running,
            ..PoolOptions::default()
        },
        hosts: vec!["solo".into()],
    }));
    c.apply(Command::ReportInventory {
        host: "solo".into(),
        sessions: vec![
            reported("x-1", "alice", ReportedState::Running),
            reported("x-2", "alice", ReportedState::Disconnected),
        ],
    });
    let p = c.reserve("alice", "q");
    assert_eq!(p.outcome, PlacementOutcome::Resumed(SessionState::Running));
}

#[test]
fn asking_again_while_the_reservation_lives_returns_the_same_one() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 100, 100]);
    let a = c.reserve("alice", "p");
    let b = c.reserve("alice", "p");
    assert_eq!(a.id, b.id);
    assert_eq!(a.host, b.host);
    assert_eq!(b.outcome, PlacementOutcome::ExistingReservation);
    assert_eq!(c.state.reservation_count(), 1);
}

#[test]
fn reservations_count_as_load_at_once() {
    let mut c = Cluster::new();
    let hosts = c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 100, 100, 100]);
    for i in 0..40 {
        c.reserve(&format!("u{i}"), "p");
    }
    for h in &hosts {
        assert_eq!(c.occupancy(h), 10, "{h}");
    }
}

#[test]
fn expired_reservations_release_capacity() {
    let mut c = Cluster::new();
    let mut spec = host("small", 0);
    spec.max_sessions = Some(2);
    c.apply(Command::AddHost(spec));
    c.define_pool("p", Policy::WeightedLeastSessions, &["small".to_string()]);
    c.reserve("a", "p");
    c.reserve("b", "p");
    let err = c.try_reserve("c", "p").unwrap_err();
    assert!(matches!(err, CoreError::NoHostAvailable { .. }), "{err}");
    c.advance(Duration::from_secs(59));
    assert!(c.try_reserve("c", "p").is_err());
    c.advance(Duration::from_secs(2));
    assert_eq!(c.state.reservation_count(), 0);
    c.reserve("c", "p");
}

#[test]
fn expired_reservation_is_not_a_failure() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100]);
    c.reserve("a", "p");
    c.advance(Duration::from_secs(61));
    let h = c.state.host("h00").unwrap();
    assert_eq!(h.penalized_until, None);
    assert!(!c.reserve("b", "p").reason.used_penalized);
}

#[test]
fn host_cap_is_never_exceeded() {
    let mut c = Cluster::new();
    let mut spec = host("capped", 0);
    spec.max_sessions = Some(3);
    c.apply(Command::AddHost(spec));
    c.apply(Command::AddHost(host("open", 1)));
    c.define_pool(
        "p",
        Policy::WeightedLeastSessions,
        &["capped".into(), "open".into()],
    );
    for i in 0..30 {
        c.start(&format!("u{i}"), "p");
    }
    assert_eq!(c.sessions_on("capped"), 3);
    assert_eq!(c.sessions_on("open"), 27);
}

#[test]
fn failed_start_penalizes_the_host_unless_nothing_else_is_eligible() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 100]);
    let p = c.reserve("a", "p");
    let bad = p.host.to_string();
    c.apply(Command::ReportStartFailed {
        id: p.id,
        reason: "x2goruncommand failed".into(),
    });
    for i in 0..5 {
        assert_ne!(c.start(&format!("u{i}"), "p").1, bad);
    }
    // With the other host drained, the penalized one is used rather than nothing.
    let good = if bad == "h00" { "h01" } else { "h00" };
    c.apply(Command::SetAdminState {
        host: good.into(),
        state: AdminState::Draining,
    });
    let q = c.reserve("z", "p");
    assert_eq!(&*q.host, bad.as_str());
    assert!(q.reason.used_penalized);
    // After five minutes the penalty is over.
    c.advance(Duration::from_secs(301));
    assert_eq!(c.state.host(&bad).unwrap().penalized_until, None);
}

#[test]
fn agent_host_needs_a_fresh_load_report() {
    let mut c = Cluster::new();
    c.add_agent_host("a1", 0);
    c.define_pool("p", Policy::WeightedLeastSessions, &["a1".into()]);
    let e = c.try_reserve("u", "p").unwrap_err();
    assert!(e.to_string().contains("health_unknown=1"), "{e}");
    c.connect_agent("a1");
    let e = c.try_reserve("u", "p").unwrap_err();
    assert!(e.to_string().contains("stale=1"), "{e}");
    c.load("a1", report(0.5, 0.1, 0.8));
    c.reserve("u1", "p");
    // Default staleness: 3 intervals of 3 s.
    c.advance(Duration::from_secs(9));
    c.reserve("u2", "p");
    c.advance(Duration::from_millis(1));
    let e = c.try_reserve("u3", "p").unwrap_err();
    assert!(e.to_string().contains("stale=1"), "{e}");
    c.load("a1", report(0.5, 0.1, 0.8));
    c.reserve("u3", "p");
}

#[test]
fn lost_agent_makes_sessions_unknown_and_excludes_the_host() {
    let mut c = Cluster::new();
    c.add_agent_host("a1", 0);
    c.define_pool("p", Policy::WeightedLeastSessions, &["a1".into()]);
    c.connect_agent("a1");
    c.load("a1", report(0.5, 0.1, 0.8));
    let (id, _) = c.start("alice", "p");
    c.apply(Command::AgentLost { host: "a1".into() });
    assert_eq!(c.state.session(id).unwrap().state, SessionState::Unknown);
    assert_eq!(c.state.host("a1").unwrap().health, Health::Unreachable);
    let e = c.try_reserve("alice", "p").unwrap_err();
    assert!(e.to_string().contains("unreachable=1"), "{e}");
}

#[test]
fn agentless_probed_host_waits_for_a_good_probe_and_failed_probes_penalize() {
    let mut c = Cluster::new();
    let mut a = host("a", 0);
    a.probe = true;
    let mut b = host("b", 1);
    b.probe = true;
    c.apply(Command::AddHost(a));
    c.apply(Command::AddHost(b));
    c.define_pool(
        "p",
        Policy::WeightedLeastSessions,
        &["a".into(), "b".into()],
    );
    assert!(c.try_reserve("u", "p").is_err());
    c.apply(Command::ReportProbe {
        host: "a".into(),
        ok: true,
    });
    c.apply(Command::ReportProbe {
        host: "b".into(),
        ok: false,
    });
    assert_eq!(&*c.reserve("u0", "p").host, "a");
    c.apply(Command::ReportProbe {
        host: "b".into(),
        ok: true,
    });
    // b is up again but penalized for 5 minutes.
    for i in 1..5 {
        assert_eq!(&*c.start(&format!("u{i}"), "p").1, "a");
    }
    c.advance(Duration::from_secs(301));
    assert_eq!(&*c.reserve("v", "p").host, "b");
}

#[test]
fn least_load_prefers_the_idlest_host_and_adjusts_after_each_placement() {
    let mut c = Cluster::new();
    let hosts = names("n", 2);
    for (i, h) in hosts.iter().enumerate() {
        c.add_agent_host(h, i as u32);
        c.connect_agent(h);
    }
    c.define_pool("p", Policy::LeastLoad, &hosts);
    c.load("n00", report(0.2, 0.05, 0.9));
    c.load("n01", report(2.0, 0.50, 0.5));
    assert_eq!(&*c.reserve("u0", "p").host, "n00");
    // Each placement raises n00's estimate; a storm spreads before the next report.
    let m = (1..40)
        .map(|i| c.reserve(&format!("u{i}"), "p").host.to_string())
        .filter(|h| h == "n01")
        .count();
    assert!(m > 0, "all 40 went to the host that was idle a moment ago");
}

#[test]
fn least_load_falls_back_to_session_counts_without_reports() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::LeastLoad, &[100, 100]);
    let m = counts(&mut c, 10, "p");
    assert_eq!(m["h00"], 5);
    assert_eq!(m["h01"], 5);
}

#[test]
fn x2go_load_ranks_by_load_factor() {
    let mut c = Cluster::new();
    let hosts = names("x", 2);
    for (i, h) in hosts.iter().enumerate() {
        c.add_agent_host(h, i as u32);
        c.connect_agent(h);
    }
    c.define_pool("p", Policy::X2goLoad, &hosts);
    // x00 has twice x01's free memory at the same load: twice the factor, so twice the sessions.
    c.load("x00", report(1.0, 0.2, 0.8));
    c.load("x01", report(1.0, 0.2, 0.4));
    let m = counts(&mut c, 30, "p");
    assert_eq!(m["x00"], 20);
    assert_eq!(m["x01"], 10);
}

#[test]
fn two_choices_keeps_weighted_hosts_balanced() {
    let mut c = Cluster::seeded(7);
    c.pool_with_weights(Policy::TwoChoices, &[100, 100, 200]);
    let m = counts(&mut c, 400, "p");
    // Power of two choices keeps every host close to its share (100/100/200).
    assert!((80..=120).contains(&m["h00"]), "{m:?}");
    assert!((80..=120).contains(&m["h01"]), "{m:?}");
    assert!((160..=240).contains(&m["h02"]), "{m:?}");
}

#[test]
fn ties_are_broken_at_random_not_by_name() {
    // x2gobroker sends every new session to the alphabetically first idle host.
    let mut firsts = BTreeMap::new();
    for seed in 0..200 {
        let mut c = Cluster::seeded(seed);
        c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 100, 100, 100]);
        *firsts
            .entry(c.reserve("u", "p").host.to_string())
            .or_insert(0u32) += 1;
    }
    assert_eq!(firsts.len(), 4, "{firsts:?}");
    assert!(firsts.values().all(|&n| n >= 25), "{firsts:?}");
}

#[test]
fn same_state_and_seed_give_the_same_decisions() {
    let run = |seed| {
        let mut c = Cluster::seeded(seed);
        c.pool_with_weights(Policy::TwoChoices, &[100, 100, 50, 300, 100]);
        (0..50)
            .map(|i| c.reserve(&format!("u{i}"), "p").host.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn reason_counts_excluded_hosts_by_cause() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 100, 100, 0, 100]);
    c.apply(Command::SetAdminState {
        host: "h00".into(),
        state: AdminState::Draining,
    });
    c.apply(Command::SetAdminState {
        host: "h01".into(),
        state: AdminState::Offline,
    });
    let p = c.reserve("u", "p");
    assert_eq!(p.reason.eligible, 2);
    assert_eq!(p.reason.excluded.get(Exclusion::Draining), 1);
    assert_eq!(p.reason.excluded.get(Exclusion::Offline), 1);
    assert_eq!(p.reason.excluded.get(Exclusion::ZeroWeight), 1);
    assert_eq!(
        p.reason.to_string(),
        "wlc: best of 2 eligible; offline=1 draining=1 zero_weight=1"
    );
}

#[test]
fn explain_lists_every_host_with_its_score_or_exclusion() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 200, 100]);
    c.apply(Command::SetAdminState {
        host: "h02".into(),
        state: AdminState::Draining,
    });
    c.start("a", "p");
    let e = c.state.explain("bob", "p").unwrap();
    assert_eq!(e.hosts.len(), 3);
    assert_eq!(e.resume, None);
    // Eligible hosts come first in decision order; the next decision takes the first.
    let next = c.state.explain("bob", "p").unwrap().hosts[0].host.clone();
    assert_eq!(e.hosts[2].excluded, Some(Exclusion::Draining));
    assert!(e.hosts[0].score.is_some() && e.hosts[1].score.is_some());
    assert!(e.hosts[0].score <= e.hosts[1].score);
    assert_eq!(e.next.as_deref(), Some(&*next));
    assert_eq!(c.reserve("bob", "p").host, next);
    let e = c.state.explain("a", "p").unwrap();
    assert_eq!(e.resume.unwrap().state, Some(SessionState::Running));
}

#[test]
fn unknown_pool_and_bad_names_are_refused_without_change() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100]);
    assert!(matches!(
        c.try_reserve("u", "nope"),
        Err(CoreError::NotFound { kind: "pool", .. })
    ));
    assert!(matches!(
        c.try_reserve("", "p"),
        Err(CoreError::Invalid { .. })
    ));
    assert!(matches!(
        c.try_reserve("a\nb", "p"),
        Err(CoreError::Invalid { .. })
    ));
    assert_eq!(c.state.reservation_count(), 0);
}

#[test]
fn shorter_staleness_setting_applies_to_reports_already_received() {
    let mut c = Cluster::new();
    c.add_agent_host("a1", 0);
    c.define_pool("p", Policy::WeightedLeastSessions, &["a1".into()]);
    c.connect_agent("a1");
    c.load("a1", report(0.5, 0.1, 0.8));
    c.apply(Command::UpdateSettings(switchboard_core::Settings {
        stale_after_intervals: 1,
        ..switchboard_core::Settings::default()
    }));
    c.advance(Duration::from_millis(3001));
    let e = c.try_reserve("u", "p").unwrap_err();
    assert!(e.to_string().contains("stale=1"), "{e}");
}

#[test]
fn an_agent_back_with_a_shorter_interval_goes_stale_on_the_new_window() {
    let mut c = Cluster::new();
    c.add_agent_host("a1", 0);
    c.define_pool("p", Policy::WeightedLeastSessions, &["a1".into()]);
    c.apply(Command::AgentConnected {
        host: "a1".into(),
        report_interval: Duration::from_secs(20),
    });
    c.load("a1", report(0.5, 0.1, 0.8));
    // The link drops and the agent comes back reporting every second; its last report stands.
    c.apply(Command::AgentConnected {
        host: "a1".into(),
        report_interval: Duration::from_secs(1),
    });
    c.reserve("u1", "p");
    // Three 1 s intervals without a report: stale, although the old window was a minute.
    c.advance(Duration::from_millis(3001));
    let e = c.try_reserve("u2", "p").unwrap_err();
    assert!(e.to_string().contains("stale=1"), "{e}");
    c.load("a1", report(0.5, 0.1, 0.8));
    c.reserve("u2", "p");
}

#[test]
fn frequent_reports_keep_a_host_fresh() {
    let mut c = Cluster::new();
    c.add_agent_host("a1", 0);
    c.define_pool("p", Policy::WeightedLeastSessions, &["a1".into()]);
    c.connect_agent("a1");
    for _ in 0..20 {
        c.load("a1", report(0.5, 0.1, 0.8));
        c.advance(Duration::from_secs(2));
        assert_eq!(c.state.host("a1").unwrap().exclusion, None);
    }
    c.advance(Duration::from_secs(8));
    assert_eq!(
        c.state.host("a1").unwrap().exclusion,
        Some(Exclusion::Stale)
    );
}

#[test]
fn least_load_decides_on_the_latest_reports() {
    let mut c = Cluster::new();
    let hosts = names("n", 2);
    for (i, h) in hosts.iter().enumerate() {
        c.add_agent_host(h, i as u32);
        c.connect_agent(h);
    }
    c.define_pool("p", Policy::LeastLoad, &hosts);
    c.load("n00", report(0.1, 0.05, 0.9));
    c.load("n01", report(3.0, 0.90, 0.2));
    assert_eq!(&*c.reserve("u0", "p").host, "n00");
    // The load flips; several reports arrive before the next decision.
    for _ in 0..3 {
        c.load("n00", report(3.5, 0.95, 0.1));
        c.load("n01", report(0.1, 0.05, 0.9));
    }
    assert_eq!(&*c.reserve("u1", "p").host, "n01");
    let e = c.state.explain("u2", "p").unwrap();
    assert_eq!(
        e.hosts[0].host.as_ref(),
        "n01",
        "explain ranks on the latest reports too"
    );
}
