//! The agent and the broker over real TLS on loopback: enrolment, reports, liveness, restarts,
//! refused credentials, oversize frames and command round-trips through a real session source
//! (a site `command` source backed by a small shell script).
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchboard_agent::config::AgentConfig;
use switchboard_agent::link::{self, LinkState};
use switchboard_broker::Broker;
use switchboard_broker::agents::CommandError;
use switchboard_proto::agent::{
    Action, AgentMessage, BrokerMessage, Codec, PROTOCOL_VERSION, Secret,
};
use switchboard_testkit::broker::{BrokerBuilder, Host, Pool, TestBroker};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// A site session source: sessions kept as `ID USER STATE` lines in a state file.
const SCRIPT: &str = r#"#!/bin/sh
state="$1"; op="$2"; id="$3"
touch "$state"
case "$op" in
list)
  while read -r i u s; do
    [ -n "$i" ] && printf '{"id":"%s","user":"%s","state":"%s","idle_secs":7}\n' "$i" "$u" "$s"
  done < "$state" ;;
terminate|kill)
  grep -v "^$id " "$state" > "$state.tmp"; mv "$state.tmp" "$state" ;;
disconnect)
  awk -v id="$id" '$1==id {$3="disconnected"} {print}' "$state" > "$state.tmp"; mv "$state.tmp" "$state" ;;
*) echo "unknown operation $op" >&2; exit 2 ;;
esac
"#;

/// A site source whose sessions ignore a graceful terminate: only kill ends them.
const STUBBORN: &str = r#"#!/bin/sh
state="$1"; op="$2"; id="$3"
touch "$state"
case "$op" in
list)
  while read -r i u s; do
    [ -n "$i" ] && printf '{"id":"%s","user":"%s","state":"%s"}\n' "$i" "$u" "$s"
  done < "$state" ;;
terminate) echo "asked $id to leave" ;;
kill)
  grep -v "^$id " "$state" > "$state.tmp"; mv "$state.tmp" "$state" ;;
esac
"#;

const INTERVAL: Duration = Duration::from_millis(500);

struct Harness {
    b: TestBroker,
    agent_port: u16,
}

impl Harness {
    async fn start() -> Harness {
        let b = BrokerBuilder::new()
            .agents()
            .pool(
                Pool::new("desktops")
                    .host(Host::new("h1.example.org", "127.0.0.2:22"))
                    .host(Host::new("h2", "127.0.0.3:22")),
            )
            .start()
            .await;
        std::fs::write(b.path().join("site.sh"), SCRIPT).unwrap();
        std::fs::write(b.path().join("stubborn.sh"), STUBBORN).unwrap();
        Harness {
            agent_port: b.agent_port(),
            b,
        }
    }

    async fn boot(&mut self) {
        self.b.boot().await;
    }

    async fn stop_broker(&mut self) {
        self.b.stop().await;
    }

    fn broker(&self) -> &Broker {
        self.b.broker()
    }

    fn dir(&self) -> &Path {
        self.b.path()
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let r = self
            .b
            .client
            .request(method, format!("{}{path}", self.b.base))
            .bearer_auth(&self.b.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn enroll(&self, host: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/hosts/{host}/credentials"),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["credential"].as_str().unwrap().to_owned()
    }

    fn state_file(&self) -> PathBuf {
        self.dir().join("sessions.state")
    }

    fn set_sessions(&self, lines: &str) {
        std::fs::write(self.state_file(), lines).unwrap();
    }

    /// Starts an agent for h1.example.org with the given site script and waits until it is
    /// linked and the broker has adopted `sessions` sessions.
    async fn linked_agent(
        &self,
        script: &str,
        credential: &str,
        sessions: usize,
    ) -> (CancellationToken, watch::Receiver<LinkState>) {
        let stop = CancellationToken::new();
        let mut state = switchboard_agent::host::spawn(
            self.agent_config_with("h1.example.org", credential, script),
            stop.clone(),
        )
        .unwrap();
        wait_state(&mut state, |s| *s == LinkState::Up).await;
        eventually("sessions adopted", Duration::from_secs(10), || async {
            self.sessions().await.len() == sessions
        })
        .await;
        (stop, state)
    }

    fn agent_config(&self, host: &str, credential: &str) -> AgentConfig {
        self.agent_config_with(host, credential, "site.sh")
    }

    fn agent_config_with(&self, host: &str, credential: &str, script: &str) -> AgentConfig {
        let script = self.dir().join(script).display().to_string();
        let state = self.state_file().display().to_string();
        let source = format!(
            "kind = \"command\"\nlist = [\"/bin/sh\", {script:?}, {state:?}, \"list\"]\n\
             terminate = [\"/bin/sh\", {script:?}, {state:?}, \"terminate\"]\n\
             kill = [\"/bin/sh\", {script:?}, {state:?}, \"kill\"]\n\
             disconnect = [\"/bin/sh\", {script:?}, {state:?}, \"disconnect\"]\n"
        );
        AgentConfig {
            broker: format!("127.0.0.1:{}", self.agent_port),
            server_name: "localhost".into(),
            ca: ca_of(self.dir()),
            credential: credential.to_owned(),
            host: host.to_owned(),
            report_interval: INTERVAL,
            sources: vec![toml::from_str(&source).unwrap()],
        }
    }

    async fn host(&self, name: &str) -> Value {
        let (status, body) = self
            .call(reqwest::Method::GET, &format!("/api/v1/hosts/{name}"))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn sessions(&self) -> Vec<Value> {
        let (status, body) = self.call(reqwest::Method::GET, "/api/v1/sessions").await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().cloned().unwrap_or_default()
    }
}

fn ca_of(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join(switchboard_broker::pki::CA_CERT)
}

/// Polls `check` every 50 ms until it is true or `limit` passes.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}");
}

async fn wait_state(
    rx: &mut watch::Receiver<LinkState>,
    want: fn(&LinkState) -> bool,
) -> LinkState {
    tokio::time::timeout(Duration::from_secs(15), rx.wait_for(want))
        .await
        .expect("link state in time")
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_agent_reports_load_and_sessions_over_tls() {
    let h = Harness::start().await;
    let cred = h.enroll("h1.example.org").await;
    h.set_sessions("x2go-50-1 alice running\nx2go-51-1 bob disconnected\n");
    // The agent calls itself by its short name; the broker matches it tolerantly.
    let stop = CancellationToken::new();
    let mut state =
        switchboard_agent::host::spawn(h.agent_config("h1", &cred), stop.clone()).unwrap();
    wait_state(&mut state, |s| *s == LinkState::Up).await;
    eventually(
        "host up with a load report",
        Duration::from_secs(10),
        || async {
            let host = h.host("h1.example.org").await;
            host["health"] == "up" && host["load"]["cpu_count"].as_u64().unwrap_or(0) >= 1
        },
    )
    .await;
    let host = h.host("h1.example.org").await;
    assert!(
        host["load"]["mem_total_kib"].as_u64().unwrap() > 0,
        "{host}"
    );
    eventually("both sessions adopted", Duration::from_secs(10), || async {
        h.sessions().await.len() == 2
    })
    .await;
    let sessions = h.sessions().await;
    let bob = sessions.iter().find(|s| s["user"] == "bob").unwrap();
    assert_eq!(bob["state"], "disconnected", "{bob}");
    assert_eq!(bob["host"], "h1.example.org");
    // A change on the host reaches the broker without a restart.
    h.set_sessions("x2go-50-1 alice running\n");
    eventually("bob's session ended", Duration::from_secs(10), || async {
        h.sessions().await.len() == 1
    })
    .await;
    // The host that has no agent is still unknown, not up.
    assert_ne!(h.host("h2").await["health"], "up");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_revoked_credentials_are_refused() {
    let mut h = Harness::start().await;
    let cred = h.enroll("h1.example.org").await;
    // Wrong credential: refused with a reason, never up.
    let stop = CancellationToken::new();
    let mut bad = switchboard_agent::host::spawn(
        h.agent_config("h1.example.org", "sba_not-the-right-one"),
        stop.clone(),
    )
    .unwrap();
    let s = wait_state(&mut bad, |s| matches!(s, LinkState::Refused(_))).await;
    assert!(format!("{s:?}").contains("credential rejected"), "{s:?}");
    stop.cancel();
    // A host with no credential at all is told how to get one.
    let stop = CancellationToken::new();
    let mut none =
        switchboard_agent::host::spawn(h.agent_config("h2", &cred), stop.clone()).unwrap();
    let s = wait_state(&mut none, |s| matches!(s, LinkState::Refused(_))).await;
    assert!(format!("{s:?}").contains("enroll"), "{s:?}");
    stop.cancel();
    // The right one connects; revoking drops the link and the agent is refused from then on.
    let stop = CancellationToken::new();
    let mut good =
        switchboard_agent::host::spawn(h.agent_config("h1.example.org", &cred), stop.clone())
            .unwrap();
    wait_state(&mut good, |s| *s == LinkState::Up).await;
    assert!(h.broker().agents.is_connected("h1.example.org"));
    let (status, _) = h
        .call(
            reqwest::Method::DELETE,
            "/api/v1/hosts/h1.example.org/credentials",
        )
        .await;
    assert_eq!(status, 204);
    wait_state(&mut good, |s| matches!(s, LinkState::Refused(_))).await;
    // Revocation is durable.
    h.stop_broker().await;
    h.boot().await;
    let wanted = "h1.example.org";
    let stored = h
        .broker()
        .engine
        .query(move |s| s.credential(wanted).map(str::to_owned))
        .await
        .unwrap();
    assert_eq!(stored, None);
    // The audit log has both actions.
    let (_, audit) = h.call(reqwest::Method::GET, "/api/v1/audit").await;
    let text = audit.to_string();
    assert!(
        text.contains("\"enroll\"") && text.contains("\"revoke\""),
        "{text}"
    );
    assert!(
        !text.contains(&cred),
        "the audit never holds the credential"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_comes_back_after_a_broker_restart() {
    let mut h = Harness::start().await;
    let cred = h.enroll("h1.example.org").await;
    h.set_sessions("x2go-50-1 alice running\n");
    let (stop, mut state) = h.linked_agent("site.sh", &cred, 1).await;
    let before = h.sessions().await[0]["id"].clone();
    h.stop_broker().await;
    wait_state(&mut state, |s| matches!(s, LinkState::Down(_))).await;
    h.boot().await;
    wait_state(&mut state, |s| *s == LinkState::Up).await;
    eventually("host up again", Duration::from_secs(10), || async {
        h.host("h1.example.org").await["health"] == "up"
    })
    .await;
    // The session is the same one (durable), not a new adoption.
    let after = h.sessions().await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["id"], before);
    assert_eq!(after[0]["state"], "running");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_makes_its_host_unreachable_until_it_returns() {
    let h = Harness::start().await;
    let cred = h.enroll("h1.example.org").await;
    h.set_sessions("x2go-50-1 alice running\n");
    let (stop, _state) = h.linked_agent("site.sh", &cred, 1).await;
    stop.cancel();
    // 3 missed intervals of 500 ms.
    eventually("host unreachable", Duration::from_secs(5), || async {
        h.host("h1.example.org").await["health"] == "unreachable"
    })
    .await;
    let s = h.sessions().await;
    assert_eq!(s.len(), 1, "kept, not ended");
    assert_eq!(s[0]["state"], "unknown");
    let r =
        h.b.client
            .post(format!("{}/api/v1/sessions", h.b.base))
            .bearer_auth(&h.b.token)
            .json(&serde_json::json!({"user": "carol", "pool": "desktops"}))
            .send()
            .await
            .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 503, "no placement on an unreachable host: {body}");
    assert!(body.contains("unreachable"), "{body}");
    let stop = CancellationToken::new();
    let mut state =
        switchboard_agent::host::spawn(h.agent_config("h1.example.org", &cred), stop.clone())
            .unwrap();
    wait_state(&mut state, |s| *s == LinkState::Up).await;
    eventually("session running again", Duration::from_secs(10), || async {
        h.sessions()
            .await
            .first()
            .is_some_and(|s| s["state"] == "running")
    })
    .await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_through_the_agent_and_unknown_sessions_are_refused() {
    let h = Harness::start().await;
    let cred = h.enroll("h1.example.org").await;
    h.set_sessions("x2go-50-1 alice running\nx2go-51-1 bob running\n");
    let (stop, _state) = h.linked_agent("site.sh", &cred, 2).await;
    let hub = h.broker().agents.clone();
    // Disconnect through the agent: the source detaches it and the broker hears of it.
    hub.command(
        "h1.example.org",
        Action::Disconnect {
            backend_id: "x2go-51-1".into(),
        },
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    eventually("bob disconnected", Duration::from_secs(10), || async {
        h.sessions()
            .await
            .iter()
            .any(|s| s["user"] == "bob" && s["state"] == "disconnected")
    })
    .await;
    // An unknown session is refused by the agent.
    let e = hub
        .command(
            "h1.example.org",
            Action::Terminate {
                backend_id: "nobody-1".into(),
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CommandError::Failed { message, .. } if message.contains("no session")),
        "{e}"
    );
    // DELETE on the API terminates through the agent; the session ends when it is gone.
    let alice = h
        .sessions()
        .await
        .into_iter()
        .find(|s| s["user"] == "alice")
        .unwrap();
    let id = alice["id"].as_u64().unwrap();
    let (status, body) = h
        .call(reqwest::Method::DELETE, &format!("/api/v1/sessions/{id}"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "ending");
    eventually("alice's session ended", Duration::from_secs(10), || async {
        !h.sessions().await.iter().any(|s| s["user"] == "alice")
    })
    .await;
    assert!(
        !std::fs::read_to_string(h.state_file())
            .unwrap()
            .contains("alice")
    );
    // With the agent gone, the API says so instead of pretending.
    stop.cancel();
    eventually("link gone", Duration::from_secs(5), || async {
        !hub.is_connected("h1.example.org")
    })
    .await;
    let bob = h.sessions().await.into_iter().next().unwrap();
    let id = bob["id"].as_u64().unwrap();
    let (status, body) = h
        .call(reqwest::Method::DELETE, &format!("/api/v1/sessions/{id}"))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "agent_unavailable", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_closes_the_link() {
    let h = Harness::start().await;
    let cred = h.enroll("h1.example.org").await;
    let tls = link::client_tls(&ca_of(h.dir())).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.agent_port))
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(link::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut framed = Framed::new(stream, Codec::<BrokerMessage, AgentMessage>::default());
    framed
        .send(AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            host: "h1.example.org".into(),
            report_interval_ms: 500,
            agent_version: "test".into(),
            credential: Secret(cred),
            capabilities: None,
        })
        .await
        .unwrap();
    let welcome = framed.next().await.unwrap().unwrap();
    assert!(
        matches!(welcome, BrokerMessage::Welcome { .. }),
        "{welcome:?}"
    );
    assert!(h.broker().agents.is_connected("h1.example.org"));
    // A length header announcing 2 MiB: refused from the header alone.
    let stream = framed.get_mut();
    tokio::io::AsyncWriteExt::write_all(stream, &(2u32 << 20).to_be_bytes())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(stream, &[b'{'; 4096])
        .await
        .unwrap();
    eventually(
        "link closed by the broker",
        Duration::from_secs(5),
        || async { !h.broker().agents.is_connected("h1.example.org") },
    )
    .await;
    // The connection is really closed: reading ends (heartbeats aside).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match framed.next().await {
                Some(Ok(BrokerMessage::Heartbeat)) => continue,
                other => return other.is_none() || other.is_some_and(|r| r.is_err()),
            }
        }
    })
    .await
    .unwrap();
    assert!(ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logoff_terminates_then_kills_after_the_grace_period() {
    let h = Harness::start().await;
    let cred = h.enroll("h1.example.org").await;
    h.set_sessions("x2go-50-1 alice running\n");
    let (stop, _state) = h.linked_agent("stubborn.sh", &cred, 1).await;
    let id = h.sessions().await[0]["id"].as_u64().unwrap();
    // The session ignores the terminate; after the grace it is killed and the broker ends it.
    let (status, body) = h
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/sessions/{id}?grace=1"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        std::fs::read_to_string(h.state_file())
            .unwrap()
            .contains("alice"),
        "still there during the grace period"
    );
    eventually(
        "killed after the grace",
        Duration::from_secs(10),
        || async { h.sessions().await.is_empty() },
    )
    .await;
    assert!(
        !std::fs::read_to_string(h.state_file())
            .unwrap()
            .contains("alice")
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_starts_tls_is_closed_after_the_handshake_bound() {
    use tokio::io::AsyncReadExt;
    let h = Harness::start().await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.agent_port))
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    // Nothing sent: the broker closes the connection once the TLS handshake bound passes.
    let n = tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buf))
        .await
        .expect("closed by the broker")
        .unwrap_or(0);
    let took = started.elapsed();
    assert_eq!(n, 0, "nothing but the close");
    assert!(
        took >= switchboard_broker::agents::TLS_TIMEOUT - Duration::from_millis(200)
            && took < switchboard_broker::agents::HELLO_TIMEOUT - Duration::from_secs(2),
        "closed after {took:?}"
    );
}

/// One address holds its share of the unauthenticated places with silent connections: a link
/// over the share from it is dropped after a short wait, while another address completes its
/// TLS handshake at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_unauthenticated_slot() {
    use switchboard_broker::agents::{MAX_UNAUTHENTICATED_PER_SOURCE, SOURCE_WAIT, TLS_TIMEOUT};
    use tokio::io::AsyncReadExt;
    let h = Harness::start().await;
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], h.agent_port));
    let from = |ip: [u8; 4]| {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(std::net::SocketAddr::from((ip, 0))).unwrap();
        s
    };
    let mut silent = Vec::new();
    for _ in 0..MAX_UNAUTHENTICATED_PER_SOURCE {
        silent.push(from([127, 0, 4, 1]).connect(to).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut over = from([127, 0, 4, 1]).connect(to).await.unwrap();
    // Meanwhile another address is served at once.
    let tls = link::client_tls(&ca_of(h.dir())).unwrap();
    let other = from([127, 0, 4, 2]).connect(to).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(1),
        tokio_rustls::TlsConnector::from(tls)
            .connect(link::server_name("localhost").unwrap(), other),
    )
    .await
    .expect("another address is not kept waiting")
    .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), over.read(&mut buf))
        .await
        .expect("dropped")
        .unwrap_or(0);
    let took = started.elapsed();
    assert_eq!(n, 0);
    assert!(
        took >= SOURCE_WAIT - Duration::from_millis(200) && took < TLS_TIMEOUT,
        "dropped after {took:?}, before the silent ones' handshake bound"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_from_one_address_are_slowed_down() {
    let h = Harness::start().await;
    h.enroll("h1.example.org").await;
    let tls = link::client_tls(&ca_of(h.dir())).unwrap();
    // Each refusal from the same address waits twice as long as the one before: 100, 200,
    // 400 ms…
    let mut waits = Vec::new();
    for _ in 0..4 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.agent_port))
            .await
            .unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(link::server_name("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let mut framed = Framed::new(stream, Codec::<BrokerMessage, AgentMessage>::default());
        let started = Instant::now();
        framed
            .send(AgentMessage::Hello {
                version: PROTOCOL_VERSION,
                host: "h1.example.org".into(),
                report_interval_ms: 500,
                agent_version: "test".into(),
                credential: Secret("sba_guess".into()),
                capabilities: None,
            })
            .await
            .unwrap();
        let reply = framed.next().await.unwrap().unwrap();
        assert!(
            matches!(&reply, BrokerMessage::Refused { reason } if reason.contains("credential rejected")),
            "{reply:?}"
        );
        waits.push(started.elapsed());
    }
    assert!(waits[3] >= Duration::from_millis(800), "{waits:?}");
    assert!(waits[3] > waits[0] * 3, "{waits:?}");
}

/// Opens a TLS link to the broker's agent listener and sends `hello` as raw JSON, byte for byte.
async fn raw_link(
    h: &Harness,
    hello: &str,
) -> Framed<
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Codec<BrokerMessage, AgentMessage>,
> {
    let tls = link::client_tls(&ca_of(h.dir())).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.agent_port))
        .await
        .unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(link::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let frame = [&(hello.len() as u32).to_be_bytes()[..], hello.as_bytes()].concat();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &frame)
        .await
        .unwrap();
    Framed::new(stream, Codec::<BrokerMessage, AgentMessage>::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_the_previous_protocol_version_links_reports_and_takes_commands() {
    let h = Harness::start().await;
    let cred = h.enroll("h1.example.org").await;
    // Exactly what an agent of the previous release sends: version 1, no capabilities.
    let hello = format!(
        r#"{{"type":"hello","version":1,"host":"h1.example.org","report_interval_ms":500,"agent_version":"0.1.0","credential":"{cred}"}}"#
    );
    let mut framed = raw_link(&h, &hello).await;
    let welcome = framed.next().await.unwrap().unwrap();
    assert!(
        matches!(welcome, BrokerMessage::Welcome { version: 1, .. }),
        "the link speaks the agent's version: {welcome:?}"
    );
    // Its reports are taken: an inventory makes a session the API lists.
    framed
        .send(AgentMessage::Inventory {
            sessions: vec![switchboard_core::model::ReportedSession {
                backend_id: "v1-session".into(),
                user: "alice".into(),
                state: switchboard_core::model::ReportedState::Running,
                idle_secs: None,
                info: None,
            }],
        })
        .await
        .unwrap();
    eventually(
        "the version-1 agent's session is listed",
        Duration::from_secs(10),
        || async {
            let (_, v) = h
                .call(reqwest::Method::GET, "/api/v1/sessions?user=alice")
                .await;
            v["items"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s["backend_id"] == "v1-session"))
        },
    )
    .await;
    // A message type of a newer agent is ignored, not the end of the link.
    let unknown = br#"{"type":"added_later","x":1}"#;
    let frame = [&(unknown.len() as u32).to_be_bytes()[..], &unknown[..]].concat();
    tokio::io::AsyncWriteExt::write_all(framed.get_mut(), &frame)
        .await
        .unwrap();
    // Commands of its release reach it, and it answers them.
    let hub = h.broker().agents.clone();
    let command = tokio::spawn(async move {
        hub.command(
            "h1.example.org",
            Action::Disconnect {
                backend_id: "v1-session".into(),
            },
            Duration::from_secs(10),
        )
        .await
    });
    let id = loop {
        match framed.next().await.unwrap().unwrap() {
            BrokerMessage::Command { id, action } => {
                assert_eq!(action.capability(), "disconnect");
                break id;
            }
            BrokerMessage::Heartbeat => continue,
            other => panic!("expected the command, got {other:?}"),
        }
    };
    framed
        .send(AgentMessage::CommandResult {
            id,
            ok: true,
            message: "disconnected".into(),
        })
        .await
        .unwrap();
    assert_eq!(command.await.unwrap().unwrap(), "disconnected");
    assert!(h.broker().agents.is_connected("h1.example.org"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_agent_did_not_announce_is_refused_without_being_sent() {
    let h = Harness::start().await;
    let cred = h.enroll("h1.example.org").await;
    let hello = format!(
        r#"{{"type":"hello","version":{PROTOCOL_VERSION},"host":"h1.example.org","report_interval_ms":500,"agent_version":"test","credential":"{cred}","capabilities":["terminate","kill"]}}"#
    );
    let mut framed = raw_link(&h, &hello).await;
    let welcome = framed.next().await.unwrap().unwrap();
    assert!(
        matches!(
            welcome,
            BrokerMessage::Welcome {
                version: PROTOCOL_VERSION,
                ..
            }
        ),
        "{welcome:?}"
    );
    let e = h
        .broker()
        .agents
        .command(
            "h1.example.org",
            Action::Disconnect {
                backend_id: "s".into(),
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CommandError::Unsupported {
                capability: "disconnect",
                ..
            }
        ),
        "{e}"
    );
    // Nothing reached the agent: the next frame (within a heartbeat) is no command.
    if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(700), framed.next()).await {
        assert!(!matches!(m, BrokerMessage::Command { .. }), "{m:?}");
    }
    // One it did announce goes through.
    let hub = h.broker().agents.clone();
    let command = tokio::spawn(async move {
        hub.command(
            "h1.example.org",
            Action::Kill {
                backend_id: "s".into(),
            },
            Duration::from_secs(10),
        )
        .await
    });
    let id = loop {
        match framed.next().await.unwrap().unwrap() {
            BrokerMessage::Command { id, .. } => break id,
            _ => continue,
        }
    };
    framed
        .send(AgentMessage::CommandResult {
            id,
            ok: true,
            message: "killed".into(),
        })
        .await
        .unwrap();
    assert_eq!(command.await.unwrap().unwrap(), "killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_an_unknown_protocol_version_is_refused_with_the_versions_spoken() {
    let h = Harness::start().await;
    let cred = h.enroll("h1.example.org").await;
    let hello = format!(
        r#"{{"type":"hello","version":{},"host":"h1.example.org","report_interval_ms":500,"agent_version":"test","credential":"{cred}"}}"#,
        PROTOCOL_VERSION + 1
    );
    let mut framed = raw_link(&h, &hello).await;
    let reply = framed.next().await.unwrap().unwrap();
    assert!(
        matches!(&reply, BrokerMessage::Refused { reason } if reason.contains("not supported") && reason.contains(&PROTOCOL_VERSION.to_string())),
        "{reply:?}"
    );
}
