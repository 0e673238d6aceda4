//! Pool session policies: the per-user cap at placement, and which sessions the log-off rules
//! (disconnected, idle, age) pick.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;
use support::*;
use switchboard_core::config::ConfigDuration;
use switchboard_core::model::{LogoffRule, PoolOptions, ReportedState, SessionLimits};
use switchboard_core::{Command, CoreError, Policy, PoolSpec};

fn pool(c: &mut Cluster, hosts: &[String], limits: SessionLimits) {
    c.apply(Command::DefinePool(PoolSpec {
        name: "p".into(),
        policy: Policy::WeightedLeastSessions,
        options: PoolOptions {
            limits,
            ..PoolOptions::default()
        },
        hosts: hosts.to_vec(),
    }));
}

fn agent_hosts(c: &mut Cluster, n: u32) -> Vec<String> {
    let names = names("h", n as usize);
    for (i, h) in names.iter().enumerate() {
        c.add_agent_host(h, i as u32);
        c.connect_agent(h);
        c.load(h, report(0.1, 0.1, 0.9));
    }
    names
}

fn mins(m: u64) -> Option<ConfigDuration> {
    Some(ConfigDuration(Duration::from_secs(m * 60)))
}

#[test]
fn max_sessions_per_user_refuses_a_new_session_but_not_a_resume() {
    let mut c = Cluster::new();
    let hosts = agent_hosts(&mut c, 2);
    pool(
        &mut c,
        &hosts,
        SessionLimits {
            max_sessions_per_user: Some(1),
            ..SessionLimits::default()
        },
    );
    let (id, _) = c.start("alice", "p");
    // Asking again resumes the running session: allowed.
    assert_eq!(c.reserve("alice", "p").id, id);
    // Another user is not affected.
    c.reserve("bob", "p");
    // With alice's host offline her session cannot be resumed, and a new one would be her second.
    let host = c.state.session(id).unwrap().host.to_string();
    c.apply(Command::SetAdminState {
        host,
        state: switchboard_core::AdminState::Offline,
    });
    match c.try_reserve("alice", "p") {
        Err(CoreError::UserLimit { sessions, .. }) => assert_eq!(sessions, 1),
        other => panic!("expected the user limit, got {other:?}"),
    }
    let e = c.state.explain("alice", "p").unwrap();
    assert!(e.at_user_limit);
    assert_eq!(e.user_sessions, 1);
}

#[test]
fn logoff_rules_pick_disconnected_idle_and_old_sessions() {
    let mut c = Cluster::new();
    let hosts = agent_hosts(&mut c, 1);
    pool(
        &mut c,
        &hosts,
        SessionLimits {
            logoff_disconnected_after: mins(60),
            logoff_idle_after: mins(30),
            max_session_age: mins(24 * 60),
            ..SessionLimits::default()
        },
    );
    c.apply(Command::ReportInventory {
        host: hosts[0].clone(),
        sessions: vec![
            reported("away", "alice", ReportedState::Disconnected),
            reported("busy", "bob", ReportedState::Running),
            reported("dozing", "carol", ReportedState::Running),
        ],
    });
    let idle = |_: &str, b: &str| {
        if b == "dozing" {
            Some(31 * 60)
        } else {
            Some(5)
        }
    };
    // Nothing is due yet except the idle session.
    let due = c.state.policy_logoffs(idle);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].rule, LogoffRule::Idle);
    assert_eq!(due[0].session.backend_id.as_deref(), Some("dozing"));
    assert_eq!(due[0].grace, Duration::from_secs(60));
    // An hour later the disconnected one is due too.
    c.advance(Duration::from_secs(61 * 60));
    let due = c.state.policy_logoffs(idle);
    let rules: Vec<_> = due
        .iter()
        .map(|d| (d.session.backend_id.as_deref().unwrap().to_owned(), d.rule))
        .collect();
    assert!(
        rules.contains(&("away".into(), LogoffRule::Disconnected)),
        "{rules:?}"
    );
    assert!(!rules.iter().any(|(b, _)| b == "busy"));
    // A day later every session is too old.
    c.advance(Duration::from_secs(24 * 3600));
    let due = c.state.policy_logoffs(|_, _| None);
    assert_eq!(due.len(), 3);
    assert!(due.iter().all(|d| d.rule == LogoffRule::Age));
}

#[test]
fn without_rules_or_without_an_agent_nothing_is_logged_off() {
    let mut c = Cluster::new();
    let hosts = agent_hosts(&mut c, 1);
    pool(&mut c, &hosts, SessionLimits::default());
    c.apply(Command::ReportInventory {
        host: hosts[0].clone(),
        sessions: vec![reported("away", "alice", ReportedState::Disconnected)],
    });
    c.advance(Duration::from_secs(365 * 86400));
    assert!(
        c.state
            .policy_logoffs(|_, _| Some(u64::MAX / 2000))
            .is_empty()
    );
    // An agentless host: its sessions are never policed (nobody could carry a log-off out).
    let mut c = Cluster::new();
    c.apply(Command::AddHost(host("plain", 1)));
    pool(
        &mut c,
        &["plain".to_owned()],
        SessionLimits {
            max_session_age: mins(1),
            ..SessionLimits::default()
        },
    );
    c.start("alice", "p");
    c.advance(Duration::from_secs(3600));
    assert!(c.state.policy_logoffs(|_, _| None).is_empty());
}
