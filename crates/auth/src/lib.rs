//! Switchboard's authenticators.
//!
//! One [`Authenticator`] checks a user name and password by the method the `[auth]` section of
//! the broker config names:
//! - `pam`: the system's PAM stack through libpam ([`pam`]), on a bounded pool of blocking
//!   threads so a slow module (pam_unix's failure delay, an LDAP server that hangs) never stalls
//!   the request path;
//! - `file:PATH`: a file of `user:hash` lines with argon2 or bcrypt hashes ([`file`]), on a
//!   bounded pool of its own;
//! - `none`: every user is who they say they are (must be chosen explicitly).
//!
//! [`Authenticator::verify`] returns the user's canonical name (NSS's `pw_name` for PAM, the
//! file's entry, or the name as given for `none`), which every frontend uses from then on.
//!
//! Both pools ([`pool`]) have a bounded queue: when every thread and waiting place is taken, a
//! check is refused at once with [`AuthError::Busy`], which frontends answer with 503 and
//! `Retry-After` in their own form, and which is not a failure on the source's record.
//!
//! Around every method, [`throttle`] delays wrong passwords per source address and per account;
//! only the failing answer waits, so nobody else's sign-in is held up; an address that has just
//! failed may not take the last places of a pool, so users with clean records always get one.
//! [`authid`] holds X2Go's AUTHID tokens
//! (random, single-use, rotating, bound to an address, expiring, bounded in number). [`groups`]
//! looks up a user's groups through NSS for group ACLs, a few at a time and cached briefly.
//!
//! # Layout
//! - [`authid`]: X2Go's AUTHID tokens.
//! - [`file`]: the `file:PATH` password file (argon2, bcrypt).
//! - [`groups`]: a user's groups through NSS.
//! - [`pam`]: the PAM method on its pool of blocking threads.
//! - [`pool`]: the bounded pool of blocking threads that checks run on.
//! - [`secret`]: random secrets (bytes, hex, prefixed base64url tokens), SHA-256 hex and
//!   constant-time comparison: the one place in Switchboard where secrets are drawn and compared.
//! - [`throttle`]: per-source and per-account failure delays.

pub mod authid;
pub mod file;
pub mod groups;
pub mod pam;
pub mod pool;
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
    /// Too many checks at once: every thread and waiting place of the method's pool is taken.
    /// Refused without waiting; try again shortly. Not a failure on the source's record.
    #[error("authentication busy: too many sign-ins at once")]
    Busy,
}

/// The `Retry-After` frontends send with a [`AuthError::Busy`] refusal, in seconds.
pub const BUSY_RETRY_AFTER: u64 = 2;

/// A method and the size of the pool its checks run on (`[auth]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How users are checked.
    pub method: Method,
    /// Password-file checks running at once (`[auth] workers`; PAM's is its `pool`).
    pub workers: usize,
    /// Checks waiting for a thread, beyond which they are refused (`[auth] queue`).
    pub queue: usize,
}

impl From<Method> for Settings {
    /// `method` with the default pool ([`pool::default_workers`], [`pool::DEFAULT_QUEUE`]).
    fn from(method: Method) -> Settings {
        Settings {
            method,
            workers: pool::default_workers(),
            queue: pool::DEFAULT_QUEUE,
        }
    }
}

/// Checks passwords by one [`Method`], with per-source and per-account failure delays.
#[derive(Clone, Debug)]
pub struct Authenticator {
    settings: Arc<Settings>,
    pam: Option<pam::PamPool>,
    file: Option<(file::PasswordFile, pool::Pool)>,
    throttle: throttle::Throttle,
}

impl Authenticator {
    /// An authenticator for `settings` (or a bare [`Method`]) with the default throttle.
    pub fn new(settings: impl Into<Settings>) -> Authenticator {
        Authenticator::with_throttle(settings, throttle::Throttle::default())
    }

    /// An authenticator with a given throttle (tests use short delays).
    pub fn with_throttle(
        settings: impl Into<Settings>,
        throttle: throttle::Throttle,
    ) -> Authenticator {
        let settings = settings.into();
        let pam = match &settings.method {
            Method::Pam { service, pool } => {
                Some(pam::PamPool::new(service, *pool, settings.queue))
            }
            _ => None,
        };
        let file = match &settings.method {
            Method::File(p) => Some((
                file::PasswordFile::new(p.clone()),
                pool::Pool::new(
                    "file",
                    pool::Limits {
                        workers: settings.workers,
                        queue: settings.queue,
                    },
                ),
            )),
            _ => None,
        };
        Authenticator {
            settings: Arc::new(settings),
            pam,
            file,
            throttle,
        }
    }

    /// The method in use.
    pub fn method(&self) -> &Method {
        &self.settings.method
    }

    /// The method and pool size in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether the method checks anything (`none` does not).
    pub fn checks(&self) -> bool {
        !matches!(self.settings.method, Method::None)
    }

    /// Checks `user`'s `password`, asked from `source`. A wrong password is answered only after
    /// the longer of the source's and the account's failure delays; one client has one check
    /// in flight at a time per account, one source a few ([`throttle::SOURCE_CHECKS`]); other
    /// sources and accounts are not affected. [`AuthError::Busy`] (the method's pool is full) is
    /// answered at once and is not counted as a failure.
    ///
    /// Returns the authenticated user's canonical name, the one every later decision (ACLs,
    /// limits, sessions, templates) must use: NSS's `pw_name` for PAM (a login whose name NSS
    /// does not know is refused), the file's entry for `file:`, the name as given for `none`.
    pub async fn verify(
        &self,
        user: &str,
        password: &str,
        source: IpAddr,
    ) -> Result<String, AuthError> {
        if !valid_user(user) || password.len() > MAX_PASSWORD || password.contains('\0') {
            let turn = self.throttle.turn(source, None).await;
            self.throttle.failed(turn, source, None).await;
            return Err(AuthError::Denied);
        }
        let turn = self.throttle.turn(source, Some(user)).await;
        let suspect = self.throttle.suspect(source);
        let method = &self.settings.method;
        let result = match method {
            Method::None => Ok(user.to_owned()),
            Method::File(_) => match &self.file {
                Some((f, pool)) => f.verify(pool, user, password, suspect).await,
                None => Err(AuthError::Unavailable("password file not set up".into())),
            },
            Method::Pam { .. } => match &self.pam {
                Some(p) => p.verify(user, password, suspect).await,
                None => Err(AuthError::Unavailable("PAM not set up".into())),
            },
        };
        match &result {
            Ok(_) => {}
            Err(AuthError::Denied) => {
                tracing::info!(user = %printable(user), %source, method = %method.name(), "wrong user name or password");
                self.throttle.failed(turn, source, Some(user)).await;
                return result;
            }
            Err(AuthError::Busy) => {
                // Counted in switchboard_auth_busy_total; a flood would drown the log.
                tracing::debug!(user = %printable(user), %source, method = %method.name(), "sign-in refused: every authentication thread and waiting place is taken");
            }
            Err(AuthError::Unavailable(m)) => {
                tracing::error!(method = %method.name(), error = %m, "authentication is unavailable");
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

    /// A password file whose one hash takes about `check` to verify.
    fn slow_file(dir: &std::path::Path, check: Duration) -> PathBuf {
        let one = file::hash_costing("pw", 8192, 1).unwrap();
        let started = tokio::time::Instant::now();
        assert!(file::check(&one, "pw"));
        let per_pass = started.elapsed().max(Duration::from_micros(100));
        let passes = (check.as_secs_f64() / per_pass.as_secs_f64()).ceil() as u32;
        let path = dir.join("passwd");
        let hash = file::hash_costing("pw", 8192, passes.clamp(1, 10_000)).unwrap();
        std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_pool_is_busy_at_once_and_no_failure_on_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let throttle = throttle::Throttle::default();
        let auth = Authenticator::with_throttle(
            Settings {
                method: Method::File(slow_file(dir.path(), Duration::from_millis(600))),
                workers: 1,
                queue: 0,
            },
            throttle.clone(),
        );
        let a = auth.clone();
        let first =
            tokio::spawn(
                async move { a.verify("alice", "pw", "127.0.0.2".parse().unwrap()).await },
            );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let other: IpAddr = "127.0.0.3".parse().unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            auth.verify("alice", "pw", other).await,
            Err(AuthError::Busy)
        );
        assert!(started.elapsed() < Duration::from_millis(200));
        assert_eq!(throttle.failures(other), 0);
        assert_eq!(first.await.unwrap().unwrap(), "alice");
        auth.verify("alice", "pw", other).await.unwrap();
    }

    #[tokio::test]
    async fn none_accepts_everyone() {
        let a = Authenticator::new(Method::None);
        assert!(!a.checks());
        assert_eq!(
            a.verify("bob", "", "127.0.0.1".parse().unwrap())
                .await
                .unwrap(),
            "bob"
        );
    }
}
