//! A pool's members and where each one sits in the pool's index.
//!
//! Every command that changes a host ends with the state calling `PoolEntry::update_member` in
//! each pool the host belongs to, with the host's exclusion and penalty (`eligibility.rs`): the
//! member moves between the excluded counts and the index tiers, and is re-ranked. The decision
//! itself reads only the index (`PoolEntry::choose`, in `choose.rs`).

use super::eligibility;
use super::index::{MAIN, PENALIZED, PoolIndex, RankKey, Slot};
use super::score;
use super::{Exclusion, ExclusionCounts};
use crate::model::{HostId, PoolSpec};
use crate::policy::Policy;
use crate::state::HostEntry;
use crate::time::Millis;
use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use std::cmp::Reverse;
use std::sync::Arc;

/// A pool as the state holds it: its definition, members and index.
#[derive(Debug, Clone)]
pub(crate) struct PoolEntry {
    pub(crate) name: Arc<str>,
    pub(crate) spec: PoolSpec,
    /// In the order the pool lists its hosts (`rr` and `wrr` walk this order).
    pub(crate) members: Vec<Member>,
    pub(crate) index: PoolIndex,
    pub(crate) excluded: ExclusionCounts,
    /// Members whose load report changed their score but not their eligibility. Re-ranking them
    /// waits until the pool is next asked to decide or explain: reports arrive far more often
    /// than decisions, and only the latest report of a host matters then.
    stale_ranks: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    pub(crate) host: HostId,
    pub(crate) status: MemberStatus,
    /// Random draw that orders this host among equals in this pool; redrawn whenever its rank
    /// changes, so equal hosts are picked uniformly at random (reproducibly for a seed).
    tiebreak: u64,
    /// Its load changed and its rank has not been recomputed yet (see `PoolEntry::stale_ranks`).
    dirty: bool,
}

impl Member {
    /// A member not yet placed in the index.
    pub(crate) fn new(host: HostId) -> Member {
        Member {
            host,
            status: MemberStatus::New,
            tiebreak: 0,
            dirty: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberStatus {
    /// Not yet placed in the index (only while a pool is being built).
    New,
    Excluded(Exclusion),
    Eligible(Slot),
}

impl PoolEntry {
    /// A pool whose members are all still to be placed (by `update_member`).
    pub(crate) fn new(spec: PoolSpec, members: Vec<Member>) -> PoolEntry {
        PoolEntry {
            name: Arc::from(spec.name.as_str()),
            index: PoolIndex::new(spec.policy, members.len()),
            excluded: ExclusionCounts::default(),
            members,
            stale_ranks: Vec::new(),
            spec,
        }
    }

    fn rank_key(&self, hid: HostId, host: &HostEntry, tiebreak: u64) -> RankKey {
        let (tier, score) = score::score(
            self.spec.policy,
            &host.score_input(self.spec.options.session_ref),
        );
        RankKey {
            tier,
            score,
            weight: Reverse(host.spec.weight),
            tiebreak,
            host: hid,
            occupancy: host.occupancy(),
        }
    }

    /// Moves a member to where its host's current state puts it.
    pub(crate) fn update_member(
        &mut self,
        pos: u32,
        host: &HostEntry,
        exclusion: Option<Exclusion>,
        penalized: bool,
        rng: &mut ChaCha8Rng,
    ) {
        let Some(member) = self.members.get(pos as usize).copied() else {
            return;
        };
        let mut new = match exclusion {
            Some(c) => MemberStatus::Excluded(c),
            None => MemberStatus::Eligible(Slot {
                tier: if penalized { PENALIZED } else { MAIN },
                key: self.rank_key(member.host, host, member.tiebreak),
            }),
        };
        if new == member.status {
            return;
        }
        if let MemberStatus::Eligible(slot) = &mut new {
            slot.key.tiebreak = rng.next_u64();
            self.members[pos as usize].tiebreak = slot.key.tiebreak;
        }
        let old_slot = match member.status {
            MemberStatus::Excluded(c) => {
                self.excluded.remove(c);
                None
            }
            MemberStatus::Eligible(s) => {
                if s.tier == PENALIZED {
                    self.excluded.penalized = self.excluded.penalized.saturating_sub(1);
                }
                Some(s)
            }
            MemberStatus::New => None,
        };
        let new_slot = match new {
            MemberStatus::Excluded(c) => {
                self.excluded.add(c);
                None
            }
            MemberStatus::Eligible(s) => {
                if s.tier == PENALIZED {
                    self.excluded.penalized += 1;
                }
                Some(s)
            }
            MemberStatus::New => None,
        };
        self.index.update(pos, old_slot.as_ref(), new_slot.as_ref());
        self.members[pos as usize].status = new;
    }

    /// After the host's load report: in load-ranked pools a member that stays where it was
    /// only has its rank marked stale (see `stale_ranks`); anything else moves now.
    pub(crate) fn update_member_after_report(
        &mut self,
        pos: u32,
        host: &HostEntry,
        exclusion: Option<Exclusion>,
        penalized: bool,
        rng: &mut ChaCha8Rng,
    ) {
        let tier = if penalized { PENALIZED } else { MAIN };
        let load_ranked = matches!(self.spec.policy, Policy::LeastLoad | Policy::X2goLoad);
        let same_place = exclusion.is_none()
            && matches!(self.members.get(pos as usize).map(|m| m.status),
                Some(MemberStatus::Eligible(slot)) if slot.tier == tier);
        if load_ranked && same_place {
            if let Some(m) = self.members.get_mut(pos as usize)
                && !m.dirty
            {
                m.dirty = true;
                self.stale_ranks.push(pos);
            }
        } else {
            self.update_member(pos, host, exclusion, penalized, rng);
        }
    }

    /// Re-ranks the members whose load changed since the last decision.
    pub(crate) fn rerank(
        &mut self,
        hosts: &[Option<HostEntry>],
        now: Millis,
        intervals: u32,
        rng: &mut ChaCha8Rng,
    ) {
        for pos in std::mem::take(&mut self.stale_ranks) {
            let Some(m) = self.members.get_mut(pos as usize) else {
                continue;
            };
            m.dirty = false;
            let hid = m.host;
            if let Some(h) = hosts.get(hid.0 as usize).and_then(Option::as_ref) {
                let exclusion = eligibility::exclusion(h, now, intervals);
                self.update_member(pos, h, exclusion, eligibility::penalized(h, now), rng);
            }
        }
    }

    /// Hosts that could take a new session (penalized ones included).
    pub(crate) fn eligible_count(&self) -> u32 {
        u32::try_from(self.index.len(MAIN) + self.index.len(PENALIZED)).unwrap_or(u32::MAX)
    }

    pub(crate) fn slot_at(&self, pos: u32) -> Option<Slot> {
        match self.members.get(pos as usize)?.status {
            MemberStatus::Eligible(s) => Some(s),
            _ => None,
        }
    }
}
