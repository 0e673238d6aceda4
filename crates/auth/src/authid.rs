//! X2Go's AUTHID tokens: after one password check the client is handed a token, and each
//! request presents the last token and gets the next one.
//!
//! Compared with x2gobroker's cookie files (never deleted, directory setting ignored), these are:
//! - random (122 bits, printed as a UUID as X2Go clients expect);
//! - single-use: a token is removed when presented, whatever the outcome (a replay, or a use from
//!   another address, burns it);
//! - bound to the address it was issued to (`bind_to_address`, default on);
//! - expiring: a chain lives `ttl` from the password login that started it (X2Go's
//!   `auth-timeout`), however often it rotates;
//! - bounded: at most `max` live tokens, when full the oldest are dropped; and at most
//!   [`MAX_PER_USER`] per user, so one user cannot push everyone else's chains out.
//!
//! They live in memory: a broker restart asks users for their password again.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Default chain lifetime (X2Go's `auth-timeout` default, 10 hours).
pub const DEFAULT_TTL: Duration = Duration::from_secs(36_000);
/// Default bound on live tokens.
pub const DEFAULT_MAX: usize = 100_000;

#[derive(Debug)]
struct Entry {
    /// The authenticated (canonical) user.
    user: Arc<str>,
    /// The name the client signs its requests with (what it typed at the password login).
    presented: Arc<str>,
    addr: IpAddr,
    /// When the password login that started this chain happened.
    origin: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<String, Entry>,
    order: VecDeque<String>,
    /// Each user's live tokens, oldest first.
    mine: HashMap<Arc<str>, VecDeque<String>>,
}

impl Inner {
    /// Forgets `token` from its user's list.
    fn unlist(&mut self, user: &Arc<str>, token: &str) {
        if let Some(q) = self.mine.get_mut(user) {
            q.retain(|t| t != token);
            if q.is_empty() {
                self.mine.remove(user);
            }
        }
    }
}

/// Most live tokens one user may have; beyond it their oldest goes, so one user's logins cannot
/// push everyone else's chains out of the store.
pub const MAX_PER_USER: usize = 64;

/// The token store.
#[derive(Clone, Debug)]
pub struct AuthIds {
    inner: Arc<Mutex<Inner>>,
    ttl: Duration,
    bind: bool,
    max: usize,
}

/// Why a token was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Never issued, already used, or dropped.
    #[error("unknown or already used token")]
    Unknown,
    /// Issued to another user.
    #[error("token was issued to another user")]
    OtherUser,
    /// Presented from another address than it was issued to.
    #[error("token was issued to another address")]
    OtherAddress,
    /// The chain is older than the token lifetime.
    #[error("token chain expired")]
    Expired,
}

/// A redeemed token: who it was for and when their chain began.
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// The authenticated user.
    pub user: Arc<str>,
    /// When the chain's password login happened.
    pub origin: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A random UUID (version 4) string.
pub fn random_uuid() -> Result<String, String> {
    let mut b = crate::secret::random_bytes::<16>().map_err(|e| e.to_string())?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::secret::hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

impl AuthIds {
    /// A store with the given chain lifetime, address binding and bound.
    pub fn new(ttl: Duration, bind: bool, max: usize) -> AuthIds {
        AuthIds {
            inner: Arc::new(Mutex::new(Inner::default())),
            ttl,
            bind,
            max: max.max(1),
        }
    }

    /// Issues a token for `user` at `addr`, continuing a chain that began at `origin`.
    pub fn issue(&self, user: &str, addr: IpAddr, origin: Instant) -> Result<String, String> {
        self.issue_as(user, user, addr, origin)
    }

    /// Issues a token for the authenticated `user`, who signs their requests as `presented`
    /// (the name they typed, which the authenticator mapped to `user`).
    pub fn issue_as(
        &self,
        user: &str,
        presented: &str,
        addr: IpAddr,
        origin: Instant,
    ) -> Result<String, String> {
        let token = random_uuid()?;
        let presented: Arc<str> = presented.into();
        let user: Arc<str> = user.into();
        let mut g = lock(&self.inner);
        // This user's oldest first, then everyone's oldest.
        while g.mine.get(&user).is_some_and(|q| q.len() >= MAX_PER_USER) {
            let old = g.mine.get_mut(&user).and_then(VecDeque::pop_front);
            if let Some(old) = old {
                g.live.remove(&old);
            }
        }
        while g.live.len() >= self.max {
            match g.order.pop_front() {
                Some(old) => {
                    if let Some(e) = g.live.remove(&old) {
                        g.unlist(&e.user, &old);
                    }
                }
                None => break,
            }
        }
        // Keep the order queue from growing with tokens already redeemed.
        if g.order.len() > self.max.saturating_mul(2) {
            let Inner { live, order, .. } = &mut *g;
            order.retain(|t| live.contains_key(t));
        }
        g.live.insert(
            token.clone(),
            Entry {
                user: user.clone(),
                presented,
                addr,
                origin,
            },
        );
        g.order.push_back(token.clone());
        g.mine.entry(user).or_default().push_back(token.clone());
        Ok(token)
    }

    /// Redeems `token` presented by `user` (the name the chain's requests carry) from `addr`;
    /// the result names the authenticated user. The token is gone afterwards whatever the
    /// result.
    pub fn redeem(&self, token: &str, user: &str, addr: IpAddr) -> Result<Redeemed, TokenError> {
        let entry = {
            let mut g = lock(&self.inner);
            let entry = g.live.remove(token).ok_or(TokenError::Unknown)?;
            g.unlist(&entry.user, token);
            entry
        };
        if &*entry.presented != user {
            return Err(TokenError::OtherUser);
        }
        if self.bind && entry.addr != addr {
            return Err(TokenError::OtherAddress);
        }
        if entry.origin.elapsed() >= self.ttl {
            return Err(TokenError::Expired);
        }
        Ok(Redeemed {
            user: entry.user,
            origin: entry.origin,
        })
    }

    /// Live tokens.
    pub fn len(&self) -> usize {
        lock(&self.inner).live.len()
    }

    /// Whether no token is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tokens_are_single_use_and_rotate() {
        let ids = AuthIds::new(DEFAULT_TTL, true, 10);
        let t0 = Instant::now();
        let a = ids.issue("alice", ip("127.0.0.1"), t0).unwrap();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        let r = ids.redeem(&a, "alice", ip("127.0.0.1")).unwrap();
        assert_eq!(&*r.user, "alice");
        assert_eq!(
            ids.redeem(&a, "alice", ip("127.0.0.1")).unwrap_err(),
            TokenError::Unknown
        );
        let b = ids.issue("alice", ip("127.0.0.1"), r.origin).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_chain_signed_with_an_alias_redeems_as_the_canonical_user() {
        let ids = AuthIds::new(Duration::from_secs(60), true, 10);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t = ids.issue_as("alice", "ALICE", ip, Instant::now()).unwrap();
        assert_eq!(&*ids.redeem(&t, "ALICE", ip).unwrap().user, "alice");
        let t = ids.issue_as("alice", "ALICE", ip, Instant::now()).unwrap();
        assert_eq!(
            ids.redeem(&t, "alice", ip).unwrap_err(),
            TokenError::OtherUser
        );
    }

    #[test]
    fn another_address_or_user_burns_the_token() {
        let ids = AuthIds::new(DEFAULT_TTL, true, 10);
        let a = ids.issue("alice", ip("127.0.0.1"), Instant::now()).unwrap();
        assert_eq!(
            ids.redeem(&a, "alice", ip("127.0.0.2")).unwrap_err(),
            TokenError::OtherAddress
        );
        assert_eq!(
            ids.redeem(&a, "alice", ip("127.0.0.1")).unwrap_err(),
            TokenError::Unknown
        );
        let b = ids.issue("alice", ip("127.0.0.1"), Instant::now()).unwrap();
        assert_eq!(
            ids.redeem(&b, "mallory", ip("127.0.0.1")).unwrap_err(),
            TokenError::OtherUser
        );
        let unbound = AuthIds::new(DEFAULT_TTL, false, 10);
        let c = unbound
            .issue("alice", ip("127.0.0.1"), Instant::now())
            .unwrap();
        unbound.redeem(&c, "alice", ip("127.0.0.2")).unwrap();
    }

    #[test]
    fn chains_expire_from_their_password_login() {
        let ids = AuthIds::new(Duration::from_millis(50), true, 10);
        let origin = Instant::now();
        let a = ids.issue("alice", ip("127.0.0.1"), origin).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            ids.redeem(&a, "alice", ip("127.0.0.1")).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn one_user_cannot_push_out_everyone_else() {
        let ids = AuthIds::new(DEFAULT_TTL, true, 1000);
        let others = ids.issue("bob", ip("127.0.0.1"), Instant::now()).unwrap();
        let first = ids
            .issue("mallory", ip("127.0.0.1"), Instant::now())
            .unwrap();
        for _ in 0..5000 {
            ids.issue("mallory", ip("127.0.0.1"), Instant::now())
                .unwrap();
        }
        assert_eq!(ids.len(), MAX_PER_USER + 1);
        assert!(ids.redeem(&first, "mallory", ip("127.0.0.1")).is_err());
        assert!(ids.redeem(&others, "bob", ip("127.0.0.1")).is_ok());
    }

    #[test]
    fn the_store_is_bounded_and_drops_the_oldest() {
        let ids = AuthIds::new(DEFAULT_TTL, true, 3);
        let t: Vec<String> = (0..5)
            .map(|_| ids.issue("u", ip("127.0.0.1"), Instant::now()).unwrap())
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.redeem(&t[0], "u", ip("127.0.0.1")).is_err());
        assert!(ids.redeem(&t[4], "u", ip("127.0.0.1")).is_ok());
    }
}
