//! Per-pool indexes of eligible hosts, kept up to date as hosts change, so that a decision never
//! scans the pool.
//!
//! Eligible hosts sit in one of two tiers: `MAIN`, and `PENALIZED` (used only when `MAIN` is empty).
//! What each tier holds depends on the policy:
//! - `wlc`: per weight class, a `BTreeSet` of [`RankKey`] (within a class the order is by
//!   occupancy), plus the tier's total occupancy and weight for the quota rule; a decision looks at
//!   the least-loaded host of each class, so it costs O(classes · log n) — pools have a handful of
//!   distinct weights;
//! - other ranked policies (`lc`, `sed`, `least-load`, `x2go-load`): a [`MinTree`] of [`RankKey`]
//!   by position, whose minimum is the decision (a tournament tree: one O(log n) path update when a
//!   host changes, which is several times cheaper than a `BTreeSet` remove plus insert);
//! - `rr` and `wrr`: a `BTreeSet` of positions in the pool's configured order, walked from a cursor;
//! - `two-choices`: a Fenwick tree of weights by position, for O(log n) weighted sampling.

use super::score::Ratio;
use crate::model::HostId;
use crate::policy::Policy;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// Tier of hosts without failure penalty.
pub(crate) const MAIN: usize = 0;
/// Tier of eligible hosts in failure penalty.
pub(crate) const PENALIZED: usize = 1;

/// Order of hosts under a ranked policy: rear tier last, then lower score, then heavier weight, then
/// a random draw made when the host last changed (so equal hosts are chosen uniformly at random,
/// reproducibly for a seed), then the id for totality.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RankKey {
    pub tier: u8,
    pub score: Ratio,
    pub weight: Reverse<u32>,
    pub tiebreak: u64,
    pub host: HostId,
    /// Sessions plus reservations (after `host`, so it never affects the order).
    pub occupancy: u64,
}

/// A pool's index; the variant follows the pool's policy.
#[derive(Debug, Clone)]
pub(crate) enum PoolIndex {
    Ranked([MinTree; 2]),
    Quota {
        /// Per tier: weight → that class's hosts, least occupied first.
        classes: [BTreeMap<u32, BTreeSet<RankKey>>; 2],
        /// Hosts per tier.
        count: [usize; 2],
        /// Sessions plus reservations of each tier's hosts.
        occupancy: [u64; 2],
        /// Total weight of each tier's hosts.
        weight: [u64; 2],
    },
    Rotation {
        tiers: [BTreeSet<u32>; 2],
        /// Position of the last pick.
        cursor: Option<u32>,
        /// IPVS interleaved-WRR current weight (see `schedule::rotation`).
        cw: i64,
        /// Whether the set of eligible weights changed since `mw`/`di` were computed.
        dirty: bool,
        /// gcd of the eligible weights.
        di: i64,
        /// max eligible weight − (di − 1).
        mw: i64,
    },
    Sampled([Fenwick; 2]),
}

impl PoolIndex {
    pub(crate) fn new(policy: Policy, members: usize) -> PoolIndex {
        match policy {
            Policy::RoundRobin | Policy::WeightedRoundRobin => PoolIndex::Rotation {
                tiers: Default::default(),
                cursor: None,
                cw: 0,
                dirty: true,
                di: 1,
                mw: 0,
            },
            Policy::TwoChoices => {
                PoolIndex::Sampled([Fenwick::new(members), Fenwick::new(members)])
            }
            Policy::WeightedLeastSessions => PoolIndex::Quota {
                classes: Default::default(),
                count: [0; 2],
                occupancy: [0; 2],
                weight: [0; 2],
            },
            _ => PoolIndex::Ranked([MinTree::new(members), MinTree::new(members)]),
        }
    }
}

/// Where a member currently sits in its pool's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub tier: usize,
    pub key: RankKey,
}

impl PoolIndex {
    /// Replaces a member's slot, doing nothing when the index would not change.
    pub(crate) fn update(&mut self, pos: u32, old: Option<&Slot>, new: Option<&Slot>) {
        let unchanged = match (old, new, &*self) {
            (Some(o), Some(n), PoolIndex::Ranked(_) | PoolIndex::Quota { .. }) => o == n,
            (Some(o), Some(n), _) => o.tier == n.tier && o.key.weight == n.key.weight,
            _ => false,
        };
        if unchanged && !matches!(self, PoolIndex::Sampled(_)) {
            return;
        }
        if let Some(o) = old {
            self.remove(pos, o);
        }
        if let Some(n) = new {
            self.insert(pos, n);
        }
    }

    pub(crate) fn remove(&mut self, pos: u32, slot: &Slot) {
        match self {
            PoolIndex::Ranked(sets) => {
                sets[slot.tier].set(pos as usize, None);
            }
            PoolIndex::Quota {
                classes,
                count,
                occupancy,
                weight,
            } => {
                let w = slot.key.weight.0;
                let t = slot.tier;
                if let Some(class) = classes[t].get_mut(&w)
                    && class.remove(&slot.key)
                {
                    if class.is_empty() {
                        classes[t].remove(&w);
                    }
                    count[t] -= 1;
                    occupancy[t] -= slot.key.occupancy;
                    weight[t] -= u64::from(w);
                }
            }
            PoolIndex::Rotation { tiers, dirty, .. } => {
                tiers[slot.tier].remove(&pos);
                *dirty = true;
            }
            PoolIndex::Sampled(t) => t[slot.tier].set(pos as usize, 0),
        }
    }

    pub(crate) fn insert(&mut self, pos: u32, slot: &Slot) {
        match self {
            PoolIndex::Ranked(sets) => {
                sets[slot.tier].set(pos as usize, Some(slot.key));
            }
            PoolIndex::Quota {
                classes,
                count,
                occupancy,
                weight,
            } => {
                let w = slot.key.weight.0;
                let t = slot.tier;
                if classes[t].entry(w).or_default().insert(slot.key) {
                    count[t] += 1;
                    occupancy[t] += slot.key.occupancy;
                    weight[t] += u64::from(w);
                }
            }
            PoolIndex::Rotation { tiers, dirty, .. } => {
                tiers[slot.tier].insert(pos);
                *dirty = true;
            }
            PoolIndex::Sampled(t) => t[slot.tier].set(pos as usize, u64::from(slot.key.weight.0)),
        }
    }

    /// Number of hosts in a tier.
    pub(crate) fn len(&self, tier: usize) -> usize {
        match self {
            PoolIndex::Ranked(sets) => sets[tier].len(),
            PoolIndex::Quota { count, .. } => count[tier],
            PoolIndex::Rotation { tiers, .. } => tiers[tier].len(),
            PoolIndex::Sampled(t) => t[tier].count,
        }
    }

    /// The first tier that has any host.
    pub(crate) fn usable_tier(&self) -> Option<usize> {
        [MAIN, PENALIZED].into_iter().find(|&t| self.len(t) > 0)
    }
}

/// A tournament tree over member positions: every inner node holds the least key below it.
#[derive(Debug, Clone)]
pub(crate) struct MinTree {
    /// Number of leaves: a power of two at least the member count.
    leaves: usize,
    /// `nodes[1]` is the root; node i has children 2i and 2i+1; leaves start at `leaves`.
    nodes: Vec<Option<RankKey>>,
    count: usize,
}

fn least(a: Option<RankKey>, b: Option<RankKey>) -> Option<RankKey> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y < x { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

impl MinTree {
    pub(crate) fn new(n: usize) -> MinTree {
        let leaves = n.max(1).next_power_of_two();
        MinTree {
            leaves,
            nodes: vec![None; 2 * leaves],
            count: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Sets or clears a position; returns whether anything changed.
    pub(crate) fn set(&mut self, pos: usize, key: Option<RankKey>) -> bool {
        let Some(leaf) = self.nodes.get_mut(self.leaves + pos) else {
            return false;
        };
        if *leaf == key {
            return false;
        }
        match (leaf.is_some(), key.is_some()) {
            (false, true) => self.count += 1,
            (true, false) => self.count -= 1,
            _ => {}
        }
        *leaf = key;
        let mut i = (self.leaves + pos) / 2;
        while i >= 1 {
            let m = least(self.nodes[2 * i], self.nodes[2 * i + 1]);
            if self.nodes[i] == m {
                break; // ancestors already hold the right minimum
            }
            self.nodes[i] = m;
            i /= 2;
        }
        true
    }

    pub(crate) fn first(&self) -> Option<RankKey> {
        self.nodes.get(1).copied().flatten()
    }

    /// Every key, in increasing order.
    #[cfg(test)]
    pub(crate) fn sorted(&self) -> Vec<RankKey> {
        let mut v: Vec<RankKey> = self.nodes[self.leaves..]
            .iter()
            .flatten()
            .copied()
            .collect();
        v.sort();
        v
    }
}

/// Fenwick (binary indexed) tree of weights by position: O(log n) update and weighted draw.
#[derive(Debug, Clone)]
pub(crate) struct Fenwick {
    tree: Vec<u64>,
    values: Vec<u64>,
    /// Positions with a non-zero value.
    pub count: usize,
}

impl Fenwick {
    pub(crate) fn new(n: usize) -> Fenwick {
        Fenwick {
            tree: vec![0; n + 1],
            values: vec![0; n],
            count: 0,
        }
    }

    pub(crate) fn set(&mut self, pos: usize, value: u64) {
        let Some(old) = self.values.get(pos).copied() else {
            return;
        };
        if old == value {
            return;
        }
        match (old == 0, value == 0) {
            (true, false) => self.count += 1,
            (false, true) => self.count -= 1,
            _ => {}
        }
        self.values[pos] = value;
        let mut i = pos + 1;
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add(value).wrapping_sub(old);
            i += i & i.wrapping_neg();
        }
    }

    pub(crate) fn total(&self) -> u64 {
        let mut i = self.values.len();
        let mut sum = 0u64;
        while i > 0 {
            sum = sum.wrapping_add(self.tree[i]);
            i &= i - 1;
        }
        sum
    }

    /// The position whose cumulative range holds `target` (0 ≤ target < total).
    pub(crate) fn find(&self, mut target: u64) -> Option<usize> {
        let n = self.values.len();
        if n == 0 {
            return None;
        }
        let mut pos = 0usize;
        let mut step = n.next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next <= n && self.tree[next] <= target {
                pos = next;
                target -= self.tree[next];
            }
            step >>= 1;
        }
        (pos < n && self.values[pos] > 0).then_some(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(score: u64, host: u32) -> RankKey {
        RankKey {
            tier: 0,
            score: Ratio::new(score, 1),
            weight: Reverse(100),
            tiebreak: 0,
            host: HostId(host),
            occupancy: score,
        }
    }

    #[test]
    fn min_tree_keeps_the_least_key_at_the_root() {
        let mut t = MinTree::new(5);
        assert_eq!(t.first(), None);
        for (pos, score) in [(0, 5), (1, 3), (2, 9), (3, 3), (4, 7)] {
            t.set(pos, Some(key(score, pos as u32)));
        }
        assert_eq!(t.len(), 5);
        assert_eq!(t.first(), Some(key(3, 1)));
        t.set(1, None);
        assert_eq!(t.first(), Some(key(3, 3)));
        t.set(3, Some(key(10, 3)));
        assert_eq!(t.first(), Some(key(5, 0)));
        assert_eq!(t.len(), 4);
        let order: Vec<u64> = t.sorted().iter().map(|k| k.occupancy).collect();
        assert_eq!(order, vec![5, 7, 9, 10]);
    }

    #[test]
    fn fenwick_draws_each_position_in_proportion_to_its_value() {
        let mut f = Fenwick::new(5);
        f.set(0, 3);
        f.set(2, 1);
        f.set(4, 6);
        assert_eq!(f.total(), 10);
        assert_eq!(f.count, 3);
        let picks: Vec<usize> = (0..10).map(|t| f.find(t).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 0, 2, 4, 4, 4, 4, 4, 4]);
        f.set(4, 0);
        assert_eq!(f.total(), 4);
        assert_eq!(f.find(3), Some(2));
        assert_eq!(f.count, 2);
    }
}
