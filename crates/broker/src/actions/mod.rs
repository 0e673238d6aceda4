//! Every operator action, once: parsed by a surface (REST, dashboard, management socket, the
//! session-policy sweeper), run here, formatted by the surface again.
//!
//! Each action runs through the engine (and the host's agent where a session must end), is
//! audited here, once, with the actor and the surface it came from, and waits for agents with one
//! timeout ([`AGENT_TIMEOUT`]). The audit record's action names are the management console's
//! words on every surface (`drain`, `drain --then-offline`, `weight 50`, `abortuser`,
//! `shutdownuser`, `logoffuser`, `enroll`, `revoke`), and a failed action's result is its stable
//! error code and message (`not_found: host "x" not found`).
//!
//! # Layout
//! - [`hosts`]: drain (optionally then offline, durably), undrain, offline, online, weight.
//! - [`sessions`]: end one session or all of a target's, and the sweeper's policy log-offs.
//! - [`credentials`]: enrol and revoke agent credentials.

pub mod credentials;
pub mod hosts;
pub mod sessions;

use crate::agents::{AgentHub, CommandError};
use crate::engine::{EngineError, EngineHandle};
use crate::kubernetes::KubePools;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::CoreError;
use switchboard_store::SqlStore;

pub use sessions::{Ended, SessionEnd, Termination};

/// How long an action waits for an agent to carry out a command, on every surface.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where an action came from (the audit record's `surface`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The REST API (actor: the token's name).
    Api,
    /// The web dashboard (actor: the signed-in name).
    Ui,
    /// The management socket (actor: the peer's user name).
    Ctl,
    /// The session-policy sweeper (actor: `policy`).
    Policy,
    /// The program embedding the broker (`switchboard up` enrolling its own agents).
    Local,
}

impl Surface {
    /// The audit log's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Api => "api",
            Surface::Ui => "ui",
            Surface::Ctl => "ctl",
            Surface::Policy => "policy",
            Surface::Local => "local",
        }
    }
}

/// Who asks for an action, and through what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The surface.
    pub surface: Surface,
    /// The name the surface authenticated.
    pub name: String,
}

impl Actor {
    /// `name` acting through `surface`.
    pub fn new(surface: Surface, name: impl Into<String>) -> Actor {
        Actor {
            surface,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for Actor {
    /// `surface name`: how the core keeps who asked for a deferred step.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.surface.as_str(), self.name)
    }
}

/// Why an action was not (wholly) carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The engine refused, or the store could not commit (nothing changed).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The host's agent could not do it.
    #[error(transparent)]
    Agent(#[from] CommandError),
    /// The target has no live sessions.
    #[error("no live sessions for {0}")]
    NoSessions(String),
    /// Some of a target's sessions could not be ended (the others were).
    #[error("{failed} of {total} sessions not ended: {details}")]
    Partial {
        /// How many failed.
        failed: usize,
        /// How many there were.
        total: usize,
        /// Each failure, `id: why`, separated by `; `.
        details: String,
    },
    /// The Kubernetes API could not delete a session's pod.
    #[error("kubernetes: {0}")]
    Kubernetes(#[from] switchboard_k8s::StartError),
    /// No randomness for a new secret.
    #[error("no randomness available: {0}")]
    Random(String),
}

impl ActionError {
    /// A stable, machine-readable code: the REST API's error code, and the audit record's.
    pub fn code(&self) -> &'static str {
        match self {
            ActionError::Engine(EngineError::Core(c)) => match c {
                CoreError::NotFound { .. } | CoreError::IdNotFound { .. } => "not_found",
                CoreError::UserLimit { .. } => "user_limit",
                CoreError::NoHostAvailable { .. } => "no_host_available",
                CoreError::AlreadyExists { .. } | CoreError::HostHasSessions { .. } => "conflict",
                CoreError::BadTransition { .. } => "bad_transition",
                CoreError::Invalid { .. } | CoreError::WrongHost { .. } => "bad_request",
            },
            ActionError::Engine(EngineError::Unavailable(_)) => "store_unavailable",
            ActionError::Engine(EngineError::ShuttingDown) => "shutting_down",
            ActionError::Agent(CommandError::NotConnected(_)) => "agent_unavailable",
            ActionError::Agent(CommandError::Timeout(..)) => "agent_timeout",
            ActionError::Agent(CommandError::Unsupported { .. }) => "agent_unsupported",
            ActionError::Agent(CommandError::Lost(_) | CommandError::Failed { .. }) => {
                "agent_failed"
            }
            ActionError::NoSessions(_) => "not_found",
            ActionError::Kubernetes(_) => "kubernetes_unavailable",
            ActionError::Partial { .. } => "partial",
            ActionError::Random(_) => "internal",
        }
    }

    /// What happened, for people.
    pub fn message(&self) -> String {
        match self {
            ActionError::Engine(EngineError::Unavailable(m)) => {
                format!("the store is unavailable, nothing was changed: {m}")
            }
            e => e.to_string(),
        }
    }
}

/// The action layer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Actions {
    engine: EngineHandle,
    agents: AgentHub,
    kube: KubePools,
    store: Arc<SqlStore>,
}

impl Actions {
    /// Actions through `engine`, agents and Kubernetes pools, audited in `store`.
    pub fn new(
        engine: EngineHandle,
        agents: AgentHub,
        kube: KubePools,
        store: Arc<SqlStore>,
    ) -> Actions {
        Actions {
            engine,
            agents,
            kube,
            store,
        }
    }

    /// Deletes audit records older than `keep` now and every hour (a timer of the action layer:
    /// with several brokers it runs where writes run).
    pub fn spawn_audit_retention(
        &self,
        keep: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        crate::audit::spawn_retention(self.store.clone(), keep, shutdown)
    }

    /// Records one action and how it went (a failure to write the record is logged, never
    /// hidden, and never undoes the action).
    async fn audit<T>(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        result: &Result<T, ActionError>,
    ) {
        let result = match result {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{}: {}", e.code(), e.message())),
        };
        crate::audit::record(
            &self.store,
            &actor.name,
            actor.surface.as_str(),
            action,
            target,
            result,
        )
        .await;
    }
}
