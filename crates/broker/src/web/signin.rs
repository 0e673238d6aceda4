//! Cookie sign-ins, kept in memory: the dashboard's and the gateway's (and the gateway's connect
//! tokens, which are the same kind of thing: a random secret that stands for a user until it
//! expires).
//!
//! A [`SignIns`] maps a secret to what the surface keeps for it (a user name, or the dashboard's
//! user and CSRF token) and an expiry. Every entry of one store lives for the same time, so the
//! entries expire in the order they were made: a queue in that order finds the expired and the
//! oldest in O(1), and a full store sheds its oldest entry instead of refusing a sign-in.
//! Time is `tokio::time::Instant`, so tests move it with paused time.
//!
//! A [`Cookie`] is how a surface names its secret in the browser: the `Set-Cookie` value
//! (`HttpOnly; SameSite=Strict`, `Secure` over TLS) and reading it back from `Cookie:` headers.

use axum::http::{HeaderMap, HeaderValue, header};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use switchboard_auth::secret::{self, SecretError};
use tokio::time::Instant;

/// A new sign-in secret: `bytes` random bytes as hex.
pub fn new_secret(bytes: usize) -> Result<String, SecretError> {
    secret::random_hex(bytes)
}

/// Secrets → (value, expiry), each living `ttl`, at most `max` at once.
#[derive(Debug)]
pub struct SignIns<T> {
    map: HashMap<String, (T, Instant)>,
    /// (expiry, secret) in the order made, which is expiry order. May hold secrets already
    /// removed; they are skipped when they reach the front, and the queue is compacted when it
    /// grows past twice `max`.
    order: VecDeque<(Instant, String)>,
    ttl: Duration,
    max: usize,
}

impl<T> SignIns<T> {
    /// An empty store whose entries live `ttl`, keeping at most `max` (at least one).
    pub fn new(ttl: Duration, max: usize) -> SignIns<T> {
        SignIns {
            map: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            max: max.max(1),
        }
    }

    /// How long an entry lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Remembers `value` under `secret` for the store's lifetime. Expired entries go first; when
    /// the store is still full, the oldest live one goes.
    pub fn insert(&mut self, secret: String, value: T) {
        let now = Instant::now();
        self.expire(now);
        while self.map.len() >= self.max {
            let Some((at, oldest)) = self.order.pop_front() else {
                break;
            };
            self.forget(&oldest, at);
        }
        let expires = now + self.ttl;
        self.map.insert(secret.clone(), (value, expires));
        self.order.push_back((expires, secret));
        if self.order.len() > 2 * self.max {
            let map = &self.map;
            self.order
                .retain(|(at, s)| map.get(s).is_some_and(|(_, e)| e == at));
        }
    }

    /// The value of a live secret.
    pub fn get(&self, secret: &str) -> Option<&T> {
        let now = Instant::now();
        self.map
            .get(secret)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v)
    }

    /// The value of a live secret, to change it.
    pub fn get_mut(&mut self, secret: &str) -> Option<&mut T> {
        let now = Instant::now();
        self.map
            .get_mut(secret)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v)
    }

    /// Forgets every entry whose value matches (the connect tokens of a sign-in that ended);
    /// how many were forgotten. Their places in the queue are skipped when reached.
    pub fn remove_where(&mut self, matches: impl Fn(&T) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|_, (v, _)| !matches(v));
        before - self.map.len()
    }

    /// Forgets a secret (signing out); its value if it was live.
    pub fn remove(&mut self, secret: &str) -> Option<T> {
        let now = Instant::now();
        self.map
            .remove(secret)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v)
    }

    /// A live secret whose value matches and that has at least `min` left, if any.
    pub fn find(&self, min: Duration, matches: impl Fn(&T) -> bool) -> Option<&str> {
        let at_least = Instant::now() + min;
        self.map
            .iter()
            .find(|(_, (v, exp))| *exp > at_least && matches(v))
            .map(|(k, _)| k.as_str())
    }

    /// Entries held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops the entries whose time is up (the queue's front), skipping stale queue entries.
    fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((at, s)) = self.order.pop_front() {
                self.forget(&s, at);
            }
        }
    }

    /// Removes `s` if the queue entry `at` is still its own (not one of an earlier sign-in).
    fn forget(&mut self, s: &str, at: Instant) {
        if self.map.get(s).is_some_and(|(_, e)| *e == at) {
            self.map.remove(s);
        }
    }
}

/// A sign-in cookie: its name, path and whether it is sent over HTTPS only.
#[derive(Debug, Clone, Copy)]
pub struct Cookie {
    /// The cookie's name.
    pub name: &'static str,
    /// The path it is sent for.
    pub path: &'static str,
    /// `Secure` (the listener speaks TLS).
    pub secure: bool,
}

impl Cookie {
    /// The value of this cookie in the request's `Cookie:` headers.
    pub fn read(&self, headers: &HeaderMap) -> Option<String> {
        read(headers, self.name)
    }

    /// A `Set-Cookie` value that gives the browser `value` for `max_age`.
    pub fn set(&self, value: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={value}; Path={}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            self.name,
            self.path,
            max_age.as_secs()
        ))
        // The secret is hex and the rest is ours: this cannot fail; a cleared cookie if it did.
        .unwrap_or_else(|_| self.clear())
    }

    /// A `Set-Cookie` value that makes the browser forget the cookie.
    pub fn clear(&self) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}=; Path={}; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
            self.name, self.path
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// A cookie's value from the request's `Cookie:` headers.
pub fn read(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let mut s = SignIns::new(Duration::from_secs(60), 10);
        s.insert("s1".into(), "alice");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(s.get("s1"), Some(&"alice"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.get("s1"), None, "expired at its ttl");
        s.insert("s2".into(), "bob");
        assert_eq!(
            s.len(),
            1,
            "the expired entry is dropped by the next insert"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn find_wants_time_left() {
        let mut s = SignIns::new(Duration::from_secs(300), 10);
        s.insert("t1".into(), "alice".to_string());
        assert_eq!(
            s.find(Duration::from_secs(60), |u| u == "alice"),
            Some("t1")
        );
        assert_eq!(s.find(Duration::from_secs(60), |u| u == "bob"), None);
        tokio::time::advance(Duration::from_secs(250)).await;
        assert_eq!(
            s.find(Duration::from_secs(60), |u| u == "alice"),
            None,
            "50 s left is less than the minute asked for"
        );
        assert!(s.get("t1").is_some(), "but the token itself is still live");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_sheds_its_oldest() {
        let mut s = SignIns::new(Duration::from_secs(60), 3);
        for i in 0..3 {
            s.insert(format!("s{i}"), i);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        s.insert("s3".into(), 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s.get("s0"), None, "the oldest went");
        assert_eq!(s.get("s1"), Some(&1));
        assert_eq!(s.get("s3"), Some(&3));
    }

    #[tokio::test(start_paused = true)]
    async fn sign_out_and_churn_stay_bounded() {
        let mut s = SignIns::new(Duration::from_secs(3600), 4);
        for i in 0..1000 {
            s.insert(format!("s{i}"), i);
            assert_eq!(s.remove(&format!("s{i}")), Some(i));
        }
        assert!(s.is_empty());
        assert!(
            s.order.len() <= 8,
            "removed secrets do not pile up in the queue"
        );
        // A secret signed in again after removal keeps its new expiry.
        s.insert("again".into(), 1);
        s.remove("again");
        tokio::time::advance(Duration::from_secs(10)).await;
        s.insert("again".into(), 2);
        tokio::time::advance(Duration::from_secs(3595)).await;
        s.insert("other".into(), 3);
        assert_eq!(
            s.get("again"),
            Some(&2),
            "the stale queue entry did not expire it"
        );
    }

    #[test]
    fn cookies_set_read_and_clear() {
        let c = Cookie {
            name: "sb",
            path: "/ui",
            secure: true,
        };
        assert_eq!(
            c.set("abc", Duration::from_secs(60)),
            "sb=abc; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        assert_eq!(
            c.clear(),
            "sb=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0; Secure"
        );
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; sb=xyz; b=2"));
        assert_eq!(c.read(&h).as_deref(), Some("xyz"));
        assert_eq!(read(&h, "nope"), None);
    }
}
