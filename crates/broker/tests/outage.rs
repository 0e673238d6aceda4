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
