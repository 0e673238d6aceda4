//! A profile's `acl-*` keys, checked the way x2gobroker checks them, with its bugs fixed.
//!
//! Three categories (clients, users, groups), each with an allow list, a deny list and an order.
//! The order names which list is looked at first and wins when both match: `allow-deny` lets an
//! address, user or group that is on both lists in, `deny-allow` keeps it out. A category without
//! its own `acl-*-order` uses `acl-any-order` (default `deny-allow`). `ALL` matches everyone.
//!
//! The algorithm is x2gobroker's `check_profile_acls`:
//! 1. If any client rule is set, the client address must be granted (on no list = refused).
//! 2. No user or group rules: allowed.
//! 3. A user granted by the user rules is allowed, whatever the groups say.
//! 4. Otherwise the groups must grant, and the user rules must not have denied.
//!
//! Fixed against x2gobroker 0.0.4.3: `acl-any-order` really is the default order (there it never
//! applies, because the per-category defaults are empty strings that override it); and a host
//! name in `acl-clients-*` is an error when the file is loaded, not a profile silently hidden
//! from everyone.

use super::ProfileError;
use std::net::IpAddr;

/// Which list wins when both match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Order {
    /// Allow list first.
    AllowDeny,
    /// Deny list first (X2Go's default).
    #[default]
    DenyAllow,
}

impl Order {
    fn parse(key: &str, v: &str) -> Result<Option<Order>, String> {
        match v.trim() {
            "" => Ok(None),
            "allow-deny" => Ok(Some(Order::AllowDeny)),
            "deny-allow" => Ok(Some(Order::DenyAllow)),
            other => Err(format!(
                "key `{key}`: {other:?} is not an order; use allow-deny or deny-allow"
            )),
        }
    }
}

/// A network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// Parses `ADDR` or `ADDR/PREFIX` (IPv4 or IPv6).
    pub fn parse(text: &str) -> Result<Net, String> {
        let (a, p) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| {
            format!("{text:?} is not an IP address or network (host names are not allowed here)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: bad prefix length"))?,
        };
        Ok(Net { addr, prefix })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One category's rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule<T> {
    /// Allowed items.
    pub allow: Vec<T>,
    /// Denied items.
    pub deny: Vec<T>,
    /// `ALL` on the allow list.
    pub allow_all: bool,
    /// `ALL` on the deny list.
    pub deny_all: bool,
    /// This category's own order.
    pub order: Option<Order>,
}

impl<T> Default for Rule<T> {
    fn default() -> Self {
        Rule {
            allow: Vec::new(),
            deny: Vec::new(),
            allow_all: false,
            deny_all: false,
            order: None,
        }
    }
}

impl<T> Rule<T> {
    fn is_set(&self) -> bool {
        self.allow_all || self.deny_all || !self.allow.is_empty() || !self.deny.is_empty()
    }

    /// `Some(true)` granted, `Some(false)` denied, `None` on neither list.
    fn decide(&self, allowed: bool, denied: bool, default: Order) -> Option<bool> {
        match self.order.unwrap_or(default) {
            Order::AllowDeny if allowed => Some(true),
            Order::AllowDeny if denied => Some(false),
            Order::DenyAllow if denied => Some(false),
            Order::DenyAllow if allowed => Some(true),
            _ => None,
        }
    }
}

/// A profile's ACL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    /// `acl-clients-*`.
    pub clients: Rule<Net>,
    /// `acl-users-*`.
    pub users: Rule<String>,
    /// `acl-groups-*`.
    pub groups: Rule<String>,
    /// `acl-any-order`.
    pub any_order: Order,
}

fn list(v: &str) -> Vec<String> {
    super::split_list(v)
}

impl Acl {
    /// Builds the ACL from a profile's `acl-*` keys (`(key, value, line)`).
    pub fn from_keys<'a>(
        keys: impl IntoIterator<Item = (&'a str, &'a str, usize)>,
    ) -> Result<Acl, ProfileError> {
        let mut acl = Acl::default();
        for (key, value, line) in keys {
            let e = |m: String| ProfileError::at(Some(line), m);
            match key {
                "acl-any-order" => {
                    acl.any_order = Order::parse(key, value).map_err(e)?.unwrap_or_default();
                }
                "acl-users-order" => acl.users.order = Order::parse(key, value).map_err(e)?,
                "acl-groups-order" => acl.groups.order = Order::parse(key, value).map_err(e)?,
                "acl-clients-order" => acl.clients.order = Order::parse(key, value).map_err(e)?,
                "acl-users-allow" | "acl-users-deny" | "acl-groups-allow" | "acl-groups-deny" => {
                    let items = list(value);
                    let all = items.iter().any(|i| i == "ALL");
                    let items: Vec<String> = items.into_iter().filter(|i| i != "ALL").collect();
                    let rule = if key.starts_with("acl-users") {
                        &mut acl.users
                    } else {
                        &mut acl.groups
                    };
                    if key.ends_with("allow") {
                        rule.allow = items;
                        rule.allow_all = all;
                    } else {
                        rule.deny = items;
                        rule.deny_all = all;
                    }
                }
                "acl-clients-allow" | "acl-clients-deny" => {
                    let mut nets = Vec::new();
                    let mut all = false;
                    for item in list(value) {
                        if item == "ALL" {
                            all = true;
                        } else {
                            nets.push(
                                Net::parse(&item).map_err(|m| e(format!("key `{key}`: {m}")))?,
                            );
                        }
                    }
                    if key.ends_with("allow") {
                        acl.clients.allow = nets;
                        acl.clients.allow_all = all;
                    } else {
                        acl.clients.deny = nets;
                        acl.clients.deny_all = all;
                    }
                }
                other => {
                    return Err(e(format!(
                        "unknown ACL key `{other}` (known: acl-{{users,groups,clients}}-{{allow,deny,order}}, acl-any-order)"
                    )));
                }
            }
        }
        Ok(acl)
    }

    /// Whether the ACL restricts anything.
    pub fn is_open(&self) -> bool {
        !self.clients.is_set() && !self.users.is_set() && !self.groups.is_set()
    }

    /// Whether the ACL uses group rules (then the caller must look groups up).
    pub fn needs_groups(&self) -> bool {
        self.groups.is_set()
    }

    /// Whether `user` (member of `groups`) connecting from `client` may use the profile.
    pub fn allows(&self, user: &str, groups: &[String], client: IpAddr) -> bool {
        if self.clients.is_set() {
            let c = &self.clients;
            let allowed = c.allow_all || c.allow.iter().any(|n| n.contains(client));
            let denied = c.deny_all || c.deny.iter().any(|n| n.contains(client));
            if c.decide(allowed, denied, self.any_order) != Some(true) {
                return false;
            }
        }
        if !self.users.is_set() && !self.groups.is_set() {
            return true;
        }
        let mut by_user = None;
        if self.users.is_set() {
            let u = &self.users;
            let allowed = u.allow_all || u.allow.iter().any(|x| x == user);
            let denied = u.deny_all || u.deny.iter().any(|x| x == user);
            by_user = u.decide(allowed, denied, self.any_order);
            if by_user == Some(true) {
                return true;
            }
        }
        if self.groups.is_set() {
            let g = &self.groups;
            let allowed = g.allow_all || g.allow.iter().any(|x| groups.contains(x));
            let denied = g.deny_all || g.deny.iter().any(|x| groups.contains(x));
            if g.decide(allowed, denied, self.any_order) == Some(true) && by_user != Some(false) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn acl(keys: &[(&str, &str)]) -> Acl {
        Acl::from_keys(keys.iter().map(|(k, v)| (*k, *v, 1))).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const HOME: &str = "127.0.0.1";

    #[test]
    fn no_rules_let_everyone_in() {
        assert!(acl(&[]).allows("anyone", &[], ip(HOME)));
    }

    #[test]
    fn users_and_groups_as_x2gobroker_decides_them() {
        let a = acl(&[("acl-users-allow", "alice"), ("acl-users-deny", "ALL")]);
        assert!(
            !a.allows("alice", &[], ip(HOME)),
            "deny-allow: ALL is denied first"
        );
        let a = acl(&[
            ("acl-users-allow", "alice"),
            ("acl-users-deny", "ALL"),
            ("acl-users-order", "allow-deny"),
        ]);
        assert!(
            a.allows("alice", &[], ip(HOME)),
            "allow-deny: alice is allowed first"
        );
        assert!(!a.allows("bob", &[], ip(HOME)));
        let g = acl(&[("acl-groups-allow", "admins"), ("acl-groups-deny", "ALL")]);
        // deny-allow: ALL is denied first, so even admins are out (x2gobroker's semantics) ...
        assert!(!g.allows("root", &["admins".into()], ip(HOME)));
        // ... and with allow-deny the admins are in.
        let g = acl(&[
            ("acl-groups-allow", "admins"),
            ("acl-groups-deny", "ALL"),
            ("acl-groups-order", "allow-deny"),
        ]);
        assert!(g.allows("root", &["admins".into()], ip(HOME)));
        assert!(!g.allows("bob", &["users".into()], ip(HOME)));
        // A user explicitly denied is not let in by a group.
        let ug = acl(&[("acl-users-deny", "mallory"), ("acl-groups-allow", "staff")]);
        assert!(!ug.allows("mallory", &["staff".into()], ip(HOME)));
        assert!(ug.allows("carol", &["staff".into()], ip(HOME)));
    }

    #[test]
    fn acl_any_order_is_the_default_order() {
        // x2gobroker 0.0.4.3 ignores acl-any-order; here it applies where no category order is set.
        let a = acl(&[
            ("acl-groups-allow", "admins"),
            ("acl-groups-deny", "ALL"),
            ("acl-any-order", "allow-deny"),
        ]);
        assert!(a.allows("root", &["admins".into()], ip(HOME)));
        let own = acl(&[
            ("acl-groups-allow", "admins"),
            ("acl-groups-deny", "ALL"),
            ("acl-any-order", "allow-deny"),
            ("acl-groups-order", "deny-allow"),
        ]);
        assert!(!own.allows("root", &["admins".into()], ip(HOME)));
    }

    #[test]
    fn client_networks_including_ipv6_and_mapped_addresses() {
        let a = acl(&[
            ("acl-clients-deny", "ALL"),
            ("acl-clients-allow", "127.0.0.0/8,::1"),
            ("acl-clients-order", "allow-deny"),
        ]);
        assert!(a.allows("u", &[], ip("127.0.0.5")));
        assert!(a.allows("u", &[], ip("::ffff:127.0.0.5")));
        assert!(a.allows("u", &[], ip("::1")));
        assert!(!a.allows("u", &[], ip("10.1.2.3")));
        // An address on neither list is refused when client rules exist.
        let only = acl(&[("acl-clients-allow", "127.0.0.2")]);
        assert!(!only.allows("u", &[], ip("127.0.0.3")));
    }

    #[test]
    fn bad_acl_values_are_load_errors() {
        for (k, v) in [
            ("acl-clients-allow", "login.example.org"),
            ("acl-clients-deny", "127.0.0.1/33"),
            ("acl-users-order", "first-come"),
            ("acl-hosts-allow", "x"),
        ] {
            let e = Acl::from_keys([(k, v, 7)]).unwrap_err();
            assert_eq!(e.line, Some(7), "{k}: {e}");
        }
    }
}
