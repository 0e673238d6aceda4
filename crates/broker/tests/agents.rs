//! Agent links as an agent speaks them, frame by frame over real TLS: what the broker does with
//! an empty first inventory (held for a grace when the host has live sessions) and with
//! inventory rows the core refuses (skipped and counted). The metrics these tests read are
//! process-wide; each test uses hosts of its own, so their counters do not mix.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod support;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use switchboard_broker::actions::{Actor, Surface};
use switchboard_core::model::{ReportedSession, ReportedState};
use switchboard_proto::agent::{AgentMessage, BrokerMessage, Codec, PROTOCOL_VERSION, Secret};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

type Link = Framed<TlsStream<TcpStream>, Codec<BrokerMessage, AgentMessage>>;

fn broker(hosts: &[&str]) -> BrokerBuilder {
    let mut pool = Pool::new("desk");
    for (i, h) in hosts.iter().enumerate() {
        pool = pool.host(Host::new(h, &format!("127.0.0.{}:22", 70 + i)));
    }
    BrokerBuilder::new().agents().pool(pool)
}

async fn enroll(b: &TestBroker, host: &str) -> String {
    b.broker()
        .actions
        .enroll(&Actor::new(Surface::Local, "test"), host)
        .await
        .unwrap()
}

/// Links to the broker as `host`'s agent and waits for the welcome.
async fn link(b: &TestBroker, host: &str, credential: &str) -> Link {
    let mut roots = rustls::RootCertStore::empty();
    let ca = b.path().join("tls").join(switchboard_broker::pki::CA_CERT);
    for c in CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", b.agent_port()))
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut framed = Framed::new(stream, Codec::<BrokerMessage, AgentMessage>::default());
    framed
        .send(AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            host: host.into(),
            report_interval_ms: 1000,
            agent_version: "test".into(),
            credential: Secret(credential.into()),
            capabilities: None,
        })
        .await
        .unwrap();
    let welcome = framed.next().await.unwrap().unwrap();
    assert!(
        matches!(welcome, BrokerMessage::Welcome { .. }),
        "{welcome:?}"
    );
    framed
}

fn row(backend: &str, user: &str, state: ReportedState) -> ReportedSession {
    ReportedSession {
        backend_id: backend.into(),
        user: user.into(),
        state,
        idle_secs: None,
        info: None,
    }
}

async fn inventory(link: &mut Link, sessions: Vec<ReportedSession>) {
    link.send(AgentMessage::Inventory { sessions })
        .await
        .unwrap();
}

/// The host's sessions: backend id → (id, state).
async fn sessions(b: &TestBroker, host: &str) -> Vec<(String, u64, String)> {
    let v = b.ok("GET", "/api/v1/sessions", None).await;
    let mut out: Vec<(String, u64, String)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["host"] == host)
        .map(|s| {
            (
                s["backend_id"].as_str().unwrap_or_default().to_owned(),
                s["id"].as_u64().unwrap(),
                s["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn metrics(b: &TestBroker) -> String {
    b.client
        .get(format!("{}/metrics", b.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one metric line (`name{labels}`), if present.
async fn metric(b: &TestBroker, series: &str) -> Option<f64> {
    metrics(b).await.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Polls `check` every 50 ms until it is true or `limit` passes; returns whether it became true.
async fn within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Links `host`, reports alice's running and bob's disconnected session, and returns the
/// credential and the two sessions as the broker lists them.
async fn two_live_sessions(b: &TestBroker, host: &str) -> (String, Vec<(String, u64, String)>) {
    let cred = enroll(b, host).await;
    let mut first = link(b, host, &cred).await;
    inventory(
        &mut first,
        vec![
            row("s-1", "alice", ReportedState::Running),
            row("s-2", "bob", ReportedState::Disconnected),
        ],
    )
    .await;
    assert!(
        within(Duration::from_secs(10), || async {
            sessions(b, host).await.len() == 2
        })
        .await,
        "the first link's sessions are adopted"
    );
    let before = sessions(b, host).await;
    assert_eq!(before[0].2, "running", "{before:?}");
    assert_eq!(before[1].2, "disconnected", "{before:?}");
    // The agent restarts: its old link goes, and the new one starts with an empty inventory.
    drop(first);
    (cred, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_first_inventory_is_held_and_a_later_inventory_replaces_it() {
    let b = broker(&["held-a"]).start().await;
    let (cred, before) = two_live_sessions(&b, "held-a").await;
    let mut second = link(&b, "held-a", &cred).await;
    inventory(&mut second, vec![]).await;
    let series = "switchboard_agent_empty_inventory_held_total{host=\"held-a\"}";
    // Either the broker says it holds the inventory, or (wrongly) the sessions end.
    within(Duration::from_secs(5), || async {
        metric(&b, series).await.is_some() || sessions(&b, "held-a").await != before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sessions(&b, "held-a").await,
        before,
        "an empty first inventory ends nothing during the grace: same ids, same states"
    );
    assert_eq!(metric(&b, series).await, Some(1.0));
    // The agent's real inventory: alice's session only. Bob's ends; alice's keeps its id.
    inventory(
        &mut second,
        vec![row("s-1", "alice", ReportedState::Running)],
    )
    .await;
    assert!(
        within(Duration::from_secs(10), || async {
            sessions(&b, "held-a").await.len() == 1
        })
        .await,
        "the later inventory is applied"
    );
    assert_eq!(sessions(&b, "held-a").await, before[..1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_empty_inventory_is_applied_when_its_grace_runs_out() {
    let b = broker(&["held-b"])
        .set("agents", "empty_inventory_grace = \"1s\"")
        .start()
        .await;
    let (cred, before) = two_live_sessions(&b, "held-b").await;
    let mut second = link(&b, "held-b", &cred).await;
    let sent = Instant::now();
    inventory(&mut second, vec![]).await;
    assert!(
        within(Duration::from_secs(5), || async {
            metric(
                &b,
                "switchboard_agent_empty_inventory_held_total{host=\"held-b\"}",
            )
            .await
            .is_some()
        })
        .await,
        "the inventory is held"
    );
    assert_eq!(sessions(&b, "held-b").await, before, "not during the grace");
    assert!(
        within(Duration::from_secs(10), || async {
            sessions(&b, "held-b").await.is_empty()
        })
        .await,
        "the empty inventory is applied after the grace"
    );
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "not before the grace: {:?}",
        sent.elapsed()
    );
    assert_eq!(
        metric(
            &b,
            "switchboard_agent_empty_inventory_expired_total{host=\"held-b\"}"
        )
        .await,
        Some(1.0)
    );
    // The link goes on as usual.
    second
        .send(AgentMessage::SessionChanged(row(
            "s-3",
            "carol",
            ReportedState::Running,
        )))
        .await
        .unwrap();
    assert!(
        within(Duration::from_secs(10), || async {
            sessions(&b, "held-b").await.len() == 1
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_reported_during_the_grace_survive_its_end() {
    let b = broker(&["held-c"])
        .set("agents", "empty_inventory_grace = \"1s\"")
        .start()
        .await;
    let (cred, before) = two_live_sessions(&b, "held-c").await;
    let mut second = link(&b, "held-c", &cred).await;
    inventory(&mut second, vec![]).await;
    // During the grace: alice's session disconnects, a new one of carol's appears and goes.
    for msg in [
        AgentMessage::SessionChanged(row("s-1", "alice", ReportedState::Disconnected)),
        AgentMessage::SessionChanged(row("s-3", "carol", ReportedState::Running)),
        AgentMessage::SessionGone {
            backend_id: "s-3".into(),
        },
    ] {
        second.send(msg).await.unwrap();
    }
    assert!(
        within(Duration::from_secs(10), || async {
            sessions(&b, "held-c").await.len() == 1
        })
        .await,
        "the grace ends"
    );
    let after = sessions(&b, "held-c").await;
    assert_eq!(
        after,
        [("s-1".to_owned(), before[0].1, "disconnected".to_owned())],
        "alice's session, reported during the grace, keeps its id; bob's ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_first_inventory_from_a_host_without_sessions_is_applied_at_once() {
    let b = broker(&["held-d"]).start().await;
    let cred = enroll(&b, "held-d").await;
    let mut l = link(&b, "held-d", &cred).await;
    inventory(&mut l, vec![]).await;
    // Messages of a link are applied in order: once this session is listed, the inventory
    // before it was handled.
    l.send(AgentMessage::SessionChanged(row(
        "s-1",
        "alice",
        ReportedState::Running,
    )))
    .await
    .unwrap();
    assert!(
        within(Duration::from_secs(10), || async {
            sessions(&b, "held-d").await.len() == 1
        })
        .await
    );
    assert_eq!(
        metric(
            &b,
            "switchboard_agent_empty_inventory_held_total{host=\"held-d\"}"
        )
        .await,
        None,
        "nothing to protect, nothing held"
    );
    // And an empty inventory later on the link is applied as it comes.
    inventory(&mut l, vec![]).await;
    assert!(
        within(Duration::from_secs(10), || async {
            sessions(&b, "held-d").await.is_empty()
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_inventory_rows_are_skipped_and_counted() {
    let b = broker(&["rows-a"]).start().await;
    let cred = enroll(&b, "rows-a").await;
    let mut l = link(&b, "rows-a", &cred).await;
    inventory(
        &mut l,
        vec![
            row("s-1", "alice", ReportedState::Running),
            row("s-2", "bad\tname", ReportedState::Running),
            row("s-1", "bob", ReportedState::Running),
            row("s-3", "carol", ReportedState::Disconnected),
        ],
    )
    .await;
    assert!(
        within(Duration::from_secs(10), || async {
            sessions(&b, "rows-a").await.len() == 2
        })
        .await,
        "the good rows are applied: {:?}",
        sessions(&b, "rows-a").await
    );
    let got: Vec<(String, String)> = sessions(&b, "rows-a")
        .await
        .into_iter()
        .map(|(backend, _, state)| (backend, state))
        .collect();
    assert_eq!(
        got,
        [
            ("s-1".to_owned(), "running".to_owned()),
            ("s-3".to_owned(), "disconnected".to_owned())
        ]
    );
    let v = b.ok("GET", "/api/v1/sessions?user=alice", None).await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
    let counted = within(Duration::from_secs(5), || async {
        metric(
            &b,
            "switchboard_inventory_rows_refused_total{reason=\"invalid\"}",
        )
        .await
            == Some(1.0)
            && metric(
                &b,
                "switchboard_inventory_rows_refused_total{reason=\"duplicate\"}",
            )
            .await
                == Some(1.0)
    })
    .await;
    let text = metrics(&b).await;
    assert!(counted, "{text}");
    assert!(
        b.broker().agents.is_connected("rows-a"),
        "the link stays up"
    );
}
