//! Pure, synchronous L4 schedulers with Linux IPVS (LVS) semantics.
//!
//! A [`Scheduler`] picks the destination (real server) for each new
//! connection of a virtual service. It does no I/O, reads no clock, keeps no
//! global state and uses no randomness: every decision is a function of the
//! scheduler's own state, the destination list and the client. The algorithms
//! follow Linux 6.1 `net/netfilter/ipvs/ip_vs_<name>.c`:
//!
//! | name  | scheduler                       | state kept between picks            |
//! |-------|---------------------------------|-------------------------------------|
//! | `rr`  | round robin                     | cursor                              |
//! | `wrr` | interleaved weighted round robin| cursor, current weight `cw`         |
//! | `lc`  | least connection                | none                                |
//! | `wlc` | weighted least connection       | none (the default, as in IPVS)      |
//! | `sed` | shortest expected delay         | none                                |
//! | `nq`  | never queue                     | none                                |
//! | `sh`  | source hashing (256 buckets)    | bucket table                        |
//! | `mh`  | Maglev hashing (65521 slots)    | lookup table, last non-zero weights |
//!
//! # Shared semantics
//!
//! - A destination is *usable* for a new connection when
//!   `weight > 0 && available && !overloaded` ([`Dest::is_usable`]). Weight 0
//!   means *quiesced*: never chosen for new connections, while its existing
//!   connections are left to the caller. No scheduler ever returns an
//!   unusable destination.
//! - [`Scheduler::pick`] returns an index into the `dests` slice, or `None`
//!   when no destination can take the connection.
//! - Call [`Scheduler::rebuild`] after destinations are added or removed or a
//!   weight changes (IPVS recomputes wrr state and rebuilds sh/mh tables on
//!   every edit). Counter (`active`, `inactive`) and flag (`available`,
//!   `overloaded`) changes need no rebuild; schedulers read them at pick time.
//! - If `pick` gets a slice whose length differs from the last rebuild, it
//!   rebuilds first, so a forgotten rebuild after an add/remove never panics.
//!   A same-length edit without a rebuild is not detected: the pick is still
//!   a usable destination or `None`, but wrr/sh/mh use stale tables.
//!
//! # Per-scheduler semantics
//!
//! - `rr`: the next usable destination after the last pick, wrapping around.
//! - `wrr`: IPVS interleaved WRR. `di` is the gcd and `mw` the maximum of all
//!   positive weights (usable or not, as IPVS), `mw` lowered by `di - 1`.
//!   Each scan takes the next usable destination with `weight >= cw`; a pass
//!   over the list without a hit lowers `cw` by `di`, and `cw <= 0` restarts
//!   at `mw`. Over a full cycle each destination gets exactly `weight / di`
//!   picks, heavier ones first within the cycle.
//! - `lc`: least overhead `active * 256 + inactive`; ties go to the earlier
//!   destination.
//! - `wlc`: least `overhead / weight`, compared as `loh * w > doh * lw` in
//!   `u128` (no floats, no overflow). The first usable destination is the
//!   start candidate and only a strictly smaller ratio replaces it.
//! - `sed`: least `(active + 1) / weight`, compared like `wlc`.
//! - `nq`: the first usable destination with no active connection, otherwise
//!   the `sed` choice.
//! - `sh`: 256 buckets tiled in list order, each destination repeated
//!   `weight` times (at least once). The bucket is chosen by a hash of the
//!   client address (and port with [`HashOptions::port`]). If that bucket's
//!   destination is unusable the pick is `None`, unless
//!   [`HashOptions::fallback`] probes the following buckets.
//! - `mh`: Maglev consistent hashing over a 65521-slot table. Each
//!   destination's permutation comes from two fixed-seed hashes of
//!   [`Dest::key`]; destinations claim slots in turns proportional to
//!   `last_weight / gcd`. Like IPVS, a destination keeps its last non-zero
//!   weight, so quiescing it (weight 0) remaps nobody else; its clients get
//!   `None` unless `fallback` walks to the next usable slot.
//!
//! Hashes for `sh` and `mh` are fixed functions (FNV-1a plus a 64-bit
//! finalizer), deterministic across processes and restarts. They are not
//! bit-identical to the kernel's `hash_32`/`hsiphash`, but have the same
//! properties: stable and evenly spread.

mod hashing;
mod least;
// Crate-visible for the interleaved-WRR step the `wrr` placement policy shares.
pub(crate) mod rotation;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use hashing::{Maglev, SourceHash};
use rotation::{RoundRobin, WeightedRoundRobin};

/// Scheduler identifiers as used in configs: "rr","wrr","lc","wlc","sed","nq","sh","mh".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// Round robin (`rr`).
    Rr,
    /// Interleaved weighted round robin (`wrr`).
    Wrr,
    /// Least connection (`lc`).
    Lc,
    /// Weighted least connection (`wlc`), the IPVS default.
    #[default]
    Wlc,
    /// Shortest expected delay (`sed`).
    Sed,
    /// Never queue (`nq`).
    Nq,
    /// Source hashing (`sh`).
    Sh,
    /// Maglev hashing (`mh`).
    Mh,
}

impl SchedulerKind {
    /// Every scheduler, in the order of the config names list.
    pub const ALL: [SchedulerKind; 8] = [
        SchedulerKind::Rr,
        SchedulerKind::Wrr,
        SchedulerKind::Lc,
        SchedulerKind::Wlc,
        SchedulerKind::Sed,
        SchedulerKind::Nq,
        SchedulerKind::Sh,
        SchedulerKind::Mh,
    ];

    /// The config identifier, e.g. `"wlc"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::Rr => "rr",
            SchedulerKind::Wrr => "wrr",
            SchedulerKind::Lc => "lc",
            SchedulerKind::Wlc => "wlc",
            SchedulerKind::Sed => "sed",
            SchedulerKind::Nq => "nq",
            SchedulerKind::Sh => "sh",
            SchedulerKind::Mh => "mh",
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SchedulerKind {
    type Err = ParseSchedulerKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Exact, lowercase match only, like ipvsadm's `-s` option.
        SchedulerKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| ParseSchedulerKindError {
                input: s.to_owned(),
            })
    }
}

/// Error for an unknown scheduler name; its message lists the valid names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseSchedulerKindError {
    input: String,
}

impl fmt::Display for ParseSchedulerKindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown scheduler {:?} (valid: ", self.input)?;
        for (i, kind) in SchedulerKind::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(kind.as_str())?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for ParseSchedulerKindError {}

/// Flags: sh-fallback/sh-port and mh-fallback/mh-port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HashOptions {
    /// When the hashed destination is unusable, look further in the table.
    pub fallback: bool,
    /// Hash the client port as well as the address.
    pub port: bool,
}

/// One destination (real server) as the scheduler sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dest {
    /// Relative weight; 0 = quiesced (no new connections).
    pub weight: u32,
    /// Active (established) connections.
    pub active: u32,
    /// Inactive (e.g. closing) connections.
    pub inactive: u32,
    /// Health: false = down, never chosen.
    pub available: bool,
    /// IPVS upper-threshold flag or per-backend cap reached: never chosen.
    pub overloaded: bool,
    /// Stable identity (e.g. a hash of addr:port); mh permutations and last weights key on it.
    pub key: u64,
}

impl Dest {
    /// An available, idle, not overloaded destination with this key and weight.
    pub const fn new(key: u64, weight: u32) -> Self {
        Dest {
            weight,
            active: 0,
            inactive: 0,
            available: true,
            overloaded: false,
            key,
        }
    }

    /// Whether a new connection may go here: `weight > 0 && available && !overloaded`.
    pub const fn is_usable(&self) -> bool {
        self.weight > 0 && self.available && !self.overloaded
    }
}

/// The client as the scheduler sees it (for sh/mh).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// Source address; IPv4-mapped IPv6 addresses hash like the IPv4 address.
    pub addr: IpAddr,
    /// Source port; hashed only with [`HashOptions::port`].
    pub port: u16,
}

impl Client {
    /// A client from its source address and port.
    pub const fn new(addr: IpAddr, port: u16) -> Self {
        Client { addr, port }
    }
}

/// A scheduler instance for one virtual service: kind, options and per-kind state.
#[derive(Clone)]
pub struct Scheduler {
    kind: SchedulerKind,
    options: HashOptions,
    /// Length of the dest list at the last rebuild; `pick` rebuilds on mismatch
    /// so that every index stored in the state is in bounds.
    len: usize,
    state: State,
}

/// Per-kind state. The connection-count schedulers are stateless.
#[derive(Clone)]
enum State {
    Rr(RoundRobin),
    Wrr(WeightedRoundRobin),
    Lc,
    Wlc,
    Sed,
    Nq,
    Sh(SourceHash),
    Mh(Maglev),
}

impl Scheduler {
    /// A scheduler of `kind` for `dests`; `options` matter only for sh and mh.
    pub fn new(kind: SchedulerKind, options: HashOptions, dests: &[Dest]) -> Self {
        let state = match kind {
            SchedulerKind::Rr => State::Rr(RoundRobin::default()),
            SchedulerKind::Wrr => State::Wrr(WeightedRoundRobin::new(dests)),
            SchedulerKind::Lc => State::Lc,
            SchedulerKind::Wlc => State::Wlc,
            SchedulerKind::Sed => State::Sed,
            SchedulerKind::Nq => State::Nq,
            SchedulerKind::Sh => State::Sh(SourceHash::new(dests)),
            SchedulerKind::Mh => State::Mh(Maglev::new(dests)),
        };
        Scheduler {
            kind,
            options,
            len: dests.len(),
            state,
        }
    }

    /// Called whenever dests are added/removed or weights change (IPVS recomputes wrr state and rebuilds sh/mh tables on every edit). Dest counters (active/inactive) changing do NOT require this.
    pub fn rebuild(&mut self, dests: &[Dest]) {
        self.len = dests.len();
        match &mut self.state {
            State::Rr(rr) => rr.rebuild(dests),
            State::Wrr(wrr) => wrr.rebuild(dests),
            State::Lc | State::Wlc | State::Sed | State::Nq => {}
            State::Sh(sh) => sh.rebuild(dests),
            State::Mh(mh) => mh.rebuild(dests),
        }
    }

    /// Pick a destination index for a new connection, or None when no destination can take it (rebuilds first if `dests.len()` changed).
    pub fn pick(&mut self, dests: &[Dest], client: &Client) -> Option<usize> {
        if dests.len() != self.len {
            self.rebuild(dests);
        }
        let options = self.options;
        let picked = match &mut self.state {
            State::Rr(rr) => rr.pick(dests),
            State::Wrr(wrr) => wrr.pick(dests),
            State::Lc => least::lc(dests),
            State::Wlc => least::wlc(dests),
            State::Sed => least::sed(dests),
            State::Nq => least::nq(dests),
            State::Sh(sh) => sh.pick(dests, client, options),
            State::Mh(mh) => mh.pick(dests, client, options),
        };
        debug_assert!(picked.is_none_or(|i| dests.get(i).is_some_and(Dest::is_usable)));
        picked
    }

    /// The scheduler's kind.
    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    /// The hashing options given at construction.
    pub fn options(&self) -> HashOptions {
        self.options
    }
}

impl fmt::Debug for Scheduler {
    // Hand-written: the mh table has 65521 entries, too many to print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("kind", &self.kind)
            .field("options", &self.options)
            .field("dests", &self.len)
            .finish_non_exhaustive()
    }
}

/// Greatest common divisor; `gcd(0, x) == x`, so folding from 0 skips nothing.
fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::{Client, Dest};
    use std::net::{IpAddr, Ipv4Addr};

    /// Available idle dests with keys 0.. and the given weights.
    pub(crate) fn dests(weights: &[u32]) -> Vec<Dest> {
        weights
            .iter()
            .zip(0u64..)
            .map(|(&w, key)| Dest::new(key.wrapping_mul(0x9e37_79b9) + 1, w))
            .collect()
    }

    /// The i-th synthetic client 127.x.y.z, port 40000.
    pub(crate) fn client(i: u32) -> Client {
        let [_, x, y, z] = i.to_be_bytes();
        Client::new(IpAddr::V4(Ipv4Addr::new(127, x, y, z)), 40000)
    }

    /// Index of each picked dest counted over `picks` results.
    pub(crate) fn counts(n: usize, picks: impl IntoIterator<Item = Option<usize>>) -> Vec<usize> {
        let mut counts = vec![0; n];
        for i in picks.into_iter().flatten() {
            counts[i] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{client, dests};
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const ALL_OPTIONS: [HashOptions; 4] = [
        HashOptions {
            fallback: false,
            port: false,
        },
        HashOptions {
            fallback: true,
            port: false,
        },
        HashOptions {
            fallback: false,
            port: true,
        },
        HashOptions {
            fallback: true,
            port: true,
        },
    ];

    #[test]
    fn kind_names_round_trip_through_display_and_from_str() {
        for kind in SchedulerKind::ALL {
            assert_eq!(kind.to_string().parse::<SchedulerKind>(), Ok(kind));
        }
        let names: Vec<String> = SchedulerKind::ALL.iter().map(|k| k.to_string()).collect();
        assert_eq!(names, ["rr", "wrr", "lc", "wlc", "sed", "nq", "sh", "mh"]);
    }

    #[test]
    fn unknown_kind_error_lists_valid_names() {
        let err = "WLC".parse::<SchedulerKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown scheduler "WLC" (valid: rr, wrr, lc, wlc, sed, nq, sh, mh)"#
        );
        assert!("".parse::<SchedulerKind>().is_err());
    }

    #[test]
    fn default_kind_is_wlc_and_default_options_are_off() {
        assert_eq!(SchedulerKind::default(), SchedulerKind::Wlc);
        assert_eq!(
            HashOptions::default(),
            HashOptions {
                fallback: false,
                port: false
            }
        );
    }

    #[test]
    fn usable_means_weighted_available_and_not_overloaded() {
        let base = Dest::new(1, 1);
        assert!(base.is_usable());
        assert!(!Dest { weight: 0, ..base }.is_usable());
        assert!(
            !Dest {
                available: false,
                ..base
            }
            .is_usable()
        );
        assert!(
            !Dest {
                overloaded: true,
                ..base
            }
            .is_usable()
        );
    }

    #[test]
    fn weight_zero_is_quiesced_for_every_scheduler() {
        // The quiesced dest is idle and first in the list, so every scheduler
        // would prefer it if weight 0 did not exclude it.
        let mut list = dests(&[0, 1]);
        list[1].active = 100;
        list[1].inactive = 100;
        for kind in SchedulerKind::ALL {
            for options in ALL_OPTIONS {
                let mut s = Scheduler::new(kind, options, &list);
                for i in 0..300 {
                    let picked = s.pick(&list, &client(i));
                    let hashed = matches!(kind, SchedulerKind::Sh | SchedulerKind::Mh);
                    if options.fallback || !hashed {
                        assert_eq!(picked, Some(1), "{kind} {options:?}");
                    } else {
                        assert!(matches!(picked, None | Some(1)), "{kind} {options:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn no_usable_dest_gives_none_for_every_scheduler() {
        let mut list = dests(&[0, 3, 2, 1]);
        list[1].available = false;
        list[2].overloaded = true;
        list[3].available = false;
        list[3].overloaded = true;
        for kind in SchedulerKind::ALL {
            for options in ALL_OPTIONS {
                let mut s = Scheduler::new(kind, options, &list);
                for i in 0..50 {
                    assert_eq!(s.pick(&list, &client(i)), None, "{kind} {options:?}");
                }
                let mut empty = Scheduler::new(kind, options, &[]);
                assert_eq!(empty.pick(&[], &client(0)), None, "{kind} {options:?}");
            }
        }
    }

    #[test]
    fn pick_with_a_different_length_rebuilds_instead_of_panicking() {
        let short = dests(&[1, 2, 3]);
        let long = dests(&[1, 2, 3, 4, 5, 6]);
        for kind in SchedulerKind::ALL {
            let options = HashOptions {
                fallback: true,
                port: false,
            };
            let mut s = Scheduler::new(kind, options, &long);
            for i in 0..20 {
                s.pick(&long, &client(i));
            }
            for i in 0..20 {
                let picked = s.pick(&short, &client(i));
                assert!(picked.is_some_and(|d| d < short.len()), "{kind}");
            }
            for i in 0..20 {
                let picked = s.pick(&long, &client(i));
                assert!(picked.is_some_and(|d| d < long.len()), "{kind}");
            }
            assert_eq!(s.kind(), kind);
        }
    }

    #[test]
    fn debug_output_is_a_short_summary() {
        let s = Scheduler::new(SchedulerKind::Mh, HashOptions::default(), &dests(&[1, 1]));
        let text = format!("{s:?}");
        assert!(text.starts_with("Scheduler { kind: Mh"), "{text}");
        assert!(text.len() < 200, "{text}");
    }

    fn dest_strategy() -> impl Strategy<Value = Dest> {
        (
            0u32..=10,
            0u32..4,
            0u32..4,
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.2),
            any::<u64>(),
        )
            .prop_map(
                |(weight, active, inactive, available, overloaded, key)| Dest {
                    weight,
                    active,
                    inactive,
                    available,
                    overloaded,
                    key,
                },
            )
    }

    fn client_strategy() -> impl Strategy<Value = Client> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(a, port)| Client::new(IpAddr::V4(Ipv4Addr::from(a)), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(a, port)| Client::new(IpAddr::V6(Ipv6Addr::from(a)), port)),
        ]
    }

    /// `pick`'s contract for one result.
    fn check_pick(
        kind: SchedulerKind,
        options: HashOptions,
        dests: &[Dest],
        picked: Option<usize>,
    ) -> Result<(), TestCaseError> {
        match picked {
            Some(i) => prop_assert!(dests[i].is_usable(), "{kind} picked unusable {i}"),
            None => {
                // Without fallback, sh/mh may land on an unusable dest.
                let hashed = matches!(kind, SchedulerKind::Sh | SchedulerKind::Mh);
                let may_miss = hashed && !options.fallback;
                prop_assert!(
                    may_miss || !dests.iter().any(Dest::is_usable),
                    "{kind} {options:?} gave None with a usable dest"
                );
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn pick_returns_a_usable_dest_or_none_only_when_none_is_usable(
            list in prop::collection::vec(dest_strategy(), 1..20),
            new_weights in prop::collection::vec(0u32..=10, 20),
            clients in prop::collection::vec(client_strategy(), 1..8),
            fallback in any::<bool>(),
            port in any::<bool>(),
        ) {
            let options = HashOptions { fallback, port };
            // Second phase: the same dests with edited weights, after a rebuild.
            let edited: Vec<Dest> = list
                .iter()
                .zip(&new_weights)
                .map(|(d, &weight)| Dest { weight, ..*d })
                .collect();
            for kind in SchedulerKind::ALL {
                let mut s = Scheduler::new(kind, options, &list);
                for c in &clients {
                    check_pick(kind, options, &list, s.pick(&list, c))?;
                }
                s.rebuild(&edited);
                for c in &clients {
                    check_pick(kind, options, &edited, s.pick(&edited, c))?;
                }
            }
        }
    }
}
