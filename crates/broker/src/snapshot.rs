//! What readers see without asking the engine: an immutable view of hosts and pools that the
//! engine republishes after changes (at most every 100 ms under load). The REST API, the
//! dashboard, the management socket, metrics and the pool watch stream all read it.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use switchboard_core::Millis;
use switchboard_core::model::SessionState;

/// Load figures of a host as the API shows them.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LoadInfo {
    /// 1, 5, 15 minute load averages.
    pub load_avg: [f64; 3],
    /// CPU busy fraction 0–1.
    pub cpu_utilisation: f64,
    /// CPUs.
    pub cpu_count: u32,
    /// CPU clock, MHz.
    pub cpu_mhz: f64,
    /// MemTotal, KiB.
    pub mem_total_kib: u64,
    /// MemAvailable, KiB.
    pub mem_available_kib: u64,
    /// PSI cpu some avg10, percent.
    pub psi_cpu_some_avg10: Option<f64>,
    /// PSI memory some avg10, percent.
    pub psi_memory_some_avg10: Option<f64>,
    /// Sessions the host counts itself.
    pub session_count: u32,
    /// Distinct users logged in on the host.
    pub users: u32,
    /// Session rows the host's sources skipped since its agent started (unacceptable rows,
    /// users whose listing failed).
    pub skipped_rows: u64,
    /// When the report arrived (ms since the epoch).
    pub reported_at: Option<u64>,
}

/// One host as readers see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HostInfo {
    /// Host name.
    pub name: String,
    /// Where clients connect.
    pub address: String,
    /// Client port.
    pub port: u16,
    /// Weight (0 = no new sessions).
    pub weight: u32,
    /// Session cap.
    pub max_sessions: Option<u32>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `online`, `draining` or `offline`.
    pub admin: String,
    /// Draining, to go offline by itself once it holds neither sessions nor reservations.
    pub then_offline: bool,
    /// `up`, `unreachable` or `unknown`.
    pub health: String,
    /// Whether an agent reports for it.
    pub agent: bool,
    /// Whether the broker judges it by TCP probes (agentless hosts).
    pub probe: bool,
    /// Live sessions.
    pub sessions: u32,
    /// Reservations holding capacity.
    pub reservations: u32,
    /// Why it takes no new sessions now (`null` when it does).
    pub excluded: Option<String>,
    /// End of a failure penalty in force (ms since the epoch).
    pub penalized_until: Option<u64>,
    /// Latest load report.
    pub load: Option<LoadInfo>,
    /// Pools it belongs to.
    pub pools: Vec<String>,
}

/// One pool as readers see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PoolInfo {
    /// Pool name.
    pub name: String,
    /// Placement policy identifier.
    pub policy: String,
    /// Member hosts in configured order.
    #[schema(value_type = Vec<String>)]
    pub hosts: Arc<Vec<String>>,
    /// Hosts that can take a new session now.
    pub eligible: u32,
    /// Hosts that cannot, by cause.
    pub excluded: BTreeMap<String, u32>,
}

/// What readers see without asking the engine: hosts, pools and counts.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Millis,
    /// Every host, in configured order (shared with the next snapshot where unchanged).
    pub hosts: Vec<Arc<HostInfo>>,
    /// Every pool.
    pub pools: Vec<PoolInfo>,
    /// Live sessions by state.
    pub sessions_by_state: Vec<(SessionState, usize)>,
    /// Live reservations.
    pub reservations: usize,
    /// Whether the engine is serving (false while it waits for the store).
    pub ready: bool,
}

/// A host as readers see it.
pub fn host_info(h: &switchboard_core::state::HostView<'_>) -> HostInfo {
    HostInfo {
        name: h.name.to_string(),
        address: h.spec.address.host_str(),
        port: h.spec.address.port,
        weight: h.spec.weight,
        max_sessions: h.spec.max_sessions,
        labels: h.spec.labels.clone(),
        admin: h.admin.as_str().to_owned(),
        then_offline: h.offline_when_empty.is_some(),
        health: h.health.as_str().to_owned(),
        agent: h.spec.agent,
        probe: h.spec.probe,
        sessions: h.sessions,
        reservations: h.reservations,
        excluded: h.exclusion.map(|e| e.as_str().to_owned()),
        penalized_until: h.penalized_until.map(|t| t.0),
        load: h.load.map(|l| LoadInfo {
            load_avg: l.load_avg,
            cpu_utilisation: l.cpu_utilisation,
            cpu_count: l.cpu_count,
            cpu_mhz: l.cpu_mhz,
            mem_total_kib: l.mem_total_kib,
            mem_available_kib: l.mem_available_kib,
            psi_cpu_some_avg10: l.psi_cpu_some_avg10,
            psi_memory_some_avg10: l.psi_memory_some_avg10,
            session_count: l.session_count,
            users: l.users,
            skipped_rows: l.skipped_rows,
            reported_at: h.last_report_at.map(|t| t.0),
        }),
        pools: h.pools.iter().map(|p| p.to_string()).collect(),
    }
}
