//! The host choice: which eligible host of a pool a new session goes to.
//!
//! Only the first tier that has a host is looked at, so a penalized host is chosen only when no
//! other host is eligible. Within it:
//! - `wlc`: the quota method below;
//! - `lc`, `sed`, `least-load`, `x2go-load`: the least [`RankKey`] (lowest score, then the heavier
//!   host, then the member's random draw);
//! - `rr`: the next host after the last pick, in the pool's order;
//! - `wrr`: IPVS interleaved WRR over the pool's order, stepping with the same functions as the
//!   director's `wrr` scheduler ([`crate::schedule::rotation`]);
//! - `two-choices`: two hosts drawn with probability proportional to weight, the better one taken.
//!
//! Every draw comes from the state's seeded RNG, in a fixed order, so the same state and seed
//! give the same sequence of choices; tests and recorded placements rely on that.
//!
//! # `wlc` and login storms
//! Ranking by (sessions + reservations) / weight alone is Adams' apportionment method: every host
//! gets one session before any gets two, so in a storm heavy hosts fall behind their share (with
//! weights 200:50×7, 292 requests gave the heavy host 105 where its share is 106.2). `wlc` therefore
//! ranks by (sessions + reservations + 1) / weight among the hosts whose occupancy is still below
//! their weighted share of the next session, `c < (T+1)·w/W` over the eligible hosts: the
//! Balinski–Young quota method. From any balanced start, N simultaneous requests leave every host
//! within one session of its share; in steady state it picks the host with the least sessions per
//! weight, as `wlc` always has.

use super::index::{Fenwick, PENALIZED, PoolIndex, RankKey};
use super::members::{MemberStatus, PoolEntry};
use crate::model::HostId;
use crate::policy::Policy;
use crate::schedule::rotation;
use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use std::collections::{BTreeMap, BTreeSet};

impl PoolEntry {
    /// The host a new session goes to, and whether it came from the penalized tier.
    pub(crate) fn choose(&mut self, rng: &mut ChaCha8Rng) -> Option<(HostId, bool)> {
        let tier = self.index.usable_tier()?;
        let policy = self.spec.policy;
        let chosen = match &mut self.index {
            PoolIndex::Quota {
                classes,
                occupancy,
                weight,
                ..
            } => quota(&classes[tier], occupancy[tier], weight[tier]),
            PoolIndex::Ranked(sets) => sets[tier].first().map(|k| k.host),
            PoolIndex::Rotation {
                tiers,
                cursor,
                cw,
                dirty,
                di,
                mw,
            } => {
                let set = &tiers[tier];
                let first = *set.first()?;
                let pos = if policy == Policy::RoundRobin {
                    round_robin(set, first, cursor)
                } else {
                    let members = &self.members;
                    let weight_at = |p: u32| match members.get(p as usize).map(|m| m.status) {
                        Some(MemberStatus::Eligible(s)) => s.key.weight.0,
                        _ => 0,
                    };
                    if *dirty {
                        (*di, *mw) = rotation::interval_and_max(set.iter().map(|&p| weight_at(p)));
                        if *cw > *mw {
                            *cw = *mw;
                        }
                        *dirty = false;
                    }
                    weighted_round_robin(set, first, cursor, cw, (*di, *mw), weight_at)
                };
                self.members.get(pos as usize).map(|m| m.host)
            }
            PoolIndex::Sampled(trees) => {
                let (a, b) = two_draws(&trees[tier], rng)?;
                let ka = self.slot_at(a)?.key;
                let kb = self.slot_at(b)?.key;
                Some(if kb < ka { kb.host } else { ka.host })
            }
        }?;
        Some((chosen, tier == PENALIZED))
    }
}

/// Balinski–Young quota method: the best (c+1)/w among hosts still under their weighted share of
/// the next session, c < (T+1)·w/W. Some host always qualifies (the shortfalls sum to 1). Within
/// a weight class the least occupied host is both the best and the most likely to qualify, so
/// only each class's first host is looked at.
fn quota(
    classes: &BTreeMap<u32, BTreeSet<RankKey>>,
    occupancy: u64,
    weight: u64,
) -> Option<HostId> {
    let (t, w_total) = (u128::from(occupancy) + 1, u128::from(weight));
    classes
        .values()
        .filter_map(|class| class.first())
        .filter(|k| u128::from(k.occupancy) * w_total < t * u128::from(k.weight.0))
        .min()
        .map(|k| k.host)
}

/// The position after `cursor` in `set`, wrapping to `first`.
fn round_robin(set: &BTreeSet<u32>, first: u32, cursor: &mut Option<u32>) -> u32 {
    let p = next_after(set, *cursor).unwrap_or(first);
    *cursor = Some(p);
    p
}

/// IPVS interleaved WRR: walk from the cursor; each wrap lowers the current weight by the gcd;
/// the heaviest host always qualifies, so two passes suffice.
fn weighted_round_robin(
    set: &BTreeSet<u32>,
    first: u32,
    cursor: &mut Option<u32>,
    cw: &mut i64,
    (di, mw): (i64, i64),
    weight_at: impl Fn(u32) -> u32,
) -> u32 {
    let mut found = first;
    for _ in 0..=2 * set.len() + 1 {
        let p = match next_after(set, *cursor) {
            Some(p) => p,
            None => {
                rotation::next_pass(cw, di, mw);
                first
            }
        };
        *cursor = Some(p);
        if i64::from(weight_at(p)) >= *cw {
            found = p;
            break;
        }
    }
    found
}

fn next_after(set: &BTreeSet<u32>, cursor: Option<u32>) -> Option<u32> {
    cursor.and_then(|c| set.range(c + 1..).next().copied())
}

/// Two positions drawn with probability proportional to weight (`two-choices`), the first draw
/// first.
fn two_draws(tree: &Fenwick, rng: &mut ChaCha8Rng) -> Option<(u32, u32)> {
    let total = tree.total();
    if total == 0 {
        return None;
    }
    let a = tree.find(rng.next_u64() % total)?;
    let b = tree.find(rng.next_u64() % total)?;
    Some((a as u32, b as u32))
}
