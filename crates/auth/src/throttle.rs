//! Per-source delays for wrong passwords.
//!
//! x2gobroker runs PAM inside its single event loop, so one wrong password stalls every client
//! for about 1.5 s. Here each source has its own turn: one check at a time per source, and a
//! wrong password is answered only after a delay that doubles with each failure from that source
//! (`base`, 2×`base`, … up to `max`). While it waits, the source's next attempt waits behind it;
//! every other source goes on at full speed. Only `forget` of time without failures resets the
//! count: a success does not, so a valid account cannot be used to wipe the record between
//! guesses at another. A source is an IPv4 address or an IPv6 /64 (one client can hold a whole
//! /64). When the table is full, sources with a check in flight are never dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

/// Most sources remembered at once; beyond it idle entries are dropped first.
pub const MAX_SOURCES: usize = 65_536;

#[derive(Debug)]
struct Source {
    turn: Arc<tokio::sync::Mutex<()>>,
    failures: AtomicU32,
    last: Mutex<Instant>,
}

/// The per-source failure state.
#[derive(Clone, Debug)]
pub struct Throttle {
    sources: Arc<Mutex<HashMap<IpAddr, Arc<Source>>>>,
    base: Duration,
    max: Duration,
    forget: Duration,
}

impl Default for Throttle {
    /// 250 ms after the first failure, doubling to 8 s; forgotten after 15 quiet minutes.
    fn default() -> Self {
        Throttle::new(
            Duration::from_millis(250),
            Duration::from_secs(8),
            Duration::from_secs(900),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Throttle {
    /// A throttle with the given first delay, cap and memory.
    pub fn new(base: Duration, max: Duration, forget: Duration) -> Throttle {
        Throttle {
            sources: Arc::new(Mutex::new(HashMap::new())),
            base,
            max,
            forget,
        }
    }

    fn source(&self, ip: IpAddr) -> Arc<Source> {
        let ip = key(ip);
        let mut map = lock(&self.sources);
        if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            let now = Instant::now();
            let forget = self.forget;
            // In use: someone holds the entry, its turn, or waits for the turn.
            let busy = |s: &Arc<Source>| Arc::strong_count(s) > 1 || Arc::strong_count(&s.turn) > 1;
            map.retain(|_, s| busy(s) || now.duration_since(*lock(&s.last)) < forget);
            if map.len() >= MAX_SOURCES {
                // Still full of recent sources: drop the idle ones regardless of age.
                map.retain(|_, s| busy(s));
            }
        }
        map.entry(ip)
            .or_insert_with(|| {
                Arc::new(Source {
                    turn: Arc::new(tokio::sync::Mutex::new(())),
                    failures: AtomicU32::new(0),
                    last: Mutex::new(Instant::now()),
                })
            })
            .clone()
    }

    /// Waits for `ip`'s turn: at most one check per source runs at a time.
    pub async fn turn(&self, ip: IpAddr) -> OwnedMutexGuard<()> {
        let s = self.source(ip);
        {
            let mut last = lock(&s.last);
            if last.elapsed() >= self.forget {
                s.failures.store(0, Ordering::Relaxed);
            }
            *last = Instant::now();
        }
        s.turn.clone().lock_owned().await
    }

    /// How long the `n`th consecutive failure is delayed.
    pub fn delay(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(20);
        self.base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// Counts a failure from `ip` and waits out its delay (call while holding the turn).
    pub async fn failed(&self, ip: IpAddr) {
        let s = self.source(ip);
        let n = s.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        *lock(&s.last) = Instant::now();
        drop(s);
        tokio::time::sleep(self.delay(n)).await;
    }

    /// Failures counted for `ip` since it was last quiet for `forget`.
    pub fn failures(&self, ip: IpAddr) -> u32 {
        lock(&self.sources)
            .get(&key(ip))
            .map_or(0, |s| s.failures.load(Ordering::Relaxed))
    }
}

/// The table key of an address: IPv4 as is (also when IPv4-mapped), IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let t = Throttle::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        assert_eq!(t.delay(1), Duration::from_millis(100));
        assert_eq!(t.delay(2), Duration::from_millis(200));
        assert_eq!(t.delay(4), Duration::from_millis(800));
        assert_eq!(t.delay(5), Duration::from_secs(1));
        assert_eq!(t.delay(1000), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_source_waits_and_others_do_not() {
        let t = Throttle::new(
            Duration::from_secs(1),
            Duration::from_secs(8),
            Duration::from_secs(60),
        );
        let bad: IpAddr = "127.0.0.9".parse().unwrap();
        let good: IpAddr = "127.0.0.10".parse().unwrap();
        let t2 = t.clone();
        let failing = tokio::spawn(async move {
            let _turn = t2.turn(bad).await;
            t2.failed(bad).await;
        });
        tokio::task::yield_now().await;
        // The other source gets its turn at once although `bad` is waiting out its delay.
        let started = tokio::time::Instant::now();
        let turn = t.turn(good).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(turn);
        // `bad`'s next attempt waits for the first one's delay.
        let turn = t.turn(bad).await;
        assert!(started.elapsed() >= Duration::from_secs(1));
        drop(turn);
        failing.await.unwrap();
        assert_eq!(t.failures(bad), 1);
    }

    #[test]
    fn an_ipv6_client_is_its_whole_64() {
        let t = Throttle::default();
        let a: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::5".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:127.0.0.9".parse().unwrap();
        assert_eq!(key(mapped), "127.0.0.9".parse::<IpAddr>().unwrap());
        let _ = t;
    }
}
