//! Commands: the only way to change the cluster state (`ClusterState::apply`).

use crate::model::{
    AdminState, HostSpec, LoadReport, PoolSpec, ReportedSession, SessionId, SessionRecord, Settings,
};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// A request to change the cluster state. Applying one yields events or an error, never both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Add a host (it joins pools through `DefinePool`).
    AddHost(HostSpec),
    /// Replace a host's configuration, keeping its sessions and runtime state.
    UpdateHost(HostSpec),
    /// Remove a host; refused while it has live sessions unless `force`, which ends them.
    RemoveHost {
        /// Host name.
        name: String,
        /// End its sessions instead of refusing.
        force: bool,
    },
    /// Create or replace a pool.
    DefinePool(PoolSpec),
    /// Remove a pool (its sessions stay on their hosts).
    RemovePool {
        /// Pool name.
        name: String,
    },
    /// Set a host online, draining or offline.
    SetAdminState {
        /// Host name.
        host: String,
        /// New admin state.
        state: AdminState,
    },
    /// Drain a host and take it offline once it has neither sessions nor reservations. Kept
    /// (durably) until then, or until an operator sets the host's admin state otherwise.
    DrainThenOffline {
        /// Host name.
        host: String,
        /// Who asked (for the audit record of the automatic step).
        by: String,
    },
    /// Set a host's weight (0 = no new sessions).
    SetWeight {
        /// Host name.
        host: String,
        /// New weight.
        weight: u32,
    },
    /// Replace cluster-wide placement settings (TTL, staleness, penalty). The RNG is not reseeded.
    UpdateSettings(Settings),
    /// An agent's load report.
    ReportLoad {
        /// Host name.
        host: String,
        /// The figures.
        report: LoadReport,
    },
    /// A host's full session inventory: reconciled against what the broker knows.
    ReportInventory {
        /// Host name.
        host: String,
        /// Every session that exists on the host now.
        sessions: Vec<ReportedSession>,
    },
    /// One session appeared or changed state on a host.
    ReportSession {
        /// Host name.
        host: String,
        /// The session as the host sees it.
        session: ReportedSession,
    },
    /// One session disappeared from a host.
    ReportSessionGone {
        /// Host name.
        host: String,
        /// The backend's id for it.
        backend_id: String,
    },
    /// Place a session: resume the user's existing one in the pool, else reserve capacity on the
    /// best eligible host.
    Reserve {
        /// Who asks.
        user: String,
        /// Where.
        pool: String,
        /// From which address, when known.
        client: Option<IpAddr>,
    },
    /// A reservation became a real session (idempotent for an already confirmed id).
    Confirm {
        /// The reservation's id, kept by the session.
        id: SessionId,
        /// The backend's id for the session, when known.
        backend_id: Option<String>,
        /// `starting` if the backend is still bringing it up; default `running`.
        starting: bool,
    },
    /// Give a reservation back without using it.
    Release {
        /// The reservation.
        id: SessionId,
    },
    /// A reserved start failed on its host: the reservation goes and the host is avoided for the
    /// failure penalty.
    ReportStartFailed {
        /// The reservation.
        id: SessionId,
        /// What the backend said (for logs and events).
        reason: String,
    },
    /// Termination of a session was requested (state `ending`).
    BeginEnding {
        /// The session.
        id: SessionId,
    },
    /// A session is gone.
    EndSession {
        /// The session.
        id: SessionId,
    },
    /// A host's agent connected and announced its report interval.
    AgentConnected {
        /// Host name.
        host: String,
        /// How often it will report.
        #[serde(with = "crate::config::serde_duration")]
        report_interval: Duration,
    },
    /// An agent authenticated with the credential whose hash is `credential` and linked: as
    /// [`Command::AgentConnected`], but refused (changing nothing) unless that is still the
    /// host's credential. The check and the change are one step, so a revocation or a new
    /// enrolment that lands while the link is set up can never leave the host `up`.
    AgentAuthenticated {
        /// Host name.
        host: String,
        /// How often it will report.
        #[serde(with = "crate::config::serde_duration")]
        report_interval: Duration,
        /// SHA-256 (hex) of the credential the agent presented.
        credential: String,
    },
    /// A host's agent link was lost (or missed its reports).
    AgentLost {
        /// Host name.
        host: String,
    },
    /// Result of a TCP probe of an agentless host.
    ReportProbe {
        /// Host name.
        host: String,
        /// Whether the probe connected.
        ok: bool,
    },
    /// Load a durable session record at start-up (emits nothing: it is already stored).
    RestoreSession(SessionRecord),
    /// Advance time only: expire reservations, notice stale reports and ended penalties.
    Tick,
    /// Record a new agent credential for a host, replacing any earlier one. Only the hash is
    /// kept; the host must be configured with an agent.
    IssueCredential {
        /// The host.
        host: String,
        /// SHA-256 of the secret, lowercase hex.
        hash: String,
    },
    /// Forget a host's agent credential: its agent can no longer connect.
    RevokeCredential {
        /// The host.
        host: String,
    },
    /// After a rebuild from the store: put back what agents, probes and placements had
    /// established before it (hosts and pools that no longer exist are skipped; reservations
    /// already lapsed are dropped). Emits the health changes it makes.
    RestoreVolatile(Box<crate::model::Volatile>),
    /// At start-up: new session ids are above this one, the highest the store has ever given
    /// (ended sessions included), so that a clock stepped back never hands out an id again.
    SeedIds {
        /// The highest id in the store.
        above: SessionId,
    },
}
