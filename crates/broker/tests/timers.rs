//! The engine's timers on paused time: reservation expiry, liveness (a host whose reports stop
//! goes stale) and the session policies' clock, checked to the second without waiting for them.
//! The engine runs on `Clock::tokio()` over a store in memory (real I/O would let a paused clock
//! jump ahead); the same behaviour on real stores and agents is covered by the api, agent and
//! durability tests.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::sync::Arc;
use std::time::Duration;
use switchboard_broker::config::Config;
use switchboard_broker::engine::{self, Clock, EngineHandle};
use switchboard_core::model::{LoadReport, ReportedSession, ReportedState};
use switchboard_core::{Command, PlacementOutcome};
use switchboard_testkit::store::Memory;
use tokio::time::{Instant, advance};
use tokio_util::sync::CancellationToken;

async fn engine(tail: &str) -> (EngineHandle, Arc<Memory>, CancellationToken) {
    let text = format!("[store]\nurl = \"sqlite:///unused.db\"\n{tail}");
    let layout = Config::parse(&text, "timers.toml")
        .expect("a valid configuration")
        .cluster;
    let store = Arc::new(Memory::new());
    let stop = CancellationToken::new();
    let (handle, _task) =
        engine::start_with_clock(store.clone(), layout, Clock::tokio(), stop.clone())
            .await
            .expect("the engine starts");
    (handle, store, stop)
}

fn load() -> LoadReport {
    LoadReport {
        load_avg: [0.5, 0.5, 0.5],
        cpu_utilisation: 0.1,
        cpu_count: 4,
        cpu_mhz: 2000.0,
        mem_total_kib: 8 << 20,
        mem_available_kib: 4 << 20,
        psi_cpu_some_avg10: None,
        psi_memory_some_avg10: None,
        skipped_rows: 0,
        session_count: 0,
        users: 0,
    }
}

/// Moves the engine's state to the clock's now. The engine ticks every second by itself, but a
/// query may be answered before the tick that follows a jump of paused time; a command (a tick
/// here) always runs the timers due at its time first.
async fn tick(e: &EngineHandle) {
    e.apply(Command::Tick).await.expect("tick");
}

/// An agent link on `host` reporting every 10 s, and one load report, applied.
async fn agent_reports(e: &EngineHandle, host: &str) {
    e.apply(Command::AgentConnected {
        host: host.into(),
        report_interval: Duration::from_secs(10),
    })
    .await
    .expect("agent connected");
    let h = host.to_owned();
    let last = || {
        let h = h.clone();
        e.query(move |s| s.host(&h).and_then(|v| v.last_report_at))
    };
    let before = last().await.unwrap();
    e.report(
        Command::ReportLoad {
            host: host.into(),
            report: load(),
        },
        Instant::now(),
    );
    // Queued reports are applied every 10 ms, by the engine's own timer: move time on until
    // this one is in (a command sent meanwhile may be served first).
    for _ in 0..100 {
        advance(Duration::from_millis(10)).await;
        if last().await.unwrap() != before {
            return;
        }
    }
    panic!("the load report of {host} was not applied");
}

#[tokio::test(start_paused = true)]
async fn a_reservation_holds_its_place_until_its_ttl_then_lapses() {
    let (e, _store, stop) = engine(
        "[placement]\nreservation_ttl = \"30s\"\n\
         [[pool]]\nname = \"desk\"\nagent = false\n\
         [[pool.host]]\nname = \"h1\"\naddress = \"127.0.0.2:22\"\nmax_sessions = 1\n",
    )
    .await;
    let p = e.place("alice".into(), "desk".into(), None).await.unwrap();
    assert_eq!(p.outcome, PlacementOutcome::Reserved);
    assert!(
        e.place("bob".into(), "desk".into(), None).await.is_err(),
        "the reservation holds the host's one place"
    );
    advance(Duration::from_secs(29)).await;
    tick(&e).await;
    let live = e
        .query(move |s| s.reservation(p.id).is_some())
        .await
        .unwrap();
    assert!(live, "still reserved a second before the TTL");
    advance(Duration::from_secs(2)).await;
    tick(&e).await;
    let live = e
        .query(move |s| s.reservation(p.id).is_some())
        .await
        .unwrap();
    assert!(!live, "lapsed after its TTL");
    let q = e.place("bob".into(), "desk".into(), None).await.unwrap();
    assert_eq!(q.host.as_ref(), "h1", "the place is free again");
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_host_whose_reports_stop_goes_stale_after_its_intervals_and_back_on_the_next() {
    let (e, _store, stop) = engine(
        "[placement]\nstale_after_intervals = 3\n\
         [[pool]]\nname = \"desk\"\n\
         [[pool.host]]\nname = \"h1\"\naddress = \"127.0.0.2:22\"\n",
    )
    .await;
    assert!(
        e.place("u0".into(), "desk".into(), None).await.is_err(),
        "an agent host that never reported takes nothing"
    );
    agent_reports(&e, "h1").await;
    e.place("u1".into(), "desk".into(), None)
        .await
        .expect("placeable once reporting");
    // Three 10 s intervals without a report: still placeable just before, stale just after.
    advance(Duration::from_secs(29)).await;
    e.place("u2".into(), "desk".into(), None)
        .await
        .expect("placeable at 29 s without a report");
    advance(Duration::from_secs(2)).await;
    let err = e.place("u3".into(), "desk".into(), None).await.unwrap_err();
    assert!(err.to_string().contains("stale"), "{err}");
    // One report and it is back.
    agent_reports(&e, "h1").await;
    e.place("u4".into(), "desk".into(), None)
        .await
        .expect("placeable again after a report");
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_disconnected_session_is_due_for_the_policy_at_its_limit_and_not_before() {
    let (e, store, stop) = engine(
        "[[pool]]\nname = \"desk\"\nlogoff_disconnected_after = \"10m\"\n\
         [[pool.host]]\nname = \"h1\"\naddress = \"127.0.0.2:22\"\n",
    )
    .await;
    e.apply(Command::AgentConnected {
        host: "h1".into(),
        report_interval: Duration::from_secs(3600),
    })
    .await
    .unwrap();
    e.apply(Command::ReportInventory {
        host: "h1".into(),
        sessions: vec![ReportedSession {
            backend_id: "b1".into(),
            user: "alice".into(),
            state: ReportedState::Disconnected,
            idle_secs: None,
            info: None,
        }],
    })
    .await
    .unwrap();
    let due = || async {
        tick(&e).await;
        e.query(|s| s.policy_logoffs(|_, _| None).len())
            .await
            .unwrap()
    };
    assert_eq!(due().await, 0);
    advance(Duration::from_secs(9 * 60 + 58)).await;
    assert_eq!(due().await, 0, "disconnected for less than 10 minutes");
    advance(Duration::from_secs(3)).await;
    assert_eq!(due().await, 1, "disconnected for 10 minutes: due");
    // The adopted session is in the store with the engine's (moved) clock.
    let id = e
        .query(|s| s.sessions_of_user("alice")[0].id)
        .await
        .unwrap();
    assert!(store.session(id).is_some(), "adoption was committed");
    stop.cancel();
}
