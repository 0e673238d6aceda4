//! What the broker's gateway reads from request paths and headers, as pure functions: the
//! gateway takes these strings from any browser or Xpra client before it has checked who is
//! asking, so they live here, with unit tests and a fuzz target, apart from the HTTP code.

use std::path::{Component, Path};

/// `t.<token>.<type>` (one path segment, for Xpra 3.1 clients, whose `xpra attach` accepts only
/// one) → (token, type). The token is everything up to the second dot, so it never holds a dot;
/// the type is the rest, as it would be in `/t/<token>/<type>`.
pub fn dotted_token(seg: &str) -> Option<(&str, &str)> {
    let rest = seg.strip_prefix("t.")?;
    rest.split_once('.')
}

/// The file a `/client/<path>` request names under the HTML5 client's directory, or `None` when
/// the path could leave that directory or name it rather than a file in it.
///
/// Only plain names are accepted (`Component::Normal`): no `..`, no root, no leading `.`, so the
/// result joined onto the directory always stays inside it. (`a//b` and `a/./b` are `a/b`, as
/// the file system reads them.)
pub fn client_path(path: &str) -> Option<&Path> {
    let rel = Path::new(path);
    let mut parts = rel.components();
    let first = parts.next()?;
    std::iter::once(first)
        .chain(parts)
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(rel)
}

/// Whether a WebSocket upgrade with this `Origin` and `Host` comes from the gateway's own pages
/// (cross-site WebSocket hijacking is refused). No `Origin` is not a browser (`xpra attach`
/// sends none) and passes; otherwise the origin's host and port must be exactly `Host`, and an
/// origin with no host matches nothing, not even a missing `Host`.
pub fn same_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    match origin.split_once("://") {
        Some((_, h)) => !h.is_empty() && Some(h) == host,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_tokens() {
        assert_eq!(dotted_token("t.abc123.xfce"), Some(("abc123", "xfce")));
        assert_eq!(dotted_token("xfce"), None);
        assert_eq!(dotted_token("t.abc"), None);
    }

    #[test]
    fn client_paths_stay_inside_the_client_directory() {
        assert_eq!(client_path("index.html"), Some(Path::new("index.html")));
        assert_eq!(client_path("js/lib/a.js"), Some(Path::new("js/lib/a.js")));
        assert_eq!(client_path("js//a.js"), Some(Path::new("js//a.js")));
        for bad in [
            "",
            "/etc/passwd",
            "../secret",
            "js/../../secret",
            "js/..",
            "./index.html",
            "//host/share",
        ] {
            assert_eq!(client_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn origins_must_name_the_host() {
        let host = Some("gw.example.org:8443");
        assert!(same_origin(None, host));
        assert!(same_origin(None, None));
        assert!(same_origin(Some("https://gw.example.org:8443"), host));
        assert!(!same_origin(Some("https://evil.example"), host));
        assert!(!same_origin(Some("https://gw.example.org"), host));
        assert!(!same_origin(Some("null"), host));
        assert!(!same_origin(Some("https://gw.example.org:8443"), None));
        assert!(!same_origin(Some("https://"), None));
        assert!(!same_origin(Some("https://"), Some("")));
    }
}
