//! A virtual service's backends, its scheduler and its persistence table: the part of the
//! director that decides where a new connection goes.
//!
//! A backend's effective weight for new connections is 0 while it is draining (set at runtime or
//! by the broker), while it is being removed (it still has connections after a reload or a pool
//! change dropped it), or while its weight is 0; a down or full backend is never chosen. Live
//! connections are never cut by any of these: each connection task holds its backend.

use crate::config::{HealthConfig, Persistence, ServiceConfig};
use crate::lock;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::schedule::{Client, Dest, Scheduler};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most persistence entries one service keeps; beyond, new clients are scheduled without one.
const MAX_TEMPLATES: usize = 1 << 20;

/// Rates as IPVS's estimator computes them: sampled every 2 s, averaged with weight 1/4.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rates {
    /// New connections per second.
    pub cps: f64,
    /// Bytes per second from clients.
    pub in_bps: f64,
    /// Bytes per second to clients.
    pub out_bps: f64,
    last: (u64, u64, u64),
}

impl Rates {
    /// Folds a sample of the cumulative counters taken `secs` after the last one.
    pub fn sample(&mut self, conns: u64, bytes_in: u64, bytes_out: u64, secs: f64) {
        let (c0, i0, o0) = self.last;
        let w = 0.25;
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        self.cps += (rate(conns, c0) - self.cps) * w;
        self.in_bps += (rate(bytes_in, i0) - self.in_bps) * w;
        self.out_bps += (rate(bytes_out, o0) - self.out_bps) * w;
        self.last = (conns, bytes_in, bytes_out);
    }
}

/// Counters of a service or a backend.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections with both directions open.
    pub active: AtomicU64,
    /// Connections with one direction closed (half-closed), like IPVS's InActConn.
    pub inactive: AtomicU64,
    /// Connections made since start.
    pub total: AtomicU64,
    /// Bytes from clients towards backends.
    pub bytes_in: AtomicU64,
    /// Bytes from backends towards clients.
    pub bytes_out: AtomicU64,
    /// Connects to the backend that failed or timed out.
    pub connect_errors: AtomicU64,
    /// Clients turned away at the connection caps (services only).
    pub refused: AtomicU64,
    /// Smoothed rates.
    pub rates: Mutex<Rates>,
}

impl Counters {
    /// Samples the rates (every 2 s).
    pub fn sample(&self, secs: f64) {
        let c = self.total.load(Ordering::Relaxed);
        let i = self.bytes_in.load(Ordering::Relaxed);
        let o = self.bytes_out.load(Ordering::Relaxed);
        lock(&self.rates).sample(c, i, o, secs);
    }
}

/// One backend of one service.
#[derive(Debug)]
pub struct Backend {
    /// Where connections go.
    pub addr: SocketAddr,
    /// Weight from the configuration (or the broker, for a pool).
    pub config_weight: AtomicU32,
    /// Weight set at runtime (`ctl weight`); `u32::MAX` = none.
    pub runtime_weight: AtomicU32,
    /// Drained at runtime (`ctl drain`).
    pub drained: AtomicBool,
    /// Draining as the broker says (its host is draining or not accepting).
    pub broker_drain: AtomicBool,
    /// Down as the broker says (its agent is away).
    pub broker_down: AtomicBool,
    /// Passing health checks.
    pub up: AtomicBool,
    /// No longer configured; kept while connections remain.
    pub removed: AtomicBool,
    /// Connection cap (0 = none).
    pub max_conn: AtomicU32,
    /// Its counters.
    pub counters: Counters,
    /// Stops its health checks.
    pub stop: CancellationToken,
}

const NO_WEIGHT: u32 = u32::MAX;

impl Backend {
    fn new(addr: SocketAddr, weight: u32, max_conn: u32) -> Backend {
        Backend {
            addr,
            config_weight: AtomicU32::new(weight),
            runtime_weight: AtomicU32::new(NO_WEIGHT),
            drained: AtomicBool::new(false),
            broker_drain: AtomicBool::new(false),
            broker_down: AtomicBool::new(false),
            up: AtomicBool::new(true),
            removed: AtomicBool::new(false),
            max_conn: AtomicU32::new(max_conn),
            counters: Counters::default(),
            stop: CancellationToken::new(),
        }
    }

    /// The weight in force: the runtime one if set, else the configured one.
    pub fn weight(&self) -> u32 {
        match self.runtime_weight.load(Ordering::Relaxed) {
            NO_WEIGHT => self.config_weight.load(Ordering::Relaxed),
            w => w,
        }
    }

    /// Sets or clears the runtime weight.
    pub fn set_runtime_weight(&self, w: Option<u32>) {
        self.runtime_weight
            .store(w.unwrap_or(NO_WEIGHT), Ordering::Relaxed);
    }

    /// The runtime weight, if one is set.
    pub fn runtime_weight(&self) -> Option<u32> {
        match self.runtime_weight.load(Ordering::Relaxed) {
            NO_WEIGHT => None,
            w => Some(w),
        }
    }

    /// Whether it takes no new (non-persistent) connections although it is up.
    pub fn draining(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
            || self.broker_drain.load(Ordering::Relaxed)
            || self.removed.load(Ordering::Relaxed)
    }

    /// Whether it is reachable (health checks and the broker agree).
    pub fn available(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.broker_down.load(Ordering::Relaxed)
    }

    /// Whether its connection cap is reached.
    pub fn full(&self) -> bool {
        let cap = self.max_conn.load(Ordering::Relaxed);
        cap > 0
            && self.counters.active.load(Ordering::Relaxed)
                + self.counters.inactive.load(Ordering::Relaxed)
                >= u64::from(cap)
    }

    /// Live connections (active and half-closed).
    pub fn connections(&self) -> u64 {
        self.counters.active.load(Ordering::Relaxed)
            + self.counters.inactive.load(Ordering::Relaxed)
    }

    /// A word for its state: `up`, `down`, `drain`, `removed`.
    pub fn state(&self) -> &'static str {
        if self.removed.load(Ordering::Relaxed) {
            "removed"
        } else if !self.available() {
            "down"
        } else if self.draining() {
            "drain"
        } else {
            "up"
        }
    }

    fn dest(&self) -> Dest {
        let weight = if self.draining() { 0 } else { self.weight() };
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Dest {
            weight,
            active: clamp(self.counters.active.load(Ordering::Relaxed)),
            inactive: clamp(self.counters.inactive.load(Ordering::Relaxed)),
            available: self.available(),
            overloaded: self.full(),
            key: key_of(self.addr),
        }
    }
}

/// A stable 64-bit key of an address (FNV-1a over its text), for Maglev permutations.
fn key_of(addr: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A persistence entry: a client (under the netmask) stuck to a backend.
#[derive(Debug)]
struct Template {
    backend: SocketAddr,
    /// Connections it controls.
    conns: u32,
    /// When it expires once `conns` is 0.
    expires: Instant,
}

#[derive(Debug)]
struct Table {
    backends: Vec<Arc<Backend>>,
    scheduler: Scheduler,
    /// Weights at the last rebuild, to know when to rebuild.
    weights: Vec<u32>,
    templates: HashMap<IpAddr, Template>,
    /// The backend list changed since the last rebuild (sh/mh tables key on it).
    dirty: bool,
}

/// One virtual service.
#[derive(Debug)]
pub struct Service {
    /// Its name.
    pub name: String,
    config: Mutex<Arc<ServiceConfig>>,
    table: Mutex<Table>,
    /// Service-wide counters.
    pub counters: Counters,
    /// For a service that follows a broker pool: a view has arrived. Until then IPVS mode leaves
    /// its kernel entries alone rather than emptying them.
    pub synced: AtomicBool,
}

/// A connection's hold on its backend: counts it while alive.
#[derive(Debug)]
pub struct Lease {
    service: Arc<Service>,
    /// The backend.
    pub backend: Arc<Backend>,
    persist_key: Option<IpAddr>,
    half_closed: AtomicBool,
}

impl Lease {
    /// The connect succeeded: count the connection.
    pub fn connected(&self) {
        self.backend.counters.total.fetch_add(1, Ordering::Relaxed);
        self.service.counters.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The connect failed.
    pub fn failed(&self) {
        self.backend
            .counters
            .connect_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One direction has closed: the connection counts as inactive from now on.
    pub fn half_closed(&self) {
        if !self.half_closed.swap(true, Ordering::Relaxed) {
            for c in [&self.backend.counters, &self.service.counters] {
                c.active.fetch_sub(1, Ordering::Relaxed);
                c.inactive.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts bytes from the client.
    pub fn bytes_in(&self, n: u64) {
        self.backend
            .counters
            .bytes_in
            .fetch_add(n, Ordering::Relaxed);
        self.service
            .counters
            .bytes_in
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes to the client.
    pub fn bytes_out(&self, n: u64) {
        self.backend
            .counters
            .bytes_out
            .fetch_add(n, Ordering::Relaxed);
        self.service
            .counters
            .bytes_out
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The service.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        fn inactive(c: &Counters) -> &AtomicU64 {
            &c.inactive
        }
        fn active(c: &Counters) -> &AtomicU64 {
            &c.active
        }
        let slot = if self.half_closed.load(Ordering::Relaxed) {
            inactive
        } else {
            active
        };
        slot(&self.backend.counters).fetch_sub(1, Ordering::Relaxed);
        slot(&self.service.counters).fetch_sub(1, Ordering::Relaxed);
        if let Some(key) = self.persist_key {
            let timeout = self.service.config().persistence.map(|p| p.timeout);
            let mut t = lock(&self.service.table);
            if let Some(tpl) = t.templates.get_mut(&key)
                && tpl.backend == self.backend.addr
            {
                tpl.conns = tpl.conns.saturating_sub(1);
                if tpl.conns == 0 {
                    tpl.expires = Instant::now() + timeout.unwrap_or(Duration::ZERO);
                }
            }
        }
    }
}

/// A backend as a service is told to have it: address, weight, cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSpec {
    /// Address.
    pub addr: SocketAddr,
    /// Weight from the configuration or the broker.
    pub weight: u32,
    /// Connection cap.
    pub max_conn: u32,
}

impl Service {
    /// A service with no backends yet.
    pub fn new(config: Arc<ServiceConfig>) -> Arc<Service> {
        let scheduler = Scheduler::new(config.scheduler, config.hash, &[]);
        Arc::new(Service {
            name: config.name.clone(),
            config: Mutex::new(config),
            table: Mutex::new(Table {
                backends: Vec::new(),
                scheduler,
                weights: Vec::new(),
                templates: HashMap::new(),
                dirty: true,
            }),
            counters: Counters::default(),
            synced: AtomicBool::new(false),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> Arc<ServiceConfig> {
        lock(&self.config).clone()
    }

    /// Replaces its configuration (a reload); a changed scheduler starts from fresh state.
    pub fn set_config(&self, config: Arc<ServiceConfig>) {
        let mut c = lock(&self.config);
        let mut t = lock(&self.table);
        if c.scheduler != config.scheduler || c.hash != config.hash {
            let dests: Vec<Dest> = t.backends.iter().map(|b| b.dest()).collect();
            t.scheduler = Scheduler::new(config.scheduler, config.hash, &dests);
        }
        if config.persistence.is_none() {
            t.templates.clear();
        }
        *c = config;
    }

    /// Its backends, including removed ones that still have connections.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        lock(&self.table).backends.clone()
    }

    /// The backend at `addr`.
    pub fn backend(&self, addr: SocketAddr) -> Option<Arc<Backend>> {
        lock(&self.table)
            .backends
            .iter()
            .find(|b| b.addr == addr)
            .cloned()
    }

    /// Sets the backend list. Returns the backends that are new (to start their health checks).
    /// A backend no longer listed is marked removed and kept until its connections end.
    pub fn set_backends(&self, specs: &[BackendSpec]) -> Vec<Arc<Backend>> {
        let mut t = lock(&self.table);
        let mut added = Vec::new();
        for b in &t.backends {
            match specs.iter().find(|s| s.addr == b.addr) {
                Some(s) => {
                    b.config_weight.store(s.weight, Ordering::Relaxed);
                    b.max_conn.store(s.max_conn, Ordering::Relaxed);
                    b.removed.store(false, Ordering::Relaxed);
                }
                None => b.removed.store(true, Ordering::Relaxed),
            }
        }
        for s in specs {
            if !t.backends.iter().any(|b| b.addr == s.addr) {
                let b = Arc::new(Backend::new(s.addr, s.weight, s.max_conn));
                t.backends.push(b.clone());
                added.push(b);
            }
        }
        // Listed order first (schedulers such as rr and sh depend on the order), removed last.
        let order = |b: &Arc<Backend>| {
            specs
                .iter()
                .position(|s| s.addr == b.addr)
                .unwrap_or(usize::MAX)
        };
        t.backends.sort_by_key(order);
        Self::sweep_locked(&mut t);
        t.dirty = true;
        added
    }

    /// Drops removed backends without connections and expired persistence entries.
    pub fn sweep(&self) {
        let mut t = lock(&self.table);
        Self::sweep_locked(&mut t);
        let now = Instant::now();
        t.templates
            .retain(|_, tpl| tpl.conns > 0 || tpl.expires > now);
    }

    fn sweep_locked(t: &mut Table) {
        let before = t.backends.len();
        t.backends.retain(|b| {
            let keep = !b.removed.load(Ordering::Relaxed) || b.connections() > 0;
            if !keep {
                b.stop.cancel();
            }
            keep
        });
        if t.backends.len() != before {
            t.dirty = true;
        }
    }

    /// Stops every backend's health checks (the service is gone).
    pub fn stop(&self) {
        for b in &lock(&self.table).backends {
            b.stop.cancel();
        }
    }

    /// Persistence entries alive now.
    pub fn templates(&self) -> usize {
        lock(&self.table).templates.len()
    }

    /// Chooses a backend for a new connection from `client`, skipping `exclude` (backends whose
    /// connect just failed). The lease counts the connection as active until dropped.
    pub fn pick(self: &Arc<Self>, client: SocketAddr, exclude: &[SocketAddr]) -> Option<Lease> {
        let config = self.config();
        let now = Instant::now();
        let mut t = lock(&self.table);
        let persist_key = config.persistence.map(|p| p.key(client.ip()));
        let mut chosen = None;
        if let (Some(p), Some(key)) = (config.persistence, persist_key) {
            chosen = sticky(&mut t, &p, key, now, exclude);
        }
        let backend = match chosen {
            Some(b) => b,
            None => {
                let dests: Vec<Dest> = t
                    .backends
                    .iter()
                    .map(|b| {
                        let mut d = b.dest();
                        if exclude.contains(&b.addr) {
                            d.available = false;
                        }
                        d
                    })
                    .collect();
                let weights: Vec<u32> = dests.iter().map(|d| d.weight).collect();
                if weights != t.weights || t.dirty {
                    t.dirty = false;
                    t.scheduler.rebuild(&dests);
                    t.weights = weights;
                }
                let i = t
                    .scheduler
                    .pick(&dests, &Client::new(client.ip(), client.port()))?;
                let b = t.backends.get(i)?.clone();
                if let Some(key) = persist_key
                    && (t.templates.len() < MAX_TEMPLATES || t.templates.contains_key(&key))
                {
                    t.templates.insert(
                        key,
                        Template {
                            backend: b.addr,
                            conns: 1,
                            expires: now,
                        },
                    );
                }
                b
            }
        };
        // Counted before the lock is released, so that concurrent picks see the cap and a sweep
        // never drops a backend that was just chosen.
        for c in [&backend.counters, &self.counters] {
            c.active.fetch_add(1, Ordering::Relaxed);
        }
        let persist_key = persist_key.filter(|k| {
            t.templates
                .get(k)
                .is_some_and(|tpl| tpl.backend == backend.addr)
        });
        drop(t);
        Some(Lease {
            service: self.clone(),
            backend,
            persist_key,
            half_closed: AtomicBool::new(false),
        })
    }

    /// The health check settings.
    pub fn health(&self) -> HealthConfig {
        self.config().health
    }
}

/// The backend a persistent client is stuck to, if it may still go there.
fn sticky(
    t: &mut Table,
    p: &Persistence,
    key: IpAddr,
    now: Instant,
    exclude: &[SocketAddr],
) -> Option<Arc<Backend>> {
    let tpl = t.templates.get_mut(&key)?;
    let alive = tpl.conns > 0 || tpl.expires > now;
    let backend = t.backends.iter().find(|b| b.addr == tpl.backend).cloned();
    let usable = backend.as_ref().is_some_and(|b| {
        b.available()
            && !b.removed.load(Ordering::Relaxed)
            && !b.full()
            && !exclude.contains(&b.addr)
            && (b.weight() > 0 && !b.draining() || p.drain_keeps_clients)
    });
    if alive && usable {
        tpl.conns += 1;
        return backend;
    }
    if tpl.conns == 0 || !usable {
        // Expired, or its backend can no longer take the client: schedule afresh (the old
        // connections keep their backend; the entry now follows the new choice).
        t.templates.remove(&key);
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;

    fn service(extra: &str) -> Arc<Service> {
        let c = Config::parse(
            &format!(
                "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:10\", \"127.0.0.1:11\", \"127.0.0.1:12\"]\n{extra}"
            ),
            "t.toml",
        )
        .unwrap();
        let cfg = Arc::new(c.services[0].clone());
        let s = Service::new(cfg.clone());
        let crate::config::Backends::Static(list) = &cfg.backends else {
            panic!()
        };
        let specs: Vec<BackendSpec> = list
            .iter()
            .map(|b| BackendSpec {
                addr: b.address,
                weight: b.weight,
                max_conn: b.max_conn,
            })
            .collect();
        s.set_backends(&specs);
        s
    }

    fn client(i: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::from([127, 0, 1, i]), 40000)
    }

    #[test]
    fn mh_rebuilds_its_table_when_the_backend_list_changes_with_equal_weights() {
        // Maglev's table depends on the backends' addresses: swapping one backend for another with
        // the same weight must give the table a fresh service with the new list would build, not
        // the old one (the weights alone do not change).
        let spec = |port: u16| BackendSpec {
            addr: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port),
            weight: 100,
            max_conn: 0,
        };
        let s = service("scheduler = \"mh\"\n");
        let before: Vec<u16> = (0..60)
            .map(|i| s.pick(client(i), &[]).unwrap().backend.addr.port())
            .collect();
        s.set_backends(&[spec(13), spec(11), spec(12)]);
        s.sweep();
        let after: Vec<u16> = (0..60)
            .map(|i| s.pick(client(i), &[]).unwrap().backend.addr.port())
            .collect();
        let fresh = service("scheduler = \"mh\"\n");
        fresh.set_backends(&[spec(13), spec(11), spec(12)]);
        fresh.sweep();
        let want: Vec<u16> = (0..60)
            .map(|i| fresh.pick(client(i), &[]).unwrap().backend.addr.port())
            .collect();
        assert_eq!(after, want, "the table was rebuilt for the new list");
        assert!(after.contains(&13) && !after.contains(&10));
        // Clients of the unchanged backends mostly stay (Maglev's minimal disruption).
        let stayed = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 10 && b == a)
            .count();
        let kept = before.iter().filter(|b| **b != 10).count();
        assert!(stayed * 10 >= kept * 7, "{stayed} of {kept} stayed");
    }

    #[test]
    fn rr_spreads_and_a_drained_backend_gets_nothing_new() {
        let s = service("scheduler = \"rr\"\n");
        let mut leases = Vec::new();
        for i in 0..6 {
            leases.push(s.pick(client(i), &[]).unwrap());
        }
        let count = |port: u16| {
            leases
                .iter()
                .filter(|l| l.backend.addr.port() == port)
                .count()
        };
        assert_eq!((count(10), count(11), count(12)), (2, 2, 2));
        let b = s.backend("127.0.0.1:11".parse().unwrap()).unwrap();
        b.drained.store(true, Ordering::Relaxed);
        for i in 0..6 {
            assert_ne!(s.pick(client(i), &[]).unwrap().backend.addr.port(), 11);
        }
        assert_eq!(b.counters.active.load(Ordering::Relaxed), 2);
        drop(leases);
        assert_eq!(b.counters.active.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn persistence_sticks_until_the_timeout_after_the_last_connection() {
        let s = service("scheduler = \"rr\"\npersistence = \"1h\"\n");
        let first = s.pick(client(1), &[]).unwrap();
        let addr = first.backend.addr;
        for _ in 0..5 {
            assert_eq!(s.pick(client(1), &[]).unwrap().backend.addr, addr);
        }
        // Another client goes elsewhere (rr moved on).
        assert_ne!(s.pick(client(2), &[]).unwrap().backend.addr, addr);
        drop(first);
        assert_eq!(s.pick(client(1), &[]).unwrap().backend.addr, addr);
        // Drained: the persistent client still follows (drain_keeps_persistent defaults to true).
        s.backend(addr)
            .unwrap()
            .drained
            .store(true, Ordering::Relaxed);
        assert_eq!(s.pick(client(1), &[]).unwrap().backend.addr, addr);
        // Down: it goes elsewhere.
        s.backend(addr).unwrap().up.store(false, Ordering::Relaxed);
        assert_ne!(s.pick(client(1), &[]).unwrap().backend.addr, addr);
    }

    #[test]
    fn a_drained_backend_can_drop_its_persistent_clients() {
        let s =
            service("scheduler = \"rr\"\npersistence = \"1h\"\ndrain_keeps_persistent = false\n");
        let addr = s.pick(client(1), &[]).unwrap().backend.addr;
        s.backend(addr)
            .unwrap()
            .drained
            .store(true, Ordering::Relaxed);
        assert_ne!(s.pick(client(1), &[]).unwrap().backend.addr, addr);
    }

    #[test]
    fn removed_backends_stay_while_they_have_connections() {
        let s = service("scheduler = \"rr\"\n");
        let lease = s.pick(client(1), &[]).unwrap();
        let addr = lease.backend.addr;
        let rest: Vec<BackendSpec> = s
            .backends()
            .iter()
            .filter(|b| b.addr != addr)
            .map(|b| BackendSpec {
                addr: b.addr,
                weight: 100,
                max_conn: 0,
            })
            .collect();
        s.set_backends(&rest);
        assert_eq!(s.backends().len(), 3);
        assert_eq!(s.backend(addr).unwrap().state(), "removed");
        for i in 0..6 {
            assert_ne!(s.pick(client(i), &[]).unwrap().backend.addr, addr);
        }
        drop(lease);
        s.sweep();
        assert_eq!(s.backends().len(), 2);
    }

    #[test]
    fn caps_and_failed_connects_are_skipped() {
        let s = service("scheduler = \"rr\"\nmax_conn = 1\n");
        let a = s.pick(client(1), &[]).unwrap();
        let b = s.pick(client(1), &[]).unwrap();
        let c = s.pick(client(1), &[]).unwrap();
        assert!(s.pick(client(1), &[]).is_none());
        drop(b);
        let d = s
            .pick(client(1), &[c.backend.addr, a.backend.addr])
            .unwrap();
        assert_eq!(d.backend.addr.port(), 11);
    }
}
