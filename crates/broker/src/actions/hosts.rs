//! Host actions: admin state and weight.
//!
//! The drain rule itself (no new sessions, resumes still land) is the core's
//! (`core/src/placement/`); "then offline" is state of the core too, committed like the drain,
//! so a broker restart in the middle still ends with the host offline once it is empty.

use super::{ActionError, Actions, Actor};
use switchboard_core::{AdminState, Command};

/// A change of a host's admin state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminChange {
    /// No new sessions; its own users still resume. With `then_offline`, it goes offline by
    /// itself once it holds neither sessions nor reservations.
    Drain {
        /// Go offline once empty.
        then_offline: bool,
    },
    /// Take new sessions again.
    Undrain,
    /// No new sessions and no resumes.
    Offline,
    /// Back in service.
    Online,
}

impl AdminChange {
    /// The audit log's (and the console's) word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminChange::Drain {
                then_offline: false,
            } => "drain",
            AdminChange::Drain { then_offline: true } => "drain --then-offline",
            AdminChange::Undrain => "undrain",
            AdminChange::Offline => "offline",
            AdminChange::Online => "online",
        }
    }

    /// The admin state it sets.
    pub fn state(self) -> AdminState {
        match self {
            AdminChange::Drain { .. } => AdminState::Draining,
            AdminChange::Offline => AdminState::Offline,
            AdminChange::Undrain | AdminChange::Online => AdminState::Online,
        }
    }
}

impl Actions {
    /// Changes a host's admin state.
    pub async fn set_admin(
        &self,
        actor: &Actor,
        host: &str,
        change: AdminChange,
    ) -> Result<(), ActionError> {
        let command = match change {
            AdminChange::Drain { then_offline: true } => Command::DrainThenOffline {
                host: host.to_owned(),
                by: actor.to_string(),
            },
            c => Command::SetAdminState {
                host: host.to_owned(),
                state: c.state(),
            },
        };
        let r = self
            .engine
            .apply(command)
            .await
            .map(drop)
            .map_err(ActionError::from);
        self.audit(actor, change.as_str(), host, &r).await;
        r
    }

    /// Sets a host's weight (kept across restarts and reloads).
    pub async fn set_weight(
        &self,
        actor: &Actor,
        host: &str,
        weight: u32,
    ) -> Result<(), ActionError> {
        let r = self
            .engine
            .apply(Command::SetWeight {
                host: host.to_owned(),
                weight,
            })
            .await
            .map(drop)
            .map_err(ActionError::from);
        self.audit(actor, &format!("weight {weight}"), host, &r)
            .await;
        r
    }
}
