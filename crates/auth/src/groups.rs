//! A user's groups, through NSS (files, LDAP, sssd: whatever `/etc/nsswitch.conf` says).

use nix::unistd::{Group, User};
use std::ffi::CString;

/// The names of `user`'s groups. With `primary = false`, the user's primary group is left out
/// unless the user is also listed as a member of it (X2Go's `ignore-primary-group-memberships`,
/// on by default there). An unknown user has no groups.
pub fn of(user: &str, primary: bool) -> Vec<String> {
    let Ok(Some(u)) = User::from_name(user) else {
        return Vec::new();
    };
    let Ok(cname) = CString::new(user) else {
        return Vec::new();
    };
    let gids = nix::unistd::getgrouplist(&cname, u.gid).unwrap_or_default();
    let mut out = Vec::new();
    for gid in gids {
        let Ok(Some(g)) = Group::from_gid(gid) else {
            continue;
        };
        if gid == u.gid && !primary && !g.mem.iter().any(|m| m == user) {
            continue;
        }
        if !out.contains(&g.name) {
            out.push(g.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_in_its_primary_group_only_when_asked() {
        assert!(super::of("root", true).contains(&"root".to_owned()));
        assert!(!super::of("root", false).contains(&"root".to_owned()));
        assert!(super::of("no-such-user-here", true).is_empty());
    }
}
