//! PAM through libpam (the `nonstick` binding), on a bounded pool of blocking threads.
//!
//! Each check is one PAM transaction: `pam_authenticate` then `pam_acct_mgmt` (an expired or
//! locked account is refused like a wrong password). PAM modules block, pam_unix sleeps about
//! two seconds after a wrong password, and an LDAP module can hang, so the conversation runs on
//! a [`crate::pool::Pool`] of tokio's blocking threads with at most `pam_pool` at once and at
//! most `[auth] queue` waiting (beyond that a check is refused at once, [`AuthError::Busy`]);
//! the async side never blocks the runtime. A request gives up waiting after
//! [`crate::PAM_TIMEOUT`]; the thread keeps its place until PAM returns, so the bound always
//! holds.

use crate::AuthError;
use crate::pool::{Limits, Pool, PoolError};
use nonstick::{
    AuthnFlags, ConversationAdapter, Result as PamResult, Transaction, TransactionBuilder,
};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;

/// The PAM service and its thread pool (a [`Pool`] named `pam`).
///
/// A source address that has just failed is a suspect: it may hold at most `size - 1` of the
/// threads (all of them when the pool has one), so a stream of wrong passwords from many
/// addresses cannot keep users with clean records from logging in.
#[derive(Clone, Debug)]
pub struct PamPool {
    service: Arc<str>,
    pool: Pool,
}

struct Conversation {
    user: String,
    password: String,
}

impl ConversationAdapter for Conversation {
    fn prompt(&self, _request: impl AsRef<OsStr>) -> PamResult<OsString> {
        Ok(OsString::from(&self.user))
    }

    fn masked_prompt(&self, _request: impl AsRef<OsStr>) -> PamResult<OsString> {
        Ok(OsString::from(&self.password))
    }

    fn error_msg(&self, message: impl AsRef<OsStr>) {
        tracing::debug!(message = %message.as_ref().to_string_lossy(), "PAM error message");
    }

    fn info_msg(&self, message: impl AsRef<OsStr>) {
        tracing::debug!(message = %message.as_ref().to_string_lossy(), "PAM info message");
    }
}

/// The account's name as NSS writes it (`getpwnam(user)->pw_name`): PAM stacks such as sssd's
/// or winbind's accept aliases (`ALICE`, `alice@corp.example`, `CORP\alice`) for one account, and
/// everything after sign-in (ACLs, limits, sessions, templates) must see one name. A name NSS
/// does not know, or a failing lookup, refuses the login.
pub fn canonical(user: &str) -> Result<String, AuthError> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.name),
        Ok(None) => {
            tracing::error!(user = %crate::printable(user), "PAM accepted a name that NSS does not know; sign-in refused (no canonical account name)");
            Err(AuthError::Denied)
        }
        Err(e) => {
            tracing::error!(user = %crate::printable(user), error = %e, "the NSS lookup of a name PAM accepted failed; sign-in refused (no canonical account name)");
            Err(AuthError::Denied)
        }
    }
}

/// One PAM transaction, then the account's canonical name; blocking.
fn authenticate_canonical(service: &str, user: &str, password: &str) -> Result<String, AuthError> {
    authenticate(service, user, password)?;
    canonical(user)
}

/// One PAM transaction, blocking.
fn authenticate(service: &str, user: &str, password: &str) -> Result<(), AuthError> {
    let conversation = Conversation {
        user: user.to_owned(),
        password: password.to_owned(),
    };
    let mut txn = TransactionBuilder::new_with_service(service)
        .username(user)
        .build(conversation.into_conversation())
        .map_err(|e| AuthError::Unavailable(format!("PAM service {service:?}: {e}")))?;
    txn.authenticate(AuthnFlags::empty())
        .map_err(|e| denied_or_broken(service, e))?;
    txn.account_management(AuthnFlags::empty())
        .map_err(|e| denied_or_broken(service, e))?;
    Ok(())
}

fn denied_or_broken(service: &str, e: nonstick::ErrorCode) -> AuthError {
    use nonstick::ErrorCode as E;
    match e {
        E::AuthenticationError
        | E::UserUnknown
        | E::MaxTries
        | E::AccountExpired
        | E::NewAuthTokRequired
        | E::PermissionDenied
        | E::CredentialsInsufficient
        | E::AuthTokExpired => AuthError::Denied,
        other => AuthError::Unavailable(format!("PAM service {service:?}: {other}")),
    }
}

impl PamPool {
    /// A pool of `size` threads for `service`, with `queue` waiting places.
    pub fn new(service: &str, size: usize, queue: usize) -> PamPool {
        PamPool {
            service: service.into(),
            pool: Pool::new(
                "pam",
                Limits {
                    workers: size.max(1),
                    queue,
                },
            ),
        }
    }

    /// Checks a password once a thread is free (a suspect's, for a suspect); refused at once
    /// with [`AuthError::Busy`] when every thread and waiting place is taken. The whole wait,
    /// thread included, is bounded by [`crate::PAM_TIMEOUT`]; a conversation that outlives it
    /// keeps its thread until PAM returns, so the bound on threads holds. Returns the account's
    /// canonical name ([`canonical`]).
    pub async fn verify(
        &self,
        user: &str,
        password: &str,
        suspect: bool,
    ) -> Result<String, AuthError> {
        let service = self.service.clone();
        let (user, password) = (user.to_owned(), password.to_owned());
        let job = self.pool.run(suspect, move || {
            authenticate_canonical(&service, &user, &password)
        });
        match tokio::time::timeout(crate::PAM_TIMEOUT, job).await {
            Ok(Ok(r)) => r,
            Ok(Err(PoolError::Busy)) => Err(AuthError::Busy),
            Ok(Err(PoolError::Panicked(e))) => Err(AuthError::Unavailable(format!(
                "PAM conversation panicked: {e}"
            ))),
            Err(_) => Err(AuthError::Unavailable(format!(
                "PAM did not answer within {:?} (slot wait included)",
                crate::PAM_TIMEOUT
            ))),
        }
    }
}
