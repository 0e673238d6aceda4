//! Compact tables for a million sessions and users.
//!
//! A `HashMap<SessionId, Session>` at a million entries rounds up to two million buckets of the
//! whole entry. These tables keep entries densely in a slab and index them with a
//! `hashbrown::HashTable<u32>` of slab positions, so the sparse part costs 4 bytes a bucket.
//! Iteration follows slab order, which depends only on the sequence of operations (deterministic).

use crate::model::{SessionId, UserId};
use hashbrown::HashTable;
use smallvec::SmallVec;
use std::hash::BuildHasher;
use std::sync::Arc;

fn id_hash(id: SessionId) -> u64 {
    // Ids are handed out by the core, not chosen by clients: a fixed hasher is fine and keeps
    // behaviour identical from run to run.
    foldhash::fast::FixedState::with_seed(0x5eed).hash_one(id.0)
}

/// Entries keyed by session id, stored densely.
#[derive(Debug, Clone)]
pub(crate) struct IdTable<V> {
    slots: Vec<Option<(SessionId, V)>>,
    free: Vec<u32>,
    index: HashTable<u32>,
}

impl<V> Default for IdTable<V> {
    fn default() -> Self {
        IdTable {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
        }
    }
}

impl<V> IdTable<V> {
    fn slot_of(&self, id: SessionId) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(
                id_hash(id),
                |&s| matches!(&slots[s as usize], Some((k, _)) if *k == id),
            )
            .copied()
    }

    pub(crate) fn get(&self, id: &SessionId) -> Option<&V> {
        let s = self.slot_of(*id)?;
        self.slots[s as usize].as_ref().map(|(_, v)| v)
    }

    pub(crate) fn get_mut(&mut self, id: &SessionId) -> Option<&mut V> {
        let s = self.slot_of(*id)?;
        self.slots[s as usize].as_mut().map(|(_, v)| v)
    }

    pub(crate) fn contains_key(&self, id: &SessionId) -> bool {
        self.slot_of(*id).is_some()
    }

    /// Inserts or replaces.
    pub(crate) fn insert(&mut self, id: SessionId, value: V) {
        if let Some(s) = self.slot_of(id) {
            self.slots[s as usize] = Some((id, value));
            return;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some((id, value));
                s
            }
            None => {
                self.slots.push(Some((id, value)));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let slots = &self.slots;
        self.index.insert_unique(id_hash(id), slot, |&s| {
            slots[s as usize].as_ref().map_or(0, |(k, _)| id_hash(*k))
        });
    }

    pub(crate) fn remove(&mut self, id: &SessionId) -> Option<V> {
        let slots = &self.slots;
        let entry = self
            .index
            .find_entry(
                id_hash(*id),
                |&s| matches!(&slots[s as usize], Some((k, _)) if k == id),
            )
            .ok()?;
        let (slot, _) = entry.remove();
        self.free.push(slot);
        self.slots[slot as usize].take().map(|(_, v)| v)
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&SessionId, &V)> {
        self.slots.iter().flatten().map(|(k, v)| (k, v))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.slots.iter().flatten().map(|(_, v)| v)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.slots.iter_mut().flatten().map(|(_, v)| v)
    }
}

impl<V> std::ops::Index<&SessionId> for IdTable<V> {
    type Output = V;
    fn index(&self, id: &SessionId) -> &V {
        match self.get(id) {
            Some(v) => v,
            None => panic!("session {id} is not in the table"),
        }
    }
}

/// One user: the interned name and the user's live sessions and reservations.
#[derive(Debug, Clone)]
pub(crate) struct UserEntry {
    pub name: Arc<str>,
    pub items: SmallVec<[SessionId; 2]>,
}

/// Interned user names with each user's live sessions and reservations.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserTable {
    users: Vec<UserEntry>,
    index: HashTable<u32>,
    /// Per-process random seed: user names come from outside.
    hasher: foldhash::fast::RandomState,
}

impl UserTable {
    pub(crate) fn get(&self, name: &str) -> Option<UserId> {
        let users = &self.users;
        self.index
            .find(self.hasher.hash_one(name), |&u| {
                &*users[u as usize].name == name
            })
            .map(|&u| UserId(u))
    }

    pub(crate) fn intern(&mut self, name: &str) -> UserId {
        if let Some(u) = self.get(name) {
            return u;
        }
        let id = u32::try_from(self.users.len()).unwrap_or(u32::MAX);
        self.users.push(UserEntry {
            name: Arc::from(name),
            items: SmallVec::new(),
        });
        let (users, hasher) = (&self.users, &self.hasher);
        self.index.insert_unique(hasher.hash_one(name), id, |&u| {
            hasher.hash_one(&*users[u as usize].name)
        });
        UserId(id)
    }

    pub(crate) fn name(&self, u: UserId) -> Option<&Arc<str>> {
        self.users.get(u.0 as usize).map(|e| &e.name)
    }

    pub(crate) fn items(&self, u: UserId) -> &[SessionId] {
        self.users.get(u.0 as usize).map_or(&[], |e| &e.items)
    }

    pub(crate) fn items_mut(&mut self, u: UserId) -> Option<&mut SmallVec<[SessionId; 2]>> {
        self.users.get_mut(u.0 as usize).map(|e| &mut e.items)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (UserId, &UserEntry)> {
        self.users
            .iter()
            .enumerate()
            .map(|(i, e)| (UserId(i as u32), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_table_inserts_finds_replaces_and_reuses_slots() {
        let mut t = IdTable::default();
        for i in 0..1000 {
            t.insert(SessionId(i * 7), i);
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.get(&SessionId(70)), Some(&10));
        t.insert(SessionId(70), 99);
        assert_eq!(t[&SessionId(70)], 99);
        assert_eq!(t.remove(&SessionId(70)), Some(99));
        assert_eq!(t.remove(&SessionId(70)), None);
        assert!(!t.contains_key(&SessionId(70)));
        t.insert(SessionId(5), 5);
        assert_eq!(t.len(), 1000);
        assert_eq!(t.slots.len(), 1000, "the freed slot is reused");
        assert_eq!(t.iter().count(), 1000);
    }

    #[test]
    fn user_table_interns_once() {
        let mut u = UserTable::default();
        let a = u.intern("alice");
        assert_eq!(u.intern("alice"), a);
        assert_ne!(u.intern("bob"), a);
        assert_eq!(u.get("alice"), Some(a));
        assert_eq!(u.get("carol"), None);
        assert_eq!(&**u.name(a).unwrap(), "alice");
    }
}
