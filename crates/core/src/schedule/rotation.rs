//! Rotation schedulers: `rr` (ip_vs_rr.c) and `wrr` (ip_vs_wrr.c).
//!
//! IPVS walks a linked list with a cursor that may point at the list head;
//! here the cursor is `Option<usize>`, `None` standing for the head (scans
//! then start at index 0).
//!
//! The weight side of interleaved WRR ([`interval_and_max`], [`next_pass`]) is
//! also what the `wrr` placement policy steps with (`placement/choose.rs`), so
//! the director and the broker interleave weights the same way. Each keeps its
//! own cursor and its own rule for when the weights are measured again.

use super::{Dest, gcd};

/// Round robin: the cursor is the last picked index.
#[derive(Clone, Debug, Default)]
pub(super) struct RoundRobin {
    last: Option<usize>,
}

impl RoundRobin {
    /// IPVS keeps the cursor across edits; keep it while it is still in range.
    pub(super) fn rebuild(&mut self, dests: &[Dest]) {
        if self.last.is_some_and(|i| i >= dests.len()) {
            self.last = None;
        }
    }

    /// One lap starting after the cursor (ending on the cursor itself);
    /// the cursor moves only on a hit, as in `ip_vs_rr_schedule`.
    pub(super) fn pick(&mut self, dests: &[Dest]) -> Option<usize> {
        let n = dests.len();
        let start = self.last.map_or(0, |i| i + 1);
        let hit = (0..n)
            .map(|step| (start + step) % n)
            .find(|&i| dests[i].is_usable())?;
        self.last = Some(hit);
        Some(hit)
    }
}

/// Upper bound on passes over the list in one wrr pick (at most 4 happen).
const MAX_PASSES: usize = 16;

/// Interleaved weighted round robin, the `ip_vs_wrr_mark` of IPVS.
///
/// Weights are held as `i64` so `mw`, `cw` and `cw - di` never overflow for
/// any `u32` weight.
#[derive(Clone, Debug)]
pub(super) struct WeightedRoundRobin {
    /// Cursor: the last picked index, `None` = list head.
    cl: Option<usize>,
    /// Current weight: only dests with `weight >= cw` are taken in this pass.
    cw: i64,
    /// Highest `cw`: max weight minus `di - 1`.
    mw: i64,
    /// Decrease interval: gcd of the positive weights (1 if there are none).
    di: i64,
}

impl WeightedRoundRobin {
    /// `ip_vs_wrr_init_svc`: cursor at the head, `cw = mw`.
    pub(super) fn new(dests: &[Dest]) -> Self {
        let (di, mw) = interval_and_max(dests.iter().map(|d| d.weight));
        WeightedRoundRobin {
            cl: None,
            cw: mw,
            mw,
            di,
        }
    }

    /// `ip_vs_wrr_dest_changed`: cursor back to the head; `cw` is kept when
    /// still valid, else clamped to `mw` or aligned to the new `di` grid
    /// (`cw ≡ 1 mod di`), so the current round continues where it can.
    pub(super) fn rebuild(&mut self, dests: &[Dest]) {
        self.cl = None;
        // Over all dests, usable or not: IPVS measures on edits only, while
        // availability changes between picks; scans skip unusable dests.
        (self.di, self.mw) = interval_and_max(dests.iter().map(|d| d.weight));
        if self.cw > self.mw || self.cw == 0 {
            self.cw = self.mw;
        } else if self.di > 1 {
            self.cw = (self.cw / self.di) * self.di + 1;
        }
    }

    /// `ip_vs_wrr_schedule`, with a fast-forward over passes that cannot hit.
    ///
    /// Termination: every pass without a hit lowers `cw` by `di`. The first
    /// time `cw` drops to 0 or below it restarts at `mw`; the search then ends
    /// after one more sweep down to `cw <= di` (weight >= 1, i.e. every usable
    /// dest qualifies), which either hits or reaches `stop` (the old cursor)
    /// or the end of the list. With the fast-forward a pick makes at most a
    /// handful of passes even for weights near `u32::MAX`: at most a partial
    /// pass after the cursor, a whole pass that fast-forwards `cw` to at most
    /// `max(heaviest usable, di)`, then at most two more whole passes.
    pub(super) fn pick(&mut self, dests: &[Dest]) -> Option<usize> {
        if self.mw <= 0 {
            return None;
        }
        let n = dests.len();
        // `pick` rebuilds on length changes, so the cursor is in range; the
        // filter keeps that true even if this invariant is ever broken.
        let last = self.cl.filter(|&i| i < n);
        let mut from = last;
        let mut stop: Option<usize> = None;
        let mut last_pass = false;
        let mut restarted = false;
        for _ in 0..MAX_PASSES {
            let start = from.map_or(0, |i| i + 1);
            // Heaviest usable weight seen in this pass, for the fast-forward.
            let mut heaviest = 0u32;
            for (i, dest) in dests.iter().enumerate().skip(start) {
                if dest.is_usable() {
                    if i64::from(dest.weight) >= self.cw {
                        self.cl = Some(i);
                        return Some(i);
                    }
                    heaviest = heaviest.max(dest.weight);
                }
                if stop == Some(i) {
                    self.cl = Some(i);
                    return None;
                }
            }
            from = None;
            if start == 0 {
                // A whole-list pass missed, so every following whole-list
                // pass misses too until `cw <= heaviest`; those passes only
                // lower `cw` (no restart, no last pass while `cw > di`), so
                // take all but the last of them at once.
                let floor = i64::from(heaviest).max(self.di);
                if self.cw - self.di > floor {
                    let passes = (self.cw - floor + self.di - 1) / self.di;
                    self.cw -= (passes - 1) * self.di;
                }
            }
            if next_pass(&mut self.cw, self.di, self.mw) {
                // Stop if the last pass (weight >= 1) already covered the
                // whole list: either it was flagged, or the search began at
                // the head so the first pass was the whole list.
                if last_pass || last.is_none() {
                    self.cl = None;
                    return None;
                }
                restarted = true;
            }
            last_pass = self.cw <= self.di;
            if last_pass && restarted && last.is_some() {
                // The first weight >= 1 pass only saw the dests after the
                // old cursor; this one must cover those up to it.
                stop = last;
            }
        }
        // Unreachable by the bound above. The cap only keeps a future bug
        // from spinning forever in the data path; the kernel-reference
        // property test would catch it as a wrong `None`.
        None
    }
}

/// Interleaved WRR's decrease interval and highest current weight over
/// `weights`: `di` is their gcd (1 if none is positive) and `mw` the largest
/// minus `di - 1` (0 if none is positive, meaning nothing can be picked).
pub(crate) fn interval_and_max(weights: impl IntoIterator<Item = u32>) -> (i64, i64) {
    let (g, max) = weights
        .into_iter()
        .fold((0, 0), |(g, max), w| (gcd(g, w), max.max(w)));
    let di = i64::from(g.max(1));
    (di, i64::from(max) - (di - 1))
}

/// The step at the end of a pass over the list: lowers the current weight by
/// `di`, and once it is no longer positive starts it again at `mw`. Returns
/// whether it started again (a new cycle).
pub(crate) fn next_pass(cw: &mut i64, di: i64, mw: i64) -> bool {
    *cw -= di;
    if *cw <= 0 {
        *cw = mw;
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{client, counts, dests};
    use super::super::{HashOptions, Scheduler, SchedulerKind};
    use super::*;
    use proptest::prelude::*;

    fn picks(kind: SchedulerKind, list: &[Dest], n: usize) -> Vec<Option<usize>> {
        let mut s = Scheduler::new(kind, HashOptions::default(), list);
        (0..n).map(|_| s.pick(list, &client(0))).collect()
    }

    #[test]
    fn rr_cycles_over_usable_dests_in_order() {
        let list = dests(&[1, 5, 2]);
        let got = picks(SchedulerKind::Rr, &list, 7);
        let want = [0, 1, 2, 0, 1, 2, 0].map(Some);
        assert_eq!(got, want);
    }

    #[test]
    fn rr_skips_quiesced_unavailable_and_overloaded_dests() {
        let mut list = dests(&[1, 0, 1, 1, 1]);
        list[2].available = false;
        list[3].overloaded = true;
        let got = picks(SchedulerKind::Rr, &list, 5);
        assert_eq!(got, [0, 4, 0, 4, 0].map(Some));
    }

    #[test]
    fn rr_continues_after_the_last_pick_when_flags_change() {
        let mut list = dests(&[1, 1, 1]);
        let mut s = Scheduler::new(SchedulerKind::Rr, HashOptions::default(), &list);
        assert_eq!(s.pick(&list, &client(0)), Some(0));
        list[1].available = false;
        assert_eq!(s.pick(&list, &client(0)), Some(2));
        list[1].available = true;
        assert_eq!(s.pick(&list, &client(0)), Some(0));
        assert_eq!(s.pick(&list, &client(0)), Some(1));
    }

    #[test]
    fn rr_keeps_its_cursor_on_none() {
        let mut list = dests(&[1, 1, 1]);
        let mut s = Scheduler::new(SchedulerKind::Rr, HashOptions::default(), &list);
        assert_eq!(s.pick(&list, &client(0)), Some(0));
        for d in &mut list {
            d.overloaded = true;
        }
        assert_eq!(s.pick(&list, &client(0)), None);
        for d in &mut list {
            d.overloaded = false;
        }
        assert_eq!(s.pick(&list, &client(0)), Some(1));
    }

    #[test]
    fn wrr_interleaves_4_3_2_as_ipvs_does() {
        // di = 1, mw = 4. cw = 4: A. cw = 3: A, B. cw = 2: A, B, C.
        // cw = 1: A, B, C. Then cw restarts at 4.
        let list = dests(&[4, 3, 2]);
        let got = picks(SchedulerKind::Wrr, &list, 18);
        let cycle = [0, 0, 1, 0, 1, 2, 0, 1, 2];
        let want: Vec<Option<usize>> = cycle.iter().chain(&cycle).map(|&i| Some(i)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn wrr_gives_each_dest_its_weight_per_cycle() {
        let list = dests(&[4, 3, 2]);
        let got = picks(SchedulerKind::Wrr, &list, 9 * 100);
        assert_eq!(counts(3, got), [400, 300, 200]);

        let list = dests(&[2, 1, 1]);
        let got = picks(SchedulerKind::Wrr, &list, 60);
        assert_eq!(counts(3, got), [30, 15, 15]);
    }

    #[test]
    fn wrr_steps_by_the_weight_gcd() {
        // di = 2, mw = 6 - 1 = 5: cw = 5: A; cw = 3: A, C; cw = 1: A, B, C.
        let list = dests(&[6, 2, 4]);
        let got = picks(SchedulerKind::Wrr, &list, 12);
        let cycle = [0, 0, 2, 0, 1, 2];
        let want: Vec<Option<usize>> = cycle.iter().chain(&cycle).map(|&i| Some(i)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn wrr_skips_unusable_dests_but_keeps_the_rest_of_the_cycle() {
        let mut list = dests(&[4, 3, 2]);
        list[0].available = false;
        let got = picks(SchedulerKind::Wrr, &list, 5 * 10);
        assert_eq!(counts(3, got), [0, 30, 20]);
    }

    #[test]
    fn wrr_with_huge_weights_answers_without_scanning_every_weight() {
        // The unavailable heavy dest makes cw start near u32::MAX; without
        // the fast-forward this would take billions of passes.
        let mut list = dests(&[u32::MAX, 1, 1]);
        list[0].available = false;
        let got = picks(SchedulerKind::Wrr, &list, 6);
        assert_eq!(got, [1, 2, 1, 2, 1, 2].map(Some));
        list[1].overloaded = true;
        list[2].overloaded = true;
        let mut s = Scheduler::new(SchedulerKind::Wrr, HashOptions::default(), &list);
        assert_eq!(s.pick(&list, &client(0)), None);
    }

    #[test]
    fn wrr_rebuild_restarts_from_the_head_with_new_weights() {
        let mut list = dests(&[4, 3, 2]);
        let mut s = Scheduler::new(SchedulerKind::Wrr, HashOptions::default(), &list);
        for _ in 0..4 {
            s.pick(&list, &client(0));
        }
        list[0].weight = 1;
        s.rebuild(&list);
        // mw = 3 and cw = 2 (kept): B, C at cw 2; then cw = 1: A, B, C.
        let got: Vec<_> = (0..5).map(|_| s.pick(&list, &client(0))).collect();
        assert_eq!(got, [1, 2, 0, 1, 2].map(Some));
    }

    #[test]
    fn wrr_with_all_weights_zero_gives_none() {
        let list = dests(&[0, 0]);
        assert_eq!(picks(SchedulerKind::Wrr, &list, 3), [None, None, None]);
    }

    /// `ip_vs_wrr_schedule` transcribed without the fast-forward, as the
    /// reference the optimised `pick` must match step for step.
    fn kernel_wrr_pick(w: &mut WeightedRoundRobin, dests: &[Dest]) -> Option<usize> {
        if w.mw == 0 {
            return None;
        }
        let last = w.cl;
        let mut from = last;
        let mut stop = None;
        let (mut last_pass, mut restarted) = (false, false);
        loop {
            for (i, dest) in dests.iter().enumerate().skip(from.map_or(0, |i| i + 1)) {
                if dest.is_usable() && i64::from(dest.weight) >= w.cw {
                    w.cl = Some(i);
                    return Some(i);
                }
                if stop == Some(i) {
                    w.cl = Some(i);
                    return None;
                }
            }
            from = None;
            w.cw -= w.di;
            if w.cw <= 0 {
                w.cw = w.mw;
                if last_pass || last.is_none() {
                    w.cl = None;
                    return None;
                }
                restarted = true;
            }
            last_pass = w.cw <= w.di;
            if last_pass && restarted && last.is_some() {
                stop = last;
            }
        }
    }

    proptest! {
        #[test]
        fn wrr_full_cycles_give_exactly_weight_over_gcd(
            weights in prop::collection::vec(0u32..=12, 1..9),
            cycles in 1usize..4,
        ) {
            let g = weights.iter().copied().fold(0, gcd);
            prop_assume!(g > 0);
            let list = dests(&weights);
            let cycle: usize = weights.iter().map(|&w| (w / g) as usize).sum();
            let got = picks(SchedulerKind::Wrr, &list, cycle * cycles);
            let want: Vec<usize> = weights.iter().map(|&w| (w / g) as usize * cycles).collect();
            prop_assert_eq!(counts(weights.len(), got), want);
        }

        #[test]
        fn rr_visits_every_usable_dest_once_per_lap(
            usable in prop::collection::vec(any::<bool>(), 1..12),
        ) {
            let mut list = dests(&vec![1; usable.len()]);
            for (d, &u) in list.iter_mut().zip(&usable) {
                d.available = u;
            }
            let n_usable = usable.iter().filter(|&&u| u).count();
            let got = picks(SchedulerKind::Rr, &list, n_usable * 3);
            let want: Vec<usize> = usable.iter().map(|&u| if u { 3 } else { 0 }).collect();
            prop_assert_eq!(counts(list.len(), got), want);
        }

        #[test]
        fn wrr_matches_the_kernel_loop_under_flag_and_weight_changes(
            weights in prop::collection::vec(0u32..=30, 1..10),
            ops in prop::collection::vec((0u8..6, 0usize..10, 0u32..=30), 1..80),
        ) {
            let mut list = dests(&weights);
            let mut fast = WeightedRoundRobin::new(&list);
            let mut kernel = fast.clone();
            for (op, at, weight) in ops {
                let at = at % list.len();
                match op {
                    0 => list[at].available = !list[at].available,
                    1 => list[at].overloaded = !list[at].overloaded,
                    2 => {
                        list[at].weight = weight;
                        fast.rebuild(&list);
                        kernel.rebuild(&list);
                    }
                    _ => {
                        let got = fast.pick(&list);
                        prop_assert_eq!(got, kernel_wrr_pick(&mut kernel, &list));
                        prop_assert!(got.is_none_or(|i| list[i].is_usable()));
                    }
                }
                prop_assert_eq!((fast.cl, fast.cw), (kernel.cl, kernel.cw));
            }
        }
    }
}
