//! Hashing schedulers: `sh` (ip_vs_sh.c) and `mh` (ip_vs_mh.c).
//!
//! Both map a hash of the client to a table entry holding a dest index. The
//! tables are built on `rebuild` only; availability and overload are checked
//! at pick time, so a dest going down never remaps anybody else.
//!
//! The hash is FNV-1a over the address bytes (plus the port when asked),
//! finished with murmur3's `fmix64` because FNV-1a alone spreads the low bits
//! poorly and the tables are indexed by `hash % size`. It is fixed (no
//! `RandomState`), so a client maps to the same dest across processes and
//! restarts. It is not bit-identical to the kernel's `hash_32`/`hsiphash`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Client, Dest, HashOptions, gcd};

/// Buckets in the sh table, as `IP_VS_SH_TAB_SIZE`.
const SH_TABLE_SIZE: usize = 256;

/// Slots in the mh table: 65521, the largest prime below 2^16 and the
/// kernel's `CONFIG_IP_VS_MH_TAB_INDEX=16` size. Maglev wants M prime (so
/// every skip generates a full permutation) and M much larger than the dest
/// count (the paper suggests M > 100 N) for an even spread; the kernel's
/// default 4093 only reaches that for about 40 dests. The table costs 256 KiB
/// and a rebuild fills it in O(M log M).
const MH_TABLE_SIZE: usize = 65521;

/// Bits of `weight / gcd` kept for mh turns, as the kernel's
/// `IP_VS_MH_TAB_BITS` for this table size, so one round of turns stays small
/// next to M and huge weights cannot let the first dest fill the table.
const MH_TURN_BITS: u32 = 8;

/// Marks a free mh slot during population.
const MH_EMPTY: u32 = u32::MAX;

// Fixed seeds: changing any of them remaps every client.
const SH_CLIENT_SEED: u64 = 0x5348_5f63_6c69_656e;
const MH_CLIENT_SEED: u64 = 0x4d48_5f63_6c69_656e;
const MH_OFFSET_SEED: u64 = 0x4d48_5f6f_6666_7365;
const MH_SKIP_SEED: u64 = 0x4d48_5f73_6b69_7021;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// murmur3's 64-bit finalizer: a bijection with full avalanche.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Seeded FNV-1a over `bytes`, then `fmix64`.
fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let h = bytes.iter().fold(FNV_OFFSET_BASIS ^ seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    fmix64(h)
}

/// Hash of the client address, and of its port when `with_port`.
///
/// IPv4-mapped IPv6 addresses (dual-stack listeners) hash as the IPv4
/// address. The family is hashed too, so `::a.b.c.d`-style values never
/// collide with IPv4 by construction.
fn client_hash(seed: u64, client: &Client, with_port: bool) -> u64 {
    // family tag + up to 16 address bytes + 2 port bytes
    let mut buf = [0u8; 19];
    let mut len = match client.addr.to_canonical() {
        IpAddr::V4(a) => {
            buf[0] = 4;
            buf[1..5].copy_from_slice(&a.octets());
            5
        }
        IpAddr::V6(a) => {
            buf[0] = 6;
            buf[1..17].copy_from_slice(&a.octets());
            17
        }
    };
    if with_port {
        buf[len..len + 2].copy_from_slice(&client.port.to_be_bytes());
        len += 2;
    }
    hash_bytes(seed, &buf[..len])
}

/// `hash % size` as an index; the result is below `size`, so it fits.
fn index(hash: u64, size: usize) -> usize {
    (hash % size as u64) as usize
}

fn usable_at(dests: &[Dest], i: usize) -> bool {
    dests.get(i).is_some_and(Dest::is_usable)
}

/// Each dest's last non-zero weight, by [`Dest::key`] (the kernel keeps
/// `dest->last_weight`). Tables are built from these, so setting a weight to
/// 0 keeps the dest's table entries and remaps no other client.
#[derive(Clone, Debug, Default)]
struct LastWeights(BTreeMap<u64, u32>);

impl LastWeights {
    /// Records the current weights and returns the last non-zero weight of
    /// each dest in list order (0 if it never had one). Dests no longer in
    /// the list are forgotten, so one re-added at weight 0 gets nothing.
    fn update(&mut self, dests: &[Dest]) -> Vec<u32> {
        let mut next = BTreeMap::new();
        let weights = dests
            .iter()
            .map(|d| {
                let w = match d.weight {
                    0 => self.0.get(&d.key).copied().unwrap_or(0),
                    w => w,
                };
                if w > 0 {
                    next.insert(d.key, w);
                }
                w
            })
            .collect();
        self.0 = next;
        weights
    }
}

/// Source hashing: a 256-bucket table of dest indexes.
#[derive(Clone, Debug)]
pub(super) struct SourceHash {
    /// Empty when there are no dests, else `SH_TABLE_SIZE` entries.
    table: Vec<usize>,
    last: LastWeights,
}

impl SourceHash {
    pub(super) fn new(dests: &[Dest]) -> Self {
        let mut sh = SourceHash {
            table: Vec::new(),
            last: LastWeights::default(),
        };
        sh.rebuild(dests);
        sh
    }

    /// `ip_vs_sh_reassign`: tile the buckets in list order, each dest
    /// repeated `weight` times and at least once, round robin until all 256
    /// are filled. Uses last non-zero weights (see [`LastWeights`]) so a
    /// quiesced dest keeps its buckets; dests past the 256th bucket (total
    /// weight above 256) get none, as in the kernel.
    pub(super) fn rebuild(&mut self, dests: &[Dest]) {
        let weights = self.last.update(dests);
        self.table.clear();
        if dests.is_empty() {
            return;
        }
        let (mut dest, mut repeated) = (0, 0u32);
        for _ in 0..SH_TABLE_SIZE {
            self.table.push(dest);
            repeated += 1;
            // `>=` also moves on after one bucket for weight 0.
            if repeated >= weights[dest] {
                dest = (dest + 1) % dests.len();
                repeated = 0;
            }
        }
    }

    /// The hashed bucket's dest if usable; with `fallback`, the first usable
    /// dest in the following buckets (wrapping), else `None`.
    pub(super) fn pick(
        &self,
        dests: &[Dest],
        client: &Client,
        options: HashOptions,
    ) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let start = index(
            client_hash(SH_CLIENT_SEED, client, options.port),
            SH_TABLE_SIZE,
        );
        let probes = if options.fallback { SH_TABLE_SIZE } else { 1 };
        (0..probes)
            .map(|offset| self.table[(start + offset) % SH_TABLE_SIZE])
            .find(|&i| usable_at(dests, i))
    }
}

/// Maglev hashing: a `MH_TABLE_SIZE`-slot lookup table of dest indexes.
#[derive(Clone, Debug)]
pub(super) struct Maglev {
    /// Empty when no dest has a last non-zero weight, else fully populated.
    table: Vec<u32>,
    last: LastWeights,
}

/// A dest's walk through its preference list (`ip_vs_mh_dest_setup`).
struct Permutation {
    dest: u32,
    /// Next preferred slot; advanced by `skip` past taken slots.
    next: usize,
    skip: usize,
    /// Slots claimed per round.
    turns: u32,
}

impl Maglev {
    pub(super) fn new(dests: &[Dest]) -> Self {
        let mut mh = Maglev {
            table: Vec::new(),
            last: LastWeights::default(),
        };
        mh.rebuild(dests);
        mh
    }

    /// `ip_vs_mh_permutate` + `ip_vs_mh_populate`: in rounds, each dest with
    /// a last non-zero weight claims `turns` of its next free preferred slots
    /// until the table is full. `turns = (last_weight / gcd) >> shift`, at
    /// least 1, where `shift` keeps the largest within `MH_TURN_BITS` bits.
    pub(super) fn rebuild(&mut self, dests: &[Dest]) {
        let weights = self.last.update(dests);
        self.table.clear();
        let g = weights.iter().copied().fold(0, gcd);
        if g == 0 {
            return;
        }
        let max_turns = weights.iter().copied().max().unwrap_or(0) / g;
        let shift = (u32::BITS - max_turns.leading_zeros()).saturating_sub(MH_TURN_BITS);
        let size = MH_TABLE_SIZE as u64;
        let mut perms: Vec<Permutation> = dests
            .iter()
            .zip(&weights)
            .enumerate()
            .filter(|&(_, (_, &w))| w > 0)
            .filter_map(|(i, (d, &w))| {
                // Indexes that do not fit below MH_EMPTY (4 billion dests)
                // could never get a slot anyway: the table fills first.
                let dest = u32::try_from(i).ok().filter(|&i| i != MH_EMPTY)?;
                Some(Permutation {
                    dest,
                    next: index(
                        hash_bytes(MH_OFFSET_SEED, &d.key.to_le_bytes()),
                        MH_TABLE_SIZE,
                    ),
                    // In 1..M: with M prime, every skip visits every slot.
                    skip: (hash_bytes(MH_SKIP_SEED, &d.key.to_le_bytes()) % (size - 1)) as usize
                        + 1,
                    turns: ((w / g) >> shift).max(1),
                })
            })
            .collect();
        if perms.is_empty() {
            return;
        }
        self.table = vec![MH_EMPTY; MH_TABLE_SIZE];
        let mut filled = 0;
        // Each round claims at least one slot, and each claim ends because a
        // full permutation always reaches a free slot while filled < M.
        loop {
            for perm in &mut perms {
                for _ in 0..perm.turns {
                    while self.table[perm.next] != MH_EMPTY {
                        perm.next += perm.skip;
                        if perm.next >= MH_TABLE_SIZE {
                            perm.next -= MH_TABLE_SIZE;
                        }
                    }
                    self.table[perm.next] = perm.dest;
                    filled += 1;
                    if filled == MH_TABLE_SIZE {
                        return;
                    }
                }
            }
        }
    }

    /// The hashed slot's dest if usable; with `fallback`, the next usable
    /// slot walking forward (wrapping), else `None`.
    pub(super) fn pick(
        &self,
        dests: &[Dest],
        client: &Client,
        options: HashOptions,
    ) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let start = index(
            client_hash(MH_CLIENT_SEED, client, options.port),
            MH_TABLE_SIZE,
        );
        let slot = |offset: usize| self.table[(start + offset) % MH_TABLE_SIZE] as usize;
        if usable_at(dests, slot(0)) {
            return Some(slot(0));
        }
        // The walk is up to M steps; skip it when it cannot succeed.
        if !options.fallback || !dests.iter().any(Dest::is_usable) {
            return None;
        }
        (1..MH_TABLE_SIZE).map(slot).find(|&i| usable_at(dests, i))
    }

    #[cfg(test)]
    fn slots_per_dest(&self, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &d in &self.table {
            counts[d as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{client, counts, dests};
    use super::super::{Scheduler, SchedulerKind};
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const CLIENTS: u32 = 10_000;
    const PLAIN: HashOptions = HashOptions {
        fallback: false,
        port: false,
    };
    const FALLBACK: HashOptions = HashOptions {
        fallback: true,
        port: false,
    };

    fn map_all(s: &mut Scheduler, list: &[Dest]) -> Vec<Option<usize>> {
        (0..CLIENTS).map(|i| s.pick(list, &client(i))).collect()
    }

    /// Asserts each count is within `tolerance` (relative) of its share of
    /// `total` by weight.
    fn assert_spread(counts: &[usize], weights: &[u32], total: usize, tolerance: f64) {
        let sum: u32 = weights.iter().sum();
        for (i, (&got, &w)) in counts.iter().zip(weights).enumerate() {
            let want = total as f64 * f64::from(w) / f64::from(sum);
            let err = (got as f64 - want).abs() / want;
            assert!(
                err < tolerance,
                "dest {i}: got {got}, want ~{want:.0} ({counts:?})"
            );
        }
    }

    #[test]
    fn hash_is_pinned_so_mappings_survive_restarts_and_upgrades() {
        let c = Client::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 443);
        assert_eq!(hash_bytes(0, b""), fmix64(FNV_OFFSET_BASIS));
        assert_eq!(client_hash(0, &c, false), PINNED_V4);
        assert_eq!(client_hash(0, &c, true), PINNED_V4_PORT);
    }

    const PINNED_V4: u64 = 0x5a91_50d9_ddda_b8cc;
    const PINNED_V4_PORT: u64 = 0x606e_8062_052c_a13d;

    #[test]
    fn ipv4_mapped_ipv6_clients_hash_like_ipv4() {
        let v4 = Client::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 1);
        let mapped = Client::new(IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()), 1);
        let v6 = Client::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1);
        for port in [false, true] {
            assert_eq!(client_hash(7, &v4, port), client_hash(7, &mapped, port));
            assert_ne!(client_hash(7, &v4, port), client_hash(7, &v6, port));
        }
    }

    #[test]
    fn sh_maps_the_same_client_to_the_same_dest() {
        let list = dests(&[1, 2, 3, 1]);
        let mut a = Scheduler::new(SchedulerKind::Sh, PLAIN, &list);
        let mut b = Scheduler::new(SchedulerKind::Sh, PLAIN, &list);
        let first = map_all(&mut a, &list);
        assert_eq!(map_all(&mut a, &list), first);
        assert_eq!(map_all(&mut b, &list), first, "a new instance agrees");
        assert!(first.iter().all(Option::is_some));
    }

    #[test]
    fn sh_tiles_buckets_by_weight_in_list_order() {
        let sh = SourceHash::new(&dests(&[2, 0, 1]));
        assert_eq!(&sh.table[..8], [0, 0, 1, 2, 0, 0, 1, 2]);
        assert_eq!(sh.table.len(), SH_TABLE_SIZE);
    }

    #[test]
    fn sh_spreads_clients_by_weight() {
        let weights = [1, 2, 3];
        let list = dests(&weights);
        let mut s = Scheduler::new(SchedulerKind::Sh, PLAIN, &list);
        let got = counts(3, map_all(&mut s, &list));
        assert_spread(&got, &weights, CLIENTS as usize, 0.15);
    }

    #[test]
    fn sh_hashes_the_port_only_when_asked() {
        let list = dests(&[1; 8]);
        let addr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        for (options, want_spread) in [
            (PLAIN, false),
            (
                HashOptions {
                    port: true,
                    ..PLAIN
                },
                true,
            ),
        ] {
            let mut s = Scheduler::new(SchedulerKind::Sh, options, &list);
            let picks: Vec<_> = (0..64)
                .map(|p| s.pick(&list, &Client::new(addr, 1000 + p)))
                .collect();
            let distinct = counts(8, picks).iter().filter(|&&c| c > 0).count();
            assert_eq!(distinct > 1, want_spread, "{options:?}");
        }
    }

    #[test]
    fn sh_quiescing_a_dest_leaves_other_clients_where_they_were() {
        let mut list = dests(&[2, 3, 1, 4]);
        let mut s = Scheduler::new(SchedulerKind::Sh, PLAIN, &list);
        let before = map_all(&mut s, &list);
        list[1].weight = 0;
        s.rebuild(&list);
        let after = map_all(&mut s, &list);
        for (b, a) in before.iter().zip(&after) {
            if *b == Some(1) {
                assert_eq!(*a, None);
            } else {
                assert_eq!(a, b);
            }
        }
        // Restoring the weight restores every mapping.
        list[1].weight = 3;
        s.rebuild(&list);
        assert_eq!(map_all(&mut s, &list), before);
    }

    #[test]
    fn sh_fallback_moves_only_the_clients_of_an_unusable_dest() {
        let mut list = dests(&[1, 1, 1, 1]);
        let mut plain = Scheduler::new(SchedulerKind::Sh, PLAIN, &list);
        let mut fallback = Scheduler::new(SchedulerKind::Sh, FALLBACK, &list);
        let before = map_all(&mut fallback, &list);
        // Health changes need no rebuild.
        list[2].available = false;
        let after = map_all(&mut fallback, &list);
        let without = map_all(&mut plain, &list);
        for ((b, a), w) in before.iter().zip(&after).zip(&without) {
            if *b == Some(2) {
                assert!(matches!(a, Some(0 | 1 | 3)));
                assert_eq!(*w, None);
            } else {
                assert_eq!(a, b);
                assert_eq!(w, b);
            }
        }
    }

    #[test]
    fn mh_maps_the_same_client_to_the_same_dest() {
        let list = dests(&[1, 2, 3, 1]);
        let mut a = Scheduler::new(SchedulerKind::Mh, PLAIN, &list);
        let mut b = Scheduler::new(SchedulerKind::Mh, PLAIN, &list);
        let first = map_all(&mut a, &list);
        assert_eq!(map_all(&mut a, &list), first);
        assert_eq!(map_all(&mut b, &list), first, "a new instance agrees");
        assert!(first.iter().all(Option::is_some));
    }

    #[test]
    fn mh_gives_slots_in_proportion_to_weight() {
        let weights = [1, 2, 3, 4];
        let mh = Maglev::new(&dests(&weights));
        let slots = mh.slots_per_dest(4);
        assert_eq!(slots.iter().sum::<usize>(), MH_TABLE_SIZE);
        // Rounds of 1 + 2 + 3 + 4 slots; the last round is partial.
        for (&got, &w) in slots.iter().zip(&weights) {
            let exact = MH_TABLE_SIZE / 10 * w as usize;
            assert!(got.abs_diff(exact) <= w as usize, "{slots:?}");
        }
    }

    #[test]
    fn mh_spreads_clients_by_weight() {
        let weights = [1, 2, 3, 4];
        let list = dests(&weights);
        let mut s = Scheduler::new(SchedulerKind::Mh, PLAIN, &list);
        let got = counts(4, map_all(&mut s, &list));
        assert_spread(&got, &weights, CLIENTS as usize, 0.15);
    }

    #[test]
    fn mh_removing_one_of_n_dests_remaps_about_one_nth_of_clients() {
        let n = 10;
        let list = dests(&vec![1; n]);
        let mut s = Scheduler::new(SchedulerKind::Mh, PLAIN, &list);
        let before: Vec<_> = map_all(&mut s, &list)
            .iter()
            .map(|p| p.map(|i| list[i].key))
            .collect();
        let mut smaller = list.clone();
        smaller.remove(4);
        s.rebuild(&smaller);
        let after: Vec<_> = map_all(&mut s, &smaller)
            .iter()
            .map(|p| p.map(|i| smaller[i].key))
            .collect();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let lost = before.iter().filter(|b| **b == Some(list[4].key)).count();
        assert!(moved >= lost, "the removed dest's clients must move");
        assert!(
            moved < 2 * CLIENTS as usize / n,
            "moved {moved} of {CLIENTS}"
        );
    }

    #[test]
    fn mh_quiescing_a_dest_leaves_other_clients_where_they_were() {
        let mut list = dests(&[2, 3, 1, 4]);
        let mut s = Scheduler::new(SchedulerKind::Mh, PLAIN, &list);
        let before = map_all(&mut s, &list);
        list[1].weight = 0;
        s.rebuild(&list);
        let after = map_all(&mut s, &list);
        for (b, a) in before.iter().zip(&after) {
            if *b == Some(1) {
                assert_eq!(*a, None);
            } else {
                assert_eq!(a, b);
            }
        }
        // Another edit keeps the quiesced dest's last weight; restoring its
        // weight restores every mapping.
        s.rebuild(&list);
        assert_eq!(map_all(&mut s, &list), after);
        list[1].weight = 3;
        s.rebuild(&list);
        assert_eq!(map_all(&mut s, &list), before);
    }

    #[test]
    fn mh_dests_that_never_had_weight_get_no_slots() {
        let list = dests(&[0, 1, 0]);
        let mh = Maglev::new(&list);
        assert_eq!(mh.slots_per_dest(3), [0, MH_TABLE_SIZE, 0]);
        assert!(Maglev::new(&dests(&[0, 0])).table.is_empty());
    }

    #[test]
    fn mh_forgets_last_weight_of_removed_dests() {
        let mut list = dests(&[1, 1]);
        let mut mh = Maglev::new(&list);
        let removed = list.pop();
        mh.rebuild(&list);
        list.extend(removed.map(|d| Dest { weight: 0, ..d }));
        mh.rebuild(&list);
        assert_eq!(mh.slots_per_dest(2), [MH_TABLE_SIZE, 0]);
    }

    #[test]
    fn mh_fallback_moves_only_the_clients_of_an_unusable_dest() {
        let mut list = dests(&[1, 1, 1, 1]);
        let mut plain = Scheduler::new(SchedulerKind::Mh, PLAIN, &list);
        let mut fallback = Scheduler::new(SchedulerKind::Mh, FALLBACK, &list);
        let before = map_all(&mut fallback, &list);
        list[2].overloaded = true;
        let after = map_all(&mut fallback, &list);
        let without = map_all(&mut plain, &list);
        for ((b, a), w) in before.iter().zip(&after).zip(&without) {
            if *b == Some(2) {
                assert!(matches!(a, Some(0 | 1 | 3)));
                assert_eq!(*w, None);
            } else {
                assert_eq!(a, b);
                assert_eq!(w, b);
            }
        }
        // The moved clients spread over the remaining dests.
        let moved = counts(
            4,
            before
                .iter()
                .zip(&after)
                .filter(|(b, _)| **b == Some(2))
                .map(|(_, a)| *a),
        );
        assert!(
            moved.iter().enumerate().all(|(i, &c)| (i == 2) == (c == 0)),
            "{moved:?}"
        );
    }

    #[test]
    fn mh_huge_weights_still_fill_the_table_for_every_dest() {
        let weights = [u32::MAX, 1, u32::MAX / 2];
        let mh = Maglev::new(&dests(&weights));
        let slots = mh.slots_per_dest(3);
        assert!(slots.iter().all(|&c| c > 0), "{slots:?}");
        assert_eq!(slots.iter().sum::<usize>(), MH_TABLE_SIZE);
    }
}
