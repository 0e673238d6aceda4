//! The agent listener: one TLS link per session host, carrying length-delimited JSON frames.
//!
//! A link starts with the agent's hello (protocol version, host name, report interval and the
//! host's credential). The broker matches the name tolerantly against its configured hosts,
//! checks the credential's SHA-256 against the enrolled one in constant time, answers with a
//! welcome and tells the engine the agent is connected. From then on the agent's load reports,
//! inventories and session changes become engine commands, in the order they arrive, and the
//! broker sends commands ([`AgentHub::command`]) and heartbeats.
//!
//! Liveness: a host whose agent has not been heard from for `stale_after_intervals` of its
//! report intervals (default 3) becomes unreachable: no new placements there, its sessions go
//! `unknown` (kept, not ended) until the agent is back. After a broker start the clock starts
//! at the start, with the default interval, so hosts whose agents never come back are marked too.
//!
//! The hello's protocol version may be this broker's or the one before; the welcome answers with
//! the agent's own, and the capabilities the hello lists (a version-1 agent lists none and has
//! that release's) decide which commands the link carries: [`AgentHub::command`] refuses one the
//! agent did not announce without sending it. Message types of a newer agent are ignored.
//!
//! An empty first inventory on a new link, from a host where the broker knows live sessions, is
//! not applied at once: it is what an agent whose sources all failed at start-up, or an agent of
//! an earlier release that did not wait for its first listing, sends, and applying it would end
//! every session on the host. It is held for `[agents] empty_inventory_grace` (default 60 s;
//! `FirstInventory`), on the link's own task, so nothing the link reports can overtake it.
//! Session changes from the link are applied meanwhile, and a later inventory replaces the held
//! one. If the grace runs out on the same link with nothing newer,
//! the inventory applied is the sessions the link reported since it started (none: every session
//! on the host ends, as the empty inventory said). A link that ends during the grace drops it.
//!
//! Rejected agents (unknown host, wrong or revoked credential, other protocol version) get a
//! `refused` message with the reason, are logged, and are slowed down per source address: each
//! failure from an address doubles the wait before its next refusal, up to 10 s.

use crate::engine::{EngineError, EngineHandle};
use crate::sync::lock;
use futures_util::{SinkExt, StreamExt};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::Command;
use switchboard_core::model::ReportedSession;
use switchboard_proto::agent::{
    Action, AgentMessage, BrokerMessage, Codec, FrameError, MAX_FRAME, MAX_HELLO,
    OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, V1_CAPABILITIES,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Longest the TLS handshake plus the hello may take.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the TLS handshake alone may take: a peer that connects and sends nothing holds an
/// unauthenticated slot this long, not the whole [`HELLO_TIMEOUT`].
pub const TLS_TIMEOUT: Duration = Duration::from_secs(3);
/// Report intervals an agent may announce.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// See [`MIN_INTERVAL`].
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Interval assumed for a host whose agent has not said hello since the broker started.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3);
/// Longest wait before refusing an address that keeps failing.
pub const MAX_PENALTY: Duration = Duration::from_secs(10);
/// Least time between the broker's heartbeats on a link.
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(5);
/// How often liveness is checked.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// Messages queued towards one agent before senders wait.
const OUT_QUEUE: usize = 64;
/// Source addresses remembered for slowing down failures.
const MAX_PENALTY_ENTRIES: usize = 65_536;
/// Links that may be waiting to authenticate at once.
pub const MAX_UNAUTHENTICATED: usize = 4096;
/// Of those, links from one address at once: one peer cannot hold every slot (it would need
/// 16 addresses), and 10,000 agents restarting behind one address still get through.
pub const MAX_UNAUTHENTICATED_PER_SOURCE: usize = 256;
/// How long a link over its address's share waits for a place before it is dropped (shorter
/// than [`TLS_TIMEOUT`]: places held by silent peers are not waited for).
pub const SOURCE_WAIT: Duration = Duration::from_secs(2);
/// How long an empty first inventory from a host with live sessions is held by default.
pub const DEFAULT_EMPTY_INVENTORY_GRACE: Duration = Duration::from_secs(60);
/// Most sessions a link's reports are remembered for until its first inventory is settled.
const MAX_REMEMBERED: usize = 65_536;
/// After a broker start, how long hosts whose agents have not linked yet are given before the
/// silence counts: agents back off up to 30 s between attempts, plus a 10 s connect timeout.
pub const STARTUP_GRACE: Duration = Duration::from_secs(45);

/// Why a command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No live link to that host.
    #[error("the agent on {0} is not connected")]
    NotConnected(String),
    /// The link went away before the agent answered.
    #[error("the link to {0} was lost before the agent answered")]
    Lost(String),
    /// No answer in time.
    #[error("the agent on {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The agent did not announce that it can do this (an older agent).
    #[error(
        "the agent on {host} cannot carry out `{capability}` (it did not announce it; upgrade the agent)"
    )]
    Unsupported {
        /// The host.
        host: String,
        /// What it lacks.
        capability: &'static str,
    },
    /// The agent answered that it could not do it.
    #[error("the agent on {host} refused or failed: {message}")]
    Failed {
        /// The host.
        host: String,
        /// The agent's message.
        message: String,
    },
}

/// Links to agents, shared by the listener, the API and the watchdog. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentHub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: EngineHandle,
    links: Mutex<HashMap<Arc<str>, Link>>,
    penalties: Mutex<HashMap<IpAddr, Penalty>>,
    next_conn: AtomicU64,
    next_command: AtomicU64,
    /// `switchboard_agent_messages_total`, looked up once.
    messages: metrics::Counter,
    /// The clock origin of [`Link::seen`].
    started: Instant,
    /// Links not authenticated yet (TLS handshake, hello, refusal delay).
    unauthenticated: Arc<tokio::sync::Semaphore>,
    /// The same, per source address ([`MAX_UNAUTHENTICATED_PER_SOURCE`] each).
    per_source: Mutex<HashMap<IpAddr, Arc<tokio::sync::Semaphore>>>,
    /// Report intervals of silence after which a host is unreachable (reloadable).
    missed_now: std::sync::atomic::AtomicU32,
    /// How long an empty first inventory is held, in milliseconds (reloadable; 0: not held).
    empty_grace_ms: AtomicU64,
    /// What each host's agent last reported about its sessions beyond their state, by backend
    /// id: X2Go's `SESSION_INFO` line, and idleness for the idle log-off policy.
    infos: Mutex<HashMap<Arc<str>, HashMap<String, Extra>>>,
}

/// A session's `info` line and idle time as last reported.
#[derive(Debug, Clone, Default)]
struct Extra {
    info: Option<String>,
    idle: Option<(u64, Instant)>,
}

/// What [`AgentHub::admit`] found in a hello: host, interval, credential hash, version,
/// capabilities.
type Admitted = (Arc<str>, Duration, String, u32, Arc<[String]>);

/// Most capabilities kept from one hello (the hello's size is capped too).
const MAX_CAPABILITIES: usize = 256;

/// Longest session `info` kept from an agent.
pub const MAX_SESSION_INFO: usize = 1024;

#[derive(Debug)]
struct Link {
    /// The live connection, if any.
    live: Option<LiveLink>,
    /// When the agent was last heard from, in milliseconds since the hub started; written by
    /// the link task without taking the hub's lock.
    seen: Arc<AtomicU64>,
    interval: Duration,
    /// The engine was told the host is unreachable since it was last heard from.
    lost: bool,
}

#[derive(Debug)]
struct LiveLink {
    conn: u64,
    /// What the agent announced it can do.
    capabilities: Arc<[String]>,
    tx: mpsc::Sender<BrokerMessage>,
    close: CancellationToken,
    pending: HashMap<u64, oneshot::Sender<(bool, String)>>,
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    failures: u32,
    last: Instant,
}

/// A new agent credential: `sba_` and 43 base64url characters (256 bits of randomness).
pub fn new_credential() -> Result<String, String> {
    switchboard_auth::secret::random_token("sba_", 32).map_err(|e| e.to_string())
}

impl AgentHub {
    /// A hub whose hosts become unreachable after `missed` silent report intervals.
    pub fn new(engine: EngineHandle, missed: u32) -> AgentHub {
        AgentHub {
            inner: Arc::new(Inner {
                engine,
                links: Mutex::new(HashMap::new()),
                penalties: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
                next_command: AtomicU64::new(1),
                messages: metrics::counter!("switchboard_agent_messages_total"),
                started: Instant::now(),
                unauthenticated: Arc::new(tokio::sync::Semaphore::new(MAX_UNAUTHENTICATED)),
                per_source: Mutex::new(HashMap::new()),
                missed_now: std::sync::atomic::AtomicU32::new(missed.max(1)),
                empty_grace_ms: AtomicU64::new(millis(DEFAULT_EMPTY_INVENTORY_GRACE)),
                infos: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts the liveness clock for hosts that have agents but no link yet (at start-up and
    /// after a reload added hosts).
    pub fn expect(&self, hosts: impl IntoIterator<Item = String>) {
        let now = Instant::now();
        let mut links = lock(&self.inner.links);
        // Agents get STARTUP_GRACE to come back before their silence starts to count.
        let grace = u64::try_from(STARTUP_GRACE.as_millis()).unwrap_or(u64::MAX);
        for h in hosts {
            let seen = Arc::new(AtomicU64::new(self.since_start(now).saturating_add(grace)));
            links.entry(Arc::from(h)).or_insert(Link {
                live: None,
                seen,
                interval: DEFAULT_INTERVAL,
                lost: false,
            });
        }
    }

    /// Changes how many silent report intervals make a host unreachable (after a reload).
    pub fn set_missed(&self, n: u32) {
        self.inner.missed_now.store(n.max(1), Ordering::Relaxed);
    }

    /// Sets how long an empty first inventory from a host with live sessions is held
    /// (`[agents] empty_inventory_grace`; zero applies it at once). Links from then on use it.
    pub fn set_empty_inventory_grace(&self, grace: Duration) {
        self.inner
            .empty_grace_ms
            .store(millis(grace), Ordering::Relaxed);
    }

    fn empty_inventory_grace(&self) -> Duration {
        Duration::from_millis(self.inner.empty_grace_ms.load(Ordering::Relaxed))
    }

    /// The `info` line a host's agent last reported for a session (X2Go: its
    /// `x2golistsessions` line).
    pub fn session_info(&self, host: &str, backend_id: &str) -> Option<String> {
        lock(&self.inner.infos)
            .get(host)
            .and_then(|m| m.get(backend_id))
            .and_then(|e| e.info.clone())
    }

    /// How long a session's user has been idle, where its source reports it: the last reported
    /// idle time plus the time since that report.
    pub fn idle_secs(&self, host: &str, backend_id: &str) -> Option<u64> {
        lock(&self.inner.infos)
            .get(host)
            .and_then(|m| m.get(backend_id))
            .and_then(|e| e.idle)
            .map(|(secs, at)| secs.saturating_add(at.elapsed().as_secs()))
    }

    fn keep_info(&self, host: &Arc<str>, msg: &AgentMessage) {
        let now = Instant::now();
        let extra = |s: &ReportedSession| {
            let info = s
                .info
                .as_ref()
                .filter(|i| i.len() <= MAX_SESSION_INFO && !i.chars().any(char::is_control))
                .cloned();
            let idle = s.idle_secs.map(|i| (i, now));
            (info.is_some() || idle.is_some()).then(|| (s.backend_id.clone(), Extra { info, idle }))
        };
        let mut infos = lock(&self.inner.infos);
        match msg {
            AgentMessage::Inventory { sessions } => {
                let m: HashMap<String, Extra> = sessions.iter().filter_map(extra).collect();
                if m.is_empty() {
                    infos.remove(&**host);
                } else {
                    infos.insert(host.clone(), m);
                }
            }
            AgentMessage::SessionChanged(s) => {
                let m = infos.entry(host.clone()).or_default();
                match extra(s) {
                    Some((id, e)) => {
                        m.insert(id, e);
                    }
                    None => {
                        m.remove(&s.backend_id);
                    }
                }
            }
            AgentMessage::SessionGone { backend_id } => {
                if let Some(m) = infos.get_mut(&**host) {
                    m.remove(backend_id);
                }
            }
            _ => {}
        }
    }

    /// Whether the host's agent has a live link.
    pub fn is_connected(&self, host: &str) -> bool {
        lock(&self.inner.links)
            .get(host)
            .is_some_and(|l| l.live.is_some())
    }

    /// Number of live links.
    pub fn connected(&self) -> usize {
        lock(&self.inner.links)
            .values()
            .filter(|l| l.live.is_some())
            .count()
    }

    /// Closes the host's link (its credential was revoked or replaced). Returns whether there
    /// was one.
    pub fn disconnect(&self, host: &str) -> bool {
        let links = lock(&self.inner.links);
        match links.get(host).and_then(|l| l.live.as_ref()) {
            Some(live) => {
                live.close.cancel();
                true
            }
            None => false,
        }
    }

    /// Sends a command to a host's agent and waits for its result, at most `timeout`.
    pub async fn command(
        &self,
        host: &str,
        action: Action,
        timeout: Duration,
    ) -> Result<String, CommandError> {
        let id = self.inner.next_command.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let tx = {
            let mut links = lock(&self.inner.links);
            let live = links
                .get_mut(host)
                .and_then(|l| l.live.as_mut())
                .ok_or_else(|| CommandError::NotConnected(host.to_owned()))?;
            let capability = action.capability();
            if !live.capabilities.iter().any(|c| c == capability) {
                return Err(CommandError::Unsupported {
                    host: host.to_owned(),
                    capability,
                });
            }
            live.pending.insert(id, reply);
            live.tx.clone()
        };
        let sent = tokio::time::timeout(timeout, tx.send(BrokerMessage::Command { id, action }));
        match sent.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(CommandError::Lost(host.to_owned())),
            Err(_) => {
                self.forget_command(host, id);
                return Err(CommandError::Timeout(host.to_owned(), timeout));
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok((true, message))) => Ok(message),
            Ok(Ok((false, message))) => Err(CommandError::Failed {
                host: host.to_owned(),
                message,
            }),
            Ok(Err(_)) => Err(CommandError::Lost(host.to_owned())),
            Err(_) => {
                self.forget_command(host, id);
                Err(CommandError::Timeout(host.to_owned(), timeout))
            }
        }
    }

    fn forget_command(&self, host: &str, id: u64) {
        if let Some(live) = lock(&self.inner.links)
            .get_mut(host)
            .and_then(|l| l.live.as_mut())
        {
            live.pending.remove(&id);
        }
    }

    /// Accepts agent links on `listener` until `shutdown`.
    pub fn spawn_listener(
        &self,
        listener: TcpListener,
        tls: Arc<ServerConfig>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        let acceptor = TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    a = listener.accept() => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "agent listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let hub = hub.clone();
                let acceptor = acceptor.clone();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    hub.serve(tcp, peer, acceptor, stop).await;
                });
            }
        })
    }

    /// Marks hosts unreachable once their agents have been silent too long, until `shutdown`.
    pub fn spawn_watchdog(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = hub.since_start(Instant::now());
                let lost: Vec<Arc<str>> = {
                    let mut links = lock(&hub.inner.links);
                    let missed = hub.inner.missed_now.load(Ordering::Relaxed);
                    links
                        .iter_mut()
                        .filter(|(_, l)| {
                            let silent = now.saturating_sub(l.seen.load(Ordering::Relaxed));
                            !l.lost && u128::from(silent) > (l.interval * missed).as_millis()
                        })
                        .map(|(h, l)| {
                            l.lost = true;
                            // A link that carries nothing is dead: the agent reconnects.
                            if let Some(live) = &l.live {
                                live.close.cancel();
                            }
                            h.clone()
                        })
                        .collect()
                };
                for host in lost {
                    tracing::warn!(host = %host, "agent silent too long: host unreachable, its sessions unknown");
                    metrics::counter!("switchboard_agent_lost_total").increment(1);
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        let engine = &hub.inner.engine;
                        match engine
                            .apply(Command::AgentLost {
                                host: host.to_string(),
                            })
                            .await
                        {
                            Ok(_) => {
                                // The agent may have come back while this was queued: its
                                // AgentConnected went first, so say it again.
                                let back = lock(&hub.inner.links)
                                    .get(&host)
                                    .filter(|l| l.live.is_some() && !l.lost)
                                    .map(|l| l.interval);
                                if let Some(report_interval) = back {
                                    let _ = engine
                                        .apply(Command::AgentConnected {
                                            host: host.to_string(),
                                            report_interval,
                                        })
                                        .await;
                                }
                            }
                            Err(EngineError::ShuttingDown) => {}
                            Err(e) => {
                                // Try again at the next check.
                                tracing::warn!(host = %host, error = %e, "host not marked unreachable; retrying");
                                if let Some(l) = lock(&hub.inner.links).get_mut(&host) {
                                    l.lost = false;
                                }
                            }
                        }
                    });
                }
            }
        })
    }

    async fn penalise(&self, ip: IpAddr) {
        let delay = {
            let mut p = lock(&self.inner.penalties);
            let now = Instant::now();
            if p.len() >= MAX_PENALTY_ENTRIES {
                p.retain(|_, v| now.duration_since(v.last) < Duration::from_secs(600));
                if p.len() >= MAX_PENALTY_ENTRIES {
                    // Still full of recent failures: forget them all rather than grow.
                    p.clear();
                }
            }
            let e = p.entry(ip).or_insert(Penalty {
                failures: 0,
                last: now,
            });
            if now.duration_since(e.last) > Duration::from_secs(600) {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            let shift = e.failures.saturating_sub(1).min(10);
            (Duration::from_millis(100) * (1u32 << shift)).min(MAX_PENALTY)
        };
        metrics::counter!("switchboard_agent_rejected_total").increment(1);
        tokio::time::sleep(delay).await;
    }

    /// The per-address gate of unauthenticated links (addresses with none in use are
    /// forgotten when the table grows).
    fn source_gate(&self, ip: IpAddr) -> Arc<tokio::sync::Semaphore> {
        let mut m = lock(&self.inner.per_source);
        if m.len() >= MAX_PENALTY_ENTRIES {
            m.retain(|_, g| Arc::strong_count(g) > 1);
        }
        m.entry(ip)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(MAX_UNAUTHENTICATED_PER_SOURCE))
            })
            .clone()
    }

    fn forgive(&self, ip: IpAddr) {
        lock(&self.inner.penalties).remove(&ip);
    }

    async fn serve(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        acceptor: TlsAcceptor,
        shutdown: CancellationToken,
    ) {
        // Links that have not authenticated yet are capped per address (a short wait for a
        // place, then dropped) and in all (dropped at once).
        let gate = self.source_gate(peer.ip());
        let Ok(Ok(from_source)) = tokio::time::timeout(SOURCE_WAIT, gate.acquire_owned()).await
        else {
            metrics::counter!("switchboard_agent_rejected_total").increment(1);
            tracing::debug!(peer = %peer, "agent listener: too many links from this address waiting to authenticate; dropped");
            return;
        };
        let Ok(unauthenticated) = self.inner.unauthenticated.clone().try_acquire_owned() else {
            metrics::counter!("switchboard_agent_rejected_total").increment(1);
            tracing::warn!(peer = %peer, "agent listener: too many links waiting to authenticate; dropped");
            return;
        };
        let _ = tcp.set_nodelay(true);
        let setup = async {
            let tls = tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(tcp))
                .await
                .map_err(|_| format!("no TLS handshake within {TLS_TIMEOUT:?}"))?
                .map_err(|e| format!("TLS: {e}"))?;
            let mut framed = Framed::new(tls, Codec::<AgentMessage, BrokerMessage>::default());
            // Nobody gets a megabyte of our memory before saying who they are.
            framed.codec_mut().set_max_frame(MAX_HELLO);
            match framed.next().await {
                Some(Ok(hello)) => Ok((framed, hello)),
                Some(Err(e)) => Err(format!("bad hello: {e}")),
                None => Err("closed before the hello".to_owned()),
            }
        };
        let (mut framed, hello) = match tokio::time::timeout(HELLO_TIMEOUT, setup).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::info!(peer = %peer, reason = %e, "agent link failed before the hello");
                return;
            }
            Err(_) => {
                tracing::info!(peer = %peer, "agent link: no hello within {HELLO_TIMEOUT:?}");
                return;
            }
        };
        let (host, interval, hash, version, capabilities) = match self.admit(hello).await {
            Ok(x) => x,
            Err(reason) => {
                tracing::warn!(peer = %peer, reason = %reason, "agent refused");
                // The slot is free again before the delay: a refused peer waits on its own
                // socket, not on one of the slots others need to authenticate.
                drop(unauthenticated);
                drop(from_source);
                self.penalise(peer.ip()).await;
                let _ = framed.send(BrokerMessage::Refused { reason }).await;
                let _ = framed.close().await;
                return;
            }
        };
        drop(unauthenticated);
        drop(from_source);
        framed.codec_mut().set_max_frame(MAX_FRAME);
        self.forgive(peer.ip());
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        // The broker's heartbeats only prove it is alive (a restart closes links outright), so
        // they need not come every report interval: with thousands of agents that would double
        // the traffic.
        let heartbeat = interval.max(MIN_HEARTBEAT);
        let close = shutdown.child_token();
        let (tx, mut rx) = mpsc::channel(OUT_QUEUE);
        let seen;
        {
            let mut links = lock(&self.inner.links);
            let link = links.entry(host.clone()).or_insert_with(|| Link {
                live: None,
                seen: Arc::new(AtomicU64::new(0)),
                interval,
                lost: false,
            });
            if let Some(old) = link.live.take() {
                // The newer link wins (the agent restarted, or the old link is half dead).
                old.close.cancel();
            }
            link.live = Some(LiveLink {
                conn,
                capabilities,
                tx,
                close: close.clone(),
                pending: HashMap::new(),
            });
            link.seen
                .store(self.since_start(Instant::now()), Ordering::Relaxed);
            seen = link.seen.clone();
            link.interval = interval;
            link.lost = false;
        }
        if let Err(e) = self
            .inner
            .engine
            .apply(Command::AgentAuthenticated {
                host: host.to_string(),
                report_interval: interval,
                credential: hash.clone(),
            })
            .await
        {
            tracing::warn!(host = %host, error = %e, "agent link not registered");
            let _ = framed
                .send(BrokerMessage::Refused {
                    reason: e.to_string(),
                })
                .await;
            self.unlink(&host, conn);
            return;
        }
        // A revocation or re-enrolment between the check at the hello and the registration is
        // refused by the engine itself (`AgentAuthenticated` checks the credential in the same
        // step); one after it finds the registered link and drops it.
        if framed
            .send(BrokerMessage::Welcome {
                version,
                heartbeat_ms: u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX),
            })
            .await
            .is_err()
        {
            self.unlink(&host, conn);
            return;
        }
        tracing::info!(host = %host, peer = %peer, interval_ms = interval.as_millis() as u64, protocol = version, "agent connected");
        let (mut sink, mut stream) = framed.split();
        // Writer: commands and heartbeats towards the agent.
        let writer_close = close.clone();
        let writer = tokio::spawn(async move {
            let mut beat = tokio::time::interval(heartbeat);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let closed = writer_close.cancelled();
            tokio::pin!(closed);
            loop {
                let msg = tokio::select! {
                    _ = &mut closed => break,
                    m = rx.recv() => match m { Some(m) => m, None => break },
                    _ = beat.tick() => BrokerMessage::Heartbeat,
                };
                if sink.send(msg).await.is_err() {
                    writer_close.cancel();
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let closed = close.cancelled();
        tokio::pin!(closed);
        let mut first = FirstInventory::new(self.empty_inventory_grace());
        let why = loop {
            let held_until = first.held_until();
            let frame = tokio::select! {
                biased;
                _ = &mut closed => break "closed by the broker".to_owned(),
                () = until(held_until) => {
                    // On this link's own task: nothing it reports can overtake the inventory.
                    if let Err(e) = self.grace_over(&host, conn, &mut first).await {
                        break e;
                    }
                    continue;
                }
                f = stream.next() => f,
            };
            match frame {
                None => break "the agent closed the link".to_owned(),
                Some(Err(FrameError::Io(e))) if e.kind() == std::io::ErrorKind::InvalidData => {
                    break format!(
                        "frame over the {} byte limit ({e})",
                        switchboard_proto::agent::MAX_FRAME
                    );
                }
                Some(Err(e)) => break e.to_string(),
                Some(Ok(msg)) => {
                    let received = Instant::now();
                    seen.store(self.since_start(received), Ordering::Relaxed);
                    if let Err(e) = self.handle(&host, conn, msg, received, &mut first).await {
                        break e;
                    }
                }
            }
        };
        close.cancel();
        let _ = writer.await;
        self.unlink(&host, conn);
        tracing::info!(host = %host, peer = %peer, reason = %why, "agent link closed");
    }

    /// Checks a hello; returns the configured host name, the report interval, the hash of the
    /// credential it was admitted with, the protocol version and the capabilities of the link.
    async fn admit(&self, hello: AgentMessage) -> Result<Admitted, String> {
        let AgentMessage::Hello {
            version,
            host,
            report_interval_ms,
            agent_version: _,
            credential,
            capabilities,
        } = hello
        else {
            return Err("the first message must be a hello".into());
        };
        if !switchboard_proto::agent::accepts(version) {
            return Err(format!(
                "protocol version {version} is not supported (this broker speaks {OLDEST_PROTOCOL_VERSION} and {PROTOCOL_VERSION}; upgrade the agent)"
            ));
        }
        let capabilities: Arc<[String]> = match capabilities {
            Some(c) => c.into_iter().take(MAX_CAPABILITIES).collect(),
            None => V1_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        };
        let interval = Duration::from_millis(report_interval_ms);
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err(format!(
                "report interval {report_interval_ms} ms is outside 500–60000 ms"
            ));
        }
        let asked = host.clone();
        let found = self
            .inner
            .engine
            .query(move |s| {
                let name = s.resolve_host_name(&asked)?;
                let agent = s.host(&name).is_some_and(|h| h.spec.agent);
                let hash = s.credential(&name).map(str::to_owned);
                Some((name, agent, hash))
            })
            .await
            .map_err(|e| format!("the broker cannot check credentials now: {e}"))?;
        let Some((name, agent, hash)) = found else {
            return Err(format!(
                "host {host:?} is not in the broker's configuration (or its short name is ambiguous)"
            ));
        };
        if !agent {
            return Err(format!("host {name:?} is configured without an agent"));
        }
        let Some(hash) = hash else {
            return Err(format!(
                "no credential is enrolled for host {name:?}; issue one with `switchboard ctl enroll {name}` or POST /api/v1/hosts/{name}/credentials"
            ));
        };
        if !switchboard_auth::secret::ct_eq(
            crate::tokens::hash(&credential.0).as_bytes(),
            hash.as_bytes(),
        ) {
            return Err(format!("credential rejected for host {name:?}"));
        }
        Ok((name, interval, hash, version, capabilities))
    }

    /// Milliseconds since the hub started (the clock of [`Link::seen`]).
    fn since_start(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.inner.started).as_millis())
            .unwrap_or(u64::MAX)
    }

    fn unlink(&self, host: &str, conn: u64) {
        let mut links = lock(&self.inner.links);
        if let Some(l) = links.get_mut(host)
            && l.live.as_ref().is_some_and(|v| v.conn == conn)
        {
            // Pending commands fail with `Lost` as their senders drop.
            l.live = None;
            // What it said about its sessions (idleness above all) is stale now; the next link
            // brings a fresh inventory.
            lock(&self.inner.infos).remove(host);
        }
    }

    /// Turns one agent message into engine commands. An error ends the link.
    async fn handle(
        &self,
        host: &Arc<str>,
        conn: u64,
        msg: AgentMessage,
        received: Instant,
        first: &mut FirstInventory,
    ) -> Result<(), String> {
        if let AgentMessage::Inventory { sessions } = &msg
            && sessions.is_empty()
            && first.may_hold()
            && self.has_sessions(host).await?
        {
            self.inner.messages.increment(1);
            let grace = first.hold();
            metrics::counter!("switchboard_agent_empty_inventory_held_total", "host" => host.to_string())
                .increment(1);
            tracing::warn!(
                host = %host,
                grace_ms = millis(grace),
                "the agent's first inventory is empty but the host has live sessions: held for \
                 the grace (sessions the agent reports meanwhile are applied)"
            );
            return Ok(());
        }
        if matches!(
            msg,
            AgentMessage::Inventory { .. }
                | AgentMessage::SessionChanged(_)
                | AgentMessage::SessionGone { .. }
        ) {
            self.keep_info(host, &msg);
        }
        let command = match msg {
            AgentMessage::Hello { .. } => return Err("a second hello on one link".into()),
            AgentMessage::Heartbeat => return Ok(()),
            AgentMessage::Unknown => {
                // A newer agent's message this broker does not know: not an error.
                metrics::counter!("switchboard_agent_unknown_messages_total").increment(1);
                tracing::debug!(host = %host, "agent message of an unknown type ignored");
                return Ok(());
            }
            AgentMessage::CommandResult { id, ok, message } => {
                let waiter = lock(&self.inner.links)
                    .get_mut(&**host)
                    .and_then(|l| l.live.as_mut())
                    .filter(|v| v.conn == conn)
                    .and_then(|v| v.pending.remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send((ok, message));
                }
                return Ok(());
            }
            AgentMessage::Load(report) => Command::ReportLoad {
                host: host.to_string(),
                report,
            },
            AgentMessage::Inventory { sessions } => {
                first.settled();
                Command::ReportInventory {
                    host: host.to_string(),
                    sessions,
                }
            }
            AgentMessage::SessionChanged(session) => {
                first.changed(&session);
                Command::ReportSession {
                    host: host.to_string(),
                    session,
                }
            }
            AgentMessage::SessionGone { backend_id } => {
                first.gone(&backend_id);
                Command::ReportSessionGone {
                    host: host.to_string(),
                    backend_id,
                }
            }
        };
        self.inner.messages.increment(1);
        if let Command::ReportLoad { .. } = command {
            self.inner.engine.report(command, received);
            return Ok(());
        }
        self.apply_news(host, conn, command).await
    }

    /// Applies session news of link `conn`. An error ends the link.
    async fn apply_news(&self, host: &str, conn: u64, command: Command) -> Result<(), String> {
        // Session news from a link that a newer one replaced is stale: drop it and end the link.
        let current = lock(&self.inner.links)
            .get(host)
            .and_then(|l| l.live.as_ref())
            .is_some_and(|v| v.conn == conn);
        if !current {
            return Err("replaced by a newer link".into());
        }
        match self.inner.engine.apply(command).await {
            Ok(_) => Ok(()),
            Err(EngineError::ShuttingDown) => Err("the broker is shutting down".into()),
            // Lost session news would leave the broker and the agent disagreeing: end the link,
            // and the agent's reconnect brings a full inventory.
            Err(EngineError::Unavailable(m)) => Err(format!("the store is unavailable: {m}")),
            Err(e) => {
                tracing::warn!(host = %host, error = %e, "agent session report refused");
                Ok(())
            }
        }
    }

    /// Whether the core knows live sessions on `host`.
    async fn has_sessions(&self, host: &Arc<str>) -> Result<bool, String> {
        let name = host.clone();
        match self
            .inner
            .engine
            .query(move |s| s.host(&name).is_some_and(|h| h.sessions > 0))
            .await
        {
            Ok(b) => Ok(b),
            Err(EngineError::ShuttingDown) => Err("the broker is shutting down".into()),
            Err(e) => Err(format!(
                "the broker cannot check the host's sessions now: {e}"
            )),
        }
    }

    /// The grace of a held empty inventory ran out on link `conn` with nothing newer: applies the
    /// sessions the link reported since it started.
    async fn grace_over(
        &self,
        host: &Arc<str>,
        conn: u64,
        first: &mut FirstInventory,
    ) -> Result<(), String> {
        let sessions = first.expire();
        metrics::counter!("switchboard_agent_empty_inventory_expired_total", "host" => host.to_string())
            .increment(1);
        tracing::warn!(
            host = %host,
            sessions = sessions.len(),
            "the grace for the agent's empty first inventory ran out with no newer inventory: \
             applying the sessions it reported since, the others on the host end"
        );
        self.apply_news(
            host,
            conn,
            Command::ReportInventory {
                host: host.to_string(),
                sessions,
            },
        )
        .await
    }
}

/// A link's first inventory, as far as [`AgentHub::handle`] holding an empty one goes.
#[derive(Debug)]
enum FirstInventory {
    /// No inventory yet; the sessions reported so far, by backend id.
    Waiting {
        grace: Duration,
        reported: HashMap<String, ReportedSession>,
    },
    /// An empty inventory is held until `until`; the sessions reported since the link started.
    Held {
        until: Instant,
        reported: HashMap<String, ReportedSession>,
    },
    /// An inventory was applied: everything is applied as it comes.
    Settled,
}

impl FirstInventory {
    fn new(grace: Duration) -> FirstInventory {
        FirstInventory::Waiting {
            grace,
            reported: HashMap::new(),
        }
    }

    /// Whether an empty inventory now would be held: it is the link's first and there is a
    /// grace.
    fn may_hold(&self) -> bool {
        matches!(self, FirstInventory::Waiting { grace, .. } if !grace.is_zero())
    }

    /// Holds it; returns the grace.
    fn hold(&mut self) -> Duration {
        match std::mem::replace(self, FirstInventory::Settled) {
            FirstInventory::Waiting { grace, reported } => {
                *self = FirstInventory::Held {
                    until: Instant::now() + grace,
                    reported,
                };
                grace
            }
            other => {
                *self = other;
                Duration::ZERO
            }
        }
    }

    fn held_until(&self) -> Option<Instant> {
        match self {
            FirstInventory::Held { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// An inventory is applied (it replaces a held one).
    fn settled(&mut self) {
        *self = FirstInventory::Settled;
    }

    /// The held inventory's grace ran out: the sessions to apply instead.
    fn expire(&mut self) -> Vec<ReportedSession> {
        match std::mem::replace(self, FirstInventory::Settled) {
            FirstInventory::Held { reported, .. } | FirstInventory::Waiting { reported, .. } => {
                reported.into_values().collect()
            }
            FirstInventory::Settled => Vec::new(),
        }
    }

    fn changed(&mut self, s: &ReportedSession) {
        if let FirstInventory::Waiting { reported, .. } | FirstInventory::Held { reported, .. } =
            self
            && (reported.len() < MAX_REMEMBERED || reported.contains_key(&s.backend_id))
        {
            reported.insert(s.backend_id.clone(), s.clone());
        }
    }

    fn gone(&mut self, backend_id: &str) {
        if let FirstInventory::Waiting { reported, .. } | FirstInventory::Held { reported, .. } =
            self
        {
            reported.remove(backend_id);
        }
    }
}

/// Waits until `t`, or for ever without one.
async fn until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
