//! The kernel IPVS table as Switchboard models it, and the safe diff between two tables.
//!
//! Pure: no I/O, no ipvsadm. `switchboard_proto::ipvsadm` turns a [`Table`] and a list of
//! [`Change`]s into `ipvsadm` text and reads `ipvsadm -S -n` / `ipvsadm -L -n` output back.
//!
//! # The model
//!
//! - A [`Table`] is a list of [`VirtualService`]s. A service is identified by its
//!   [`VirtualAddr`]: protocol plus VIP:port (`-t`/`-u`), or a firewall mark (`-f`, with `-6`
//!   for IPv6).
//! - A service has a scheduler ([`SchedulerKind`]), scheduler flags ([`HashOptions`]: only `sh`
//!   and `mh` have any, `sh-fallback`/`sh-port` and `mh-fallback`/`mh-port`; for other
//!   schedulers the flags are ignored everywhere), optional [`Persistence`] and its real servers.
//! - A real server ([`RealServer`]) is identified, within its service, by its address and port.
//!   It has a forwarding method ([`Forward`]: `-g` direct routing, `-m` NAT, `-i` IPIP tunnel)
//!   and a weight (0 = quiesced: no new connections, existing ones continue).
//! - Addresses compare as plain [`SocketAddr`] equality after dropping the IPv6 flow label and
//!   scope id (ipvsadm can express neither). An IPv4-mapped IPv6 address is an IPv6 address like
//!   any other, distinct from the IPv4 address.
//! - Two services have the *same settings* when scheduler, flags and persistence agree after
//!   normalisation: flags of a scheduler other than sh/mh count as none, and a persistence mask
//!   of /32 (IPv4) or /128 (IPv6) is the same as no mask. [`Table::normalized`] applies the same
//!   rules to a whole table.
//!
//! # The diff
//!
//! [`diff`] returns the smallest ordered list of [`Change`]s that turns `current` into `desired`,
//! in this order:
//!
//! 1. services: [`Change::AddService`] for each desired service that is not current,
//!    [`Change::EditService`] for each whose settings differ (both carry the service without its
//!    real servers), in desired order;
//! 2. real servers, service by service in desired order: first every [`Change::AddDest`], then
//!    every [`Change::EditDest`] (weight or forwarding method changed; `ipvsadm -e` can change
//!    the forwarding method in place);
//! 3. removals, service by service in current order (rules below).
//!
//! **Removal never black-holes a live flow.** IPVS drops the packets of a connection whose real
//! server or service was deleted (`expire_nodest_conn=0`, the default), so removals consult
//! `live(vaddr, rip)`, which says whether the real server still has connections (active or
//! inactive), e.g. from `ipvsadm -L -n` counters:
//!
//! - A real server that is current but not desired, in a service that stays, is deleted
//!   ([`Change::DeleteDest`]) only when it is not live. While it is live it is quiesced instead:
//!   [`Change::EditDest`] with weight 0, emitted only if its current weight is not already 0. A
//!   later run, once its connections are gone, deletes it.
//! - A service that is current but not desired is deleted ([`Change::DeleteService`], which
//!   takes its real servers with it) only when none of its real servers is live. Otherwise each
//!   of its real servers whose weight is not 0 is quiesced, and a later run deletes the service.
//!
//! The diff is therefore convergent: applying it and diffing again with the same `live` answers
//! gives nothing, and once nothing is live the table equals `desired`. Entries that appear twice
//! in a table count once (the first); [`Table::validate`] reports such tables, and everything
//! else ipvsadm or the kernel would refuse or silently rewrite, and should be called on a
//! desired table before it is diffed.
//!
//! [`apply`] plays a change list on a table the way the kernel would (including its refusals),
//! for tests and for the director's dry run.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, SocketAddrV6};

use crate::schedule::{HashOptions, SchedulerKind};

/// Largest weight ipvsadm accepts (`-w` is 0..=2147483647).
pub const MAX_WEIGHT: u32 = i32::MAX as u32;
/// Longest persistence timeout ipvsadm accepts: 31 days (`MAX_TIMEOUT` in ipvsadm.c).
pub const MAX_PERSISTENCE_SECS: u32 = 31 * 86_400;
/// The persistence timeout of a bare `-p`: 360 s in ipvsadm 1.31's code (its man page says 300).
pub const DEFAULT_PERSISTENCE_SECS: u32 = 360;

/// Transport protocol of an address-based virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// `-t`, `TCP`.
    Tcp,
    /// `-u`, `UDP`.
    Udp,
}

/// What identifies a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VirtualAddr {
    /// `-t VIP:PORT` or `-u VIP:PORT`. Port 0 (any port) needs persistence.
    Inet {
        /// TCP or UDP.
        proto: Proto,
        /// VIP and port.
        addr: SocketAddr,
    },
    /// `-f MARK`, plus `-6` for an IPv6 service.
    FwMark {
        /// The firewall mark, 1 or more.
        mark: u32,
        /// IPv6 service (`-6`).
        ipv6: bool,
    },
}

impl VirtualAddr {
    /// Whether the service is IPv6 (its persistence mask is then a prefix of up to 128).
    pub fn is_ipv6(&self) -> bool {
        match self {
            VirtualAddr::Inet { addr, .. } => addr.is_ipv6(),
            VirtualAddr::FwMark { ipv6, .. } => *ipv6,
        }
    }

    /// The virtual port of an address-based service; `None` for a firewall-mark service.
    pub fn port(&self) -> Option<u16> {
        match self {
            VirtualAddr::Inet { addr, .. } => Some(addr.port()),
            VirtualAddr::FwMark { .. } => None,
        }
    }

    /// The same service with the IPv6 flow label and scope id dropped.
    pub fn normalized(&self) -> VirtualAddr {
        match *self {
            VirtualAddr::Inet { proto, addr } => VirtualAddr::Inet {
                proto,
                addr: normalize_addr(addr),
            },
            fw @ VirtualAddr::FwMark { .. } => fw,
        }
    }
}

/// As `ipvsadm -L -n` names it: `TCP 10.0.0.100:22`, `UDP [2001:db8::1]:53`, `FWM 7`,
/// `FWM 7 IPv6`.
impl fmt::Display for VirtualAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VirtualAddr::Inet { proto, addr } => {
                let p = match proto {
                    Proto::Tcp => "TCP",
                    Proto::Udp => "UDP",
                };
                match addr {
                    SocketAddr::V4(a) => write!(f, "{p} {a}"),
                    SocketAddr::V6(a) => write!(f, "{p} [{}]:{}", a.ip(), a.port()),
                }
            }
            VirtualAddr::FwMark { mark, ipv6: false } => write!(f, "FWM {mark}"),
            VirtualAddr::FwMark { mark, ipv6: true } => write!(f, "FWM {mark} IPv6"),
        }
    }
}

/// Forwarding method of a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forward {
    /// Direct routing, `-g` (`Route` in `ipvsadm -L`). IPVS keeps the virtual port.
    Dr,
    /// NAT, `-m` (`Masq`).
    Nat,
    /// IPIP tunnel, `-i` (`Tunnel`). IPVS keeps the virtual port.
    Tunnel,
}

impl Forward {
    /// The ipvsadm switch: `-g`, `-m` or `-i`.
    pub const fn switch(self) -> &'static str {
        match self {
            Forward::Dr => "-g",
            Forward::Nat => "-m",
            Forward::Tunnel => "-i",
        }
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forward::Dr => "direct routing",
            Forward::Nat => "NAT",
            Forward::Tunnel => "tunnelling",
        })
    }
}

/// Client persistence (`-p [T] [-M MASK]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Persistence {
    /// Seconds a client stays on its real server after its last connection (1..=31 days).
    pub timeout_secs: u32,
    /// Client prefix length sharing one template; `None` = /32 (IPv4) or /128 (IPv6).
    pub netmask: Option<u8>,
}

impl Persistence {
    /// The prefix length in effect for an IPv4 (`ipv6 == false`) or IPv6 service.
    pub fn prefix_len(&self, ipv6: bool) -> u8 {
        self.netmask.unwrap_or(if ipv6 { 128 } else { 32 })
    }

    /// The same persistence with a full-length mask written as `None`.
    pub fn normalized(&self, ipv6: bool) -> Persistence {
        let full = if ipv6 { 128 } else { 32 };
        Persistence {
            timeout_secs: self.timeout_secs,
            netmask: self.netmask.filter(|&m| m != full),
        }
    }
}

/// One real server of a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RealServer {
    /// Address and port; its identity within the service.
    pub addr: SocketAddr,
    /// Forwarding method.
    pub forward: Forward,
    /// Weight, 0..=[`MAX_WEIGHT`]; 0 = quiesced.
    pub weight: u32,
}

/// One virtual service and its real servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    /// What identifies it.
    pub vaddr: VirtualAddr,
    /// Its scheduler.
    pub scheduler: SchedulerKind,
    /// Scheduler flags; only meaningful for `sh` and `mh`.
    pub flags: HashOptions,
    /// Client persistence, if any.
    pub persistence: Option<Persistence>,
    /// Its real servers.
    pub dests: Vec<RealServer>,
}

impl VirtualService {
    /// A service with this scheduler, no flags, no persistence and no real servers.
    pub fn new(vaddr: VirtualAddr, scheduler: SchedulerKind) -> VirtualService {
        VirtualService {
            vaddr,
            scheduler,
            flags: HashOptions::default(),
            persistence: None,
            dests: Vec::new(),
        }
    }

    /// The flags in effect: the service's for `sh` and `mh`, none for other schedulers.
    pub fn effective_flags(&self) -> HashOptions {
        match self.scheduler {
            SchedulerKind::Sh | SchedulerKind::Mh => self.flags,
            _ => HashOptions::default(),
        }
    }

    /// Whether scheduler, flags and persistence agree after normalisation (see the module docs).
    pub fn same_settings(&self, other: &VirtualService) -> bool {
        self.scheduler == other.scheduler
            && self.effective_flags() == other.effective_flags()
            && self.normalized_persistence() == other.normalized_persistence()
    }

    /// The same service without its real servers (what [`Change::AddService`] and
    /// [`Change::EditService`] carry).
    pub fn without_dests(&self) -> VirtualService {
        VirtualService {
            dests: Vec::new(),
            ..self.clone()
        }
    }

    /// The real server with this address, if any (addresses compared normalised).
    pub fn dest(&self, addr: &SocketAddr) -> Option<&RealServer> {
        let addr = normalize_addr(*addr);
        self.dests.iter().find(|d| normalize_addr(d.addr) == addr)
    }

    /// The same service, normalised: addresses without flow label or scope id, no flags for
    /// schedulers other than sh/mh, full-length persistence masks as `None`.
    pub fn normalized(&self) -> VirtualService {
        VirtualService {
            vaddr: self.vaddr.normalized(),
            scheduler: self.scheduler,
            flags: self.effective_flags(),
            persistence: self.normalized_persistence(),
            dests: self.dests.iter().map(RealServer::normalized).collect(),
        }
    }

    fn normalized_persistence(&self) -> Option<Persistence> {
        self.persistence.map(|p| p.normalized(self.vaddr.is_ipv6()))
    }
}

impl RealServer {
    /// The same real server with the IPv6 flow label and scope id dropped.
    pub fn normalized(&self) -> RealServer {
        RealServer {
            addr: normalize_addr(self.addr),
            ..*self
        }
    }
}

/// The whole IPVS table (or the part of it Switchboard manages).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// The virtual services, in order.
    pub services: Vec<VirtualService>,
}

impl Table {
    /// The service with this address, if any (compared normalised).
    pub fn service(&self, vaddr: &VirtualAddr) -> Option<&VirtualService> {
        let vaddr = vaddr.normalized();
        self.services.iter().find(|s| s.vaddr.normalized() == vaddr)
    }

    /// The same table with every service normalised (see [`VirtualService::normalized`]).
    pub fn normalized(&self) -> Table {
        Table {
            services: self
                .services
                .iter()
                .map(VirtualService::normalized)
                .collect(),
        }
    }

    /// Checks that ipvsadm and the kernel would take this table exactly as it is: no entry
    /// twice; no firewall mark 0; port 0 only with persistence; weights up to [`MAX_WEIGHT`];
    /// persistence timeouts of 1..=[`MAX_PERSISTENCE_SECS`]; masks of /0../32 (IPv4) or
    /// /1../128 (IPv6); for `-t`/`-u` services, direct-routing and tunnelled real servers on the
    /// virtual port (ipvsadm silently replaces their port with it); real servers of the
    /// service's address family unless tunnelled; no IPv6 scope ids or flow labels.
    pub fn validate(&self) -> Result<(), TableError> {
        let mut services = HashSet::new();
        for s in &self.services {
            let v = s.vaddr;
            if !services.insert(v.normalized()) {
                return Err(TableError::DuplicateService(v));
            }
            match v {
                VirtualAddr::FwMark { mark: 0, .. } => return Err(TableError::ZeroMark),
                VirtualAddr::Inet { addr, .. } => {
                    check_plain(addr)?;
                    if addr.port() == 0 && s.persistence.is_none() {
                        return Err(TableError::ZeroPort(v));
                    }
                }
                VirtualAddr::FwMark { .. } => {}
            }
            if let Some(p) = s.persistence {
                if p.timeout_secs == 0 || p.timeout_secs > MAX_PERSISTENCE_SECS {
                    return Err(TableError::Timeout(v, p.timeout_secs));
                }
                if let Some(m) = p.netmask {
                    let ok = if v.is_ipv6() {
                        (1..=128).contains(&m)
                    } else {
                        m <= 32
                    };
                    if !ok {
                        return Err(TableError::Netmask(v, m));
                    }
                }
            }
            let mut dests = HashSet::new();
            for d in &s.dests {
                check_plain(d.addr)?;
                if !dests.insert(d.addr) {
                    return Err(TableError::DuplicateDest(v, d.addr));
                }
                if d.weight > MAX_WEIGHT {
                    return Err(TableError::Weight(v, d.addr, d.weight));
                }
                if d.forward != Forward::Nat
                    && let Some(port) = v.port()
                    && d.addr.port() != port
                {
                    return Err(TableError::PortRewritten(v, d.addr, d.forward));
                }
                if d.forward != Forward::Tunnel && d.addr.is_ipv6() != v.is_ipv6() {
                    return Err(TableError::Family(v, d.addr));
                }
            }
        }
        Ok(())
    }
}

fn check_plain(addr: SocketAddr) -> Result<(), TableError> {
    match addr {
        SocketAddr::V6(a) if a.scope_id() != 0 || a.flowinfo() != 0 => {
            Err(TableError::ScopeId(addr))
        }
        _ => Ok(()),
    }
}

fn normalize_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => addr,
        SocketAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, 0)),
    }
}

/// What [`Table::validate`] found: something ipvsadm or the kernel would refuse or rewrite.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The same virtual service twice.
    #[error("virtual service {0} appears twice")]
    DuplicateService(VirtualAddr),
    /// The same real server twice in one service.
    #[error("real server {1} appears twice in {0}")]
    DuplicateDest(VirtualAddr, SocketAddr),
    /// Firewall mark 0.
    #[error("firewall mark 0 is not a valid mark")]
    ZeroMark,
    /// Port 0 without persistence.
    #[error("{0}: port 0 (any port) needs persistence; ipvsadm refuses it without -p")]
    ZeroPort(VirtualAddr),
    /// A persistence timeout out of range.
    #[error("{0}: persistence timeout {1} s is outside 1..={MAX_PERSISTENCE_SECS} s")]
    Timeout(VirtualAddr, u32),
    /// A persistence mask out of range.
    #[error("{0}: persistence mask /{1} is out of range (IPv4 /0../32, IPv6 /1../128)")]
    Netmask(VirtualAddr, u8),
    /// A weight above [`MAX_WEIGHT`].
    #[error("{0}: real server {1} has weight {2}, above {MAX_WEIGHT}")]
    Weight(VirtualAddr, SocketAddr, u32),
    /// A direct-routing or tunnelled real server on a port other than the virtual port.
    #[error(
        "{0}: real server {1} uses {2} on a port other than the service's; ipvsadm would \
         silently use the service's port"
    )]
    PortRewritten(VirtualAddr, SocketAddr, Forward),
    /// A real server of the other address family, not tunnelled.
    #[error("{0}: real server {1} is of the other address family, which only tunnelling allows")]
    Family(VirtualAddr, SocketAddr),
    /// An IPv6 address with a scope id or flow label.
    #[error("{0}: ipvsadm cannot express an IPv6 scope id or flow label")]
    ScopeId(SocketAddr),
}

/// Connection timeouts (`ipvsadm --set TCP TCPFIN UDP`), global to the network namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// ESTABLISHED timeout in seconds (kernel default 900); 0 = leave unchanged.
    pub tcp: u32,
    /// FIN_WAIT timeout in seconds (kernel default 120); 0 = leave unchanged.
    pub tcpfin: u32,
    /// UDP timeout in seconds (kernel default 300); 0 = leave unchanged.
    pub udp: u32,
}

impl Timeouts {
    /// The kernel's defaults: 900 120 300.
    pub const KERNEL_DEFAULTS: Timeouts = Timeouts {
        tcp: 900,
        tcpfin: 120,
        udp: 300,
    };
}

/// One step of a [`diff`]: one `ipvsadm` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `-A`: add a service (carried without real servers).
    AddService(VirtualService),
    /// `-E`: change a service's scheduler, flags or persistence (carried without real servers).
    EditService(VirtualService),
    /// `-D`: delete a service and all its real servers.
    DeleteService(VirtualAddr),
    /// `-a`: add a real server.
    AddDest(VirtualAddr, RealServer),
    /// `-e`: change a real server's weight or forwarding method.
    EditDest(VirtualAddr, RealServer),
    /// `-d`: delete a real server.
    DeleteDest(VirtualAddr, SocketAddr),
}

/// The smallest ordered change list turning `current` into `desired` without deleting anything
/// `live(vaddr, rip)` says still has connections. The module docs give the order and the rules.
pub fn diff(
    current: &Table,
    desired: &Table,
    live: impl Fn(&VirtualAddr, &SocketAddr) -> bool,
) -> Vec<Change> {
    let current = unique(current);
    let desired = unique(desired);
    let by_key: HashMap<VirtualAddr, &VirtualService> =
        current.iter().map(|s| (s.vaddr, s)).collect();
    let wanted: HashMap<VirtualAddr, &VirtualService> =
        desired.iter().map(|s| (s.vaddr, s)).collect();
    let mut out = Vec::new();

    for d in &desired {
        match by_key.get(&d.vaddr) {
            None => out.push(Change::AddService(d.without_dests())),
            Some(c) if !c.same_settings(d) => out.push(Change::EditService(d.without_dests())),
            Some(_) => {}
        }
    }

    for d in &desired {
        let cur = by_key.get(&d.vaddr);
        let mut edits = Vec::new();
        for rs in &d.dests {
            match cur.and_then(|c| c.dest(&rs.addr)) {
                None => out.push(Change::AddDest(d.vaddr, *rs)),
                Some(old) if old.forward != rs.forward || old.weight != rs.weight => {
                    edits.push(Change::EditDest(d.vaddr, *rs));
                }
                Some(_) => {}
            }
        }
        out.append(&mut edits);
    }

    for c in &current {
        let quiesce = |rs: &RealServer| {
            (rs.weight != 0).then_some(Change::EditDest(c.vaddr, RealServer { weight: 0, ..*rs }))
        };
        if let Some(d) = wanted.get(&c.vaddr) {
            for rs in &c.dests {
                if d.dest(&rs.addr).is_some() {
                    continue;
                }
                if live(&c.vaddr, &rs.addr) {
                    out.extend(quiesce(rs));
                } else {
                    out.push(Change::DeleteDest(c.vaddr, rs.addr));
                }
            }
        } else if c.dests.iter().any(|rs| live(&c.vaddr, &rs.addr)) {
            out.extend(c.dests.iter().filter_map(quiesce));
        } else {
            out.push(Change::DeleteService(c.vaddr));
        }
    }
    out
}

/// The table normalised, keeping only the first of each service and of each real server.
fn unique(t: &Table) -> Vec<VirtualService> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for s in &t.services {
        let mut s = s.normalized();
        if !seen.insert(s.vaddr) {
            continue;
        }
        let mut addrs = HashSet::new();
        s.dests.retain(|d| addrs.insert(d.addr));
        out.push(s);
    }
    out
}

/// Why [`apply`] stopped: the kernel would refuse this change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("change {index}: {reason}")]
pub struct ApplyError {
    /// 0-based index of the refused change; the ones before it were applied.
    pub index: usize,
    /// What the kernel would say.
    pub reason: ApplyRefusal,
}

/// The kernel's refusals, worded as ipvsadm prints them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyRefusal {
    /// `-A` of a service that exists.
    #[error("{0}: Service already exists")]
    ServiceExists(VirtualAddr),
    /// `-E`, `-D`, `-a`, `-e` or `-d` on a service that does not exist.
    #[error("{0}: Service not defined")]
    NoService(VirtualAddr),
    /// `-a` of a real server that exists.
    #[error("{0}: real server {1}: Destination already exists")]
    DestExists(VirtualAddr, SocketAddr),
    /// `-e` or `-d` of a real server that does not exist.
    #[error("{0}: real server {1}: No such destination")]
    NoDest(VirtualAddr, SocketAddr),
}

/// Plays `changes` on `table` in order, as the kernel would: added services and real servers go
/// at the end, edits keep the position, an edited service keeps its real servers. Stops at the
/// first change the kernel would refuse (the ones before it stay applied, as with
/// `ipvsadm -R`). Used by tests and by the director's dry run.
pub fn apply(table: &mut Table, changes: &[Change]) -> Result<(), ApplyError> {
    for (index, change) in changes.iter().enumerate() {
        apply_one(table, change).map_err(|reason| ApplyError { index, reason })?;
    }
    Ok(())
}

fn position(t: &Table, v: &VirtualAddr) -> Option<usize> {
    let v = v.normalized();
    t.services.iter().position(|s| s.vaddr.normalized() == v)
}

fn service(t: &Table, v: &VirtualAddr) -> Result<usize, ApplyRefusal> {
    position(t, v).ok_or(ApplyRefusal::NoService(*v))
}

fn apply_one(table: &mut Table, change: &Change) -> Result<(), ApplyRefusal> {
    match change {
        Change::AddService(s) => {
            if position(table, &s.vaddr).is_some() {
                return Err(ApplyRefusal::ServiceExists(s.vaddr));
            }
            table.services.push(s.without_dests());
        }
        Change::EditService(s) => {
            let i = service(table, &s.vaddr)?;
            let old = &mut table.services[i];
            old.scheduler = s.scheduler;
            old.flags = s.flags;
            old.persistence = s.persistence;
        }
        Change::DeleteService(v) => {
            let i = service(table, v)?;
            table.services.remove(i);
        }
        Change::AddDest(v, rs) => {
            let i = service(table, v)?;
            let s = &mut table.services[i];
            if s.dest(&rs.addr).is_some() {
                return Err(ApplyRefusal::DestExists(*v, rs.addr));
            }
            s.dests.push(*rs);
        }
        Change::EditDest(v, rs) => {
            let i = service(table, v)?;
            let addr = normalize_addr(rs.addr);
            let s = &mut table.services[i];
            let d = s
                .dests
                .iter_mut()
                .find(|d| normalize_addr(d.addr) == addr)
                .ok_or(ApplyRefusal::NoDest(*v, rs.addr))?;
            d.forward = rs.forward;
            d.weight = rs.weight;
        }
        Change::DeleteDest(v, addr) => {
            let i = service(table, v)?;
            let a = normalize_addr(*addr);
            let s = &mut table.services[i];
            let j = s
                .dests
                .iter()
                .position(|d| normalize_addr(d.addr) == a)
                .ok_or(ApplyRefusal::NoDest(*v, *addr))?;
            s.dests.remove(j);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn tcp(s: &str) -> VirtualAddr {
        VirtualAddr::Inet {
            proto: Proto::Tcp,
            addr: s.parse().unwrap(),
        }
    }

    fn rs(s: &str, forward: Forward, weight: u32) -> RealServer {
        RealServer {
            addr: s.parse().unwrap(),
            forward,
            weight,
        }
    }

    fn svc(v: VirtualAddr, dests: &[RealServer]) -> VirtualService {
        VirtualService {
            dests: dests.to_vec(),
            ..VirtualService::new(v, SchedulerKind::Wlc)
        }
    }

    fn base() -> Table {
        Table {
            services: vec![
                VirtualService {
                    persistence: Some(Persistence {
                        timeout_secs: 3600,
                        netmask: None,
                    }),
                    ..svc(
                        tcp("10.0.0.100:22"),
                        &[
                            rs("10.0.1.11:22", Forward::Dr, 100),
                            rs("10.0.1.12:22", Forward::Dr, 100),
                        ],
                    )
                },
                svc(
                    tcp("10.0.0.100:3389"),
                    &[rs("10.0.1.21:3389", Forward::Nat, 1)],
                ),
            ],
        }
    }

    fn nothing_live(_: &VirtualAddr, _: &SocketAddr) -> bool {
        false
    }

    fn all_live(_: &VirtualAddr, _: &SocketAddr) -> bool {
        true
    }

    #[test]
    fn an_unchanged_table_gives_no_changes() {
        assert!(diff(&base(), &base(), nothing_live).is_empty());
        assert!(diff(&base(), &base(), all_live).is_empty());
        assert!(diff(&Table::default(), &Table::default(), all_live).is_empty());
    }

    #[test]
    fn a_weight_change_is_an_edit_dest() {
        let mut desired = base();
        desired.services[0].dests[1].weight = 0;
        assert_eq!(
            diff(&base(), &desired, nothing_live),
            vec![Change::EditDest(
                tcp("10.0.0.100:22"),
                rs("10.0.1.12:22", Forward::Dr, 0)
            )]
        );
    }

    #[test]
    fn a_forwarding_method_change_is_an_edit_dest() {
        let mut desired = base();
        desired.services[0].dests[0].forward = Forward::Tunnel;
        assert_eq!(
            diff(&base(), &desired, all_live),
            vec![Change::EditDest(
                tcp("10.0.0.100:22"),
                rs("10.0.1.11:22", Forward::Tunnel, 100)
            )]
        );
    }

    #[test]
    fn scheduler_flags_and_persistence_changes_are_edit_service() {
        let v = tcp("10.0.0.100:22");
        let edits: [fn(&mut VirtualService); 4] = [
            |s| s.scheduler = SchedulerKind::Sh,
            |s| s.persistence = None,
            |s| {
                s.persistence = Some(Persistence {
                    timeout_secs: 60,
                    netmask: None,
                })
            },
            |s| {
                s.persistence = Some(Persistence {
                    timeout_secs: 3600,
                    netmask: Some(24),
                })
            },
        ];
        for edit in edits {
            let mut desired = base();
            edit(&mut desired.services[0]);
            let changes = diff(&base(), &desired, nothing_live);
            assert_eq!(
                changes,
                vec![Change::EditService(desired.services[0].without_dests())]
            );
            let Change::EditService(s) = &changes[0] else {
                unreachable!()
            };
            assert_eq!(s.vaddr, v);
            assert!(s.dests.is_empty());
        }
    }

    #[test]
    fn settings_compare_normalised() {
        let mut desired = base();
        // /32 is no mask; flags mean nothing to wlc.
        desired.services[0].persistence = Some(Persistence {
            timeout_secs: 3600,
            netmask: Some(32),
        });
        desired.services[1].flags = HashOptions {
            fallback: true,
            port: true,
        };
        assert!(diff(&base(), &desired, nothing_live).is_empty());
        // For sh they count.
        let mut sh = base();
        sh.services[1].scheduler = SchedulerKind::Sh;
        let mut sh_flags = sh.clone();
        sh_flags.services[1].flags.port = true;
        assert_eq!(diff(&sh, &sh_flags, nothing_live).len(), 1);
        // Scope ids and flow labels are not part of an address.
        let v6: SocketAddr = "[2001:db8::1]:22".parse().unwrap();
        let SocketAddr::V6(a) = v6 else {
            unreachable!()
        };
        let scoped = SocketAddr::V6(SocketAddrV6::new(*a.ip(), 22, 7, 3));
        let one = |addr| Table {
            services: vec![svc(
                VirtualAddr::Inet {
                    proto: Proto::Tcp,
                    addr,
                },
                &[RealServer {
                    addr,
                    forward: Forward::Dr,
                    weight: 1,
                }],
            )],
        };
        assert!(diff(&one(v6), &one(scoped), nothing_live).is_empty());
    }

    #[test]
    fn a_removed_dest_is_deleted_when_idle_and_quiesced_while_live() {
        let mut desired = base();
        desired.services[0].dests.remove(1);
        let v = tcp("10.0.0.100:22");
        let gone: SocketAddr = "10.0.1.12:22".parse().unwrap();
        assert_eq!(
            diff(&base(), &desired, nothing_live),
            vec![Change::DeleteDest(v, gone)]
        );
        assert_eq!(
            diff(&base(), &desired, |_, a| *a == gone),
            vec![Change::EditDest(v, rs("10.0.1.12:22", Forward::Dr, 0))]
        );
        // Already quiesced and still live: nothing to do until it is idle.
        let mut current = base();
        current.services[0].dests[1].weight = 0;
        assert!(diff(&current, &desired, all_live).is_empty());
        assert_eq!(
            diff(&current, &desired, nothing_live),
            vec![Change::DeleteDest(v, gone)]
        );
    }

    #[test]
    fn a_removed_service_is_deleted_when_idle_and_quiesced_while_live() {
        let desired = Table {
            services: vec![base().services[1].clone()],
        };
        let v = tcp("10.0.0.100:22");
        assert_eq!(
            diff(&base(), &desired, nothing_live),
            vec![Change::DeleteService(v)]
        );
        // One live dest keeps the whole service; every dest is quiesced.
        let live: SocketAddr = "10.0.1.11:22".parse().unwrap();
        assert_eq!(
            diff(&base(), &desired, |_, a| *a == live),
            vec![
                Change::EditDest(v, rs("10.0.1.11:22", Forward::Dr, 0)),
                Change::EditDest(v, rs("10.0.1.12:22", Forward::Dr, 0)),
            ]
        );
        let mut quiesced = base();
        quiesced.services[0].dests[0].weight = 0;
        assert_eq!(
            diff(&quiesced, &desired, |_, a| *a == live),
            vec![Change::EditDest(v, rs("10.0.1.12:22", Forward::Dr, 0))]
        );
        // A service without real servers has nothing live.
        let mut empty = base();
        empty.services[0].dests.clear();
        assert_eq!(
            diff(&empty, &desired, all_live),
            vec![Change::DeleteService(v)]
        );
    }

    #[test]
    fn changes_come_in_the_documented_order() {
        let current = base();
        let mut desired = base();
        // Removed service (idle), removed dest (idle), edited dest, added dest, edited service,
        // added service.
        desired.services.remove(1);
        desired.services[0].scheduler = SchedulerKind::Mh;
        desired.services[0].dests[0].weight = 5;
        desired.services[0].dests.remove(1);
        desired.services[0]
            .dests
            .push(rs("10.0.1.13:22", Forward::Dr, 1));
        let new = svc(tcp("10.0.0.101:22"), &[rs("10.0.1.31:22", Forward::Dr, 1)]);
        desired.services.push(new.clone());
        let v = tcp("10.0.0.100:22");
        assert_eq!(
            diff(&current, &desired, nothing_live),
            vec![
                Change::EditService(desired.services[0].without_dests()),
                Change::AddService(new.without_dests()),
                Change::AddDest(v, rs("10.0.1.13:22", Forward::Dr, 1)),
                Change::EditDest(v, rs("10.0.1.11:22", Forward::Dr, 5)),
                Change::AddDest(new.vaddr, new.dests[0]),
                Change::DeleteDest(v, "10.0.1.12:22".parse().unwrap()),
                Change::DeleteService(tcp("10.0.0.100:3389")),
            ]
        );
    }

    #[test]
    fn apply_refuses_what_the_kernel_refuses() {
        let mut t = base();
        let v = tcp("10.0.0.100:22");
        let err = apply(
            &mut t,
            &[
                Change::EditDest(v, rs("10.0.1.11:22", Forward::Dr, 7)),
                Change::AddService(svc(v, &[])),
            ],
        )
        .unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(err.reason, ApplyRefusal::ServiceExists(v));
        assert_eq!(t.services[0].dests[0].weight, 7);
        assert_eq!(
            err.to_string(),
            "change 1: TCP 10.0.0.100:22: Service already exists"
        );
        let nope = tcp("10.9.9.9:22");
        let a: SocketAddr = "10.0.1.99:22".parse().unwrap();
        for (change, reason) in [
            (Change::DeleteService(nope), ApplyRefusal::NoService(nope)),
            (Change::DeleteDest(v, a), ApplyRefusal::NoDest(v, a)),
            (
                Change::AddDest(v, rs("10.0.1.11:22", Forward::Nat, 1)),
                ApplyRefusal::DestExists(v, "10.0.1.11:22".parse().unwrap()),
            ),
        ] {
            assert_eq!(apply(&mut t, &[change]).unwrap_err().reason, reason);
        }
    }

    #[test]
    fn validate_reports_what_ipvsadm_would_refuse_or_rewrite() {
        assert_eq!(base().validate(), Ok(()));
        let v = tcp("10.0.0.100:22");
        type Case = (fn(&mut Table), TableError);
        let cases: Vec<Case> = vec![
            (
                |t| t.services.push(t.services[0].clone()),
                TableError::DuplicateService(tcp("10.0.0.100:22")),
            ),
            (
                |t| t.services[0].dests[0].addr = "10.0.1.11:2222".parse().unwrap(),
                TableError::PortRewritten(
                    tcp("10.0.0.100:22"),
                    "10.0.1.11:2222".parse().unwrap(),
                    Forward::Dr,
                ),
            ),
            (
                |t| t.services[0].dests[0].weight = MAX_WEIGHT + 1,
                TableError::Weight(
                    tcp("10.0.0.100:22"),
                    "10.0.1.11:22".parse().unwrap(),
                    MAX_WEIGHT + 1,
                ),
            ),
            (
                |t| t.services[1].vaddr = tcp("10.0.0.100:0"),
                TableError::ZeroPort(tcp("10.0.0.100:0")),
            ),
            (
                |t| {
                    t.services[0].persistence = Some(Persistence {
                        timeout_secs: 60,
                        netmask: Some(33),
                    })
                },
                TableError::Netmask(tcp("10.0.0.100:22"), 33),
            ),
            (
                |t| t.services[1].dests[0].addr = "[2001:db8::1]:3389".parse().unwrap(),
                TableError::Family(
                    tcp("10.0.0.100:3389"),
                    "[2001:db8::1]:3389".parse().unwrap(),
                ),
            ),
        ];
        for (edit, err) in cases {
            let mut t = base();
            edit(&mut t);
            assert_eq!(t.validate(), Err(err));
        }
        // NAT may change the port; a tunnel may cross address families.
        let mut t = base();
        t.services[1].dests[0].addr = "10.0.1.21:3390".parse().unwrap();
        t.services[0].dests[0] = rs("[2001:db8::1]:22", Forward::Tunnel, 1);
        assert_eq!(t.validate(), Ok(()));
        assert!(
            TableError::ZeroPort(v)
                .to_string()
                .contains("needs persistence")
        );
    }

    #[test]
    fn display_names_services_as_ipvsadm_lists_them() {
        assert_eq!(tcp("10.0.0.100:22").to_string(), "TCP 10.0.0.100:22");
        let udp6 = VirtualAddr::Inet {
            proto: Proto::Udp,
            addr: "[2001:db8::1]:53".parse().unwrap(),
        };
        assert_eq!(udp6.to_string(), "UDP [2001:db8::1]:53");
        assert_eq!(
            VirtualAddr::FwMark {
                mark: 7,
                ipv6: false
            }
            .to_string(),
            "FWM 7"
        );
        assert_eq!(
            VirtualAddr::FwMark {
                mark: 7,
                ipv6: true
            }
            .to_string(),
            "FWM 7 IPv6"
        );
    }

    // Small address pools, so that tables overlap a lot.
    fn vaddr_strategy() -> impl Strategy<Value = VirtualAddr> {
        prop_oneof![
            (
                any::<bool>(),
                0usize..3,
                prop::sample::select(vec![0u16, 22, 80])
            )
                .prop_map(|(udp, ip, port)| {
                    let ip: IpAddr = match ip {
                        0 => Ipv4Addr::new(10, 0, 0, 1).into(),
                        1 => Ipv4Addr::new(10, 0, 0, 2).into(),
                        _ => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
                    };
                    VirtualAddr::Inet {
                        proto: if udp { Proto::Udp } else { Proto::Tcp },
                        addr: SocketAddr::new(ip, port),
                    }
                }),
            (1u32..3, any::<bool>()).prop_map(|(mark, ipv6)| VirtualAddr::FwMark { mark, ipv6 }),
        ]
    }

    fn dest_strategy() -> impl Strategy<Value = RealServer> {
        (
            0u8..5,
            prop::sample::select(vec![22u16, 80]),
            prop::sample::select(vec![Forward::Dr, Forward::Nat, Forward::Tunnel]),
            prop_oneof![0u32..4, Just(MAX_WEIGHT)],
        )
            .prop_map(|(host, port, forward, weight)| {
                let ip: IpAddr = if host < 4 {
                    Ipv4Addr::new(10, 0, 1, host).into()
                } else {
                    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xa).into()
                };
                RealServer {
                    addr: SocketAddr::new(ip, port),
                    forward,
                    weight,
                }
            })
    }

    fn service_strategy() -> impl Strategy<Value = VirtualService> {
        (
            vaddr_strategy(),
            prop::sample::select(SchedulerKind::ALL.to_vec()),
            any::<(bool, bool)>(),
            prop::option::of((
                prop::sample::select(vec![60u32, 360, 3600]),
                prop::option::of(prop::sample::select(vec![16u8, 24, 32, 64, 128])),
            )),
            prop::collection::vec(dest_strategy(), 0..5),
        )
            .prop_map(
                |(vaddr, scheduler, (fallback, port), p, dests)| VirtualService {
                    vaddr,
                    scheduler,
                    flags: HashOptions { fallback, port },
                    persistence: p.map(|(timeout_secs, netmask)| Persistence {
                        timeout_secs,
                        netmask,
                    }),
                    dests,
                },
            )
    }

    /// Tables may hold duplicates; the diff counts the first of each.
    fn table_strategy() -> impl Strategy<Value = Table> {
        prop::collection::vec(service_strategy(), 0..5).prop_map(|services| Table { services })
    }

    /// The table as sets: normalised, first of each entry, sorted.
    fn canonical(t: &Table) -> Vec<(String, String, Vec<String>)> {
        let mut out: Vec<_> = unique(t)
            .into_iter()
            .map(|s| {
                let mut dests: Vec<String> = s.dests.iter().map(|d| format!("{d:?}")).collect();
                dests.sort();
                (
                    format!("{:?}", s.vaddr),
                    format!("{:?} {:?} {:?}", s.scheduler, s.flags, s.persistence),
                    dests,
                )
            })
            .collect();
        out.sort();
        out
    }

    fn entries(t: &Table) -> Vec<(VirtualAddr, RealServer)> {
        unique(t)
            .into_iter()
            .flat_map(|s| s.dests.into_iter().map(move |d| (s.vaddr, d)))
            .collect()
    }

    proptest! {
        #[test]
        fn diff_of_a_table_with_itself_is_empty(t in table_strategy(), live in any::<bool>()) {
            prop_assert!(diff(&t, &t, |_, _| live).is_empty());
        }

        #[test]
        fn with_nothing_live_applying_the_diff_gives_desired(
            current in table_strategy(),
            desired in table_strategy(),
        ) {
            let changes = diff(&current, &desired, nothing_live);
            let mut t = unique_table(&current);
            apply(&mut t, &changes).unwrap();
            prop_assert_eq!(canonical(&t), canonical(&desired));
            prop_assert!(diff(&t, &desired, nothing_live).is_empty());
        }

        #[test]
        fn nothing_live_is_ever_deleted_and_the_diff_converges(
            current in table_strategy(),
            desired in table_strategy(),
            live_hosts in prop::collection::vec(any::<bool>(), 5),
        ) {
            let live = |_: &VirtualAddr, a: &SocketAddr| {
                let host = match a.ip() {
                    IpAddr::V4(v4) => usize::from(v4.octets()[3]),
                    IpAddr::V6(_) => 4,
                };
                live_hosts[host.min(4)]
            };
            let changes = diff(&current, &desired, live);
            let mut t = unique_table(&current);
            apply(&mut t, &changes).unwrap();
            // Every live real server is still there; the ones not desired carry weight 0.
            for (v, d) in entries(&current) {
                if !live(&v, &d.addr) {
                    continue;
                }
                let now = t.service(&v).and_then(|s| s.dest(&d.addr));
                prop_assert!(now.is_some(), "{v} {} was deleted while live", d.addr);
                let wanted = desired.service(&v).and_then(|s| s.dest(&d.addr));
                if wanted.is_none() {
                    prop_assert_eq!(now.map(|n| n.weight), Some(0));
                }
            }
            // Every desired entry is in place.
            for (v, d) in entries(&desired) {
                let now = t.service(&v).and_then(|s| s.dest(&d.addr));
                prop_assert_eq!(now.copied(), Some(d));
            }
            prop_assert!(diff(&t, &desired, live).is_empty());
        }
    }

    /// `current` as the kernel would hold it: no duplicates.
    fn unique_table(t: &Table) -> Table {
        Table {
            services: unique(t),
        }
    }
}
