//! Session lifecycle, inventory reconciliation, hosts and pools coming and going.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod support;

use std::time::Duration;
use support::*;
use switchboard_core::event::ReservationEnd;
use switchboard_core::model::{ReportedState, SessionRecord};
use switchboard_core::{
    AdminState, Command, CoreError, Event, Health, Millis, Policy, SessionId, SessionState,
    Settings,
};

fn agent_cluster() -> Cluster {
    let mut c = Cluster::new();
    c.add_agent_host("a1", 0);
    c.define_pool("p", Policy::WeightedLeastSessions, &["a1".into()]);
    c.connect_agent("a1");
    c.load("a1", report(0.1, 0.1, 0.9));
    c
}

#[test]
fn confirm_turns_a_reservation_into_a_running_session_with_the_same_id() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100]);
    let p = c.reserve("alice", "p");
    let events = c.apply(Command::Confirm {
        id: p.id,
        backend_id: Some("alice-50-1".into()),
        starting: false,
    });
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::SessionStarted(s) if s.id == p.id))
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::ReservationEnded {
            cause: ReservationEnd::Confirmed,
            ..
        }
    )));
    let s = c.state.session(p.id).unwrap();
    assert_eq!(s.state, SessionState::Running);
    assert_eq!(s.pool.as_deref(), Some("p"));
    assert_eq!(c.state.reservation_count(), 0);
    // Confirming again is harmless.
    assert!(
        c.apply(Command::Confirm {
            id: p.id,
            backend_id: None,
            starting: false
        })
        .is_empty()
    );
}

#[test]
fn confirm_of_an_unknown_or_expired_reservation_is_refused() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100]);
    let p = c.reserve("alice", "p");
    c.advance(Duration::from_secs(61));
    let e = c
        .try_apply(Command::Confirm {
            id: p.id,
            backend_id: None,
            starting: false,
        })
        .unwrap_err();
    assert!(
        matches!(
            e,
            CoreError::IdNotFound {
                kind: "reservation",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(c.state.session_count(), 0);
}

#[test]
fn release_gives_capacity_back() {
    let mut c = Cluster::new();
    let mut spec = host("one", 0);
    spec.max_sessions = Some(1);
    c.apply(Command::AddHost(spec));
    c.define_pool("p", Policy::WeightedLeastSessions, &["one".into()]);
    let p = c.reserve("a", "p");
    assert!(c.try_reserve("b", "p").is_err());
    c.apply(Command::Release { id: p.id });
    c.reserve("b", "p");
}

#[test]
fn inventory_adopts_unknown_sessions_and_ends_missing_ones() {
    let mut c = agent_cluster();
    c.apply(Command::ReportInventory {
        host: "a1".into(),
        sessions: vec![
            reported("s-1", "alice", ReportedState::Running),
            reported("s-2", "bob", ReportedState::Disconnected),
        ],
    });
    assert_eq!(c.sessions_on("a1"), 2);
    let bob = c.state.sessions_of_user("bob");
    assert_eq!(bob[0].state, SessionState::Disconnected);
    assert_eq!(bob[0].pool, None);
    let events = c.apply(Command::ReportInventory {
        host: "a1".into(),
        sessions: vec![reported("s-2", "bob", ReportedState::Running)],
    });
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::SessionEnded { .. }))
    );
    assert_eq!(c.sessions_on("a1"), 1);
    assert!(c.state.sessions_of_user("alice").is_empty());
    assert_eq!(
        c.state.sessions_of_user("bob")[0].state,
        SessionState::Running
    );
}

#[test]
fn inventory_confirms_the_users_reservation_on_that_host() {
    let mut c = agent_cluster();
    let p = c.reserve("alice", "p");
    c.apply(Command::ReportInventory {
        host: "a1".into(),
        sessions: vec![reported("s-9", "alice", ReportedState::Running)],
    });
    let s = c
        .state
        .session(p.id)
        .expect("reservation confirmed under its id");
    assert_eq!(s.backend_id.as_deref(), Some("s-9"));
    assert_eq!(s.pool.as_deref(), Some("p"));
    assert_eq!(c.state.reservation_count(), 0);
}

#[test]
fn inventory_leaves_other_users_reservations_alone() {
    let mut c = agent_cluster();
    c.reserve("alice", "p");
    c.apply(Command::ReportInventory {
        host: "a1".into(),
        sessions: vec![],
    });
    assert_eq!(c.state.reservation_count(), 1);
    c.apply(Command::ReportInventory {
        host: "a1".into(),
        sessions: vec![reported("s-1", "bob", ReportedState::Running)],
    });
    assert_eq!(c.state.reservation_count(), 1);
}

#[test]
fn inventory_restores_unknown_sessions_after_the_agent_returns() {
    let mut c = agent_cluster();
    c.apply(Command::ReportInventory {
        host: "a1".into(),
        sessions: vec![reported("s-1", "alice", ReportedState::Disconnected)],
    });
    c.apply(Command::AgentLost { host: "a1".into() });
    assert_eq!(
        c.state.sessions_of_user("alice")[0].state,
        SessionState::Unknown
    );
    c.connect_agent("a1");
    c.apply(Command::ReportInventory {
        host: "a1".into(),
        sessions: vec![reported("s-1", "alice", ReportedState::Disconnected)],
    });
    assert_eq!(
        c.state.sessions_of_user("alice")[0].state,
        SessionState::Disconnected
    );
}

#[test]
fn duplicate_backend_ids_in_an_inventory_keep_the_first_row_and_are_counted() {
    let mut c = agent_cluster();
    let events = c.apply(Command::ReportInventory {
        host: "a1".into(),
        sessions: vec![
            reported("s-1", "alice", ReportedState::Running),
            reported("s-1", "bob", ReportedState::Disconnected),
            reported("s-2", "carol", ReportedState::Running),
            reported("s-2", "dave", ReportedState::Running),
        ],
    });
    assert_eq!(c.sessions_on("a1"), 2);
    let alice = &c.state.sessions_of_user("alice")[0];
    assert_eq!(alice.backend_id.as_deref(), Some("s-1"));
    assert_eq!(alice.state, SessionState::Running);
    assert!(c.state.sessions_of_user("bob").is_empty());
    assert!(c.state.sessions_of_user("dave").is_empty());
    assert_eq!(c.state.sessions_of_user("carol").len(), 1);
    let refused: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::InventoryRowsRefused {
                host,
                invalid,
                duplicate,
                first,
            } => Some((host.to_string(), *invalid, *duplicate, first.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "one event per inventory: {events:?}");
    let (host, invalid, duplicate, first) = &refused[0];
    assert_eq!((host.as_str(), *invalid, *duplicate), ("a1", 0, 2));
    assert!(
        first.contains("\"s-1\"") && first.contains("twice"),
        "{first}"
    );
    assert!(
        events
            .iter()
            .filter(|e| matches!(e, Event::InventoryRowsRefused { .. }))
            .all(|e| !e.is_durable()),
        "for logs and metrics only, never committed"
    );
}

#[test]
fn an_invalid_row_is_skipped_and_counted_and_the_rest_of_the_inventory_applies() {
    let mut c = agent_cluster();
    c.apply(Command::ReportInventory {
        host: "a1".into(),
        sessions: vec![
            reported("s-1", "alice", ReportedState::Running),
            reported("s-2", "bob", ReportedState::Running),
        ],
    });
    let alice = c.state.sessions_of_user("alice")[0].id;
    // bob's session is gone; alice's is disconnected; one row has a user name the core refuses
    // (a control character) and one an empty backend id.
    let events = c.apply(Command::ReportInventory {
        host: "a1".into(),
        sessions: vec![
            reported("s-3", "eve\nil", ReportedState::Running),
            reported("s-1", "alice", ReportedState::Disconnected),
            reported("", "mallory", ReportedState::Running),
        ],
    });
    assert_eq!(c.sessions_on("a1"), 1);
    let s = c
        .state
        .session(alice)
        .expect("alice's session keeps its id");
    assert_eq!(s.state, SessionState::Disconnected);
    assert!(c.state.sessions_of_user("bob").is_empty(), "missing: ended");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::SessionEnded { .. }))
    );
    let refused: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::InventoryRowsRefused { .. }))
        .collect();
    assert!(
        matches!(
            refused[..],
            [Event::InventoryRowsRefused {
                invalid: 2,
                duplicate: 0,
                ..
            }]
        ),
        "{refused:?}"
    );
    assert!(refused.iter().all(|e| !e.is_durable()));
    // An inventory with nothing wrong says nothing about refused rows.
    let events = c.apply(Command::ReportInventory {
        host: "a1".into(),
        sessions: vec![reported("s-1", "alice", ReportedState::Running)],
    });
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::InventoryRowsRefused { .. }))
    );
    // A single session report with an invalid row is still refused (it is the whole message).
    let e = c
        .try_apply(Command::ReportSession {
            host: "a1".into(),
            session: reported("s-4", "eve\nil", ReportedState::Running),
        })
        .unwrap_err();
    assert!(matches!(e, CoreError::Invalid { .. }), "{e}");
}

#[test]
fn ending_sessions_stay_ending_until_gone() {
    let mut c = agent_cluster();
    c.apply(Command::ReportSession {
        host: "a1".into(),
        session: reported("s-1", "alice", ReportedState::Running),
    });
    let id = c.state.sessions_of_user("alice")[0].id;
    c.apply(Command::BeginEnding { id });
    c.apply(Command::ReportSession {
        host: "a1".into(),
        session: reported("s-1", "alice", ReportedState::Running),
    });
    assert_eq!(c.state.session(id).unwrap().state, SessionState::Ending);
    c.apply(Command::ReportSessionGone {
        host: "a1".into(),
        backend_id: "s-1".into(),
    });
    assert!(c.state.session(id).is_none());
}

#[test]
fn end_session_frees_capacity_and_unknown_ids_are_refused() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100]);
    let (id, _) = c.start("alice", "p");
    c.apply(Command::EndSession { id });
    assert_eq!(c.sessions_on("h00"), 0);
    assert!(matches!(
        c.try_apply(Command::EndSession { id }),
        Err(CoreError::IdNotFound { .. })
    ));
}

#[test]
fn removing_a_host_with_sessions_needs_force() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 100]);
    let (_, host) = c.start("alice", "p");
    let e = c
        .try_apply(Command::RemoveHost {
            name: host.clone(),
            force: false,
        })
        .unwrap_err();
    assert!(
        matches!(e, CoreError::HostHasSessions { sessions: 1, .. }),
        "{e}"
    );
    c.apply(Command::RemoveHost {
        name: host.clone(),
        force: true,
    });
    assert!(c.state.host(&host).is_none());
    assert_eq!(c.state.session_count(), 0);
    assert_eq!(c.state.pool("p").unwrap().spec.hosts.len(), 1);
    // The pool keeps placing on what is left.
    c.reserve("bob", "p");
}

#[test]
fn redefining_a_pool_changes_its_policy_and_members() {
    let mut c = Cluster::new();
    let hosts = c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 100, 100]);
    c.define_pool("p", Policy::RoundRobin, &hosts[..2]);
    let v = c.state.pool("p").unwrap();
    assert_eq!(v.spec.policy, Policy::RoundRobin);
    assert_eq!(v.eligible, 2);
    for i in 0..6 {
        assert_ne!(&*c.reserve(&format!("u{i}"), "p").host, "h02");
    }
}

#[test]
fn a_host_may_belong_to_several_pools_and_counts_once() {
    let mut c = Cluster::new();
    let hosts = c.pool_with_weights(Policy::WeightedLeastSessions, &[100, 100]);
    c.define_pool("q", Policy::LeastSessions, &hosts);
    for i in 0..10 {
        c.start(&format!("p{i}"), "p");
        c.start(&format!("q{i}"), "q");
    }
    assert_eq!(c.sessions_on("h00") + c.sessions_on("h01"), 20);
    assert_eq!(c.sessions_on("h00"), 10);
}

#[test]
fn restored_sessions_come_back_whole_and_ids_move_past_them() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100]);
    let rec = SessionRecord {
        id: SessionId(5_000_000_000_000_000),
        user: "alice".into(),
        host: "h00".into(),
        pool: Some("p".into()),
        state: SessionState::Disconnected,
        backend_id: Some("x-1".into()),
        client: Some("127.0.0.9".parse().unwrap()),
        created_at: Millis(10),
        updated_at: Millis(20),
    };
    assert!(c.apply(Command::RestoreSession(rec.clone())).is_empty());
    assert_eq!(c.state.session(rec.id).unwrap(), rec);
    let p = c.reserve("alice", "p");
    assert_eq!(p.id, rec.id, "the restored session is resumed");
    let q = c.reserve("bob", "p");
    assert!(q.id.0 > rec.id.0);
}

#[test]
fn events_say_which_changes_must_be_durable() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100]);
    let p = c.reserve("alice", "p");
    let reserve_events = c.apply(Command::Tick);
    assert!(reserve_events.iter().all(|e| !e.is_durable()));
    let confirm = c.apply(Command::Confirm {
        id: p.id,
        backend_id: None,
        starting: false,
    });
    assert!(confirm.iter().any(Event::is_durable));
    let drain = c.apply(Command::SetAdminState {
        host: "h00".into(),
        state: AdminState::Draining,
    });
    assert!(drain.iter().all(Event::is_durable) && !drain.is_empty());
}

#[test]
fn bad_load_reports_are_refused() {
    let mut c = agent_cluster();
    let mut r = report(0.1, 0.1, 0.9);
    r.load_avg[0] = f64::NAN;
    let e = c
        .try_apply(Command::ReportLoad {
            host: "a1".into(),
            report: r,
        })
        .unwrap_err();
    assert!(e.to_string().contains("load1"), "{e}");
    let mut r = report(0.1, 0.1, 0.9);
    r.mem_available_kib = r.mem_total_kib + 1;
    assert!(
        c.try_apply(Command::ReportLoad {
            host: "a1".into(),
            report: r
        })
        .is_err()
    );
}

#[test]
fn agentless_hosts_refuse_agent_reports() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::WeightedLeastSessions, &[100]);
    assert!(
        c.try_apply(Command::ReportLoad {
            host: "h00".into(),
            report: report(0.1, 0.1, 0.9)
        })
        .is_err()
    );
    assert!(
        c.try_apply(Command::AgentConnected {
            host: "h00".into(),
            report_interval: Duration::from_secs(3)
        })
        .is_err()
    );
}

#[test]
fn commands_serialize_for_logs_and_replay() {
    let c = Command::Reserve {
        user: "alice".into(),
        pool: "p".into(),
        client: None,
    };
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(
        json,
        r#"{"command":"reserve","user":"alice","pool":"p","client":null}"#
    );
    let back: Command = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
}

#[test]
fn credentials_are_issued_only_for_agent_hosts_and_revoked_once() {
    let mut c = Cluster::new();
    c.add_agent_host("x2go1.example.org", 0);
    c.apply(Command::AddHost(host("plain", 1)));
    let hash = "0f".repeat(32);
    let ev = c.apply(Command::IssueCredential {
        host: "x2go1.example.org".into(),
        hash: hash.clone(),
    });
    assert!(matches!(&ev[..], [Event::CredentialIssued { .. }]));
    assert!(ev[0].is_durable());
    assert_eq!(c.state.credential("x2go1.example.org"), Some(hash.as_str()));
    // Tolerant name matching: the agent may call itself by its short name.
    assert_eq!(
        c.state.resolve_host_name("x2go1").as_deref(),
        Some("x2go1.example.org")
    );
    assert_eq!(
        c.state.resolve_host_name("X2GO1.other.domain").as_deref(),
        Some("x2go1.example.org")
    );
    assert_eq!(c.state.resolve_host_name("x2go9"), None);
    // Agentless hosts need none; malformed hashes are refused.
    let e = c
        .try_apply(Command::IssueCredential {
            host: "plain".into(),
            hash: hash.clone(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("without an agent"), "{e}");
    let e = c
        .try_apply(Command::IssueCredential {
            host: "x2go1.example.org".into(),
            hash: "secret".into(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("64 lowercase hex"), "{e}");
    c.apply(Command::RevokeCredential {
        host: "x2go1.example.org".into(),
    });
    assert_eq!(c.state.credential("x2go1.example.org"), None);
    assert!(
        c.try_apply(Command::RevokeCredential {
            host: "x2go1.example.org".into(),
        })
        .is_err()
    );
}

#[test]
fn a_drained_host_goes_offline_when_its_last_reservation_lapses() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::RoundRobin, &[100]);
    let p = c.reserve("alice", "p");
    let drain = c.apply(Command::DrainThenOffline {
        host: "h00".into(),
        by: "ctl root".into(),
    });
    assert!(drain.iter().all(Event::is_durable), "{drain:?}");
    assert!(
        drain.iter().any(
            |e| matches!(e, Event::OfflineWhenEmpty { by: Some(b), .. } if &**b == "ctl root")
        ),
        "{drain:?}"
    );
    assert_eq!(c.state.host("h00").unwrap().admin, AdminState::Draining);
    // Still held by the reservation; when it lapses, a timer empties the host.
    let lapsed = c.advance(Settings::default().reservation_ttl.0 + Duration::from_secs(1));
    assert!(
        lapsed
            .iter()
            .any(|e| matches!(e, Event::ReservationEnded { id, .. } if *id == p.id)),
        "{lapsed:?}"
    );
    assert!(
        lapsed.iter().any(|e| matches!(
            e,
            Event::AdminStateChanged {
                state: AdminState::Offline,
                ..
            }
        )) && lapsed
            .iter()
            .any(|e| matches!(e, Event::Drained { by, .. } if &**by == "ctl root")),
        "{lapsed:?}"
    );
    let h = c.state.host("h00").unwrap();
    assert_eq!((h.admin, h.offline_when_empty), (AdminState::Offline, None));
}

#[test]
fn timers_that_fire_during_a_refused_command_are_handed_out_later() {
    let mut c = Cluster::new();
    c.pool_with_weights(Policy::RoundRobin, &[100]);
    let p = c.reserve("alice", "p");
    c.now = c
        .now
        .after(Settings::default().reservation_ttl.0 + Duration::from_secs(1));
    // The reservation lapses inside a command that is then refused.
    assert!(
        c.try_apply(Command::SetWeight {
            host: "nope".into(),
            weight: 1,
        })
        .is_err()
    );
    let held = c.state.take_held();
    assert!(
        held.iter()
            .any(|e| matches!(e, Event::ReservationEnded { id, .. } if *id == p.id)),
        "{held:?}"
    );
    assert!(c.state.take_held().is_empty(), "handed out once");
    // Held events not taken ride along with the next accepted command.
    c.reserve("bob", "p");
    c.now = c
        .now
        .after(Settings::default().reservation_ttl.0 + Duration::from_secs(1));
    assert!(
        c.try_apply(Command::RemovePool {
            name: "nope".into()
        })
        .is_err()
    );
    let next = c.apply(Command::Tick);
    assert!(
        next.iter()
            .any(|e| matches!(e, Event::ReservationEnded { .. })),
        "{next:?}"
    );
}

#[test]
fn a_revoked_or_replaced_credential_makes_its_host_unplaceable_at_once() {
    let hash = |c: char| c.to_string().repeat(64);
    for replace in [false, true] {
        let mut c = agent_cluster();
        c.apply(Command::IssueCredential {
            host: "a1".into(),
            hash: hash('a'),
        });
        let p = c.reserve("alice", "p");
        c.confirm(p.id);
        let ev = if replace {
            c.apply(Command::IssueCredential {
                host: "a1".into(),
                hash: hash('b'),
            })
        } else {
            c.apply(Command::RevokeCredential { host: "a1".into() })
        };
        assert!(ev[0].is_durable(), "{ev:?}");
        let h = c.state.host("a1").unwrap();
        assert_eq!(
            h.health,
            switchboard_core::Health::Unreachable,
            "replace: {replace}"
        );
        assert_eq!(
            c.state.session(p.id).unwrap().state,
            SessionState::Unknown,
            "its sessions wait for an agent with a valid credential"
        );
        let e = c.try_reserve("bob", "p").unwrap_err();
        assert!(e.to_string().contains("unreachable"), "{e}");
    }
    // Issuing the same credential again (enrolment retried) cuts nothing off.
    let mut c = agent_cluster();
    for _ in 0..2 {
        c.apply(Command::IssueCredential {
            host: "a1".into(),
            hash: hash('a'),
        });
    }
    c.reserve("bob", "p");
}

/// An agent links with the credential it was admitted with; if that credential was revoked or
/// replaced meanwhile, the link is refused by the engine itself and the host stays as the
/// revocation left it (never `up` again on a stale credential).
#[test]
fn an_agent_that_authenticated_with_a_revoked_credential_never_brings_its_host_up() {
    let mut c = Cluster::new();
    c.add_agent_host("h1", 1);
    c.apply(Command::IssueCredential {
        host: "h1".into(),
        hash: "a".repeat(64),
    });
    // Re-enrolled (the old credential replaced) while the old agent's link was being set up.
    c.apply(Command::IssueCredential {
        host: "h1".into(),
        hash: "b".repeat(64),
    });
    let stale = Command::AgentAuthenticated {
        host: "h1".into(),
        report_interval: Duration::from_secs(3),
        credential: "a".repeat(64),
    };
    assert!(c.try_apply(stale).is_err());
    assert_ne!(c.state.host("h1").unwrap().health, Health::Up);
    c.apply(Command::AgentAuthenticated {
        host: "h1".into(),
        report_interval: Duration::from_secs(3),
        credential: "b".repeat(64),
    });
    assert_eq!(c.state.host("h1").unwrap().health, Health::Up);
    // Revoked: no credential at all, so no link comes up.
    c.apply(Command::RevokeCredential { host: "h1".into() });
    let revoked = Command::AgentAuthenticated {
        host: "h1".into(),
        report_interval: Duration::from_secs(3),
        credential: "b".repeat(64),
    };
    assert!(c.try_apply(revoked).is_err());
    assert_ne!(c.state.host("h1").unwrap().health, Health::Up);
}
