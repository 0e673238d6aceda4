//! Connection-count schedulers: `lc`, `wlc`, `sed`, `nq`
//! (ip_vs_lc.c, ip_vs_wlc.c, ip_vs_sed.c, ip_vs_nq.c). All are stateless.

use super::Dest;

/// `ip_vs_dest_conn_overhead`: an active connection is taken to cost 256
/// inactive ones. At most about 2^40, so it fits `u64` comfortably.
fn conn_overhead(dest: &Dest) -> u64 {
    (u64::from(dest.active) << 8) + u64::from(dest.inactive)
}

/// `ip_vs_sed_dest_overhead` / `ip_vs_nq_dest_overhead`: the expected
/// position of a new connection in the queue.
fn queue_overhead(dest: &Dest) -> u64 {
    u64::from(dest.active) + 1
}

/// Whether `doh / dw < loh / lw`, as IPVS's `loh * dw > doh * lw`. In `u128`
/// since overhead (up to 2^41) times weight (up to 2^32) overflows `u64`.
fn lighter(doh: u64, dw: u32, loh: u64, lw: u32) -> bool {
    u128::from(loh) * u128::from(dw) > u128::from(doh) * u128::from(lw)
}

fn usable(dests: &[Dest]) -> impl Iterator<Item = (usize, &Dest)> {
    dests.iter().enumerate().filter(|(_, d)| d.is_usable())
}

/// Least connection: least overhead, the earlier dest on ties.
pub(super) fn lc(dests: &[Dest]) -> Option<usize> {
    let mut least: Option<(usize, u64)> = None;
    for (i, dest) in usable(dests) {
        let doh = conn_overhead(dest);
        if least.is_none_or(|(_, loh)| doh < loh) {
            least = Some((i, doh));
        }
    }
    least.map(|(i, _)| i)
}

/// The wlc/sed rule: the first usable dest is the candidate, and only a
/// strictly smaller `overhead / weight` replaces it.
fn weighted_least(dests: &[Dest], overhead: fn(&Dest) -> u64) -> Option<usize> {
    let mut candidates = usable(dests);
    let (mut least, first) = candidates.next()?;
    let (mut loh, mut lw) = (overhead(first), first.weight);
    for (i, dest) in candidates {
        let doh = overhead(dest);
        if lighter(doh, dest.weight, loh, lw) {
            (least, loh, lw) = (i, doh, dest.weight);
        }
    }
    Some(least)
}

/// Weighted least connection: least `conn_overhead / weight`.
pub(super) fn wlc(dests: &[Dest]) -> Option<usize> {
    weighted_least(dests, conn_overhead)
}

/// Shortest expected delay: least `(active + 1) / weight`.
pub(super) fn sed(dests: &[Dest]) -> Option<usize> {
    weighted_least(dests, queue_overhead)
}

/// Never queue: the first idle usable dest at once, else the sed choice.
pub(super) fn nq(dests: &[Dest]) -> Option<usize> {
    let mut least: Option<(usize, u64, u32)> = None;
    for (i, dest) in usable(dests) {
        if dest.active == 0 {
            return Some(i);
        }
        let doh = queue_overhead(dest);
        if least.is_none_or(|(_, loh, lw)| lighter(doh, dest.weight, loh, lw)) {
            least = Some((i, doh, dest.weight));
        }
    }
    least.map(|(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A usable dest with weight, active and inactive counts.
    fn d(weight: u32, active: u32, inactive: u32) -> Dest {
        Dest {
            active,
            inactive,
            ..Dest::new(u64::from(weight), weight)
        }
    }

    #[test]
    fn lc_picks_the_least_overhead() {
        assert_eq!(lc(&[d(1, 3, 0), d(1, 1, 9), d(1, 2, 0)]), Some(1));
        // Weights do not matter to lc.
        assert_eq!(lc(&[d(100, 2, 0), d(1, 1, 0)]), Some(1));
    }

    #[test]
    fn lc_counts_an_active_connection_as_256_inactive_ones() {
        // 1 * 256 + 0 vs 0 * 256 + 255: the inactive-only dest is lighter.
        assert_eq!(lc(&[d(1, 1, 0), d(1, 0, 255)]), Some(1));
        // 256 vs 256: a tie, so the earlier dest wins.
        assert_eq!(lc(&[d(1, 1, 0), d(1, 0, 256)]), Some(0));
    }

    #[test]
    fn lc_breaks_ties_by_list_order() {
        assert_eq!(lc(&[d(1, 2, 0), d(1, 1, 0), d(5, 1, 0)]), Some(1));
    }

    #[test]
    fn lc_skips_unusable_dests() {
        let mut list = [d(0, 0, 0), d(1, 0, 0), d(1, 0, 0), d(1, 5, 0)];
        list[1].available = false;
        list[2].overloaded = true;
        assert_eq!(lc(&list), Some(3));
    }

    #[test]
    fn wlc_divides_overhead_by_weight() {
        // 256 / 1 vs 512 / 3: the heavier dest is less loaded.
        assert_eq!(wlc(&[d(1, 1, 0), d(3, 2, 0)]), Some(1));
        // 256 / 1 vs 768 / 2.
        assert_eq!(wlc(&[d(1, 1, 0), d(2, 3, 0)]), Some(0));
    }

    #[test]
    fn wlc_keeps_the_first_usable_dest_on_ties() {
        // 256 / 1 == 512 / 2 == 1024 / 4: all tie.
        assert_eq!(wlc(&[d(1, 1, 0), d(2, 2, 0), d(4, 4, 0)]), Some(0));
        let mut list = [d(1, 0, 0), d(1, 1, 0), d(2, 2, 0)];
        list[0].overloaded = true;
        assert_eq!(wlc(&list), Some(1));
    }

    #[test]
    fn wlc_compares_large_values_exactly_without_overflow() {
        let max = u32::MAX;
        // Ratio exactly 256 vs 256 + 1/(max - 1): the first stays.
        let a = d(max, max, 0);
        let b = d(max - 1, max - 1, 1);
        assert_eq!(wlc(&[a, b]), Some(0));
        assert_eq!(wlc(&[b, a]), Some(1));
        // Exactly equal ratios: first wins either way.
        let c = d(max - 1, max - 1, 0);
        assert_eq!(wlc(&[a, c]), Some(0));
        assert_eq!(wlc(&[c, a]), Some(0));
    }

    #[test]
    fn wlc_never_picks_a_quiesced_dest_even_when_idle() {
        assert_eq!(wlc(&[d(0, 0, 0), d(1, 1000, 0)]), Some(1));
        assert_eq!(wlc(&[d(1, 1000, 0), d(0, 0, 0)]), Some(0));
    }

    #[test]
    fn sed_uses_active_plus_one_over_weight() {
        // 1/1 vs 2/3.
        assert_eq!(sed(&[d(1, 0, 0), d(3, 1, 0)]), Some(1));
        // Inactive connections do not count.
        assert_eq!(sed(&[d(1, 0, 1000), d(1, 1, 0)]), Some(0));
        // 1/1 == 2/2: the first wins.
        assert_eq!(sed(&[d(1, 0, 0), d(2, 1, 0)]), Some(0));
    }

    #[test]
    fn sed_compares_large_values_exactly() {
        let max = u32::MAX;
        // max / (max - 1) vs (max + 1) / max: the second is lighter.
        assert_eq!(sed(&[d(max - 1, max - 1, 0), d(max, max, 0)]), Some(1));
    }

    #[test]
    fn nq_takes_the_first_idle_usable_dest_at_once() {
        assert_eq!(nq(&[d(10, 1, 0), d(1, 0, 0), d(5, 0, 0)]), Some(1));
        let mut list = [d(1, 0, 0), d(1, 3, 0), d(1, 0, 0)];
        list[0].available = false;
        assert_eq!(nq(&list), Some(2));
    }

    #[test]
    fn nq_without_idle_dests_follows_sed() {
        let list = [d(1, 1, 0), d(3, 2, 0), d(3, 5, 0)];
        assert_eq!(nq(&list), Some(1));
        assert_eq!(nq(&list), sed(&list));
        // Ties still go to the earlier dest.
        assert_eq!(nq(&[d(1, 1, 0), d(2, 3, 0)]), Some(0));
    }

    #[test]
    fn connection_schedulers_give_none_without_usable_dests() {
        let mut list = [d(0, 0, 0), d(1, 0, 0)];
        list[1].available = false;
        for f in [lc, wlc, sed, nq] {
            assert_eq!(f(&list), None);
            assert_eq!(f(&[]), None);
        }
    }
}
