//! The cluster's nouns: hosts, pools, sessions, reservations, load reports, and their states.
//!
//! See DESIGN.md "Vocabulary". Types here are plain data; every rule about how they change lives in
//! [`crate::state`].

use crate::config::{ConfigDuration, HostAddr};
use crate::policy::Policy;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Weight a host gets when none is configured (everywhere: pools, director services).
pub const DEFAULT_WEIGHT: u32 = 100;
/// Report interval assumed for an agent that did not announce one.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(3);
/// How long an unconfirmed placement holds its capacity.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(60);
/// How many report intervals a load report stays fresh.
pub const DEFAULT_STALE_AFTER_INTERVALS: u32 = 3;
/// How long a host that failed a start or a probe is avoided.
pub const DEFAULT_FAILURE_PENALTY: Duration = Duration::from_secs(300);
/// Session count at which the session term of `least-load` reaches 1 when a host has no cap.
pub const DEFAULT_SESSION_REF: u32 = 50;
/// Longest user name, host name, pool name or backend session id the core accepts.
pub const MAX_NAME_LEN: usize = 256;

/// A session (and the reservation it was before it was confirmed): one id space for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Index of a host in the state's host table (internal; names are the public identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub(crate) u32);

/// Index of a pool in the state's pool table (internal; names are the public identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolId(pub(crate) u32);

/// An interned user name (internal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(pub(crate) u32);

/// What the operator wants of a host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new sessions and resumes existing ones.
    #[default]
    Online,
    /// Resumes its sessions, takes no new ones (maintenance pending).
    Draining,
    /// Neither: its sessions are not offered for resume either.
    Offline,
}

impl AdminState {
    /// The lowercase identifier used in APIs, the store and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Online => "online",
            AdminState::Draining => "draining",
            AdminState::Offline => "offline",
        }
    }
}

impl std::str::FromStr for AdminState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(AdminState::Online),
            "draining" => Ok(AdminState::Draining),
            "offline" => Ok(AdminState::Offline),
            other => Err(format!(
                "unknown admin state {other:?}; use online, draining or offline"
            )),
        }
    }
}

/// What the broker knows of a host's reachability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The agent is connected, or the last probe succeeded, or the host is neither probed nor has an
    /// agent.
    Up,
    /// The agent link was lost or the last probe failed.
    Unreachable,
    /// Not heard of yet (agent never connected, never probed).
    #[default]
    Unknown,
}

impl Health {
    /// The lowercase identifier used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Unreachable => "unreachable",
            Health::Unknown => "unknown",
        }
    }
}

/// The lifecycle of a session: `starting → running ⇄ disconnected → ending → ended`, and `unknown`
/// while its host is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Confirmed but not yet up (a pod scheduling, a desktop starting).
    Starting,
    /// Up with a client attached.
    Running,
    /// Up with no client attached: the best candidate for resume.
    Disconnected,
    /// Termination requested, not yet gone.
    Ending,
    /// Gone. Ended sessions leave the in-memory state; the store keeps their history.
    Ended,
    /// Its host is unreachable: kept, not ended, until the host reports again.
    Unknown,
}

impl SessionState {
    /// Whether the session still exists (counts against its host).
    pub fn is_live(self) -> bool {
        !matches!(self, SessionState::Ended)
    }

    /// The lowercase identifier used in APIs and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Starting => "starting",
            SessionState::Running => "running",
            SessionState::Disconnected => "disconnected",
            SessionState::Ending => "ending",
            SessionState::Ended => "ended",
            SessionState::Unknown => "unknown",
        }
    }
}

impl std::str::FromStr for SessionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "starting" => SessionState::Starting,
            "running" => SessionState::Running,
            "disconnected" => SessionState::Disconnected,
            "ending" => SessionState::Ending,
            "ended" => SessionState::Ended,
            "unknown" => SessionState::Unknown,
            other => {
                return Err(format!(
                    "unknown session state {other:?}; use starting, running, disconnected, \
                     ending, ended or unknown"
                ));
            }
        })
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a host is configured: what an operator writes in a pool's host table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSpec {
    /// The host's name as it knows itself (what its agent reports).
    pub name: String,
    /// Where clients connect (may differ from the name: X2Go's `name (address:port)`).
    pub address: HostAddr,
    /// Relative capacity; 0 means no new sessions. Default 100.
    pub weight: u32,
    /// Most live sessions plus reservations the host takes; `None` is unlimited.
    pub max_sessions: Option<u32>,
    /// Free-form labels for operators and later policies.
    pub labels: BTreeMap<String, String>,
    /// Whether an agent reports for this host (then fresh load reports are required to place).
    pub agent: bool,
    /// Whether an agentless host is judged by a TCP probe (then it waits for a first good probe).
    pub probe: bool,
}

impl HostSpec {
    /// A host with defaults: weight 100, no cap, no labels, agentless, not probed.
    pub fn new(name: impl Into<String>, address: HostAddr) -> Self {
        HostSpec {
            name: name.into(),
            address,
            weight: DEFAULT_WEIGHT,
            max_sessions: None,
            labels: BTreeMap::new(),
            agent: false,
            probe: false,
        }
    }

    /// Health a host starts with: `up` when nothing will ever report on it.
    pub(crate) fn initial_health(&self) -> Health {
        if self.agent || self.probe {
            Health::Unknown
        } else {
            Health::Up
        }
    }
}

/// One load report from a host's agent. Volatile: the broker keeps only the latest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// 1, 5 and 15 minute load averages.
    pub load_avg: [f64; 3],
    /// CPU busy fraction since the previous report, 0.0–1.0.
    pub cpu_utilisation: f64,
    /// Online CPUs.
    pub cpu_count: u32,
    /// Nominal CPU clock in MHz (X2Go's load factor uses it).
    pub cpu_mhz: f64,
    /// MemTotal in KiB.
    pub mem_total_kib: u64,
    /// MemAvailable in KiB.
    pub mem_available_kib: u64,
    /// PSI `some avg10` for CPU, percent, where the kernel has PSI.
    pub psi_cpu_some_avg10: Option<f64>,
    /// PSI `some avg10` for memory, percent, where the kernel has PSI.
    pub psi_memory_some_avg10: Option<f64>,
    /// Sessions the host counts itself (its own view, for operators; placement counts the broker's).
    pub session_count: u32,
    /// Distinct users logged in on the host (any kind of login, not only Switchboard's sessions).
    #[serde(default)]
    pub users: u32,
    /// Session rows the host's sources skipped since its agent started: rows it could not
    /// accept (a root session, an odd user name) and users whose own listing failed. The rest
    /// of each listing is reported; this says how much was not. (Absent from older agents.)
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_rows: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LoadReport {
    /// Checks that every figure is finite and in range, so scores stay meaningful.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let finite_nonneg = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number >= 0 (got {v})"))
            }
        };
        for (i, v) in self.load_avg.iter().enumerate() {
            finite_nonneg(["load1", "load5", "load15"][i], *v)?;
        }
        finite_nonneg("cpu_utilisation", self.cpu_utilisation)?;
        if self.cpu_utilisation > 1.0 {
            return Err(format!(
                "cpu_utilisation is a fraction 0..1 (got {})",
                self.cpu_utilisation
            ));
        }
        finite_nonneg("cpu_mhz", self.cpu_mhz)?;
        if self.mem_available_kib > self.mem_total_kib {
            return Err("mem_available_kib exceeds mem_total_kib".to_owned());
        }
        for (name, v) in [
            ("psi_cpu_some_avg10", self.psi_cpu_some_avg10),
            ("psi_memory_some_avg10", self.psi_memory_some_avg10),
        ] {
            if let Some(v) = v {
                finite_nonneg(name, v)?;
            }
        }
        Ok(())
    }
}

/// Which existing session a user resumes when there are several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumePreference {
    /// A disconnected session first (X2Go's behaviour): reattaching steals nothing.
    #[default]
    Disconnected,
    /// A running session first (take it over from another client).
    Running,
}

/// A pool's tunables beyond its policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolOptions {
    /// Which of a user's sessions to resume first.
    pub resume_prefer: ResumePreference,
    /// Session count at which `least-load`'s session term is 1 for hosts without a cap.
    pub session_ref: u32,
    /// Limits on the pool's sessions (all off by default).
    pub limits: SessionLimits,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            resume_prefer: ResumePreference::Disconnected,
            session_ref: DEFAULT_SESSION_REF,
            limits: SessionLimits::default(),
        }
    }
}

/// Default time between the polite end of a session a policy logs off and its kill.
pub const DEFAULT_LOGOFF_GRACE: Duration = Duration::from_secs(60);

/// A pool's session policies: how many sessions a user may have, and when the broker logs a
/// session off through its agent. Every limit is off unless set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionLimits {
    /// Most live sessions (and reservations) one user may have on the pool's hosts; a placement
    /// that would exceed it is refused, resuming one is not.
    pub max_sessions_per_user: Option<u32>,
    /// Log off a session that has been disconnected this long.
    pub logoff_disconnected_after: Option<ConfigDuration>,
    /// Log off a session whose user has been idle this long (where the source reports idleness).
    pub logoff_idle_after: Option<ConfigDuration>,
    /// Log off a session this old.
    pub max_session_age: Option<ConfigDuration>,
    /// Between the polite end (terminate) and the kill of a policy log-off.
    pub logoff_grace: ConfigDuration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions_per_user: None,
            logoff_disconnected_after: None,
            logoff_idle_after: None,
            max_session_age: None,
            logoff_grace: ConfigDuration(DEFAULT_LOGOFF_GRACE),
        }
    }
}

impl SessionLimits {
    /// Whether any log-off rule is set.
    pub fn logs_off(&self) -> bool {
        self.logoff_disconnected_after.is_some()
            || self.logoff_idle_after.is_some()
            || self.max_session_age.is_some()
    }
}

/// Which session policy asks for a log-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogoffRule {
    /// Disconnected longer than `logoff_disconnected_after`.
    Disconnected,
    /// Idle longer than `logoff_idle_after`.
    Idle,
    /// Older than `max_session_age`.
    Age,
}

impl LogoffRule {
    /// The rule's name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogoffRule::Disconnected => "disconnected",
            LogoffRule::Idle => "idle",
            LogoffRule::Age => "age",
        }
    }
}

/// A session a pool's policy says to log off now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLogoff {
    /// The session.
    pub session: SessionRecord,
    /// The pool whose policy applies.
    pub pool: Arc<str>,
    /// Which rule.
    pub rule: LogoffRule,
    /// How long the condition has held (disconnected, idle) or the session's age.
    pub for_ms: u64,
    /// The rule's limit.
    pub limit_ms: u64,
    /// Grace between terminate and kill.
    pub grace: Duration,
}

/// A pool definition: a named set of hosts and the rule to place sessions on them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// The pool's name (an X2Go profile id, a service name).
    pub name: String,
    /// How new sessions are placed.
    pub policy: Policy,
    /// Tunables.
    pub options: PoolOptions,
    /// Member host names, in configured order (round-robin walks this order).
    pub hosts: Vec<String>,
}

/// Placement settings that hold for the whole cluster (`[placement]` in the broker config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// How long a reservation holds capacity before it expires.
    pub reservation_ttl: ConfigDuration,
    /// A load report is stale after this many of its agent's report intervals.
    pub stale_after_intervals: u32,
    /// How long a host that failed a start or a probe is avoided.
    pub failure_penalty: ConfigDuration,
    /// Seed of the tie-breaking RNG (same state and seed give the same decisions).
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            reservation_ttl: ConfigDuration(DEFAULT_RESERVATION_TTL),
            stale_after_intervals: DEFAULT_STALE_AFTER_INTERVALS,
            failure_penalty: ConfigDuration(DEFAULT_FAILURE_PENALTY),
            seed: 0,
        }
    }
}

/// A session as the outside world sees it (names resolved), for queries and the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Switchboard's id.
    pub id: SessionId,
    /// Owner.
    pub user: Arc<str>,
    /// Host it runs on.
    pub host: Arc<str>,
    /// Pool it was placed through (`None` for sessions adopted from a host's report).
    pub pool: Option<Arc<str>>,
    /// Lifecycle state.
    pub state: SessionState,
    /// The backend's own id (X2Go session id, logind session, pod name).
    pub backend_id: Option<Arc<str>>,
    /// Client address that asked for it, when known.
    pub client: Option<IpAddr>,
    /// When it was confirmed or adopted.
    pub created_at: Millis,
    /// When its state last changed.
    pub updated_at: Millis,
}

/// A reservation as the outside world sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRecord {
    /// The id the session will have once confirmed.
    pub id: SessionId,
    /// Who it is for.
    pub user: Arc<str>,
    /// Where it holds capacity.
    pub host: Arc<str>,
    /// Which pool placed it.
    pub pool: Arc<str>,
    /// Client address that asked.
    pub client: Option<IpAddr>,
    /// When it was made.
    pub created_at: Millis,
    /// When it lapses unless confirmed.
    pub expires_at: Millis,
}

/// What the store does not hold about one host: its link or probe verdict, its report interval,
/// its latest load and penalty. Carried across a rebuild from the store ([`Volatile`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRuntime {
    /// The host.
    pub name: Arc<str>,
    /// Its health when the rebuild began.
    pub health: Health,
    /// The interval its agent reports at.
    pub report_interval: Duration,
    /// Its latest load report.
    pub load: Option<LoadReport>,
    /// When that report arrived.
    pub last_report_at: Option<Millis>,
    /// Until when it is penalised after a failed start.
    pub penalty_until: Option<Millis>,
    /// Placements since its last load report.
    pub pending: u32,
}

/// The volatile part of the state (what agents and probes told the broker, and the
/// reservations it handed out), taken from the state before a rebuild from the store and put
/// back after it with `Command::RestoreVolatile`: a failed commit then costs only the failed
/// batch, not every host's link and every reservation already promised.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Volatile {
    /// Every host's runtime facts.
    pub hosts: Vec<HostRuntime>,
    /// Every live reservation.
    pub reservations: Vec<ReservationRecord>,
}

/// A session as a host reports it (agent inventory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedSession {
    /// The backend's id for it, unique on that host.
    pub backend_id: String,
    /// Owner.
    pub user: String,
    /// Running or disconnected (a host never reports the other states).
    pub state: ReportedState,
    /// Seconds since the user last did anything in it, where the source knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<u64>,
    /// The backend's own description of the session, for clients that resume it (X2Go: the
    /// `x2golistsessions` line, handed to X2Go clients as `SESSION_INFO`). The core ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
}

/// The states a host can report a session in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportedState {
    /// A client is attached.
    Running,
    /// No client is attached.
    Disconnected,
}

impl From<ReportedState> for SessionState {
    fn from(r: ReportedState) -> SessionState {
        match r {
            ReportedState::Running => SessionState::Running,
            ReportedState::Disconnected => SessionState::Disconnected,
        }
    }
}
