//! The link to the broker: TLS with a pinned CA, length-delimited JSON frames, a versioned hello,
//! heartbeats, and reconnection with jittered exponential backoff (capped at 30 s).
//!
//! The link never makes the host wait: load and sessions reach it through `watch` channels, so a
//! newer report replaces one that could not be sent yet, and the link sends whatever is newest
//! when it can. Sessions are sent as a full inventory after each (re)connect and as changes
//! after that, computed against what this link already told the broker, so nothing is lost
//! while the broker is away.

use futures_util::{SinkExt, StreamExt};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::model::{LoadReport, ReportedSession};
use switchboard_proto::agent::{
    Action, AgentMessage, BrokerMessage, CAPABILITIES, Codec, OLDEST_PROTOCOL_VERSION,
    PROTOCOL_VERSION, Secret,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// The sessions on a host, by backend id.
pub type Inventory = BTreeMap<String, ReportedSession>;

/// Longest a connect plus TLS handshake plus welcome may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnect delay.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// More changes than this at once are sent as a full inventory instead.
const MAX_CHANGES: usize = 256;
/// Broker heartbeats missed before the link is considered dead.
const MISSED_BEATS: u32 = 3;

/// Carries out the broker's commands on a host (real sources or a simulation).
pub trait Executor: Send + Sync + 'static {
    /// Does `action`; `Ok` with a message for the log, or `Err` with the reason.
    fn execute(
        &self,
        action: Action,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// What a host publishes for its link.
#[derive(Debug, Clone)]
pub struct Feeds {
    /// Latest load report (`None` until the first sample).
    pub load: watch::Receiver<Option<LoadReport>>,
    /// Current sessions.
    pub sessions: watch::Receiver<Arc<Inventory>>,
    /// Whether every source has listed its sessions once (or the wait for that is over). Until
    /// then no inventory is sent: an empty one would tell the broker that every session on the
    /// host ended. It turns true before a `sessions` change, so that change sends it.
    pub listed: watch::Receiver<bool>,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct LinkParams {
    /// Broker agent listener, `host:port`.
    pub broker: String,
    /// Name checked in the broker's certificate.
    pub server_name: ServerName<'static>,
    /// TLS settings with the pinned CA.
    pub tls: Arc<ClientConfig>,
    /// Host name announced in the hello.
    pub host: String,
    /// The host's credential.
    pub credential: String,
    /// Report interval announced in the hello.
    pub interval: Duration,
    /// Log connection failures at debug level only (simulations with thousands of links).
    pub quiet: bool,
}

/// How a link is doing, for status displays and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected yet, or reconnecting after the given reason.
    Down(String),
    /// Welcome received.
    Up,
    /// The broker refused the hello.
    Refused(String),
}

/// Why the link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The CA file cannot be used.
    #[error("CA certificate {path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The server name is not a valid DNS name or address.
    #[error("server name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
}

/// TLS client settings that trust only the CA certificates in `ca` (PEM).
pub fn client_tls(ca: &Path) -> Result<Arc<ClientConfig>, LinkError> {
    let err = |message: String| LinkError::Ca {
        path: ca.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| err(format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Parses a server name for [`LinkParams`].
pub fn server_name(name: &str) -> Result<ServerName<'static>, LinkError> {
    ServerName::try_from(name.to_owned()).map_err(|_| LinkError::ServerName(name.to_owned()))
}

/// Jittered exponential backoff: each delay is drawn between half and all of a ceiling that
/// doubles from [`BACKOFF_START`] up to [`BACKOFF_CAP`].
#[derive(Debug)]
pub struct Backoff {
    ceiling: Duration,
    rng: ChaCha8Rng,
}

impl Backoff {
    /// A fresh backoff with its own seed.
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            ceiling: BACKOFF_START,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let c = self.ceiling;
        self.ceiling = (c * 2).min(BACKOFF_CAP);
        let half = c / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.next_u64() % nanos.max(1))
    }

    /// Back to the first delay (after a link that worked).
    pub fn reset(&mut self) {
        self.ceiling = BACKOFF_START;
    }
}

enum Ended {
    /// The link worked and then ended.
    Closed(String),
    /// It never came up.
    Failed(String),
    /// The broker refused the hello.
    Refused(String),
    /// Shutdown was requested.
    Shutdown,
}

/// Keeps a link to the broker until `shutdown`, reconnecting as needed.
pub async fn run(
    params: LinkParams,
    feeds: Feeds,
    exec: Arc<dyn Executor>,
    state: watch::Sender<LinkState>,
    shutdown: CancellationToken,
) {
    let seed = params.host.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) ^ u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    let mut backoff = Backoff::new(seed);
    loop {
        let started = Instant::now();
        let ended = once(&params, feeds.clone(), exec.clone(), &state, &shutdown).await;
        let reason = match ended {
            Ended::Shutdown => return,
            Ended::Closed(r) => {
                if started.elapsed() > BACKOFF_CAP {
                    backoff.reset();
                }
                if !params.quiet {
                    tracing::warn!(host = %params.host, reason = %r, "link to the broker lost");
                }
                let _ = state.send(LinkState::Down(r.clone()));
                r
            }
            Ended::Failed(r) => {
                if params.quiet {
                    tracing::debug!(host = %params.host, reason = %r, "cannot reach the broker");
                } else {
                    tracing::warn!(host = %params.host, broker = %params.broker, reason = %r, "cannot reach the broker");
                }
                let _ = state.send(LinkState::Down(r.clone()));
                r
            }
            Ended::Refused(r) => {
                tracing::error!(host = %params.host, reason = %r, "the broker refused this agent");
                let _ = state.send(LinkState::Refused(r.clone()));
                r
            }
        };
        let delay = backoff.next_delay();
        tracing::debug!(host = %params.host, ?delay, reason = %reason, "reconnecting later");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn once(
    p: &LinkParams,
    mut feeds: Feeds,
    exec: Arc<dyn Executor>,
    state: &watch::Sender<LinkState>,
    shutdown: &CancellationToken,
) -> Ended {
    let setup = async {
        let tcp = TcpStream::connect(&p.broker)
            .await
            .map_err(|e| format!("connect to {}: {e}", p.broker))?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(p.tls.clone())
            .connect(p.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", p.broker))?;
        let mut framed = Framed::new(tls, Codec::<BrokerMessage, AgentMessage>::default());
        framed
            .send(AgentMessage::Hello {
                version: PROTOCOL_VERSION,
                host: p.host.clone(),
                report_interval_ms: u64::try_from(p.interval.as_millis()).unwrap_or(u64::MAX),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                credential: Secret(p.credential.clone()),
                capabilities: Some(CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()),
            })
            .await
            .map_err(|e| format!("sending the hello: {e}"))?;
        match framed.next().await {
            Some(Ok(BrokerMessage::Welcome {
                version,
                heartbeat_ms,
            })) => {
                // The broker answers with the version the link speaks: ours, or (a broker of
                // the next release talking to us) never newer than ours.
                if !(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                    return Err(format!(
                        "broker speaks protocol {version}, this agent {OLDEST_PROTOCOL_VERSION}–{PROTOCOL_VERSION}"
                    ));
                }
                Ok(Ok((framed, Duration::from_millis(heartbeat_ms.max(100)))))
            }
            Some(Ok(BrokerMessage::Refused { reason })) => Ok(Err(reason)),
            Some(Ok(other)) => Err(format!("expected a welcome, got {other:?}")),
            Some(Err(e)) => Err(format!("reading the welcome: {e}")),
            None => Err("the broker closed the link during the hello".to_owned()),
        }
    };
    let setup = tokio::select! {
        _ = shutdown.cancelled() => return Ended::Shutdown,
        r = tokio::time::timeout(CONNECT_TIMEOUT, setup) => r,
    };
    let (mut framed, heartbeat) = match setup {
        Err(_) => return Ended::Failed(format!("no welcome within {CONNECT_TIMEOUT:?}")),
        Ok(Err(e)) => return Ended::Failed(e),
        Ok(Ok(Err(reason))) => return Ended::Refused(reason),
        Ok(Ok(Ok(x))) => x,
    };
    tracing::info!(host = %p.host, broker = %p.broker, "connected to the broker");
    let _ = state.send(LinkState::Up);

    // What this link has told the broker (nothing until every source has listed once).
    let mut sent: Option<Arc<Inventory>> = None;
    if *feeds.listed.borrow() {
        let now = feeds.sessions.borrow_and_update().clone();
        let inventory = AgentMessage::Inventory {
            sessions: now.values().cloned().collect(),
        };
        if let Err(e) = framed.send(inventory).await {
            return Ended::Closed(e.to_string());
        }
        sent = Some(now);
    }
    let load = feeds.load.borrow_and_update().clone();
    if let Some(l) = load
        && let Err(e) = framed.send(AgentMessage::Load(l)).await
    {
        return Ended::Closed(e.to_string());
    }

    let (results_tx, mut results) = mpsc::channel::<AgentMessage>(64);
    let mut last_rx = Instant::now();
    let mut last_tx = Instant::now();
    let mut tick = tokio::time::interval(p.interval.min(heartbeat));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut load_open = true;
    let mut sessions_open = true;
    loop {
        let out: Vec<AgentMessage> = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = framed.close().await;
                return Ended::Shutdown;
            }
            r = feeds.load.changed(), if load_open => {
                if r.is_err() {
                    load_open = false;
                    continue;
                }
                match feeds.load.borrow_and_update().clone() {
                    Some(l) => vec![AgentMessage::Load(l)],
                    None => continue,
                }
            }
            r = feeds.sessions.changed(), if sessions_open => {
                if r.is_err() {
                    sessions_open = false;
                    continue;
                }
                let now = feeds.sessions.borrow_and_update().clone();
                let msgs = match &sent {
                    Some(before) => changes(before, &now),
                    None if *feeds.listed.borrow() => vec![AgentMessage::Inventory {
                        sessions: now.values().cloned().collect(),
                    }],
                    None => continue,
                };
                sent = Some(now);
                msgs
            }
            Some(m) = results.recv() => vec![m],
            frame = framed.next() => {
                last_rx = Instant::now();
                match frame {
                    None => return Ended::Closed("the broker closed the link".into()),
                    Some(Err(e)) => return Ended::Closed(e.to_string()),
                    Some(Ok(BrokerMessage::Heartbeat)) => continue,
                    // A message of a newer broker: not for us.
                    Some(Ok(BrokerMessage::Unknown)) => continue,
                    Some(Ok(BrokerMessage::Command { id, action })) => {
                        let exec = exec.clone();
                        let tx = results_tx.clone();
                        let host = p.host.clone();
                        tokio::spawn(async move {
                            let what = format!("{action:?}");
                            let (ok, message) = match exec.execute(action).await {
                                Ok(m) => (true, m),
                                Err(m) => (false, m),
                            };
                            tracing::info!(host = %host, command = %what, ok, message = %message, "broker command");
                            let _ = tx.send(AgentMessage::CommandResult { id, ok, message }).await;
                        });
                        continue;
                    }
                    Some(Ok(BrokerMessage::Refused { reason })) => return Ended::Refused(reason),
                    Some(Ok(BrokerMessage::Welcome { .. })) => {
                        return Ended::Closed("unexpected second welcome".into());
                    }
                }
            }
            _ = tick.tick() => {
                if last_rx.elapsed() > heartbeat * MISSED_BEATS {
                    let _ = framed.close().await;
                    return Ended::Closed(format!("no word from the broker for {:?}", last_rx.elapsed()));
                }
                if last_tx.elapsed() >= p.interval {
                    vec![AgentMessage::Heartbeat]
                } else {
                    continue;
                }
            }
        };
        for m in out {
            if let Err(e) = framed.feed(m).await {
                return Ended::Closed(e.to_string());
            }
        }
        if let Err(e) = framed.flush().await {
            return Ended::Closed(e.to_string());
        }
        last_tx = Instant::now();
    }
}

/// Messages that bring the broker from `before` to `after`: single changes, or one full
/// inventory when there are many. A change of `info` alone is not news (X2Go's line carries the
/// session's age, which changes with every listing); the next real change or inventory carries it.
pub fn changes(before: &Inventory, after: &Inventory) -> Vec<AgentMessage> {
    let same = |a: &ReportedSession, b: &ReportedSession| {
        a.backend_id == b.backend_id
            && a.user == b.user
            && a.state == b.state
            && a.idle_secs == b.idle_secs
    };
    let mut out = Vec::new();
    for (id, s) in after {
        if !before.get(id).is_some_and(|b| same(b, s)) {
            out.push(AgentMessage::SessionChanged(s.clone()));
        }
    }
    for id in before.keys() {
        if !after.contains_key(id) {
            out.push(AgentMessage::SessionGone {
                backend_id: id.clone(),
            });
        }
    }
    if out.len() > MAX_CHANGES {
        return vec![AgentMessage::Inventory {
            sessions: after.values().cloned().collect(),
        }];
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use switchboard_core::model::ReportedState;

    fn s(id: &str, state: ReportedState) -> (String, ReportedSession) {
        (
            id.to_owned(),
            ReportedSession {
                backend_id: id.to_owned(),
                user: "alice".into(),
                state,
                idle_secs: None,
                info: None,
            },
        )
    }

    #[test]
    fn changes_are_diffs_and_many_become_an_inventory() {
        let before: Inventory = [
            s("a", ReportedState::Running),
            s("b", ReportedState::Running),
        ]
        .into_iter()
        .collect();
        let after: Inventory = [
            s("a", ReportedState::Disconnected),
            s("c", ReportedState::Running),
        ]
        .into_iter()
        .collect();
        let m = changes(&before, &after);
        assert_eq!(m.len(), 3);
        assert!(matches!(&m[0], AgentMessage::SessionChanged(x) if x.backend_id == "a"));
        assert!(matches!(&m[1], AgentMessage::SessionChanged(x) if x.backend_id == "c"));
        assert!(matches!(&m[2], AgentMessage::SessionGone { backend_id } if backend_id == "b"));
        assert!(changes(&after, &after).is_empty());
        let many: Inventory = (0..MAX_CHANGES + 1)
            .map(|i| s(&format!("s{i}"), ReportedState::Running))
            .collect();
        let m = changes(&Inventory::new(), &many);
        assert!(
            matches!(&m[..], [AgentMessage::Inventory { sessions }] if sessions.len() == MAX_CHANGES + 1)
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(7);
        let mut ceiling = BACKOFF_START;
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} vs {ceiling:?}");
            ceiling = (ceiling * 2).min(BACKOFF_CAP);
        }
        assert!(b.next_delay() <= BACKOFF_CAP);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_START);
    }
}
