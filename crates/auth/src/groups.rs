//! A user's groups, through NSS (files, LDAP, sssd: whatever `/etc/nsswitch.conf` says).

use nix::unistd::{Group, User};
use std::ffi::CString;

/// The names of `user`'s groups. With `primary = false`, the user's primary group is left out
/// unless the user is also listed as a member of it (X2Go's `ignore-primary-group-memberships`,
/// on by default there). An unknown user has no groups. A failing lookup (NSS unreachable) is an
/// error, so that group rules fail closed.
pub fn of(user: &str, primary: bool) -> Result<Vec<String>, String> {
    let u = match User::from_name(user) {
        Ok(Some(u)) => u,
        Ok(None) => return Ok(Vec::new()),
        Err(e) => return Err(format!("looking up user {}: {e}", crate::printable(user))),
    };
    let cname = CString::new(user).map_err(|e| e.to_string())?;
    let gids = nix::unistd::getgrouplist(&cname, u.gid)
        .map_err(|e| format!("looking up the groups of {}: {e}", crate::printable(user)))?;
    let mut out = Vec::new();
    for gid in gids {
        let g = match Group::from_gid(gid) {
            Ok(Some(g)) => g,
            Ok(None) => continue,
            Err(e) => return Err(format!("looking up group {gid}: {e}")),
        };
        if gid == u.gid && !primary && !g.mem.iter().any(|m| m == user) {
            continue;
        }
        if !out.contains(&g.name) {
            out.push(g.name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_in_its_primary_group_only_when_asked() {
        assert!(
            super::of("root", true)
                .unwrap()
                .contains(&"root".to_owned())
        );
        assert!(
            !super::of("root", false)
                .unwrap()
                .contains(&"root".to_owned())
        );
        assert!(super::of("no-such-user-here", true).unwrap().is_empty());
    }
}
