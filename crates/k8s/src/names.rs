//! Deterministic pod names, labels and annotations for a user's session pod.
//!
//! A pod is named after its user and session type, so that a second login finds the first one's
//! pod by name (a create races into 409 AlreadyExists instead of a second pod). Kubernetes names
//! are DNS-1123 labels: at most 63 characters of `[a-z0-9-]`, starting and ending with an
//! alphanumeric. The plain form `<user>-<type>` (the seed's naming) is used when it is already a
//! valid name and cannot be read two ways; anything else (`Alice`, `bob@example.org`, `j.doe`, a
//! user with a `-`, an over-long pair) gets a sanitised, truncated prefix plus a hash of the exact
//! user and type, so two different users never share a pod name. The exact user and type also go
//! into annotations, and the backend refuses a pod whose annotations name someone else.

use sha2::{Digest, Sha256};

/// Longest Kubernetes object name that is also a DNS-1123 label.
pub const MAX_NAME: usize = 63;
/// Hex digits of the hash suffix.
const HASH_HEX: usize = 10;

/// Label every session pod carries; the backend lists and watches by it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGER: &str = "switchboard";
/// Label with the (label-safe) user.
pub const USER_LABEL: &str = "switchboard.io/user";
/// Label with the session type.
pub const TYPE_LABEL: &str = "switchboard.io/session-type";
/// Label with the pool.
pub const POOL_LABEL: &str = "switchboard.io/pool";
/// Annotation with the exact user name.
pub const USER_ANNOTATION: &str = "switchboard.io/user";
/// Annotation with the exact session type.
pub const TYPE_ANNOTATION: &str = "switchboard.io/session-type";

/// The pod name for `user`'s session of `session_type`.
pub fn pod_name(user: &str, session_type: &str) -> String {
    let plain = format!("{user}-{session_type}");
    if plain.len() <= MAX_NAME && is_plain_user(user) && is_dns_label(session_type) {
        return plain;
    }
    let digest = Sha256::new()
        .chain_update(user.as_bytes())
        .chain_update([0u8])
        .chain_update(session_type.as_bytes())
        .finalize();
    let hash: String = digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..HASH_HEX]
        .to_string();
    let mut prefix = sanitise(&plain);
    prefix.truncate(MAX_NAME - 1 - HASH_HEX);
    let prefix = prefix.trim_end_matches('-');
    if prefix.is_empty() {
        format!("s-{hash}")
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The value of [`USER_LABEL`]: the user when it is a valid label value, else a sanitised form
/// (labels select; the annotation is what the backend trusts).
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_string();
    }
    let mut s: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(MAX_NAME);
    let s = s
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if s.is_empty() { "x".to_string() } else { s }
}

/// Whether `s` is a DNS-1123 label: 1 to 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a valid label value (empty is valid in Kubernetes, but never used here).
fn is_label_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A user that can stand unhashed before `-<type>`: lower-case letters and digits only, so the
/// first `-` of the name always ends the user.
fn is_plain_user(user: &str) -> bool {
    !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Lower-case, every other character (`@`, `.`, `_`, …) becomes `-`, runs of `-` collapse, no
/// `-` at the ends (the seed's mapping of `user@domain`).
fn sanitise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    out.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn plain_users_keep_the_seeds_name() {
        assert_eq!(pod_name("alice", "xfce"), "alice-xfce");
        assert_eq!(
            pod_name("u1234", "seamless-desktop"),
            "u1234-seamless-desktop"
        );
    }

    #[test]
    fn other_names_are_sanitised_and_hashed() {
        let n = pod_name("Bob@Example.org", "xfce");
        assert!(n.starts_with("bob-example-org-xfce-"), "{n}");
        assert!(is_dns_label(&n), "{n}");
        // Ambiguous splits hash to different names.
        assert_ne!(pod_name("a-b", "c"), pod_name("a", "b-c"));
        assert_ne!(pod_name("j.doe", "x"), pod_name("j_doe", "x"));
        assert_ne!(pod_name("Alice", "x"), pod_name("alice", "x"));
        // Deterministic.
        assert_eq!(pod_name("j.doe", "x"), pod_name("j.doe", "x"));
    }

    #[test]
    fn long_names_fit_in_63() {
        let user = "a".repeat(200) + "@example.org";
        let n = pod_name(&user, "desktop");
        assert!(n.len() <= MAX_NAME && is_dns_label(&n), "{n}");
        let n = pod_name("---", "@@@");
        assert!(is_dns_label(&n), "{n}");
        let n = pod_name("ünïcødé", "x");
        assert!(is_dns_label(&n), "{n}");
    }

    #[test]
    fn no_collisions_over_many_users() {
        let mut seen = HashSet::new();
        for i in 0..5000 {
            for user in [
                format!("user{i}"),
                format!("User{i}"),
                format!("user.{i}"),
                format!("user-{i}"),
            ] {
                assert!(seen.insert(pod_name(&user, "desktop")), "{user}");
            }
        }
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("alice"), "alice");
        assert_eq!(label_value("bob@example.org"), "bob-example.org");
        assert!(is_label_value(&label_value(&"x".repeat(100))));
        assert!(is_label_value(&label_value("@@")));
    }
}
