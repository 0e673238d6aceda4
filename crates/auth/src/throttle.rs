//! Delays for wrong passwords, per source address and per account.
//!
//! x2gobroker runs PAM inside its single event loop, so one wrong password stalls every client
//! for about 1.5 s. Here a wrong password is answered only after a delay that doubles with each
//! failure (`base`, 2×`base`, … up to `max`). Failures are counted per source and per account,
//! and the delay is the longer of the two, so guessing at one account is slow from any number of
//! addresses, and spraying many accounts is slow from one address. What waits is the failing
//! answer only:
//! - one source and account pair has one check at a time, and its failing answer's delay is
//!   waited out while holding that turn, so one client's guesses at one account come one by one;
//! - one source has at most [`SOURCE_CHECKS`] checks in flight, held for the check only, never
//!   for a delay. Behind a NAT or a proxy that Switchboard cannot see through, a client guessing
//!   passwords therefore slows its own answers, not everyone else's sign-in from that address;
//! - an account's failures never make its owner's next sign-in wait (a right password is
//!   answered at once), so wrong passwords at someone's account cannot lock them out.
//!
//! Only `forget` of time without failures resets a count: a success does not, so a valid account
//! cannot be used to wipe the record between guesses at another. A source is an IPv4 address or
//! an IPv6 /64 (one client can hold a whole /64); an account is the user name as typed, in lower
//! case (so `ALICE` and `alice` share one record). When a table is full, entries in use are never
//! dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Most sources (and, separately, accounts) remembered at once; beyond it idle entries are
/// dropped first.
pub const MAX_SOURCES: usize = 65_536;
/// Most checks one source may have in flight at once.
pub const SOURCE_CHECKS: usize = 4;

#[derive(Debug)]
struct Entry {
    gate: Arc<Semaphore>,
    failures: AtomicU32,
    last: Mutex<Instant>,
}

/// One table of failure records (sources or accounts).
#[derive(Debug)]
struct Table<K> {
    entries: Mutex<HashMap<K, Arc<Entry>>>,
    gate: usize,
}

impl<K: Eq + Hash + Clone> Table<K> {
    fn new(gate: usize) -> Table<K> {
        Table {
            entries: Mutex::new(HashMap::new()),
            gate,
        }
    }

    fn entry(&self, key: &K, forget: Duration) -> Arc<Entry> {
        let mut map = lock(&self.entries);
        if map.len() >= MAX_SOURCES && !map.contains_key(key) {
            let now = Instant::now();
            // In use: someone holds the entry, a permit of its gate, or waits for one.
            let busy = |e: &Arc<Entry>| Arc::strong_count(e) > 1 || Arc::strong_count(&e.gate) > 1;
            map.retain(|_, e| busy(e) || now.duration_since(*lock(&e.last)) < forget);
            if map.len() >= MAX_SOURCES {
                // Still full of recent entries: drop the idle ones regardless of age.
                map.retain(|_, e| busy(e));
            }
        }
        map.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    gate: Arc::new(Semaphore::new(self.gate)),
                    failures: AtomicU32::new(0),
                    last: Mutex::new(Instant::now()),
                })
            })
            .clone()
    }

    /// Marks `key` as active now, first forgetting its failures if it was quiet for `forget`.
    fn touch(&self, key: &K, forget: Duration) -> Arc<Entry> {
        let e = self.entry(key, forget);
        {
            let mut last = lock(&e.last);
            if last.elapsed() >= forget {
                e.failures.store(0, Ordering::Relaxed);
            }
            *last = Instant::now();
        }
        e
    }

    /// Counts a failure; returns the number of consecutive failures.
    fn fail(&self, key: &K, forget: Duration) -> u32 {
        let e = self.entry(key, forget);
        let n = e.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        *lock(&e.last) = Instant::now();
        n
    }

    fn failures(&self, key: &K) -> u32 {
        lock(&self.entries)
            .get(key)
            .map_or(0, |e| e.failures.load(Ordering::Relaxed))
    }
}

/// The failure state of sources and accounts.
#[derive(Clone, Debug)]
pub struct Throttle {
    sources: Arc<Table<IpAddr>>,
    accounts: Arc<Table<String>>,
    /// Turns of (source, account) pairs; their counts are not used.
    pairs: Arc<Table<(IpAddr, String)>>,
    base: Duration,
    max: Duration,
    forget: Duration,
}

/// The right to run one check: the source and account pair's turn and one of the source's
/// places.
#[derive(Debug)]
pub struct Turn {
    pair: Option<OwnedSemaphorePermit>,
    source: Option<OwnedSemaphorePermit>,
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

/// A place at `gate` (`None` only if it were closed, which the throttle never does).
async fn acquire(gate: Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    gate.acquire_owned().await.ok()
}

impl Throttle {
    /// A throttle with the given first delay, cap and memory.
    pub fn new(base: Duration, max: Duration, forget: Duration) -> Throttle {
        Throttle {
            sources: Arc::new(Table::new(SOURCE_CHECKS)),
            accounts: Arc::new(Table::new(1)),
            pairs: Arc::new(Table::new(1)),
            base,
            max,
            forget,
        }
    }

    /// Waits for the right to check `account` (if any) from `ip`: the pair's turn first (one
    /// check at a time, held through its failure delay), then one of the source's
    /// [`SOURCE_CHECKS`] places (held for the check only).
    pub async fn turn(&self, ip: IpAddr, account: Option<&str>) -> Turn {
        let pair = match account {
            Some(a) => {
                let a = account_key(a);
                let e = self.pairs.touch(&(key(ip), a.clone()), self.forget);
                self.accounts.touch(&a, self.forget);
                acquire(e.gate.clone()).await
            }
            None => None,
        };
        let e = self.sources.touch(&key(ip), self.forget);
        let source = acquire(e.gate.clone()).await;
        Turn { pair, source }
    }

    /// Whether `ip` has failures on record: a suspect may not take the last places of a
    /// bounded pool. (An account's failures do not make it a suspect: the attempts of its owner
    /// would then queue behind the guesses at it.)
    pub fn suspect(&self, ip: IpAddr) -> bool {
        self.failures(ip) > 0
    }

    /// How long the `n`th consecutive failure is delayed.
    pub fn delay(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(20);
        self.base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// Counts a failure of the check `turn` was for, frees the source's place at once, and waits
    /// out the longer of the source's and the account's delays (still holding the pair's turn,
    /// so the same client's next guess at that account waits too).
    pub async fn failed(&self, turn: Turn, ip: IpAddr, account: Option<&str>) {
        let Turn { pair: held, source } = turn;
        drop(source);
        let n = self.sources.fail(&key(ip), self.forget);
        let m = account.map_or(0, |a| self.accounts.fail(&account_key(a), self.forget));
        tokio::time::sleep(self.delay(n.max(m))).await;
        drop(held);
    }

    /// Failures counted for `ip` since it was last quiet for `forget`.
    pub fn failures(&self, ip: IpAddr) -> u32 {
        self.sources.failures(&key(ip))
    }

    /// Failures counted for `account` since it was last quiet for `forget`.
    pub fn account_failures(&self, account: &str) -> u32 {
        self.accounts.failures(&account_key(account))
    }
}

/// The table key of an account: the name in lower case.
fn account_key(account: &str) -> String {
    account.to_lowercase()
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
            let turn = t2.turn(bad, Some("alice")).await;
            t2.failed(turn, bad, Some("alice")).await;
        });
        tokio::task::yield_now().await;
        // The other source gets its turn at once although `bad` is waiting out its delay.
        let started = tokio::time::Instant::now();
        let turn = t.turn(good, Some("bob")).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(turn);
        // `bad`'s next attempt at the same account waits for the first one's delay.
        let turn = t.turn(bad, Some("alice")).await;
        assert!(started.elapsed() >= Duration::from_secs(1));
        drop(turn);
        failing.await.unwrap();
        assert_eq!(t.failures(bad), 1);
        assert_eq!(t.account_failures("alice"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn behind_one_address_a_guesser_does_not_queue_other_accounts() {
        // One address (a NAT or a proxy): a client there keeps failing at alice's account.
        let t = Throttle::new(
            Duration::from_secs(1),
            Duration::from_secs(8),
            Duration::from_secs(600),
        );
        let nat: IpAddr = "127.0.0.20".parse().unwrap();
        for _ in 0..4 {
            let turn = t.turn(nat, Some("alice")).await;
            t.failed(turn, nat, Some("alice")).await;
        }
        assert_eq!(t.failures(nat), 4);
        let t2 = t.clone();
        let guessing = tokio::spawn(async move {
            // The fifth guess waits 8 s holding its turn; it must not hold the address's places.
            let turn = t2.turn(nat, Some("alice")).await;
            t2.failed(turn, nat, Some("alice")).await;
        });
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        // bob, from the same address, is checked at once.
        let turn = t.turn(nat, Some("bob")).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(turn);
        // So are up to SOURCE_CHECKS checks at once from that address, for other accounts ...
        let mut turns = Vec::new();
        for i in 0..SOURCE_CHECKS {
            turns.push(t.turn(nat, Some(&format!("user{i}"))).await);
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        // ... and no more: the next one waits for a place.
        let more = tokio::time::timeout(Duration::from_millis(10), t.turn(nat, Some("carol")));
        assert!(more.await.is_err());
        drop(turns);
        // alice herself, from her own address, is not held up by the guesses at her account:
        // her check starts at once (a right password is answered at once) ...
        let home: IpAddr = "127.0.0.21".parse().unwrap();
        let before = tokio::time::Instant::now();
        let turn = t.turn(home, Some("ALICE")).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
        // ... but a wrong one from there waits for the account's delay (its 6th failure, 8 s).
        t.failed(turn, home, Some("ALICE")).await;
        assert_eq!(before.elapsed(), Duration::from_secs(8));
        // The guesser's own next try at alice waited for its previous answer.
        let turn = t.turn(nat, Some("alice")).await;
        assert!(started.elapsed() >= Duration::from_secs(8) - Duration::from_millis(20));
        drop(turn);
        guessing.await.unwrap();
        assert_eq!(t.account_failures("Alice"), 6);
        assert_eq!(t.account_failures("bob"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_answer_waits_for_the_sources_delay_too() {
        let t = Throttle::new(
            Duration::from_secs(1),
            Duration::from_secs(8),
            Duration::from_secs(600),
        );
        let ip: IpAddr = "127.0.0.30".parse().unwrap();
        // Spraying: one wrong password at each of many accounts from one address.
        for i in 0..3 {
            let turn = t.turn(ip, Some(&format!("u{i}"))).await;
            t.failed(turn, ip, Some(&format!("u{i}"))).await;
        }
        let started = tokio::time::Instant::now();
        let turn = t.turn(ip, Some("u9")).await;
        t.failed(turn, ip, Some("u9")).await;
        // Fourth failure from the address: 8 s, though it is u9's first.
        assert_eq!(started.elapsed(), Duration::from_secs(8));
        assert!(t.suspect(ip));
        assert!(!t.suspect("127.0.0.31".parse().unwrap()));
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
