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
    let ready = b
        .client
        .get(format!("{}/readyz", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);

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
        let h = b.ok("GET", &format!("/api/v1/hosts/{host}"), None).await;
        if h["health"] == "up" && h["excluded"].is_null() {
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
