//! Fixtures shared by the core's integration tests.
#![allow(dead_code)]

use std::time::Duration;
use switchboard_core::config::HostAddr;
use switchboard_core::model::{LoadReport, PoolOptions, ReportedSession, ReportedState};
use switchboard_core::{
    ClusterState, Command, CoreError, Event, HostSpec, Millis, Placement, Policy, PoolSpec,
    SessionId, Settings,
};

/// A cluster under test with its own clock.
pub struct Cluster {
    pub state: ClusterState,
    pub now: Millis,
    /// Check the state's invariants after every command (off for long share measurements).
    pub checked: bool,
}

/// Host `name` at 127.0.0.N:22 (N from 2), with defaults.
pub fn host(name: &str, n: u32) -> HostSpec {
    let ip = std::net::Ipv4Addr::new(127, 0, ((n + 2) >> 8) as u8, ((n + 2) & 0xff) as u8);
    HostSpec::new(name, HostAddr::ip(ip.into(), 22))
}

pub fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

pub fn report(load1: f64, util: f64, avail_frac: f64) -> LoadReport {
    LoadReport {
        load_avg: [load1, load1, load1],
        cpu_utilisation: util,
        cpu_count: 4,
        cpu_mhz: 2400.0,
        mem_total_kib: 16_000_000,
        mem_available_kib: (16_000_000.0 * avail_frac) as u64,
        psi_cpu_some_avg10: None,
        psi_memory_some_avg10: None,
        skipped_rows: 0,
        session_count: 0,
        users: 0,
    }
}

pub fn reported(backend: &str, user: &str, state: ReportedState) -> ReportedSession {
    ReportedSession {
        backend_id: backend.into(),
        user: user.into(),
        state,
        idle_secs: None,
        info: None,
    }
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::with_settings(Settings::default())
    }

    pub fn seeded(seed: u64) -> Cluster {
        Cluster::with_settings(Settings {
            seed,
            ..Settings::default()
        })
    }

    pub fn with_settings(settings: Settings) -> Cluster {
        Cluster {
            state: ClusterState::new(settings),
            now: Millis(1_000_000),
            checked: true,
        }
    }

    pub fn try_apply(&mut self, c: Command) -> Result<Vec<Event>, CoreError> {
        let r = self.state.apply(c, self.now);
        if !self.checked {
            return r;
        }
        if let Err(e) = self.state.check_invariants() {
            panic!("invariant broken: {e}");
        }
        r
    }

    pub fn apply(&mut self, c: Command) -> Vec<Event> {
        let desc = format!("{c:?}");
        self.try_apply(c)
            .unwrap_or_else(|e| panic!("{desc} failed: {e}"))
    }

    pub fn advance(&mut self, d: Duration) -> Vec<Event> {
        self.now = self.now.after(d);
        self.apply(Command::Tick)
    }

    /// Agentless hosts (always up) named `h00`, `h01`, … with the given weights, in pool `p`.
    pub fn pool_with_weights(&mut self, policy: Policy, weights: &[u32]) -> Vec<String> {
        let hosts = names("h", weights.len());
        for (i, (n, w)) in hosts.iter().zip(weights).enumerate() {
            let mut spec = host(n, i as u32);
            spec.weight = *w;
            self.apply(Command::AddHost(spec));
        }
        self.define_pool("p", policy, &hosts);
        hosts
    }

    pub fn define_pool(&mut self, name: &str, policy: Policy, hosts: &[String]) {
        self.apply(Command::DefinePool(PoolSpec {
            name: name.into(),
            policy,
            options: PoolOptions::default(),
            hosts: hosts.to_vec(),
        }));
    }

    pub fn try_reserve(&mut self, user: &str, pool: &str) -> Result<Placement, CoreError> {
        let events = self.try_apply(Command::Reserve {
            user: user.into(),
            pool: pool.into(),
            client: None,
        })?;
        Ok(placed(&events))
    }

    pub fn reserve(&mut self, user: &str, pool: &str) -> Placement {
        self.try_reserve(user, pool)
            .unwrap_or_else(|e| panic!("reserve {user} in {pool}: {e}"))
    }

    pub fn confirm(&mut self, id: SessionId) {
        self.apply(Command::Confirm {
            id,
            backend_id: None,
            starting: false,
        });
    }

    /// Reserve and confirm: a session for `user`, returning (id, host).
    pub fn start(&mut self, user: &str, pool: &str) -> (SessionId, String) {
        let p = self.reserve(user, pool);
        self.confirm(p.id);
        (p.id, p.host.to_string())
    }

    /// Adds a host that has an agent (not yet connected), at 127.0.0.(n+2):22.
    pub fn add_agent_host(&mut self, name: &str, n: u32) {
        let mut spec = host(name, n);
        spec.agent = true;
        self.apply(Command::AddHost(spec));
    }

    pub fn load(&mut self, host: &str, r: LoadReport) {
        self.apply(Command::ReportLoad {
            host: host.into(),
            report: r,
        });
    }

    pub fn connect_agent(&mut self, host: &str) {
        self.apply(Command::AgentConnected {
            host: host.into(),
            report_interval: Duration::from_secs(3),
        });
    }

    pub fn sessions_on(&self, host: &str) -> u32 {
        self.state.host(host).map_or(0, |h| h.sessions)
    }

    pub fn occupancy(&self, host: &str) -> u32 {
        self.state
            .host(host)
            .map_or(0, |h| h.sessions + h.reservations)
    }
}

pub fn placed(events: &[Event]) -> Placement {
    events
        .iter()
        .find_map(|e| match e {
            Event::Placed(p) => Some(p.clone()),
            _ => None,
        })
        .expect("a Placed event")
}
