//! Nothing acknowledged is lost: the real `switchboard broker` is SIGKILLed in the middle of a
//! stream of 1,000 mixed mutations, restarted on the same store, and checked. Runs on SQLite and
//! on PostgreSQL.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
#![allow(clippy::disallowed_types)] // std Instant: this measures real processes and sockets, not our timers

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use switchboard_testkit::broker::{BrokerBuilder, Host, Pool};
use switchboard_testkit::store::Kind;

const HOSTS: usize = 8;
const MUTATIONS: usize = 1000;
const KILL_AFTER: usize = 450;

use switchboard_testkit::free_port;
use switchboard_testkit::process::RealBroker;

fn spawn(config: &std::path::Path, port: u16, log: &std::path::Path) -> RealBroker {
    RealBroker::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_switchboard")),
        config,
        port,
        log,
        None,
    )
}

/// One client's mutation and whether the broker acknowledged it.
#[derive(Debug, Clone)]
enum Op {
    /// A confirmed session for `user` (id known once placed).
    Confirm {
        user: String,
        id: Option<u64>,
    },
    Admin(&'static str),
    Weight(u32),
}

async fn call(
    client: &reqwest::Client,
    token: &str,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> Result<Value, ()> {
    let mut req = client
        .request(method, url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(10));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|_| ())?;
    if !resp.status().is_success() {
        return Err(());
    }
    resp.json().await.map_err(|_| ())
}

/// Runs one client's share of the stream against its own host; returns (acknowledged ops, the op
/// in flight when the broker died, if any).
async fn client_stream(
    client: reqwest::Client,
    base: String,
    token: String,
    k: usize,
    acked: Arc<AtomicUsize>,
) -> (Vec<Op>, Option<Op>) {
    let host = format!("h{k}");
    let mut done = Vec::new();
    for i in 0..MUTATIONS / HOSTS {
        // Confirm, drain, reweigh, undrain: the host is online again before the next placement.
        let mut op = match i % 4 {
            0 => Op::Confirm {
                user: format!("c{k}-u{i}"),
                id: None,
            },
            1 => Op::Admin("drain"),
            2 => Op::Weight(((k * 31 + i * 7) % 250) as u32 + 1),
            _ => Op::Admin("undrain"),
        };
        let ok = match &mut op {
            Op::Confirm { user, id } => {
                // The placement targets this client's pool, which holds only its host.
                match call(
                    &client,
                    &token,
                    reqwest::Method::POST,
                    format!("{base}/api/v1/sessions"),
                    Some(json!({"user": user, "pool": format!("p{k}")})),
                )
                .await
                {
                    Ok(p) => {
                        *id = p["id"].as_u64();
                        call(
                            &client,
                            &token,
                            reqwest::Method::POST,
                            format!("{base}/api/v1/sessions/{}/confirm", id.unwrap()),
                            None,
                        )
                        .await
                        .is_ok()
                    }
                    Err(()) => false,
                }
            }
            Op::Admin(action) => call(
                &client,
                &token,
                reqwest::Method::POST,
                format!("{base}/api/v1/hosts/{host}/{action}"),
                None,
            )
            .await
            .is_ok(),
            Op::Weight(w) => call(
                &client,
                &token,
                reqwest::Method::PUT,
                format!("{base}/api/v1/hosts/{host}/weight"),
                Some(json!({"weight": *w})),
            )
            .await
            .is_ok(),
        };
        if !ok {
            return (done, Some(op));
        }
        done.push(op);
        acked.fetch_add(1, Ordering::SeqCst);
    }
    (done, None)
}

async fn kill_mid_stream(kind: Kind) {
    let port = free_port();
    // One pool per client, each with the client's own host, so every host's history has one
    // writer and "the last acknowledged value" is well defined.
    let files = (0..HOSTS)
        .fold(BrokerBuilder::new().store(kind).http_port(port), |b, k| {
            b.pool(Pool::new(&format!("p{k}")).agentless().host(Host::new(
                &format!("h{k}"),
                &format!("127.0.0.{}:22", k + 2),
            )))
        })
        .write()
        .await;
    let (config_path, token) = (files.config_path(), files.token.clone());
    let dir = &files.dir;
    let client = switchboard_testkit::http_client();
    let mut b = spawn(&config_path, port, &dir.path().join("first.log"));
    b.wait_ready(&client).await;

    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for k in 0..HOSTS {
        tasks.push(tokio::spawn(client_stream(
            client.clone(),
            b.base.clone(),
            token.clone(),
            k,
            acked.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "stream too slow: {} acknowledged",
            acked.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    b.child.kill().unwrap(); // SIGKILL
    b.child.wait().unwrap();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let total: usize = results.iter().map(|(d, _)| d.len()).sum();
    assert!(
        (KILL_AFTER..MUTATIONS).contains(&total),
        "{kind:?}: killed after {total}"
    );

    let mut b = spawn(&config_path, port, &dir.path().join("second.log"));
    b.wait_ready(&client).await;
    let get = |path: String| {
        let c = client.clone();
        let t = token.clone();
        async move {
            let r = c.get(path).bearer_auth(t).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let mut known_ids = std::collections::HashSet::new();
    for (k, (done, in_flight)) in results.iter().enumerate() {
        // Every acknowledged confirmation is there, whole.
        for op in done {
            if let Op::Confirm { user, id } = op {
                let id = id.unwrap();
                known_ids.insert(id);
                let (s, v) = get(format!("{}/api/v1/sessions/{id}", b.base)).await;
                assert_eq!(s, 200, "{kind:?}: acknowledged session {id} lost");
                assert_eq!(v["state"], "running");
                assert_eq!(v["user"], user.as_str());
                assert_eq!(v["host"], format!("h{k}"));
            }
        }
        // The operation in flight is there whole or not at all.
        if let Some(Op::Confirm { user, id: Some(id) }) = in_flight {
            let (s, v) = get(format!("{}/api/v1/sessions/{id}", b.base)).await;
            if s == 200 {
                assert_eq!(v["user"], user.as_str());
                assert_eq!(v["state"], "running");
                known_ids.insert(*id);
            }
        }
        // The host shows its last acknowledged admin state and weight, or the one in flight.
        let (_, h) = get(format!("{}/api/v1/hosts/h{k}", b.base)).await;
        let last_admin = done.iter().rev().find_map(|o| match o {
            Op::Admin(a) => Some(*a),
            _ => None,
        });
        let last_weight = done.iter().rev().find_map(|o| match o {
            Op::Weight(w) => Some(*w),
            _ => None,
        });
        let admin_of = |a: &str| if a == "drain" { "draining" } else { "online" };
        let mut admin_ok = vec![last_admin.map_or("online", admin_of)];
        let mut weight_ok = vec![last_weight.unwrap_or(100)];
        match in_flight {
            Some(Op::Admin(a)) => admin_ok.push(admin_of(a)),
            Some(Op::Weight(w)) => weight_ok.push(*w),
            _ => {}
        }
        assert!(
            admin_ok.contains(&h["admin"].as_str().unwrap()),
            "{kind:?} h{k}: {} not in {admin_ok:?}",
            h["admin"]
        );
        assert!(
            weight_ok.contains(&(h["weight"].as_u64().unwrap() as u32)),
            "{kind:?} h{k}: {} not in {weight_ok:?}",
            h["weight"]
        );
    }
    // No session appeared that nobody asked for.
    let (_, all) = get(format!("{}/api/v1/sessions?limit=1000", b.base)).await;
    for s in all["items"].as_array().unwrap() {
        let id = s["id"].as_u64().unwrap();
        assert!(
            known_ids.contains(&id),
            "{kind:?}: session {id} was never acknowledged nor in flight"
        );
    }
    b.child.kill().unwrap();
    b.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_nothing_acknowledged_on_sqlite() {
    kill_mid_stream(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_nothing_acknowledged_on_postgres() {
    kill_mid_stream(Kind::Postgres).await;
}
