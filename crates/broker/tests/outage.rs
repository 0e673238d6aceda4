//! A store that goes away: requests that need it fail with 503 and change nothing, the broker
//! reports not ready, and it recovers by itself when the store returns, losing nothing
//! acknowledged. Shown with a real PostgreSQL whose database stops accepting connections.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod support;

use serde_json::json;
use sqlx::Executor;
use std::time::Duration;
use support::*;
use switchboard_testkit::store::{Kind, POSTGRES_URL_VAR};
use tokio::time::Instant;

async fn admin(sql: &str) {
    let base = std::env::var(POSTGRES_URL_VAR).unwrap();
    sqlx::any::install_default_drivers();
    let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
        .await
        .unwrap();
    c.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_gives_503_and_the_broker_recovers_when_it_returns() {
    let b = TestBroker::start(
        Kind::Postgres,
        &pools_toml("desktops", &[("h1", 100), ("h2", 100)]),
    )
    .await;
    let (alice, _) = b.start_session("alice", "desktops").await;

    let db = b.store_url.rsplit('/').next().unwrap().to_owned();
    admin(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false")).await;
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
    ))
    .await;

    let failed = b.call("POST", "/api/v1/hosts/h1/drain", None).await;
    assert_error(&failed, 503, "store_unavailable");
    // While it is away, changes are refused at once (no hanging) and readiness says so.
    let again = b
        .call("PUT", "/api/v1/hosts/h2/weight", Some(json!({"weight": 3})))
        .await;
    assert_eq!(again.0, 503, "{}", again.1);
    let asked = Instant::now();
    let ready = b
        .client
        .get(format!("{}/readyz", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "/readyz answers within its bound while the store is away ({:?})",
        asked.elapsed()
    );

    admin(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, _) = b.call("POST", "/api/v1/hosts/h1/drain", None).await;
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "broker did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The acknowledged session is there; the refused weight change is not.
    let s = b
        .ok("GET", &format!("/api/v1/sessions/{alice}"), None)
        .await;
    assert_eq!(s["state"], "running");
    assert_eq!(b.ok("GET", "/api/v1/hosts/h2", None).await["weight"], 100);
    assert_eq!(
        b.ok("GET", "/api/v1/hosts/h1", None).await["admin"],
        "draining"
    );
    let ready = b
        .client
        .get(format!("{}/readyz", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
}

/// Waits until `host` is `up` and placeable (or fails after `within`).
async fn placeable(b: &TestBroker, host: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, h) = b.call("GET", &format!("/api/v1/hosts/{host}"), None).await;
        if status == 200 && h["health"] == "up" && h["excluded"].is_null() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{host} not placeable after {within:?}: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An agent with a session source that lists nothing (the host reports load only).
async fn quiet_agent(b: &TestBroker, host: &str, interval: Duration) -> AgentGuard {
    let source = "kind = \"command\"\nlist = [\"/bin/true\"]\n".to_owned();
    b.spawn_agent(host, &[source], interval).await
}

/// Another process holds SQLite's write lock for 8 s, beyond the store's 5 s busy timeout: the
/// write that waits for it fails and the broker rebuilds from the store. A linked host whose
/// agent sent nothing but load meanwhile is still `up` and placeable once the store answers (it
/// used to stay `health unknown` until its agent reconnected, which never happens by itself),
/// and a reservation handed out before the failure can still be confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_commit_linked_hosts_stay_placeable_and_reservations_are_kept() {
    let interval = Duration::from_millis(1000);
    let b = BrokerBuilder::new()
        .agents()
        .pool(Pool::new("desktops").host(Host::new("h1", "127.0.0.53:22")))
        .start()
        .await;
    let _agent = quiet_agent(&b, "h1", interval).await;
    placeable(&b, "h1", Duration::from_secs(15)).await;
    let promised = b
        .ok(
            "POST",
            "/api/v1/sessions",
            Some(json!({"user": "alice", "pool": "desktops"})),
        )
        .await;
    assert_eq!(promised["state"], "reserved", "{promised}");
    let promised = promised["id"].as_u64().unwrap();

    // The lock, from another process, as an operator's sqlite3 shell or a backup tool holds it.
    let db = b.store_url.trim_start_matches("sqlite://").to_owned();
    let mut locker = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)\n\
             c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n\
             time.sleep(8); c.execute('ROLLBACK')",
            &db,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(locker.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");

    let failed = b.call("POST", "/api/v1/hosts/h1/drain", None).await;
    assert_error(&failed, 503, "store_unavailable");
    let released = tokio::task::spawn_blocking(move || locker.wait().unwrap())
        .await
        .unwrap();
    assert!(released.success());

    // Within one report interval of the store answering, with no restart of anything.
    let took = placeable(&b, "h1", interval).await;
    let placed = b
        .ok(
            "POST",
            "/api/v1/sessions",
            Some(json!({"user": "bob", "pool": "desktops"})),
        )
        .await;
    assert_eq!(placed["host"], "h1", "{placed}");
    b.ok(
        "POST",
        &format!("/api/v1/sessions/{promised}/confirm"),
        None,
    )
    .await;
    // The refused drain did not happen.
    assert_eq!(
        b.ok("GET", "/api/v1/hosts/h1", None).await["admin"],
        "online"
    );
    eprintln!("h1 placeable {took:?} after the lock was released");
}

/// The PostgreSQL server restarts (a server of this test's own, never the shared one) while
/// operators change weights: changes answered during the restart are refused, none answered
/// "ok" is lost, and within one report interval of the server accepting connections again the
/// linked host is `up` and placeable, with no restart of the broker or the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_under_load_heals_by_itself_and_loses_nothing_acknowledged() {
    let pg = switchboard_testkit::store::PrivatePostgres::start();
    let interval = Duration::from_millis(1000);
    let b = BrokerBuilder::new()
        .store_url(&pg.url)
        .agents()
        .pool(Pool::new("desktops").host(Host::new("h1", "127.0.0.54:22")))
        .start()
        .await;
    let _agent = quiet_agent(&b, "h1", interval).await;
    placeable(&b, "h1", Duration::from_secs(15)).await;

    // Load: weight changes one after another; the last one answered "ok" must be the store's.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (base, token, client, stop) = (
            b.base.clone(),
            b.token.clone(),
            b.client.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let (mut acked, mut refused, mut w) = (None, 0u32, 1u32);
            while !stop.is_cancelled() {
                w = w % 250 + 1;
                let r = client
                    .put(format!("{base}/api/v1/hosts/h1/weight"))
                    .bearer_auth(&token)
                    .json(&json!({"weight": w}))
                    .timeout(Duration::from_secs(40))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => acked = Some(w),
                    _ => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, refused, w)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_again();
    let back = Instant::now();
    let took = placeable(&b, "h1", interval).await;
    // Placements work again too.
    let start = Instant::now();
    loop {
        let (s, v) = b
            .call(
                "POST",
                "/api/v1/sessions",
                Some(json!({"user": "carol", "pool": "desktops"})),
            )
            .await;
        if s == 200 {
            assert_eq!(v["host"], "h1");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{s} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (acked, refused, last_tried) = writer.await.unwrap();
    assert!(refused > 0, "the restart refused some changes");
    let acked = acked.expect("changes were acknowledged");
    // Read back from the store itself, not the broker's memory.
    let store = switchboard_store::SqlStore::connect(&pg.url).await.unwrap();
    let stored = switchboard_store::Store::load(&store)
        .await
        .unwrap()
        .hosts
        .iter()
        .find(|h| h.name == "h1")
        .and_then(|h| h.weight)
        .unwrap();
    store.close().await;
    assert!(
        stored == acked || stored == last_tried,
        "the store has weight {stored}; the last acknowledged was {acked}"
    );
    eprintln!(
        "h1 placeable {took:?} after the server was back ({:?} since), {refused} changes refused",
        back.elapsed()
    );
}
