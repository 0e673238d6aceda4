//! Events: what applying a command changed. The broker persists the durable ones before it replies.

use crate::config::HostAddr;
use crate::model::{
    AdminState, Health, HostSpec, PoolSpec, SessionId, SessionRecord, SessionState,
};
use crate::placement::PlacementReason;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One change to the cluster state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A host was added.
    HostAdded(HostSpec),
    /// A host's configuration was replaced.
    HostUpdated(HostSpec),
    /// A host was removed.
    HostRemoved {
        /// Host name.
        name: Arc<str>,
    },
    /// A pool was created or replaced.
    PoolDefined(PoolSpec),
    /// A pool was removed.
    PoolRemoved {
        /// Pool name.
        name: Arc<str>,
    },
    /// A host's admin state changed.
    AdminStateChanged {
        /// Host name.
        host: Arc<str>,
        /// New state.
        state: AdminState,
    },
    /// A host is to go offline once empty (`by` says who asked), or no longer is (`None`).
    OfflineWhenEmpty {
        /// Host name.
        host: Arc<str>,
        /// Who asked, while pending.
        by: Option<Arc<str>>,
    },
    /// A host drained with `DrainThenOffline` became empty and went offline (the admin change
    /// itself is its own `AdminStateChanged`).
    Drained {
        /// Host name.
        host: Arc<str>,
        /// Who asked for it.
        by: Arc<str>,
    },
    /// A host's weight changed.
    WeightChanged {
        /// Host name.
        host: Arc<str>,
        /// New weight.
        weight: u32,
    },
    /// A host's health changed.
    HealthChanged {
        /// Host name.
        host: Arc<str>,
        /// New health.
        health: Health,
    },
    /// A host is avoided for new sessions until `until` (failed start or probe).
    HostPenalized {
        /// Host name.
        host: Arc<str>,
        /// End of the penalty.
        until: Millis,
    },
    /// A host reported load.
    LoadReported {
        /// Host name.
        host: Arc<str>,
    },
    /// A placement decision: a resumed session, a new reservation, or the user's live reservation.
    Placed(Placement),
    /// A reservation ended without becoming a session, or by becoming one.
    ReservationEnded {
        /// The reservation.
        id: SessionId,
        /// Where it held capacity.
        host: Arc<str>,
        /// Why it ended.
        cause: ReservationEnd,
    },
    /// A session now exists (confirmed, adopted from a host report).
    SessionStarted(SessionRecord),
    /// A session changed state.
    SessionStateChanged {
        /// The session.
        id: SessionId,
        /// Its host.
        host: Arc<str>,
        /// New state.
        state: SessionState,
        /// When.
        at: Millis,
    },
    /// A session is gone.
    SessionEnded {
        /// The session.
        id: SessionId,
        /// Its host.
        host: Arc<str>,
        /// When.
        at: Millis,
    },
    /// A host's agent credential was issued (or replaced).
    CredentialIssued {
        /// The host.
        host: Arc<str>,
        /// SHA-256 of the secret, lowercase hex.
        hash: Arc<str>,
    },
    /// A host's agent credential was revoked.
    CredentialRevoked {
        /// The host.
        host: Arc<str>,
    },
    /// Rows of a host's inventory were skipped: `invalid` ones (a backend id or user name the
    /// name check refuses) and `duplicate` ones (a backend id listed again; the first row with it
    /// was applied). The rest of the inventory was applied. For logs and metrics only.
    InventoryRowsRefused {
        /// The host.
        host: Arc<str>,
        /// Rows refused by the name check.
        invalid: u32,
        /// Rows repeating a backend id.
        duplicate: u32,
        /// Why the first skipped row was skipped (bounded: names are at most
        /// [`crate::model::MAX_NAME_LEN`] bytes).
        first: Arc<str>,
    },
    /// Time changed how a host looks without anything else happening to it: its load report
    /// went stale, or its failure penalty ended. (For readers that cache host views.)
    HostChanged {
        /// The host.
        host: Arc<str>,
    },
}

impl Event {
    /// The host this event concerns, if it concerns exactly one.
    pub fn host(&self) -> Option<&Arc<str>> {
        match self {
            Event::HostRemoved { name } => Some(name),
            Event::AdminStateChanged { host, .. }
            | Event::OfflineWhenEmpty { host, .. }
            | Event::Drained { host, .. }
            | Event::WeightChanged { host, .. }
            | Event::HealthChanged { host, .. }
            | Event::HostPenalized { host, .. }
            | Event::LoadReported { host }
            | Event::ReservationEnded { host, .. }
            | Event::SessionStateChanged { host, .. }
            | Event::SessionEnded { host, .. }
            | Event::CredentialIssued { host, .. }
            | Event::CredentialRevoked { host }
            | Event::InventoryRowsRefused { host, .. }
            | Event::HostChanged { host } => Some(host),
            Event::Placed(p) => Some(&p.host),
            Event::SessionStarted(s) => Some(&s.host),
            Event::HostAdded(_)
            | Event::HostUpdated(_)
            | Event::PoolDefined(_)
            | Event::PoolRemoved { .. } => None,
        }
    }
}

impl Event {
    /// Whether the store must hold this event before the command is acknowledged.
    ///
    /// Reservations, load, health and penalties are volatile by design: after a restart the
    /// agents' reports rebuild them within seconds.
    pub fn is_durable(&self) -> bool {
        match self {
            Event::HostAdded(_)
            | Event::HostUpdated(_)
            | Event::HostRemoved { .. }
            | Event::PoolDefined(_)
            | Event::PoolRemoved { .. }
            | Event::AdminStateChanged { .. }
            | Event::OfflineWhenEmpty { .. }
            | Event::Drained { .. }
            | Event::WeightChanged { .. }
            | Event::SessionStarted(_)
            | Event::SessionStateChanged { .. }
            | Event::SessionEnded { .. }
            | Event::CredentialIssued { .. }
            | Event::CredentialRevoked { .. } => true,
            Event::HealthChanged { .. }
            | Event::HostChanged { .. }
            | Event::HostPenalized { .. }
            | Event::LoadReported { .. }
            | Event::InventoryRowsRefused { .. }
            | Event::Placed(_)
            | Event::ReservationEnded { .. } => false,
        }
    }
}

/// Why a reservation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationEnd {
    /// It became a session.
    Confirmed,
    /// It was given back.
    Released,
    /// Its TTL ran out (not a failure of the host).
    Expired,
    /// The host failed to start the session.
    StartFailed,
    /// Its host or pool was removed, or its host went offline or unreachable.
    Withdrawn,
}

/// What a placement decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// Session id (resumed) or reservation id (new).
    pub id: SessionId,
    /// Who asked.
    pub user: Arc<str>,
    /// Which pool.
    pub pool: Arc<str>,
    /// The chosen host.
    pub host: Arc<str>,
    /// Where the client connects.
    pub address: Arc<HostAddr>,
    /// Resume, new reservation, or the live one returned again.
    pub outcome: PlacementOutcome,
    /// For a resumed session: the backend's own id for it (what an agent command names).
    pub backend_id: Option<Arc<str>>,
    /// For reservations: when it lapses unless confirmed.
    pub expires_at: Option<Millis>,
    /// Why this host.
    pub reason: PlacementReason,
}

/// The kind of answer a placement gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementOutcome {
    /// The user's existing session, in the given state.
    Resumed(SessionState),
    /// A new reservation.
    Reserved,
    /// The user's reservation in this pool that was still live.
    ExistingReservation,
}
