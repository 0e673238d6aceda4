//! Which hosts may take a new session, and which may hand a user's session back.
//!
//! # The drain rule
//! A **draining** host takes no new sessions, but the sessions already on it are still offered
//! back to their own users (resume): draining empties a host as its users log off, without
//! stranding anyone who only disconnected. An **offline** host does neither, and neither does a
//! host whose health is not up: its sessions cannot be reached. `DrainThenOffline` adds the last
//! step, taking the host offline once it holds neither sessions nor reservations
//! (`ClusterState::offline_drained` in `state/hosts.rs`).
//!
//! # New sessions
//! [`exclusion`] checks, in the order of [`Exclusion::ALL`] (the first match is the reason given):
//! admin state online (not offline, not draining); health up; for a host with an agent, a load
//! report no older than `stale_after_intervals` of its report intervals (a host that never
//! reported is stale); weight above 0; sessions plus reservations below the host's cap.
//!
//! A host in failure penalty ([`penalized`]: a start or a probe failed lately) is still eligible,
//! but pools keep it in a rear tier that is used only when no other host is eligible.
//!
//! Both depend on `now`. The pool indexes hold their result from the last time the host changed,
//! so the state arms a timer for every moment the answer can change without a command (a report
//! turning stale, a penalty ending) and re-evaluates the host then.

use crate::model::{AdminState, Health};
use crate::placement::Exclusion;
use crate::state::HostEntry;
use crate::time::Millis;

/// Why `host` cannot take a new session at `now`, or `None` when it can.
pub(crate) fn exclusion(
    host: &HostEntry,
    now: Millis,
    stale_after_intervals: u32,
) -> Option<Exclusion> {
    match host.admin {
        AdminState::Offline => return Some(Exclusion::Offline),
        AdminState::Draining => return Some(Exclusion::Draining),
        AdminState::Online => {}
    }
    match host.health {
        Health::Unreachable => return Some(Exclusion::Unreachable),
        Health::Unknown => return Some(Exclusion::HealthUnknown),
        Health::Up => {}
    }
    if host.spec.agent {
        let fresh = host
            .last_report_at
            .is_some_and(|t| now.since(t) <= host.stale_window(stale_after_intervals));
        if !fresh {
            return Some(Exclusion::Stale);
        }
    }
    if host.spec.weight == 0 {
        return Some(Exclusion::ZeroWeight);
    }
    if let Some(cap) = host.spec.max_sessions
        && host.occupancy() >= u64::from(cap)
    {
        return Some(Exclusion::AtCap);
    }
    None
}

/// Whether `host` is in failure penalty at `now`.
pub(crate) fn penalized(host: &HostEntry, now: Millis) -> bool {
    host.penalty_until.is_some_and(|t| t > now)
}

/// Whether a user's sessions and reservations on `host` may be handed back to them: on a
/// draining host too, on an offline host or one whose health is not up not.
pub(crate) fn resumable(host: &HostEntry) -> bool {
    host.admin != AdminState::Offline && host.health == Health::Up
}
