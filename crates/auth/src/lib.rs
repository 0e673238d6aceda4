//! Switchboard's authenticators.
//!
//! One [`Authenticator`] checks a user name and password by the method the `[auth]` section of
//! the broker config names:
//! - `pam`: the system's PAM stack through libpam ([`pam`]), on a bounded pool of blocking
//!   threads so a slow module (pam_unix's failure delay, an LDAP server that hangs) never stalls
//!   the request path;
//! - `file:PATH`: a file of `user:hash` lines with argon2 or bcrypt hashes ([`file`]);
//! - `none`: every user is who they say they are (must be chosen explicitly).
//!
//! Around every method, [`throttle`] delays wrong passwords per source address and per account;
//! only the failing answer waits, so nobody else's sign-in is held up; an address that has just
//! failed may not take the last PAM slot, so users with clean records always get one. [`authid`] holds X2Go's AUTHID tokens
//! (random, single-use, rotating, bound to an address, expiring, bounded in number). [`groups`]
//! looks up a user's groups through NSS for group ACLs.
//!
//! # Layout
//! - [`authid`]: X2Go's AUTHID tokens.
//! - [`file`]: the `file:PATH` password file (argon2, bcrypt).
//! - [`groups`]: a user's groups through NSS.
//! - [`pam`]: the PAM method on its pool of blocking threads.
//! - [`secret`]: random secrets (bytes, hex, prefixed base64url tokens), SHA-256 hex and
//!   constant-time comparison: the one place in Switchboard where secrets are drawn and compared.
//! - [`throttle`]: per-source and per-account failure delays.

pub mod authid;
pub mod file;
pub mod groups;
pub mod pam;
pub mod secret;
pub mod throttle;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Longest user name accepted (before any method sees it).
pub const MAX_USER: usize = 256;
/// Longest password accepted.
pub const MAX_PASSWORD: usize = 4096;
/// Default size of the PAM thread pool.
pub const DEFAULT_PAM_POOL: usize = 2;
/// Default PAM service name (`/etc/pam.d/switchboard`).
pub const DEFAULT_PAM_SERVICE: &str = "switchboard";

/// How users are authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// libpam with this service name.
    Pam {
        /// The PAM service (`/etc/pam.d/NAME`).
        service: String,
        /// Most PAM conversations at once.
        pool: usize,
    },
    /// A password file.
    File(PathBuf),
    /// No check at all.
    None,
}

impl Method {
    /// Parses `pam`, `file:PATH` or `none`.
    pub fn parse(text: &str, service: Option<&str>, pool: Option<usize>) -> Result<Method, String> {
        match text {
            "pam" => {
                let service = service.unwrap_or(DEFAULT_PAM_SERVICE);
                if service.is_empty()
                    || !service
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(format!(
                        "{service:?} is not a PAM service name (letters, digits, '-', '_', '.')"
                    ));
                }
                let pool = pool.unwrap_or(DEFAULT_PAM_POOL);
                if pool == 0 || pool > 256 {
                    return Err(format!("pam pool size must be 1..=256 (got {pool})"));
                }
                Ok(Method::Pam {
                    service: service.to_owned(),
                    pool,
                })
            }
            "none" => Ok(Method::None),
            other => match other.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Method::File(PathBuf::from(path))),
                _ => Err(format!(
                    "{other:?} is not an authentication method: use \"pam\", \"file:PATH\" or \"none\""
                )),
            },
        }
    }

    /// The method's name for logs and `explain`.
    pub fn name(&self) -> String {
        match self {
            Method::Pam { service, .. } => format!("pam ({service})"),
            Method::File(p) => format!("file:{}", p.display()),
            Method::None => "none".to_owned(),
        }
    }
}

/// Why a check did not succeed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Wrong user name or password (the caller is not told which).
    #[error("authentication failed")]
    Denied,
    /// The method itself is broken (unreadable password file, PAM misconfigured).
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

/// Checks passwords by one [`Method`], with per-source and per-account failure delays.
#[derive(Clone, Debug)]
pub struct Authenticator {
    method: Arc<Method>,
    pam: Option<pam::PamPool>,
    file: Option<file::PasswordFile>,
    throttle: throttle::Throttle,
}

impl Authenticator {
    /// An authenticator for `method` with the default throttle.
    pub fn new(method: Method) -> Authenticator {
        Authenticator::with_throttle(method, throttle::Throttle::default())
    }

    /// An authenticator with a given throttle (tests use short delays).
    pub fn with_throttle(method: Method, throttle: throttle::Throttle) -> Authenticator {
        let pam = match &method {
            Method::Pam { service, pool } => Some(pam::PamPool::new(service, *pool)),
            _ => None,
        };
        let file = match &method {
            Method::File(p) => Some(file::PasswordFile::new(p.clone())),
            _ => None,
        };
        Authenticator {
            method: Arc::new(method),
            pam,
            file,
            throttle,
        }
    }

    /// The method in use.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Whether the method checks anything (`none` does not).
    pub fn checks(&self) -> bool {
        !matches!(*self.method, Method::None)
    }

    /// Checks `user`'s `password`, asked from `source`. A wrong password is answered only after
    /// the longer of the source's and the account's failure delays; one account has one check
    /// in flight at a time, one source a few ([`throttle::SOURCE_CHECKS`]); other sources and
    /// accounts are not affected.
    pub async fn verify(
        &self,
        user: &str,
        password: &str,
        source: IpAddr,
    ) -> Result<(), AuthError> {
        if !valid_user(user) || password.len() > MAX_PASSWORD || password.contains('\0') {
            let turn = self.throttle.turn(source, None).await;
            self.throttle.failed(turn, source, None).await;
            return Err(AuthError::Denied);
        }
        let turn = self.throttle.turn(source, Some(user)).await;
        let suspect = self.throttle.suspect(source);
        let result = match &*self.method {
            Method::None => Ok(()),
            Method::File(_) => match &self.file {
                Some(f) => f.verify(user, password).await,
                None => Err(AuthError::Unavailable("password file not set up".into())),
            },
            Method::Pam { .. } => match &self.pam {
                Some(p) => p.verify(user, password, suspect).await,
                None => Err(AuthError::Unavailable("PAM not set up".into())),
            },
        };
        match &result {
            Ok(()) => {}
            Err(AuthError::Denied) => {
                tracing::info!(user = %printable(user), %source, method = %self.method.name(), "wrong user name or password");
                self.throttle.failed(turn, source, Some(user)).await;
                return result;
            }
            Err(AuthError::Unavailable(m)) => {
                tracing::error!(method = %self.method.name(), error = %m, "authentication is unavailable");
            }
        }
        drop(turn);
        result
    }
}

/// Whether a user name may be passed to an authentication method: 1–256 bytes, no control
/// characters, no `:` (the password file's separator) and no leading `-`.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER
        && !user.starts_with('-')
        && !user.chars().any(|c| c.is_control() || c == ':')
}

/// A user name made safe for a log line (control characters escaped, length capped).
pub fn printable(user: &str) -> String {
    let mut s: String = user
        .chars()
        .take(64)
        .flat_map(char::escape_default)
        .collect();
    if user.chars().count() > 64 {
        s.push('…');
    }
    s
}

/// Upper bound on how long one PAM conversation may keep a request waiting.
pub const PAM_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn methods_parse_with_clear_errors() {
        assert_eq!(
            Method::parse("pam", None, None).unwrap(),
            Method::Pam {
                service: "switchboard".into(),
                pool: 2
            }
        );
        assert_eq!(
            Method::parse("file:/etc/switchboard/passwd", None, None).unwrap(),
            Method::File("/etc/switchboard/passwd".into())
        );
        assert_eq!(Method::parse("none", None, None).unwrap(), Method::None);
        assert!(
            Method::parse("ldap", None, None)
                .unwrap_err()
                .contains("file:PATH")
        );
        assert!(Method::parse("file:", None, None).is_err());
        assert!(Method::parse("pam", Some("../x"), None).is_err());
        assert!(Method::parse("pam", None, Some(0)).is_err());
    }

    #[test]
    fn user_names_are_checked_before_any_method_sees_them() {
        assert!(valid_user("alice"));
        assert!(valid_user("alice@example.org"));
        for bad in ["", "-rf", "a:b", "a\nb", "a\0b", &"x".repeat(300)] {
            assert!(!valid_user(bad), "{bad:?}");
        }
        assert_eq!(printable("a\nb"), "a\\nb");
    }

    #[tokio::test]
    async fn none_accepts_everyone() {
        let a = Authenticator::new(Method::None);
        assert!(!a.checks());
        a.verify("bob", "", "127.0.0.1".parse().unwrap())
            .await
            .unwrap();
    }
}
