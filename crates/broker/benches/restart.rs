//! How long a broker takes to be ready with 100,000 sessions in its store.
//!
//! `cargo bench -p switchboard-broker --bench restart` fills a fresh SQLite store (and a fresh
//! PostgreSQL database when `SWITCHBOARD_TEST_POSTGRES_URL` is set, as `bench/restart.sh` does)
//! with 100,000 live sessions on 1,000 hosts, then starts a broker on it and times start-up until
//! the API answers `/readyz`. Target: <= 2 s.
#![allow(clippy::unwrap_used)] // a benchmark aborts on any error, by design
#![allow(clippy::disallowed_types)] // std Instant: this measures real processes and sockets, not our timers

use std::time::{Duration, Instant};
use switchboard_broker::Broker;
use switchboard_broker::config::Config;
use switchboard_core::model::{SessionRecord, SessionState};
use switchboard_core::{Event, Millis, SessionId};
use switchboard_store::{SqlStore, Store};
use switchboard_testkit::store::{Kind, fresh_url};
use tokio_util::sync::CancellationToken;

const SESSIONS: u64 = 100_000;
const HOSTS: u64 = 1_000;

async fn run(kind: Kind) {
    let (url, _dir) = fresh_url(kind).await;
    let store = SqlStore::connect(&url).await.unwrap();
    let mut batch = Vec::with_capacity(5_000);
    for i in 0..SESSIONS {
        batch.push(Event::SessionStarted(SessionRecord {
            id: SessionId(i + 1),
            user: format!("user{i:06}").into(),
            host: format!("h{:04}", i % HOSTS).into(),
            pool: Some("desktops".into()),
            state: SessionState::Running,
            backend_id: Some(format!("user{i:06}-50-1763771234_stDXFCE_dp24").into()),
            client: Some("127.0.0.9".parse().unwrap()),
            created_at: Millis(1_000),
            updated_at: Millis(1_000),
        }));
        if batch.len() == 5_000 {
            store.commit(&batch).await.unwrap();
            batch.clear();
        }
    }
    store.close().await;
    let mut text = format!(
        "[store]\nurl = {url:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[[pool]]\nname = \"desktops\"\nagent = false\n"
    );
    for h in 0..HOSTS {
        text.push_str(&format!(
            "[[pool.host]]\nname = \"h{h:04}\"\naddress = \"127.0.{}.{}:22\"\n",
            h / 250,
            h % 250 + 2
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    text.push_str(&format!(
        "[api]\ntokens_file = {:?}\n[management]\nsocket = {:?}\n",
        dir.path().join("tokens").display().to_string(),
        dir.path().join("mgmt.sock").display().to_string()
    ));
    let config = Config::parse(&text, "bench.toml").unwrap();
    let client = switchboard_testkit::http_client();
    let started = Instant::now();
    let broker = Broker::start(config, CancellationToken::new())
        .await
        .unwrap();
    loop {
        if let Ok(r) = client
            .get(format!("http://{}/readyz", broker.http_addr))
            .send()
            .await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    let sessions = broker
        .engine
        .snapshot()
        .sessions_by_state
        .iter()
        .map(|(_, n)| n)
        .sum::<usize>();
    println!(
        "restart ({kind:?}): {sessions} sessions on {HOSTS} hosts, ready in {} ms (target <= 2000 ms)",
        took.as_millis()
    );
    assert_eq!(sessions as u64, SESSIONS);
    broker.stop().await.unwrap();
}

#[tokio::main]
async fn main() {
    run(Kind::Sqlite).await;
    if std::env::var(switchboard_testkit::store::POSTGRES_URL_VAR).is_ok() {
        run(Kind::Postgres).await;
    } else {
        println!(
            "restart (Postgres): skipped, SWITCHBOARD_TEST_POSTGRES_URL is not set (bench/restart.sh sets it)"
        );
    }
}
