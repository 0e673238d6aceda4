//! Agent links as an agent speaks them, frame by frame over real TLS: what the broker does with
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
