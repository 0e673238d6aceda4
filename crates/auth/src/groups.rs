//! A user's groups, through NSS (files, LDAP, sssd: whatever `/etc/nsswitch.conf` says).
//!
//! [`of`] is the lookup itself, blocking. Frontends call [`lookup`] instead: the lookups of the
//! whole process share one [`Groups`], which runs at most [`WORKERS`] of them at once on blocking
//! threads with at most [`WAITING`] waiting (beyond that a lookup fails at once, and group rules
//! fail closed), and keeps each answer for [`TTL`] (at most [`MAX_CACHED`] users), so a flood of
//! AUTHID requests costs at most a few threads however slow the directory is. A change of
//! membership is seen within [`TTL`].

use crate::pool::{Limits, Pool, PoolError};
use nix::unistd::{Group, User};
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// Lookups running at once.
pub const WORKERS: usize = 2;
/// Lookups waiting for a thread, beyond which they fail at once.
pub const WAITING: usize = 32;
/// How long an answer is kept.
pub const TTL: Duration = Duration::from_secs(30);
/// Most answers kept.
pub const MAX_CACHED: usize = 4096;

type Answer = (Instant, Arc<Vec<String>>);

/// Bounded, cached group lookups.
#[derive(Clone, Debug)]
pub struct Groups {
    pool: Pool,
    ttl: Duration,
    cache: Arc<Mutex<HashMap<(String, bool), Answer>>>,
}

impl Groups {
    /// Lookups on `workers` threads with `waiting` places, answers kept for `ttl`.
    pub fn new(workers: usize, waiting: usize, ttl: Duration) -> Groups {
        Groups {
            pool: Pool::new(
                "groups",
                Limits {
                    workers,
                    queue: waiting,
                },
            ),
            ttl,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, bool), Answer>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `user`'s groups as [`of`] finds them, from the cache when it is fresh. Fails at once when
    /// every thread and waiting place is taken.
    pub async fn of(&self, user: &str, primary: bool) -> Result<Arc<Vec<String>>, String> {
        let key = (user.to_owned(), primary);
        if let Some((at, g)) = self.cache().get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(g.clone());
        }
        let u = user.to_owned();
        let found = match self.pool.run(false, move || of(&u, primary)).await {
            Ok(r) => Arc::new(r?),
            Err(PoolError::Busy) => {
                return Err(format!(
                    "looking up the groups of {}: too many lookups at once",
                    crate::printable(user)
                ));
            }
            Err(PoolError::Panicked(e)) => return Err(format!("group lookup panicked: {e}")),
        };
        let mut cache = self.cache();
        let now = Instant::now();
        if cache.len() >= MAX_CACHED {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (now, found.clone()));
        Ok(found)
    }
}

/// The process's group lookups ([`WORKERS`], [`WAITING`], [`TTL`]).
pub fn shared() -> &'static Groups {
    static SHARED: OnceLock<Groups> = OnceLock::new();
    SHARED.get_or_init(|| Groups::new(WORKERS, WAITING, TTL))
}

/// `user`'s groups through the process's bounded, cached lookups ([`shared`]).
pub async fn lookup(user: &str, primary: bool) -> Result<Arc<Vec<String>>, String> {
    shared().of(user, primary).await
}

/// The names of `user`'s groups. With `primary = false`, the user's primary group is left out
/// unless the user is also listed as a member of it (X2Go's `ignore-primary-group-memberships`,
/// on by default there). An unknown user has no groups. A failing lookup (NSS unreachable) is an
/// error, so that group rules fail closed.
pub fn of(user: &str, primary: bool) -> Result<Vec<String>, String> {
    let u = match User::from_name(user) {
        Ok(Some(u)) => u,
        Ok(None) => return Ok(Vec::new()),
        Err(e) => return Err(format!("looking up user {}: {e}", crate::printable(user))),
    };
    let cname = CString::new(user).map_err(|e| e.to_string())?;
    let gids = nix::unistd::getgrouplist(&cname, u.gid)
        .map_err(|e| format!("looking up the groups of {}: {e}", crate::printable(user)))?;
    let mut out = Vec::new();
    for gid in gids {
        let g = match Group::from_gid(gid) {
            Ok(Some(g)) => g,
            Ok(None) => continue,
            Err(e) => return Err(format!("looking up group {gid}: {e}")),
        };
        if gid == u.gid && !primary && !g.mem.iter().any(|m| m == user) {
            continue;
        }
        if !out.contains(&g.name) {
            out.push(g.name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_are_cached_and_a_full_pool_fails_at_once() {
        let g = Groups::new(1, 0, Duration::from_secs(60));
        let first = g.of("root", true).await.unwrap();
        assert!(first.contains(&"root".to_owned()));
        // Fill the only thread: a cached answer still comes, a new one fails at once.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let pool = g.pool.clone();
        let hold = tokio::spawn(async move { pool.run(false, move || rx.recv()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(Arc::ptr_eq(&g.of("root", true).await.unwrap(), &first));
        let e = g.of("root", false).await.unwrap_err();
        assert!(e.contains("too many lookups"), "{e}");
        tx.send(()).unwrap();
        hold.await.unwrap().unwrap().unwrap();
        assert!(
            !g.of("root", false)
                .await
                .unwrap()
                .contains(&"root".to_owned())
        );
    }

    #[test]
    fn root_is_in_its_primary_group_only_when_asked() {
        assert!(
            super::of("root", true)
                .unwrap()
                .contains(&"root".to_owned())
        );
        assert!(
            !super::of("root", false)
                .unwrap()
                .contains(&"root".to_owned())
        );
        assert!(super::of("no-such-user-here", true).unwrap().is_empty());
    }
}
