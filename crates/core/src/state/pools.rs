//! Pools: defining one (re)builds its members and index; removing one withdraws its reservations.

use super::{ClusterState, check_name};
use crate::error::CoreError;
use crate::event::{Event, ReservationEnd};
use crate::model::{HostId, PoolId, PoolSpec, SessionId};
use crate::placement::members::{Member, PoolEntry};
use std::sync::Arc;

impl ClusterState {
    pub(super) fn define_pool(
        &mut self,
        spec: PoolSpec,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        check_name("pool name", &spec.name)?;
        let mut seen = std::collections::HashSet::new();
        for h in &spec.hosts {
            self.host_id(h)?;
            if !seen.insert(h.as_str()) {
                return Err(CoreError::Invalid {
                    field: "pool hosts",
                    reason: format!("host {h:?} is listed twice in pool {:?}", spec.name),
                });
            }
        }
        if spec.options.session_ref == 0 {
            return Err(CoreError::Invalid {
                field: "session_ref",
                reason: "must be at least 1".into(),
            });
        }
        let pid = match self.pool_names.get(spec.name.as_str()) {
            Some(&pid) => pid,
            None => {
                let pid = PoolId(u32::try_from(self.pools.len()).unwrap_or(u32::MAX));
                self.pools.push(None);
                self.pool_names.insert(Arc::from(spec.name.as_str()), pid);
                pid
            }
        };
        self.install_pool(pid, spec.clone());
        events.push(Event::PoolDefined(spec));
        Ok(())
    }

    /// (Re)builds a pool's members and index from its spec. Host names must exist.
    pub(super) fn install_pool(&mut self, pid: PoolId, spec: PoolSpec) {
        // Detach the previous membership.
        if let Some(old) = self.pools.get(pid.0 as usize).and_then(Option::as_ref) {
            let old_hosts: Vec<HostId> = old.members.iter().map(|m| m.host).collect();
            for hid in old_hosts {
                if let Some(h) = self.host_mut(hid) {
                    h.pools.retain(|&mut (p, _)| p != pid);
                }
            }
        }
        let members: Vec<Member> = spec
            .hosts
            .iter()
            .filter_map(|n| self.host_names.get(n.as_str()).copied())
            .map(Member::new)
            .collect();
        for (pos, m) in members.iter().enumerate() {
            if let Some(h) = self.host_mut(m.host) {
                h.pools.push((pid, pos as u32));
            }
        }
        let entry = PoolEntry::new(spec, members.clone());
        self.pools[pid.0 as usize] = Some(entry);
        for m in members {
            self.refresh_host(m.host);
        }
    }

    pub(super) fn remove_pool(
        &mut self,
        name: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        let pid = self.pool_id(name)?;
        let hosts: Vec<HostId> = self
            .pool_ref(pid)
            .map(|p| p.members.iter().map(|m| m.host).collect())
            .unwrap_or_default();
        for hid in hosts {
            if let Some(h) = self.host_mut(hid) {
                h.pools.retain(|&mut (p, _)| p != pid);
            }
        }
        let reservation_ids: Vec<SessionId> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.pool == pid)
            .map(|(id, _)| *id)
            .collect();
        for id in reservation_ids {
            self.end_reservation(id, ReservationEnd::Withdrawn, events);
        }
        for s in self.sessions.values_mut() {
            if s.pool == Some(pid) {
                s.pool = None;
            }
        }
        self.pools[pid.0 as usize] = None;
        let name: Arc<str> = self
            .pool_names
            .remove_entry(name)
            .map(|(k, _)| k)
            .unwrap_or_else(|| Arc::from(name));
        events.push(Event::PoolRemoved { name });
        Ok(())
    }
}
