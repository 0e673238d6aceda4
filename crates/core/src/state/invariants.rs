//! The consistency checks that tests run after every command (listed in the module doc).

use super::{ClusterState, state_index};
use crate::placement::ExclusionCounts;
use crate::placement::eligibility;
use crate::placement::index::PENALIZED;
use crate::placement::members::MemberStatus;

impl ClusterState {
    /// Checks the internal invariants listed in the module doc; `Err` names the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, s) in self.sessions.iter() {
            let h = self
                .host_ref(s.host)
                .ok_or_else(|| format!("session {id} on a missing host"))?;
            if !h.sessions.contains(id) {
                return Err(format!("session {id} missing from its host's set"));
            }
            if let Some(b) = &s.backend_id
                && h.by_backend.get(&**b) != Some(id)
            {
                return Err(format!(
                    "session {id} missing from its host's backend index"
                ));
            }
            if !self.users.items(s.user).contains(id) {
                return Err(format!("session {id} missing from its user's index"));
            }
        }
        let mut on_hosts = 0usize;
        for (i, h) in self.hosts.iter().enumerate() {
            let Some(h) = h else { continue };
            on_hosts += h.sessions.len();
            let res = self
                .reservations
                .values()
                .filter(|r| r.host.0 as usize == i)
                .count();
            if res != h.reservations as usize {
                return Err(format!(
                    "host {} counts {} reservations, {} exist",
                    h.name, h.reservations, res
                ));
            }
            for id in &h.sessions {
                if self.sessions.get(id).map(|s| s.host.0 as usize) != Some(i) {
                    return Err(format!(
                        "host {} lists session {id} it does not hold",
                        h.name
                    ));
                }
            }
            let exclusion =
                eligibility::exclusion(h, self.now, self.settings.stale_after_intervals);
            for &(pid, pos) in &h.pools {
                let p = self
                    .pool_ref(pid)
                    .ok_or_else(|| format!("host {} in a missing pool", h.name))?;
                let status = p.members.get(pos as usize).map(|m| m.status);
                let ok = match (exclusion, status) {
                    (Some(c), Some(MemberStatus::Excluded(d))) => c == d,
                    (None, Some(MemberStatus::Eligible(s))) => {
                        (s.tier == PENALIZED) == eligibility::penalized(h, self.now)
                    }
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "host {} is {:?} in pool {} but should be {:?}",
                        h.name, status, p.name, exclusion
                    ));
                }
            }
        }
        let mut by_state = [0usize; 6];
        for s in self.sessions.values() {
            by_state[state_index(s.state)] += 1;
        }
        if by_state != self.by_state {
            return Err(format!(
                "session counts by state drifted: {:?} vs {by_state:?}",
                self.by_state
            ));
        }
        if on_hosts != self.sessions.len() {
            return Err(format!(
                "{} sessions on hosts, {} sessions exist",
                on_hosts,
                self.sessions.len()
            ));
        }
        for (uid, entry) in self.users.iter() {
            for id in &entry.items {
                let owner = self
                    .sessions
                    .get(id)
                    .map(|s| s.user)
                    .or_else(|| self.reservations.get(id).map(|r| r.user));
                if owner != Some(uid) {
                    return Err(format!("user index lists {id} for the wrong user"));
                }
            }
        }
        for p in self.pools.iter().flatten() {
            let mut counts = ExclusionCounts::default();
            for m in &p.members {
                match m.status {
                    MemberStatus::Excluded(c) => counts.add(c),
                    MemberStatus::Eligible(s) if s.tier == PENALIZED => counts.penalized += 1,
                    _ => {}
                }
            }
            if counts != p.excluded {
                return Err(format!("pool {} exclusion counts drifted", p.name));
            }
        }
        Ok(())
    }
}
