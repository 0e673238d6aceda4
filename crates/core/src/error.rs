//! What can go wrong when a command is applied. Every variant carries what a caller needs to act.

use crate::model::SessionId;
use crate::placement::ExclusionCounts;

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    /// A name that does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// "host", "pool" or "user".
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A session or reservation id that does not exist (or no longer does).
    #[error("{kind} {id} not found")]
    IdNotFound {
        /// "session" or "reservation".
        kind: &'static str,
        /// The id asked for.
        id: SessionId,
    },
    /// Adding something that exists.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// "host" or "pool".
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// Removing a host that still has live sessions, without force.
    #[error(
        "host {host:?} still has {sessions} live session(s); drain it first or remove with force"
    )]
    HostHasSessions {
        /// The host.
        host: String,
        /// How many.
        sessions: usize,
    },
    /// A value out of range or malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A session state change the lifecycle does not allow.
    #[error("session {id} cannot go from {from} to {to}")]
    BadTransition {
        /// The session.
        id: SessionId,
        /// Its state.
        from: crate::model::SessionState,
        /// The state asked for.
        to: crate::model::SessionState,
    },
    /// A report about a session that lives on another host.
    #[error("session {id} is not on host {host:?}")]
    WrongHost {
        /// The session.
        id: SessionId,
        /// The host that reported.
        host: String,
    },
    /// The user has as many sessions in the pool as its `max_sessions_per_user` allows.
    #[error("user {user:?} already has {sessions} session(s) in pool {pool:?}, the most it allows")]
    UserLimit {
        /// The user.
        user: String,
        /// The pool.
        pool: String,
        /// The user's live sessions and reservations there.
        sessions: u32,
    },
    /// No host in the pool can take a new session.
    #[error("no host available in pool {pool:?} ({excluded})")]
    NoHostAvailable {
        /// The pool.
        pool: String,
        /// Why each host was excluded.
        excluded: ExclusionCounts,
    },
}
