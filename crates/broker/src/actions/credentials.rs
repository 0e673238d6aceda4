//! Agent credentials: enrol (issue, replacing any earlier one) and revoke.

use super::{ActionError, Actions, Actor};
use switchboard_core::Command;

impl Actions {
    /// Issues a new credential for a configured agent host (replacing and disconnecting any
    /// earlier one) and returns it: the only time it is shown. The store keeps its hash, and the
    /// audit record never holds the credential.
    pub async fn enroll(&self, actor: &Actor, host: &str) -> Result<String, ActionError> {
        let r = self.issue(host).await;
        self.audit(actor, "enroll", host, &r).await;
        r
    }

    async fn issue(&self, host: &str) -> Result<String, ActionError> {
        let secret = crate::agents::new_credential().map_err(ActionError::Random)?;
        self.engine
            .apply(Command::IssueCredential {
                host: host.to_owned(),
                hash: crate::tokens::hash(&secret),
            })
            .await?;
        self.agents.disconnect(host);
        Ok(secret)
    }

    /// Revokes a host's credential and drops its link.
    pub async fn revoke(&self, actor: &Actor, host: &str) -> Result<(), ActionError> {
        let r = self
            .engine
            .apply(Command::RevokeCredential {
                host: host.to_owned(),
            })
            .await
            .map(drop)
            .map_err(ActionError::from);
        if r.is_ok() {
            self.agents.disconnect(host);
        }
        self.audit(actor, "revoke", host, &r).await;
        r
    }
}
