//! Simulation: many virtual hosts in one process, each with its own link to the broker, seeded
//! synthetic load, and sessions that start and end. For demos and scale tests.
//!
//! A simulated host's load drifts as a random walk; each report interval a session starts with
//! a small probability (more when the host is empty), running sessions disconnect, come back or
//! end. Commands act on the simulated sessions (terminate and kill end them, disconnect detaches
//! them), so the broker sees the same round-trips as with real hosts. The same seed gives the
//! same hosts and the same sequence of events per host.

use crate::link::{self, Executor, Feeds, Inventory, LinkParams, LinkState};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::model::{LoadReport, ReportedSession, ReportedState};
use switchboard_proto::agent::Action;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Name of the `i`-th simulated host (0-based): `sim-00001`, `sim-00002`, ….
pub fn host_name(i: usize) -> String {
    format!("sim-{:05}", i + 1)
}

/// Client address of the `i`-th simulated host: in 127.0.0.0/8, never 127.0.0.1, port 22.
pub fn host_address(i: usize) -> String {
    let n = i + 2;
    format!(
        "127.{}.{}.{}:22",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

/// One simulated host to run.
#[derive(Debug, Clone)]
pub struct SimHost {
    /// Its name (as configured in the broker's pool).
    pub name: String,
    /// Its credential.
    pub credential: String,
}

/// What all simulated hosts share.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Template for each link; `host` and `credential` are replaced per host.
    pub link: LinkParams,
    /// Seed of the synthetic load and sessions.
    pub seed: u64,
    /// Sessions live on a host at a time, on average.
    pub sessions_per_host: f64,
    /// Mean lifetime of a session.
    pub mean_session: Duration,
}

impl SimOptions {
    /// Defaults: 3 sessions a host, living 30 minutes on average (a busy login cluster's churn).
    pub fn new(link: LinkParams, seed: u64) -> SimOptions {
        SimOptions {
            link,
            seed,
            sessions_per_host: 3.0,
            mean_session: Duration::from_secs(1800),
        }
    }
}

struct SimState {
    rng: ChaCha8Rng,
    load: f64,
    sessions: Inventory,
    next: u64,
    name: String,
    sessions_per_host: f64,
    mean_session: Duration,
}

impl SimState {
    /// Advances the host by `dt`: sessions arrive at a steady rate (so that, by Little's law,
    /// about `sessions_per_host` are live at a time), each ends with a mean lifetime of
    /// `mean_session`, and disconnects or reconnects about three times in its life.
    fn step(&mut self, dt: Duration) {
        let dt = dt.as_secs_f64();
        let life = self.mean_session.as_secs_f64().max(1.0);
        // Load: a bounded random walk around the number of sessions.
        let target = self.sessions.len() as f64 * 0.4;
        let noise = (self.rng.next_u64() % 1000) as f64 / 1000.0 - 0.5;
        self.load = (self.load + (target - self.load) * 0.2 + noise * 0.3).clamp(0.0, 64.0);
        let roll = |rng: &mut ChaCha8Rng| (rng.next_u64() % 1_000_000) as f64 / 1_000_000.0;
        let ids: Vec<String> = self.sessions.keys().cloned().collect();
        for id in ids {
            let r = roll(&mut self.rng);
            if r < dt / life {
                self.sessions.remove(&id);
            } else if r < dt / life * 4.0
                && let Some(s) = self.sessions.get_mut(&id)
            {
                s.state = match s.state {
                    ReportedState::Running => ReportedState::Disconnected,
                    ReportedState::Disconnected => ReportedState::Running,
                };
            }
        }
        let cap = (self.sessions_per_host * 4.0).ceil() as usize + 1;
        if self.sessions.len() < cap && roll(&mut self.rng) < dt * self.sessions_per_host / life {
            self.start_session();
        }
    }

    fn start_session(&mut self) {
        self.next += 1;
        let user = format!("simuser{}", self.rng.next_u64() % 10_000);
        let id = format!("{}-{}", self.name, self.next);
        self.sessions.insert(
            id.clone(),
            ReportedSession {
                backend_id: id,
                user,
                state: ReportedState::Running,
                idle_secs: Some(self.rng.next_u64() % 600),
                info: None,
            },
        );
    }

    fn report(&self) -> LoadReport {
        let sessions = u32::try_from(self.sessions.len()).unwrap_or(u32::MAX);
        LoadReport {
            load_avg: [self.load, self.load * 0.9, self.load * 0.8],
            cpu_utilisation: (self.load / 8.0).min(1.0),
            cpu_count: 8,
            cpu_mhz: 2400.0,
            mem_total_kib: 32 * 1024 * 1024,
            mem_available_kib: (32 * 1024 * 1024u64)
                .saturating_sub(u64::from(sessions) * 1024 * 1024),
            psi_cpu_some_avg10: Some((self.load * 2.0).min(100.0)),
            psi_memory_some_avg10: Some(0.0),
            skipped_rows: 0,
            session_count: sessions,
            users: sessions,
        }
    }
}

struct SimExecutor {
    state: Arc<Mutex<SimState>>,
    sessions: watch::Sender<Arc<Inventory>>,
}

impl SimExecutor {
    fn publish(&self, s: &SimState) {
        self.sessions.send_replace(Arc::new(s.sessions.clone()));
    }
}

impl Executor for SimExecutor {
    fn execute(
        &self,
        action: Action,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            let mut s = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let result = match action {
                Action::Terminate { backend_id }
                | Action::Kill { backend_id }
                | Action::Logoff { backend_id, .. } => match s.sessions.remove(&backend_id) {
                    Some(_) => Ok(format!("ended simulated session {backend_id}")),
                    None => Err(format!("no session {backend_id:?} on this host")),
                },
                Action::Disconnect { backend_id } => match s.sessions.get_mut(&backend_id) {
                    Some(x) => {
                        x.state = ReportedState::Disconnected;
                        Ok(format!("disconnected simulated session {backend_id}"))
                    }
                    None => Err(format!("no session {backend_id:?} on this host")),
                },
                Action::AddKey { user, .. } | Action::RemoveKey { user, .. } => {
                    Ok(format!("simulated key change for {user}"))
                }
            };
            if result.is_ok() {
                self.publish(&s);
            }
            result
        })
    }
}

/// Runs every host in `hosts` until `shutdown`. Returns each host's link state receiver.
pub fn spawn(
    hosts: Vec<SimHost>,
    opts: SimOptions,
    shutdown: CancellationToken,
) -> Vec<(String, watch::Receiver<LinkState>)> {
    let interval = opts.link.interval;
    let mut out = Vec::with_capacity(hosts.len());
    for (i, h) in hosts.into_iter().enumerate() {
        let mut rng =
            ChaCha8Rng::seed_from_u64(opts.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // Spread the hosts' report times over the interval.
        let phase = Duration::from_nanos(
            rng.next_u64() % u64::try_from(interval.as_nanos()).unwrap_or(1).max(1),
        );
        let mut sim = SimState {
            rng,
            load: 0.0,
            sessions: Inventory::new(),
            next: 0,
            name: h.name.clone(),
            sessions_per_host: opts.sessions_per_host,
            mean_session: opts.mean_session,
        };
        // Start populated: each host begins with 0..2×sessions_per_host sessions.
        let initial = sim.rng.next_u64() % ((opts.sessions_per_host * 2.0) as u64 + 1);
        for _ in 0..initial {
            sim.start_session();
        }
        let initial_sessions = Arc::new(sim.sessions.clone());
        let state = Arc::new(Mutex::new(sim));
        let (load_tx, load_rx) = watch::channel(None);
        let (sessions_tx, sessions_rx) = watch::channel(initial_sessions);
        let (state_tx, state_rx) = watch::channel(LinkState::Down("starting".into()));
        let exec = Arc::new(SimExecutor {
            state: state.clone(),
            sessions: sessions_tx.clone(),
        });
        let mut params = opts.link.clone();
        params.host = h.name.clone();
        params.credential = h.credential;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(phase) => {}
            }
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let report = {
                    let mut s = state
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    s.step(interval);
                    // Published under the lock, so a command's publish cannot be overwritten
                    // by an older list.
                    if **sessions_tx.borrow() != s.sessions {
                        sessions_tx.send_replace(Arc::new(s.sessions.clone()));
                    }
                    s.report()
                };
                load_tx.send_replace(Some(report));
            }
        });
        // Simulated sessions are known from the start.
        let (_listed_tx, listed) = watch::channel(true);
        let feeds = Feeds {
            load: load_rx,
            sessions: sessions_rx,
            listed,
        };
        tokio::spawn(link::run(params, feeds, exec, state_tx, shutdown.clone()));
        out.push((h.name, state_rx));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_addresses_are_loopback_and_never_127_0_0_1() {
        assert_eq!(host_address(0), "127.0.0.2:22");
        assert_eq!(host_address(253), "127.0.0.255:22");
        assert_eq!(host_address(254), "127.0.1.0:22");
        assert_eq!(host_address(99_999), "127.1.134.161:22");
        assert_eq!(host_name(0), "sim-00001");
    }

    #[test]
    fn the_same_seed_gives_the_same_hosts() {
        let run = |seed| {
            let mut s = SimState {
                rng: ChaCha8Rng::seed_from_u64(seed),
                load: 0.0,
                sessions: Inventory::new(),
                next: 0,
                name: "sim-00001".into(),
                sessions_per_host: 3.0,
                mean_session: Duration::from_secs(60),
            };
            for _ in 0..500 {
                s.step(Duration::from_secs(1));
            }
            let load = s.report().load_avg;
            (s.sessions, load)
        };
        assert_eq!(run(3), run(3));
        assert!(!run(3).0.is_empty(), "sessions start");
    }
}
