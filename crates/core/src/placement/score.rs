//! Scores the ranked policies order hosts by. Lower is better.
//!
//! # `least-load`
//! From the host's latest load report:
//!
//! ```text
//! cpu  = min(2, max(cpu_utilisation, load1 / cpu_count, psi_cpu_some_avg10 / 100))
//! mem  = min(1, max(1 - mem_available / mem_total, psi_memory_some_avg10 / 100))
//! sess = (sessions + reservations) / session_ref     (session_ref = the host's cap if it has one,
//!                                                     else the pool's `session_ref`, default 50)
//! load = 0.5·cpu + 0.3·mem + 0.2·sess
//! score = load · 100 / weight
//! ```
//!
//! Between reports the figures are adjusted optimistically for every placement made on the host
//! since its last report (`pending`): each adds the host's average cost of one session as last
//! reported (cpu / sessions and mem / sessions), but at least 0.5 % CPU and 0.5 % memory and at most
//! 25 % each, so a login storm does not pile onto the host that looked idlest a second ago.
//!
//! A host without a report (an agentless host, or one whose agent has not reported) is scored as if
//! its CPU and memory were as full as its session share: `load = sess`. Among such hosts the order is
//! exactly `wlc` scaled by `session_ref`.
//!
//! # `x2go-load`
//! X2Go's load checker (x2gobroker `agent.check_load`), verified against its code:
//!
//! ```text
//! loadavgXX   = floor((load1 + load5 + load15) / 3 · 100) + 1
//! load_factor = floor(mem_available_MB / 1000 · cpu_count · cpu_mhz · 100 / loadavgXX)
//! score       = (sessions + reservations + 1) / load_factor
//! ```
//!
//! (weighted by weight / 100, so the default weight leaves X2Go's order unchanged). Hosts without a
//! report rank after every host with one, in `wlc` order among themselves, as x2gobroker drops hosts
//! without a numeric factor.

use crate::model::LoadReport;
use crate::policy::Policy;
use std::cmp::Ordering;

/// An exact non-negative ratio, ordered by cross-multiplication (no floating-point ties lost).
#[derive(Clone, Copy, Debug)]
pub struct Ratio {
    num: u64,
    den: u64,
}

impl Ratio {
    /// `num / den`; a zero denominator is treated as 1.
    pub fn new(num: u64, den: u64) -> Ratio {
        Ratio {
            num,
            den: den.max(1),
        }
    }

    /// The value as a float, for display.
    pub fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl PartialEq for Ratio {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ratio {}
impl PartialOrd for Ratio {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ratio {
    fn cmp(&self, other: &Self) -> Ordering {
        (u128::from(self.num) * u128::from(other.den))
            .cmp(&(u128::from(other.num) * u128::from(self.den)))
    }
}

/// What a score needs to know about one host.
#[derive(Clone, Copy, Debug)]
pub struct ScoreInput<'a> {
    /// Live sessions.
    pub sessions: u32,
    /// Live reservations.
    pub reservations: u32,
    /// Weight (> 0 for eligible hosts).
    pub weight: u32,
    /// Cap, if any.
    pub max_sessions: Option<u32>,
    /// Latest load report, if any.
    pub load: Option<&'a LoadReport>,
    /// Placements made on the host since that report.
    pub pending: u32,
    /// The pool's `session_ref`.
    pub session_ref: u32,
}

impl ScoreInput<'_> {
    fn occupancy(&self) -> u64 {
        u64::from(self.sessions) + u64::from(self.reservations)
    }
}

/// Fixed-point scale of `least-load` composite figures.
const MICRO: f64 = 1_000_000.0;

/// A score, and whether the host belongs to the rear tier (x2go-load hosts without a report).
pub(crate) fn score(policy: Policy, h: &ScoreInput<'_>) -> (u8, Ratio) {
    let w = u64::from(h.weight.max(1));
    match policy {
        Policy::LeastSessions => (0, Ratio::new(h.occupancy(), 1)),
        Policy::ShortestExpectedDelay => (0, Ratio::new(h.occupancy() + 1, w)),
        Policy::LeastLoad => (0, Ratio::new(least_load_micro(h).saturating_mul(100), w)),
        Policy::X2goLoad => match h.load.map(x2go_load_factor) {
            Some(factor) => (
                0,
                Ratio::new(
                    (h.occupancy() + 1).saturating_mul(100),
                    factor.max(1).saturating_mul(w),
                ),
            ),
            None => (1, Ratio::new(h.occupancy(), w)),
        },
        Policy::WeightedLeastSessions => (0, Ratio::new(h.occupancy() + 1, w)),
        Policy::TwoChoices | Policy::RoundRobin | Policy::WeightedRoundRobin => {
            (0, Ratio::new(h.occupancy(), w))
        }
    }
}

/// The `least-load` composite in millionths (see the module doc).
pub fn least_load_micro(h: &ScoreInput<'_>) -> u64 {
    let session_ref = f64::from(h.max_sessions.unwrap_or(h.session_ref).max(1));
    let sess = h.occupancy() as f64 / session_ref;
    let load = match h.load {
        None => sess,
        Some(r) => {
            let cpus = f64::from(r.cpu_count.max(1));
            let mut cpu = r
                .cpu_utilisation
                .max(r.load_avg[0] / cpus)
                .max(r.psi_cpu_some_avg10.unwrap_or(0.0) / 100.0);
            let mut mem = if r.mem_total_kib > 0 {
                1.0 - r.mem_available_kib as f64 / r.mem_total_kib as f64
            } else {
                0.0
            };
            mem = mem.max(r.psi_memory_some_avg10.unwrap_or(0.0) / 100.0);
            if h.pending > 0 {
                let per = f64::from(r.session_count.max(1));
                let cpu_each = (cpu / per).clamp(0.005, 0.25);
                let mem_each = (mem / per).clamp(0.005, 0.25);
                cpu += cpu_each * f64::from(h.pending);
                mem += mem_each * f64::from(h.pending);
            }
            0.5 * cpu.min(2.0) + 0.3 * mem.min(1.0) + 0.2 * sess
        }
    };
    // Clamp before converting: a float-to-int cast saturates, but keep the bound explicit.
    (load.clamp(0.0, 1.0e9) * MICRO) as u64
}

/// X2Go's load factor for a report (see the module doc). Higher means more spare capacity.
pub fn x2go_load_factor(r: &LoadReport) -> u64 {
    let loadavg_xx = ((r.load_avg[0] + r.load_avg[1] + r.load_avg[2]) / 3.0 * 100.0).floor() + 1.0;
    let mem_avail_mb = r.mem_available_kib as f64 / 1000.0;
    let factor = mem_avail_mb / 1000.0 * f64::from(r.cpu_count) * r.cpu_mhz * 100.0 / loadavg_xx;
    factor.clamp(0.0, 1.0e15) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(load: Option<&LoadReport>, sessions: u32) -> ScoreInput<'_> {
        ScoreInput {
            sessions,
            reservations: 0,
            weight: 100,
            max_sessions: None,
            load,
            pending: 0,
            session_ref: 50,
        }
    }

    #[test]
    fn ratio_orders_exactly_without_float_rounding() {
        assert_eq!(Ratio::new(1, 3), Ratio::new(2, 6));
        assert!(Ratio::new(u64::MAX - 1, u64::MAX) < Ratio::new(u64::MAX, u64::MAX));
        assert!(Ratio::new(0, 5) < Ratio::new(1, u64::MAX));
    }

    #[test]
    fn x2go_load_factor_matches_x2gobroker_example() {
        // reference/x2go-broker.md §4: loadavgXX:188 memAvail:23921 numCPU:2 typeCPU:2597 -> 66088.
        // loadavgXX = floor(avg*100)+1 = 188 for an average load of 1.87.
        let r = LoadReport {
            load_avg: [1.87, 1.87, 1.87],
            cpu_count: 2,
            cpu_mhz: 2597.0,
            mem_total_kib: 32_000_000,
            mem_available_kib: 23_921_000,
            ..LoadReport::default()
        };
        assert_eq!(x2go_load_factor(&r), 66088);
    }

    #[test]
    fn least_load_prefers_the_idler_host() {
        let idle = LoadReport {
            load_avg: [0.1, 0.1, 0.1],
            cpu_utilisation: 0.05,
            cpu_count: 8,
            mem_total_kib: 16_000_000,
            mem_available_kib: 14_000_000,
            ..LoadReport::default()
        };
        let busy = LoadReport {
            load_avg: [7.0, 6.0, 5.0],
            cpu_utilisation: 0.9,
            mem_available_kib: 2_000_000,
            ..idle.clone()
        };
        assert!(
            least_load_micro(&input(Some(&idle), 10)) < least_load_micro(&input(Some(&busy), 10))
        );
    }

    #[test]
    fn least_load_rises_with_each_placement_until_the_next_report() {
        let r = LoadReport {
            load_avg: [1.0, 1.0, 1.0],
            cpu_utilisation: 0.2,
            cpu_count: 4,
            mem_total_kib: 8_000_000,
            mem_available_kib: 6_000_000,
            session_count: 4,
            ..LoadReport::default()
        };
        let mut h = input(Some(&r), 4);
        let before = least_load_micro(&h);
        h.pending = 3;
        h.reservations = 3;
        assert!(least_load_micro(&h) > before);
    }

    #[test]
    fn least_load_without_report_is_the_session_share() {
        let h = input(None, 25);
        assert_eq!(least_load_micro(&h), 500_000);
    }
}
