//! The one serve loop of the broker's HTTP listeners (plain and HTTPS, the gateway): no
//! connection is held for free.
//!
//! - **Time.** A TLS handshake has [`Limits::tls_timeout`]; the request headers
//!   [`Limits::header_timeout`] from the moment the connection is open (hyper's timer); a
//!   keep-alive connection with no request in flight [`Limits::idle_timeout`]; a request body
//!   [`Limits::body_timeout`] from its first byte of headers to its last of body.
//! - **Count.** Every listener of the process draws from one [`Slots`]: at most
//!   [`Limits::max_connections`] at once, sized below the descriptor limit so that the store,
//!   probes, the agent listener and `ctl` keep descriptors of their own, and at most
//!   [`Limits::per_source`] from one client address (trusted proxies are exempt: many clients
//!   arrive through them). At the global cap a new connection sheds the connection that has
//!   been idle longest (never sent a request, or waits between requests), so half-open
//!   connections cannot lock out a new client; with none idle it is refused.
//! - **Descriptors.** An accept that fails for want of descriptors sheds an idle connection too,
//!   and backs off instead of spinning.
//!
//! - **Proxies.** Addresses in [`Proxies::forwarding`] name their clients in a header (the HTTP
//!   listener's `X-Forwarded-For`) and are exempt from the per-source cap. A connection from an
//!   address in [`Proxies::proxy_protocol`] (the gateway's load balancer) must begin with a
//!   PROXY protocol v2 header, read within [`Limits::header_timeout`] and never a byte further;
//!   its client address then takes the proxy's place everywhere: the slot is taken again under
//!   that address (so the per-source cap applies to it), and handlers see it as the peer. A
//!   `LOCAL` header (the proxy's own health check) keeps the proxy's address.
//!
//! A connection upgraded to a WebSocket leaves this accounting when hyper hands it over (the
//! gateway's relays are authenticated and bounded by their sessions).

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Connections from one client address at once, unless configured: a NATed lab of 200 X2Go
/// clients, each with a keep-alive connection or two, and `wrk -c64` from one address fit.
pub const DEFAULT_PER_SOURCE: usize = 512;
/// Descriptors kept out of the HTTP listeners' reach: the store's connections, probes, agent
/// links, `ctl`, files.
pub const FD_RESERVE: u64 = 256;
/// How long a stopping listener waits for its connections' requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Fewest connections the listeners get, whatever the descriptor limit.
const MIN_CONNECTIONS: u64 = 64;

/// The bounds of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections of every listener sharing the [`Slots`] at once.
    pub max_connections: usize,
    /// Connections from one client address at once (0: no such cap).
    pub per_source: usize,
    /// From the connection's start to its first request's complete headers.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight.
    pub idle_timeout: Duration,
    /// A TLS handshake.
    pub tls_timeout: Duration,
    /// A request's body, read to its end.
    pub body_timeout: Duration,
}

impl Limits {
    /// The defaults for a process whose descriptor limit is `nofile`: every listener together
    /// gets what [`FD_RESERVE`] leaves.
    pub fn for_nofile(nofile: u64) -> Limits {
        let max = nofile.saturating_sub(FD_RESERVE).max(MIN_CONNECTIONS);
        Limits {
            max_connections: usize::try_from(max).unwrap_or(usize::MAX),
            per_source: DEFAULT_PER_SOURCE,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            tls_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(15),
        }
    }
}

/// The process's soft descriptor limit (what it may open now).
pub fn nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// Raises the soft descriptor limit to the hard one (as systemd's default of 1,024 soft and
/// 524,288 hard leaves it), and returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "descriptor limit not raised");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// One connection's state, shared by its task and the [`Slots`].
#[derive(Debug)]
struct Conn {
    source: IpAddr,
    /// Requests in flight (a response body still being sent counts).
    busy: AtomicU32,
    /// When it last became idle (ms since [`Slots`] began), while `busy` is 0.
    idle_since: AtomicU64,
    /// Cancelled to shed it.
    shed: CancellationToken,
}

#[derive(Debug, Default)]
struct Table {
    conns: HashMap<u64, Arc<Conn>>,
    by_source: HashMap<IpAddr, usize>,
    next: u64,
}

/// The connection slots every listener of the process shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Slots {
    limits: Limits,
    table: Arc<Mutex<Table>>,
    epoch: Instant,
}

/// A connection's place in [`Slots`]; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    slots: Slots,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = crate::sync::lock(&self.slots.table);
        // A shed connection left the table when it was shed.
        if t.conns.remove(&self.id).is_none() {
            return;
        }
        if let Some(n) = t.by_source.get_mut(&self.conn.source) {
            *n -= 1;
            if *n == 0 {
                t.by_source.remove(&self.conn.source);
            }
        }
    }
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address has [`Limits::per_source`] connections already.
    PerSource,
    /// Every slot is taken and none is idle.
    Full,
}

impl Slots {
    /// Slots within `limits`.
    pub fn new(limits: Limits) -> Slots {
        Slots {
            limits,
            table: Arc::new(Mutex::new(Table::default())),
            epoch: Instant::now(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        crate::sync::lock(&self.table).conns.len()
    }

    /// A slot for a connection from `source` (`exempt`: a trusted proxy, no per-source cap).
    pub fn admit(&self, source: IpAddr, exempt: bool) -> Result<Slot, Refused> {
        let mut t = crate::sync::lock(&self.table);
        let from_source = t.by_source.get(&source).copied().unwrap_or(0);
        if !exempt && self.limits.per_source > 0 && from_source >= self.limits.per_source {
            return Err(Refused::PerSource);
        }
        if t.conns.len() >= self.limits.max_connections && !shed_idlest(&mut t) {
            return Err(Refused::Full);
        }
        let id = t.next;
        t.next += 1;
        let conn = Arc::new(Conn {
            source,
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            shed: CancellationToken::new(),
        });
        t.conns.insert(id, conn.clone());
        *t.by_source.entry(source).or_insert(0) += 1;
        drop(t);
        Ok(Slot {
            slots: self.clone(),
            id,
            conn,
        })
    }

    /// Sheds the connection idle longest (to free a descriptor); false if none is idle.
    pub fn shed_one(&self) -> bool {
        shed_idlest(&mut crate::sync::lock(&self.table))
    }
}

/// Sheds the idle connection that has been idle longest and takes it out of the table at once
/// (its task closes it). False if no connection is idle.
fn shed_idlest(t: &mut Table) -> bool {
    let idlest = t
        .conns
        .iter()
        .filter(|(_, c)| c.busy.load(Ordering::Relaxed) == 0 && !c.shed.is_cancelled())
        .min_by_key(|(_, c)| c.idle_since.load(Ordering::Relaxed))
        .map(|(id, _)| *id);
    let Some(id) = idlest else {
        return false;
    };
    if let Some(c) = t.conns.remove(&id) {
        c.shed.cancel();
        if let Some(n) = t.by_source.get_mut(&c.source) {
            *n -= 1;
            if *n == 0 {
                t.by_source.remove(&c.source);
            }
        }
        metrics::counter!("switchboard_http_connections_shed_total").increment(1);
    }
    true
}

/// Marks a request in flight until dropped (with the response body it rides on).
#[derive(Debug)]
struct Busy {
    conn: Arc<Conn>,
    slots: Slots,
}

impl Busy {
    fn new(conn: Arc<Conn>, slots: Slots) -> Busy {
        conn.busy.fetch_add(1, Ordering::Relaxed);
        Busy { conn, slots }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.slots.now_ms(), Ordering::Relaxed);
        self.conn.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request [`Busy`] until it is sent or dropped.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails once its deadline has passed (a client that trickles its body).
struct Deadline {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for Deadline {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(f) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(f.map(|r| r.map_err(axum::Error::new)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            metrics::counter!("switchboard_http_slow_bodies_total").increment(1);
            return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body not received in time",
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The proxies a listener trusts, by how they name their clients.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    /// Proxies that name the client in a request header (`X-Forwarded-For`): exempt from the
    /// per-source cap, since many clients arrive through them.
    pub forwarding: Arc<Vec<IpAddr>>,
    /// Proxies whose connections begin with a PROXY protocol v2 header (required from them).
    pub proxy_protocol: Arc<Vec<IpAddr>>,
}

/// Serves `router` on `listener` (HTTPS with `tls`) within `slots` until `shutdown`; then the
/// connections in flight finish. `proxies` are the trusted proxies (see the module's
/// documentation). `name` names the listener in logs and metrics.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<ServerConfig>>,
    slots: Slots,
    proxies: Proxies,
    name: &'static str,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut last_warning: Option<Instant> = None;
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors (or the like): free one and back off, not spin.
                    let shed = slots.shed_one();
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(listener = name, error = %e, shed, "accept failed");
                        last_warning = Some(Instant::now());
                    }
                    metrics::counter!("switchboard_http_accept_errors_total", "listener" => name).increment(1);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let source = canonical(peer.ip());
        let proxied = proxies.proxy_protocol.contains(&source);
        let exempt = proxied || proxies.forwarding.contains(&source);
        let slot = match slots.admit(source, exempt) {
            Ok(s) => s,
            Err(why) => {
                refused(name, peer, why);
                continue;
            }
        };
        // Small writes (events, relayed frames) must not wait for delayed ACKs.
        let _ = tcp.set_nodelay(true);
        tasks.spawn(connection(
            tcp,
            peer,
            proxied.then_some(name),
            acceptor.clone(),
            router.clone(),
            slot,
            shutdown.clone(),
        ));
    }
    tasks.close();
    // Requests in flight are answered; a stream that outlives this is cut.
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::debug!(
            listener = name,
            "connections still open at shutdown were closed"
        );
    }
    Ok(())
}

fn refused(name: &'static str, peer: SocketAddr, why: Refused) {
    let reason = match why {
        Refused::PerSource => "per_source",
        Refused::Full => "full",
    };
    metrics::counter!("switchboard_http_connections_refused_total", "listener" => name, "reason" => reason).increment(1);
    tracing::debug!(listener = name, %peer, reason, "connection refused");
}

/// Reads a PROXY protocol v2 header, exactly its bytes: the 16 fixed ones, then the length they
/// declare. The client's address, or `None` for `LOCAL` (and families without one).
async fn read_proxy_header(tcp: &mut tokio::net::TcpStream) -> Result<Option<SocketAddr>, String> {
    use switchboard_proto::proxy::{MAX_HEADER, Parsed, parse};
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; MAX_HEADER];
    let mut have = 0;
    let mut want = 16;
    loop {
        let n = tcp
            .read(&mut buf[have..want])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the end of the PROXY header".into());
        }
        have += n;
        match parse(&buf[..have]).map_err(|e| e.to_string())? {
            Parsed::Header { source, .. } => {
                return Ok(source.map(|s| SocketAddr::new(canonical(s.ip()), s.port())));
            }
            Parsed::Incomplete if have < want => {}
            Parsed::Incomplete => {
                // The fixed part is in: it says how long the rest is (checked by `parse`).
                want = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
                if want <= have || want > MAX_HEADER {
                    return Err("bad PROXY header length".into());
                }
            }
        }
    }
}

/// An IPv4 client seen through an IPv6 socket is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Serves one connection. `proxied` (the listener's name) when it comes from a proxy that must
/// send a PROXY protocol v2 header first.
async fn connection(
    mut tcp: tokio::net::TcpStream,
    mut peer: SocketAddr,
    proxied: Option<&'static str>,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    mut slot: Slot,
    shutdown: CancellationToken,
) {
    let limits = slot.slots.limits;
    if let Some(name) = proxied {
        let header = tokio::select! {
            _ = slot.conn.shed.cancelled() => return,
            r = tokio::time::timeout(limits.header_timeout, read_proxy_header(&mut tcp)) => r,
        };
        match header {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(client))) => {
                // The client takes the proxy's place, per-source cap included.
                let slots = slot.slots.clone();
                drop(slot);
                slot = match slots.admit(client.ip(), false) {
                    Ok(s) => s,
                    Err(why) => return refused(name, client, why),
                };
                peer = client;
            }
            Ok(Err(e)) => {
                metrics::counter!("switchboard_http_proxy_header_errors_total", "listener" => name)
                    .increment(1);
                tracing::debug!(listener = name, %peer, error = %e, "connection from a trusted proxy without a valid PROXY v2 header");
                return;
            }
            Err(_) => {
                metrics::counter!("switchboard_http_proxy_header_errors_total", "listener" => name)
                    .increment(1);
                tracing::debug!(listener = name, %peer, "no PROXY v2 header in time");
                return;
            }
        }
    }
    let shed = slot.conn.shed.clone();
    match acceptor {
        None => run(TokioIo::new(tcp), peer, router, &slot, shutdown).await,
        Some(acceptor) => {
            let stream = tokio::select! {
                _ = shed.cancelled() => return,
                r = tokio::time::timeout(limits.tls_timeout, acceptor.accept(tcp)) => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics::counter!("switchboard_http_slow_handshakes_total").increment(1);
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            run(TokioIo::new(stream), peer, router, &slot, shutdown).await;
        }
    }
}

async fn run<I>(io: I, peer: SocketAddr, router: Router, slot: &Slot, shutdown: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let limits = slot.slots.limits;
    let conn = slot.conn.clone();
    let slots = slot.slots.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let busy = Busy::new(conn.clone(), slots.clone());
            req.extensions_mut().insert(ConnectInfo(peer));
            let req = req.map(|inner| {
                Body::new(Deadline {
                    inner,
                    deadline: Box::pin(tokio::time::sleep(limits.body_timeout)),
                })
            });
            let router = router.clone();
            async move {
                let resp = router.oneshot(req).await?;
                Ok::<_, std::convert::Infallible>(
                    resp.map(|inner| Body::new(Tracked { inner, _busy: busy })),
                )
            }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let shed = slot.conn.shed.clone();
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = shed.cancelled() => return,
            _ = shutdown.cancelled(), if !draining => {
                // Answer what is in flight, then close.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = idle_expired(slot, limits.idle_timeout) => {
                metrics::counter!("switchboard_http_idle_closed_total").increment(1);
                return;
            }
        }
    }
}

/// Resolves once the connection has had no request in flight for `timeout`.
async fn idle_expired(slot: &Slot, timeout: Duration) {
    loop {
        let c = &slot.conn;
        if c.busy.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(timeout).await;
            continue;
        }
        let since = c.idle_since.load(Ordering::Relaxed);
        let due = since.saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let now = slot.slots.now_ms();
        if now >= due {
            if c.busy.load(Ordering::Relaxed) == 0 && c.idle_since.load(Ordering::Relaxed) == since
            {
                return;
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(due - now)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(max: usize, per_source: usize) -> Limits {
        Limits {
            max_connections: max,
            per_source,
            ..Limits::for_nofile(1024)
        }
    }

    #[test]
    fn the_default_leaves_descriptors_in_reserve() {
        assert_eq!(Limits::for_nofile(1024).max_connections, 768);
        assert_eq!(Limits::for_nofile(100).max_connections, 64);
    }

    #[tokio::test]
    async fn one_address_is_capped_and_trusted_proxies_are_not() {
        let s = Slots::new(limits(100, 2));
        let a: IpAddr = "127.0.0.9".parse().unwrap();
        let _x = s.admit(a, false).unwrap();
        let y = s.admit(a, false).unwrap();
        assert_eq!(s.admit(a, false).unwrap_err(), Refused::PerSource);
        assert!(
            s.admit(a, true).is_ok(),
            "a trusted proxy carries many clients"
        );
        drop(y);
        assert!(
            s.admit(a, false).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let s = Slots::new(limits(2, 0));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let old = s.admit(a, false).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let busy = s.admit(a, false).unwrap();
        let _req = Busy::new(busy.conn.clone(), s.clone());
        let new = s.admit(a, false).unwrap();
        assert!(old.conn.shed.is_cancelled(), "the idle one was shed");
        assert!(
            !busy.conn.shed.is_cancelled(),
            "a connection serving a request is never shed"
        );
        assert_eq!(s.open(), 2);
        // Both left are busy or newer: the newest idle goes next, and with none idle, refusal.
        let _req2 = Busy::new(new.conn.clone(), s.clone());
        assert_eq!(s.admit(a, false).unwrap_err(), Refused::Full);
        drop(old);
        assert_eq!(s.open(), 2, "a shed slot is not freed twice");
    }
}
