//! Placement: given (user, pool, client), resume the user's session or choose the best eligible
//! host under the pool's policy.
//!
//! # Order of decisions
//! 1. **Resume**: the user's live reservation in the pool is returned again; else the user's session
//!    on a host of the pool (disconnected before running by default, see
//!    [`crate::model::ResumePreference`]). Draining hosts still resume; offline hosts and hosts
//!    whose health is not up do not (the drain rule, `eligibility.rs`).
//! 2. **Eligibility** for a new session ([`Exclusion`] lists the causes, first match wins): online;
//!    health up; for hosts with an agent, a load report younger than `stale_after_intervals` report
//!    intervals; weight above 0; sessions plus reservations under the cap (`eligibility.rs`).
//! 3. **Penalty**: a host that failed a start or a probe is skipped for the failure penalty unless no
//!    other host is eligible.
//! 4. **Policy** ([`crate::policy::Policy`]) chooses among the eligible hosts (`choose.rs`). Equal
//!    scores prefer the heavier host, then a seeded random draw, never the name.
//!
//! # Layout
//! - `eligibility.rs`: the rules for new sessions and for resume, the drain rule among them.
//! - `members.rs`: a pool's members, moved in the pool's index whenever their host changes.
//! - `index.rs`: the per-pool index of eligible hosts, one structure per kind of policy.
//! - `choose.rs`: the host choice of every policy, including `wlc`'s quota method.
//! - [`score`]: the scores the ranked policies order hosts by.
//! - this file: what a decision reports ([`Exclusion`], [`PlacementReason`], [`Explanation`]).
//!
//! The cluster state ([`crate::state`]) owns the hosts and pools: after every change to a host
//! it updates the host's place in each of its pools, and a request runs resume, then the choice.
//!
//! # Speed
//! Every pool keeps an index of its eligible hosts that is updated when a host changes, so a
//! decision costs O(log n) for the ranked policies (the root of a tournament tree; `wlc` looks at
//! the first host of each weight class, O(classes · log n)), amortised O(log n) for `rr`, and
//! O(log n) for `two-choices` (Fenwick tree sampling). Counts of excluded hosts by cause are kept
//! with the index, so the reason costs nothing extra.

mod choose;
pub(crate) mod eligibility;
pub(crate) mod index;
pub(crate) mod members;
pub mod score;

use crate::policy::Policy;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Why a host cannot take a new session, in the order they are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    /// Admin state offline.
    Offline,
    /// Admin state draining.
    Draining,
    /// Agent lost or probe failed.
    Unreachable,
    /// Agent never connected, or never probed.
    HealthUnknown,
    /// Agent host whose last load report is too old (or that never reported).
    Stale,
    /// Weight 0.
    ZeroWeight,
    /// Sessions plus reservations at the host's cap.
    AtCap,
}

impl Exclusion {
    /// Every cause, in check order.
    pub const ALL: [Exclusion; 7] = [
        Exclusion::Offline,
        Exclusion::Draining,
        Exclusion::Unreachable,
        Exclusion::HealthUnknown,
        Exclusion::Stale,
        Exclusion::ZeroWeight,
        Exclusion::AtCap,
    ];

    /// The identifier used in reasons, APIs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::Offline => "offline",
            Exclusion::Draining => "draining",
            Exclusion::Unreachable => "unreachable",
            Exclusion::HealthUnknown => "health_unknown",
            Exclusion::Stale => "stale",
            Exclusion::ZeroWeight => "zero_weight",
            Exclusion::AtCap => "at_cap",
        }
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many of a pool's hosts are excluded, by cause, and how many are eligible but penalized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExclusionCounts {
    /// Indexed by `Exclusion as usize`.
    pub by_cause: [u32; 7],
    /// Eligible hosts that are in failure penalty.
    pub penalized: u32,
}

impl ExclusionCounts {
    /// Count for one cause.
    pub fn get(&self, cause: Exclusion) -> u32 {
        self.by_cause[cause as usize]
    }

    pub(crate) fn add(&mut self, cause: Exclusion) {
        self.by_cause[cause as usize] += 1;
    }

    pub(crate) fn remove(&mut self, cause: Exclusion) {
        let c = &mut self.by_cause[cause as usize];
        *c = c.saturating_sub(1);
    }

    /// Total excluded hosts (penalized ones are not excluded).
    pub fn total(&self) -> u32 {
        self.by_cause.iter().sum()
    }
}

impl fmt::Display for ExclusionCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for cause in Exclusion::ALL {
            let n = self.get(cause);
            if n > 0 {
                write!(f, "{}{}={}", if first { "" } else { " " }, cause, n)?;
                first = false;
            }
        }
        if self.penalized > 0 {
            write!(
                f,
                "{}penalized={}",
                if first { "" } else { " " },
                self.penalized
            )?;
            first = false;
        }
        if first {
            f.write_str("none excluded")?;
        }
        Ok(())
    }
}

/// The compact reason that comes with every decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementReason {
    /// The pool's policy.
    pub policy: Policy,
    /// Hosts that could take a new session (penalized ones included).
    pub eligible: u32,
    /// Whether the choice fell back to a penalized host because nothing else was eligible.
    pub used_penalized: bool,
    /// Excluded hosts by cause.
    pub excluded: ExclusionCounts,
    /// Whether this resumed an existing session (then no host was ranked).
    pub resumed: bool,
}

impl fmt::Display for PlacementReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resumed {
            return write!(f, "{}: resumed existing session", self.policy);
        }
        write!(f, "{}: best of {} eligible", self.policy, self.eligible)?;
        if self.used_penalized {
            f.write_str(" (fell back to a penalized host)")?;
        }
        write!(f, "; {}", self.excluded)
    }
}

/// A dry-run of placement: every host with its score or why it is excluded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The pool.
    pub pool: Arc<str>,
    /// Its policy.
    pub policy: Policy,
    /// What a real request by this user would resume, if anything: (id, host, state).
    pub resume: Option<ResumeCandidate>,
    /// The host a new session would go to now (ignoring resume), if any.
    pub next: Option<Arc<str>>,
    /// Every host, eligible ones first in decision order (for ranked policies), then excluded ones.
    pub hosts: Vec<HostExplanation>,
    /// The pool's session policies.
    pub limits: crate::model::SessionLimits,
    /// The user's live sessions and reservations on the pool's hosts.
    pub user_sessions: u32,
    /// Whether a new session would be refused by `max_sessions_per_user` (resuming is not).
    pub at_user_limit: bool,
}

/// The session (or reservation) a placement would hand back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResumeCandidate {
    /// Session or reservation id.
    pub id: crate::model::SessionId,
    /// Its host.
    pub host: Arc<str>,
    /// `None` for a live reservation.
    pub state: Option<crate::model::SessionState>,
}

/// One host in an [`Explanation`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostExplanation {
    /// Host name.
    pub host: Arc<str>,
    /// The score the policy ranks by (lower is better; `None` for rr/wrr, which do not score).
    pub score: Option<f64>,
    /// Why it cannot take a new session, if it cannot.
    pub excluded: Option<Exclusion>,
    /// In failure penalty (used only when nothing else is eligible).
    pub penalized: bool,
    /// Live sessions on the host.
    pub sessions: u32,
    /// Reservations holding capacity on the host.
    pub reservations: u32,
    /// Weight.
    pub weight: u32,
}
