//! The SQL store on SQLite and on a real PostgreSQL, same tests for both.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use switchboard_core::event::Event;
use switchboard_core::model::{SessionRecord, SessionState};
use switchboard_core::{AdminState, Millis, SessionId};
use switchboard_store::{AuditRecord, SqlStore, Store, StoreError};
use switchboard_testkit::store::{BOTH, fresh};

fn session(id: u64, user: &str, host: &str) -> SessionRecord {
    SessionRecord {
        id: SessionId(id),
        user: user.into(),
        host: host.into(),
        pool: Some("desktops".into()),
        state: SessionState::Running,
        backend_id: Some(format!("{user}-50-1763771234_stDXFCE_dp24").into()),
        client: Some("127.0.0.9".parse().unwrap()),
        created_at: Millis(1_000),
        updated_at: Millis(1_000),
    }
}

#[tokio::test]
async fn sessions_round_trip_and_ended_ones_are_not_loaded() {
    for kind in BOTH {
        let t = fresh(kind).await;
        let s = &t.store;
        s.commit(&[
            Event::SessionStarted(session(1, "alice", "h1")),
            Event::SessionStarted(session(2, "bob", "h2")),
            Event::SessionStarted(session(3, "carol", "h1")),
        ])
        .await
        .unwrap();
        s.commit(&[
            Event::SessionStateChanged {
                id: SessionId(2),
                host: "h2".into(),
                state: SessionState::Disconnected,
                at: Millis(2_000),
            },
            Event::SessionEnded {
                id: SessionId(3),
                host: "h1".into(),
                at: Millis(3_000),
            },
        ])
        .await
        .unwrap();
        let d = s.load().await.unwrap();
        assert_eq!(d.sessions.len(), 2, "{kind:?}");
        assert_eq!(d.sessions[0], session(1, "alice", "h1"), "{kind:?}");
        assert_eq!(d.sessions[1].state, SessionState::Disconnected, "{kind:?}");
        assert_eq!(d.sessions[1].updated_at, Millis(2_000), "{kind:?}");
        let history = s.session_history("carol", 10).await.unwrap();
        assert_eq!(history[0].state, SessionState::Ended, "{kind:?}");
    }
}

#[tokio::test]
async fn admin_state_and_weight_survive_and_removal_forgets_them() {
    for kind in BOTH {
        let t = fresh(kind).await;
        let s = &t.store;
        s.commit(&[
            Event::AdminStateChanged {
                host: "h1".into(),
                state: AdminState::Draining,
            },
            Event::WeightChanged {
                host: "h1".into(),
                weight: 250,
            },
            Event::WeightChanged {
                host: "h2".into(),
                weight: 0,
            },
        ])
        .await
        .unwrap();
        let d = s.load().await.unwrap();
        assert_eq!(d.hosts.len(), 2, "{kind:?}");
        assert_eq!(d.hosts[0].admin, AdminState::Draining);
        assert_eq!(d.hosts[0].weight, Some(250));
        assert_eq!(d.hosts[1].admin, AdminState::Online);
        assert_eq!(d.hosts[1].weight, Some(0));
        s.commit(&[Event::HostRemoved { name: "h1".into() }])
            .await
            .unwrap();
        assert_eq!(s.load().await.unwrap().hosts.len(), 1, "{kind:?}");
    }
}

#[tokio::test]
async fn a_failing_batch_leaves_nothing_behind() {
    for kind in BOTH {
        let t = fresh(kind).await;
        let s = &t.store;
        s.commit(&[Event::SessionStarted(session(1, "alice", "h1"))])
            .await
            .unwrap();
        // The second insert of id 1 fails, so the drain in the same batch must not land either.
        let err = s
            .commit(&[
                Event::AdminStateChanged {
                    host: "h1".into(),
                    state: AdminState::Offline,
                },
                Event::SessionStarted(session(1, "mallory", "h1")),
            ])
            .await;
        assert!(err.is_err(), "{kind:?}");
        let d = s.load().await.unwrap();
        assert!(d.hosts.is_empty(), "{kind:?}: half a batch landed");
        assert_eq!(&*d.sessions[0].user, "alice");
    }
}

#[tokio::test]
async fn data_survives_reopening_the_store() {
    for kind in BOTH {
        let t = fresh(kind).await;
        t.store
            .commit(&[Event::SessionStarted(session(7, "alice", "h1"))])
            .await
            .unwrap();
        t.store.close().await;
        let again = SqlStore::connect(&t.url).await.unwrap();
        assert_eq!(again.load().await.unwrap().sessions.len(), 1, "{kind:?}");
    }
}

#[tokio::test]
async fn audit_records_come_back_newest_first() {
    for kind in BOTH {
        let t = fresh(kind).await;
        for i in 0..5u64 {
            t.store
                .append_audit(&AuditRecord {
                    id: format!("a{i}"),
                    at: Millis(1_000 + i),
                    actor: "admin".into(),
                    surface: "api".into(),
                    action: "drain".into(),
                    target: format!("h{i}"),
                    result: "ok".into(),
                })
                .await
                .unwrap();
        }
        let got = t.store.audit(3, None).await.unwrap();
        let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a4", "a3", "a2"], "{kind:?}");
    }
}

fn record(i: u64, at: u64) -> AuditRecord {
    AuditRecord {
        id: format!("r{i:04}"),
        at: Millis(at),
        actor: "admin".into(),
        surface: "api".into(),
        action: "drain".into(),
        target: format!("h{i}"),
        result: "ok".into(),
    }
}

#[tokio::test]
async fn the_audit_log_pages_on_from_a_cursor() {
    for kind in BOTH {
        let t = fresh(kind).await;
        // Three records share a millisecond: the id orders them within it.
        for (i, at) in [
            (0, 10),
            (1, 20),
            (2, 20),
            (3, 20),
            (4, 30),
            (5, 40),
            (6, 50),
        ] {
            t.store.append_audit(&record(i, at)).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let page = t.store.audit(2, before.as_deref()).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 2);
            before = page.last().map(|r| r.id.clone());
            seen.extend(page.into_iter().map(|r| r.id));
        }
        assert_eq!(
            seen,
            [
                "r0006", "r0005", "r0004", "r0003", "r0002", "r0001", "r0000"
            ],
            "{kind:?}: every record once, newest first"
        );
        assert!(
            t.store.audit(5, Some("gone")).await.unwrap().is_empty(),
            "{kind:?}: an unknown cursor gives nothing, not the first page again"
        );
    }
}

#[tokio::test]
async fn audit_records_past_their_retention_are_deleted_and_no_others() {
    for kind in BOTH {
        let t = fresh(kind).await;
        // More than one delete chunk of old records.
        let old = 12_000u64;
        let batch: Vec<_> = (0..old)
            .map(|i| {
                let s = t.store.clone();
                tokio::spawn(async move { s.append_audit(&record(i, 1_000 + i)).await })
            })
            .collect();
        for b in batch {
            b.await.unwrap().unwrap();
        }
        t.store.append_audit(&record(old, 50_000)).await.unwrap();
        let pruned = t.store.prune_audit(Millis(50_000)).await.unwrap();
        assert_eq!(pruned, old, "{kind:?}");
        let left = t.store.audit(10, None).await.unwrap();
        assert_eq!(left.len(), 1, "{kind:?}");
        assert_eq!(left[0].at, Millis(50_000));
        assert_eq!(t.store.prune_audit(Millis(50_000)).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn volatile_events_are_not_written() {
    for kind in BOTH {
        let t = fresh(kind).await;
        t.store
            .commit(&[Event::LoadReported { host: "h1".into() }])
            .await
            .unwrap();
        let d = t.store.load().await.unwrap();
        assert!(d.hosts.is_empty() && d.sessions.is_empty());
    }
}

#[tokio::test]
async fn unknown_url_schemes_are_refused_with_a_hint() {
    let e = SqlStore::connect("mysql://x").await.unwrap_err();
    assert!(matches!(e, StoreError::BadUrl(_)));
    assert!(e.to_string().contains("sqlite://PATH"), "{e}");
}

#[tokio::test]
async fn large_batches_mixing_new_sessions_and_changes_apply_in_order() {
    for kind in BOTH {
        let t = fresh(kind).await;
        let mut batch = Vec::new();
        for i in 0..450u64 {
            batch.push(Event::SessionStarted(session(
                i + 1,
                &format!("u{i}"),
                "h1",
            )));
        }
        // Changes to sessions started earlier in the same batch, then more new sessions.
        batch.push(Event::SessionEnded {
            id: SessionId(3),
            host: "h1".into(),
            at: Millis(5),
        });
        batch.push(Event::SessionStateChanged {
            id: SessionId(450),
            host: "h1".into(),
            state: SessionState::Disconnected,
            at: Millis(6),
        });
        for i in 450..460u64 {
            batch.push(Event::SessionStarted(session(
                i + 1,
                &format!("u{i}"),
                "h2",
            )));
        }
        t.store.commit(&batch).await.unwrap();
        let d = t.store.load().await.unwrap();
        assert_eq!(d.sessions.len(), 459, "{kind:?}");
        let s450 = d.sessions.iter().find(|s| s.id == SessionId(450)).unwrap();
        assert_eq!(s450.state, SessionState::Disconnected, "{kind:?}");
        assert!(d.sessions.iter().all(|s| s.id != SessionId(3)), "{kind:?}");
        assert_eq!(d.sessions.iter().filter(|s| &*s.host == "h2").count(), 10);
    }
}

#[tokio::test]
async fn credentials_are_replaced_and_revoked_and_only_hashes_are_kept() {
    let h1 = "a".repeat(64);
    let h2 = "b".repeat(64);
    for kind in BOTH {
        let t = fresh(kind).await;
        let s = &t.store;
        s.commit(&[
            Event::CredentialIssued {
                host: "x2go1".into(),
                hash: h1.as_str().into(),
            },
            Event::CredentialIssued {
                host: "x2go2".into(),
                hash: h1.as_str().into(),
            },
        ])
        .await
        .unwrap();
        s.commit(&[Event::CredentialIssued {
            host: "x2go1".into(),
            hash: h2.as_str().into(),
        }])
        .await
        .unwrap();
        let d = s.load().await.unwrap();
        assert_eq!(
            d.credentials,
            vec![("x2go1".into(), h2.clone()), ("x2go2".into(), h1.clone())],
            "{kind:?}"
        );
        s.commit(&[Event::CredentialRevoked {
            host: "x2go2".into(),
        }])
        .await
        .unwrap();
        let d = s.load().await.unwrap();
        assert_eq!(
            d.credentials,
            vec![("x2go1".into(), h2.clone())],
            "{kind:?}"
        );
    }
}
