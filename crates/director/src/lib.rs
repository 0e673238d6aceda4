//! The Switchboard director: an L4 load balancer for ssh and desktop protocols.
//!
//! In proxy mode (the default) it listens on each `[[service]]`'s addresses, chooses a backend
//! for every new TCP connection with the service's scheduler from `switchboard_core::schedule`
//! (IPVS semantics), and relays the bytes (splice(2) on Linux). In IPVS mode it renders the same
//! services as `ipvsadm` rules and applies the difference to the kernel table ([`ipvs`]).
//!
//! # Layout
//! - [`config`]: the configuration file, checked with file/line/key errors.
//! - [`service`]: backends, scheduler, persistence, counters: where a connection goes.
//! - `proxy`: the data path (splice or copy, half-close, keepalive, idle timeout, PROXY v2).
//! - `health`: TCP connect health checks with interval, rise and fall.
//! - `state`: runtime weights and drains, persisted apart from the configuration.
//! - `mgmt`: the management socket (`switchboard ctl --socket …`).
//! - `metrics`: `/metrics` in the Prometheus text format.
//! - `follow`: following a broker pool through its watch stream.
//! - [`ipvs`]: IPVS mode.

pub mod config;
mod follow;
mod health;
pub mod ipvs;
mod metrics;
mod mgmt;
mod proxy;
pub mod service;
mod state;

use config::{Backends, Config, Mode};
use service::{BackendSpec, Service};
use state::RuntimeState;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use follow::{PoolHost, PoolView, SseParser};
pub use proxy::proxy_v2_header;

/// Locks a mutex, taking the data of a poisoned one (a panic elsewhere must not stop the
/// director).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why the director could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The management socket.
    #[error(transparent)]
    Socket(#[from] switchboard_proto::mgmt_socket::SocketError),
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
}

/// A running service: its state and its listeners.
#[derive(Debug)]
struct Running {
    service: Arc<Service>,
    listeners: Vec<(SocketAddr, CancellationToken)>,
}

#[derive(Debug)]
struct Inner {
    config: Mutex<Arc<Config>>,
    services: Mutex<BTreeMap<String, Running>>,
    state: Mutex<RuntimeState>,
    /// Connection tasks, so that a shutdown can wait for them.
    conns: TaskTracker,
    /// Stops accepting everywhere.
    accepting: CancellationToken,
    /// Stops background work (health checks, samplers, the management socket).
    shutdown: CancellationToken,
    /// Followers of broker pools (with `[broker]`).
    followers: Option<follow::Followers>,
    /// Client connections: the global cap and the per-source one.
    caps: Caps,
}

/// Descriptors kept out of the data path's reach (the management socket, `/metrics`, health
/// checks, the broker follower, the state file).
pub const FD_RESERVE: u64 = 256;

/// The caps on client connections of every service together. Each connection holds two
/// descriptors (client and backend), so the global cap is half of what the reserve leaves.
#[derive(Debug)]
struct Caps {
    global: Arc<tokio::sync::Semaphore>,
    max: usize,
    per_source: usize,
    by_source: BySource,
}

/// Client connections per source address.
type BySource = Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// A client connection's place within [`Caps`].
#[derive(Debug)]
struct Admitted {
    _global: tokio::sync::OwnedSemaphorePermit,
    source: Option<(BySource, std::net::IpAddr)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((table, ip)) = &self.source {
            let mut t = lock(table);
            if let Some(n) = t.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    t.remove(ip);
                }
            }
        }
    }
}

impl Caps {
    fn new(max_connections: Option<usize>, per_source: usize) -> Caps {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        let max = max_connections.unwrap_or_else(|| {
            usize::try_from((nofile.saturating_sub(FD_RESERVE) / 2).max(32)).unwrap_or(usize::MAX)
        });
        Caps {
            global: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            per_source,
            by_source: Arc::default(),
        }
    }

    /// A place for a client from `ip`, or why not.
    fn admit(&self, ip: std::net::IpAddr) -> Result<Admitted, &'static str> {
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| "full")?;
        let source = if self.per_source > 0 {
            let mut t = lock(&self.by_source);
            let n = t.entry(ip).or_insert(0);
            if *n >= self.per_source {
                return Err("per_source");
            }
            *n += 1;
            Some((self.by_source.clone(), ip))
        } else {
            None
        };
        Ok(Admitted {
            _global: global,
            source,
        })
    }
}

/// The running director.
#[derive(Debug, Clone)]
pub struct Director {
    inner: Arc<Inner>,
}

impl Director {
    /// Starts the proxy: binds every service's listeners, the management socket and `/metrics`.
    /// `shutdown` ends it (see [`Director::wait`]).
    pub async fn start(
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<Director, StartError> {
        let state = RuntimeState::load(&config.state_file).map_err(StartError::Other)?;
        let (mgmt_listener, gid) = switchboard_proto::mgmt_socket::bind(
            &config.management_socket,
            config.management_mode,
            config.management_group.as_deref(),
        )
        .await?;
        let background = CancellationToken::new();
        let followers = match &config.broker {
            Some(b) => {
                Some(follow::Followers::new(b, background.clone()).map_err(StartError::Other)?)
            }
            None => None,
        };
        let director = Director {
            inner: Arc::new(Inner {
                config: Mutex::new(Arc::new(config.clone())),
                services: Mutex::new(BTreeMap::new()),
                state: Mutex::new(state),
                conns: TaskTracker::new(),
                accepting: CancellationToken::new(),
                shutdown: background.clone(),
                followers,
                caps: Caps::new(config.max_connections, config.max_connections_per_source),
            }),
        };
        tracing::info!(
            max_connections = director.inner.caps.max,
            per_source = director.inner.caps.per_source,
            "client connection caps"
        );
        director.apply(&config).await.map_err(StartError::Other)?;
        switchboard_proto::mgmt_socket::spawn(
            Arc::new(mgmt::Handler::new(director.clone())),
            mgmt_listener,
            config.management_socket.clone(),
            gid,
            background.clone(),
        );
        if let Some(addr) = config.http_listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Other(format!("[http] listen {addr}: {e}")))?;
            metrics::spawn(director.clone(), l, background.clone());
        }
        director.spawn_sampler();
        if config.mode == Mode::Ipvs {
            ipvs::spawn(director.clone(), background.clone());
        }
        if let Some(followers) = &director.inner.followers {
            followers.sync(&director, &config.services);
        }
        let d = director.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            d.inner.accepting.cancel();
        });
        tracing::info!(
            services = config.services.len(),
            mgmt = %config.management_socket.display(),
            http = ?config.http_listen,
            splice = config.splice,
            "director started"
        );
        Ok(director)
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        lock(&self.inner.config).clone()
    }

    /// Applies a new configuration (SIGHUP): new services and listen addresses are bound first,
    /// and if any cannot be, nothing changes. Established connections are never touched; changes
    /// apply to new connections.
    pub async fn reload(&self, config: Config) -> Result<(), String> {
        let old = self.config();
        if old.management_socket != config.management_socket
            || old.http_listen != config.http_listen
            || old.state_file != config.state_file
            || old.mode != config.mode
            || old.broker != config.broker
            || old.threads != config.threads
        {
            tracing::warn!(
                "[director] mode and threads, [management], [http], [state] and [broker] changes apply at the next restart"
            );
        }
        self.apply(&config).await?;
        if let Some(f) = &self.inner.followers {
            f.sync(self, &config.services);
        } else if config.follows_pools() {
            tracing::warn!(
                "services that follow a pool need [broker] at start; restart the director"
            );
        }
        *lock(&self.inner.config) = Arc::new(Config {
            management_socket: old.management_socket.clone(),
            http_listen: old.http_listen,
            state_file: old.state_file.clone(),
            mode: old.mode,
            broker: old.broker.clone(),
            threads: old.threads,
            ..config
        });
        Ok(())
    }

    async fn apply(&self, config: &Config) -> Result<(), String> {
        // In IPVS mode the kernel listens: no sockets here.
        let proxy = self.config().mode == Mode::Proxy;
        // Bind what is new before changing anything.
        let mut fresh: BTreeMap<SocketAddr, TcpListener> = BTreeMap::new();
        if proxy {
            let current: Vec<SocketAddr> = lock(&self.inner.services)
                .values()
                .flat_map(|r| r.listeners.iter().map(|(a, _)| *a))
                .collect();
            for s in &config.services {
                for addr in &s.listen {
                    if !current.contains(addr) {
                        let l = bind(*addr).map_err(|e| {
                            format!("service {:?}: cannot listen on {addr}: {e}", s.name)
                        })?;
                        fresh.insert(*addr, l);
                    }
                }
            }
        }
        let splice = config.splice;
        let mut services = lock(&self.inner.services);
        // Services gone from the file stop accepting; their connections run on.
        let names: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
        services.retain(|name, r| {
            let keep = names.contains(name);
            if !keep {
                tracing::info!(service = %name, "service removed; its connections run on");
                for (_, t) in &r.listeners {
                    t.cancel();
                }
                r.service.stop();
            }
            keep
        });
        // A listen address that moved from one service to another is released first.
        for r in services.values_mut() {
            let own: Vec<SocketAddr> = config
                .services
                .iter()
                .find(|s| s.name == r.service.name)
                .map(|s| s.listen.clone())
                .unwrap_or_default();
            r.listeners.retain(|(a, t)| {
                let keep = own.contains(a);
                if !keep {
                    t.cancel();
                }
                keep
            });
        }
        for sc in &config.services {
            let sc = Arc::new(sc.clone());
            let running = services.entry(sc.name.clone()).or_insert_with(|| Running {
                service: Service::new(sc.clone()),
                listeners: Vec::new(),
            });
            running.service.set_config(sc.clone());
            if let Backends::Static(list) = &sc.backends {
                let specs: Vec<BackendSpec> = list
                    .iter()
                    .map(|b| BackendSpec {
                        addr: b.address,
                        weight: b.weight,
                        max_conn: b.max_conn,
                    })
                    .collect();
                self.set_backends(&running.service, &specs);
                // A service that followed a pool before keeps no state from the broker.
                for b in running.service.backends() {
                    b.broker_drain
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    b.broker_down
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                running
                    .service
                    .synced
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            for addr in sc.listen.iter().filter(|_| proxy) {
                if running.listeners.iter().any(|(a, _)| a == addr) {
                    continue;
                }
                // A listener taken over from another service was cancelled above; bind anew.
                let listener = match fresh.remove(addr) {
                    Some(l) => l,
                    None => bind(*addr).map_err(|e| {
                        format!("service {:?}: cannot listen on {addr}: {e}", sc.name)
                    })?,
                };
                let token = self.inner.accepting.child_token();
                running.listeners.push((*addr, token.clone()));
                self.spawn_accept(running.service.clone(), listener, token, splice);
                tracing::info!(service = %sc.name, listen = %addr, scheduler = %sc.scheduler, "listening");
            }
        }
        Ok(())
    }

    /// Sets a service's backends, applying runtime overrides to new ones and starting their
    /// health checks.
    pub(crate) fn set_backends(&self, service: &Arc<Service>, specs: &[BackendSpec]) {
        let added = service.set_backends(specs);
        let state = lock(&self.inner.state);
        for b in added {
            let o = state.get(&service.name, &b.addr.to_string());
            b.set_runtime_weight(o.weight);
            b.drained
                .store(o.drain, std::sync::atomic::Ordering::Relaxed);
            health::spawn(service.clone(), b, self.inner.shutdown.clone());
        }
    }

    fn spawn_accept(
        &self,
        service: Arc<Service>,
        listener: TcpListener,
        stop: CancellationToken,
        splice: bool,
    ) {
        let conns = self.inner.conns.clone();
        let director = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = stop.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and the like: back off instead of spinning (the cap keeps
                            // this rare: it is sized below the descriptor limit).
                            tracing::warn!(service = %service.name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let admitted = match director.inner.caps.admit(peer.ip()) {
                    Ok(a) => a,
                    Err(reason) => {
                        service
                            .counters
                            .refused
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(service = %service.name, %peer, reason, "connection refused");
                        continue;
                    }
                };
                let service = service.clone();
                conns.spawn(async move {
                    let _place = admitted;
                    proxy::handle(service, stream, peer, splice).await;
                });
            }
        });
    }

    fn spawn_sampler(&self) {
        let d = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    () = d.inner.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = tokio::time::Instant::now();
                let secs = (now - last).as_secs_f64().max(0.001);
                last = now;
                for s in d.services() {
                    s.counters.sample(secs);
                    for b in s.backends() {
                        b.counters.sample(secs);
                    }
                    s.sweep();
                }
            }
        });
    }

    /// The services, by name.
    pub fn services(&self) -> Vec<Arc<Service>> {
        lock(&self.inner.services)
            .values()
            .map(|r| r.service.clone())
            .collect()
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<Arc<Service>> {
        lock(&self.inner.services)
            .get(name)
            .map(|r| r.service.clone())
    }

    /// Live proxied connections.
    pub fn connections(&self) -> usize {
        self.inner.conns.len()
    }

    /// Sets (or with `None` clears) a backend's runtime override and saves it.
    pub(crate) fn set_override(
        &self,
        service: &str,
        backend: SocketAddr,
        f: impl FnOnce(&mut state::Override),
    ) -> Result<state::Override, String> {
        let s = self
            .service(service)
            .ok_or_else(|| format!("no service {service:?}"))?;
        let b = s
            .backend(backend)
            .ok_or_else(|| format!("service {service:?} has no backend {backend}"))?;
        let o = lock(&self.inner.state).update(service, &backend.to_string(), f)?;
        b.set_runtime_weight(o.weight);
        b.drained
            .store(o.drain, std::sync::atomic::Ordering::Relaxed);
        Ok(o)
    }

    /// Waits for `shutdown`, then stops accepting and waits for live connections to end, at
    /// most `[director] shutdown_timeout` (no limit by default).
    pub async fn wait(self) {
        self.inner.accepting.cancelled().await;
        let n = self.connections();
        let limit = self.config().shutdown_timeout;
        tracing::info!(connections = n, limit = ?limit, "no longer accepting; waiting for live connections");
        self.inner.conns.close();
        match limit {
            Some(l) => {
                if tokio::time::timeout(l, self.inner.conns.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        connections = self.connections(),
                        "shutdown_timeout reached; closing the connections left"
                    );
                }
            }
            None => self.inner.conns.wait().await,
        }
        self.inner.shutdown.cancel();
        for s in self.services() {
            s.stop();
        }
        // Let the management task remove its socket.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tracing::info!("director stopped");
    }
}

/// Binds a listener with SO_REUSEADDR and a deep backlog (login storms), IPv6 sockets IPv6-only
/// so that `0.0.0.0:22` and `[::]:22` can both be listed.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    // Accepted connections inherit keepalive and TCP_NODELAY from here.
    proxy::tune(&socket2::SockRef::from(&s));
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn client_connections_are_capped_in_all_and_per_source_when_asked() {
        use super::Caps;
        let ip = |n: u8| std::net::IpAddr::from([127, 0, 0, n]);
        let c = Caps::new(Some(3), 2);
        let a1 = c.admit(ip(1)).unwrap();
        let _a2 = c.admit(ip(1)).unwrap();
        assert_eq!(c.admit(ip(1)).unwrap_err(), "per_source");
        let _b = c.admit(ip(2)).unwrap();
        assert_eq!(c.admit(ip(3)).unwrap_err(), "full");
        drop(a1);
        assert!(
            c.admit(ip(1)).is_ok(),
            "a closed connection frees both places"
        );
        // Off by default: one address may take every place.
        let open = Caps::new(Some(3), 0);
        let held: Vec<_> = (0..3).map(|_| open.admit(ip(1)).unwrap()).collect();
        assert_eq!(open.admit(ip(1)).unwrap_err(), "full");
        drop(held);
        // Unset: half the descriptors less the reserve.
        assert!(Caps::new(None, 0).max >= 32);
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_keepalive_and_nodelay_from_the_listener() {
        let l = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let sock = socket2::SockRef::from(&s);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        #[cfg(target_os = "linux")]
        assert_eq!(
            sock.tcp_keepalive_time().unwrap(),
            std::time::Duration::from_secs(60)
        );
    }
}
