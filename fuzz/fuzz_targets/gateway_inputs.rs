//! The gateway's readers of request data must never panic and must keep their promises: a
//! dotted connect token holds no dot and rebuilds its segment, an accepted client file path stays
//! inside the client directory, and an accepted Origin names exactly the Host.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};
use switchboard_proto::gateway::{client_path, dotted_token, same_origin};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    match dotted_token(text) {
        Some((token, ty)) => {
            assert!(!token.contains('.'));
            assert_eq!(format!("t.{token}.{ty}"), text);
        }
        None => assert!(!text.strip_prefix("t.").is_some_and(|r| r.contains('.'))),
    }

    if let Some(rel) = client_path(text) {
        assert!(!text.is_empty() && !text.starts_with('/'));
        assert!(!text.split('/').any(|c| c == ".."));
        assert!(rel.is_relative());
        let base = Path::new("/srv/client");
        let full = base.join(rel);
        assert!(full.starts_with(base) && full != base);
        assert!(
            full.components()
                .all(|c| !matches!(c, Component::ParentDir | Component::CurDir))
        );
    }

    // The first line is an Origin, the rest a Host.
    let (origin, host) = text.split_once('\n').unwrap_or((text, ""));
    for o in [None, Some(origin)] {
        for h in [None, Some(host)] {
            let ok = same_origin(o, h);
            match (o, h) {
                (None, _) => assert!(ok),
                (Some(o), h) if ok => {
                    let h = h.unwrap_or_default();
                    assert!(!h.is_empty());
                    let scheme = o.strip_suffix(h).and_then(|s| s.strip_suffix("://"));
                    assert!(scheme.is_some_and(|s| !s.contains("://")), "{o:?} {h:?}");
                }
                _ => {}
            }
        }
    }
    if !host.is_empty() && !origin.contains("://") {
        assert!(same_origin(Some(&format!("{origin}://{host}")), Some(host)));
    }
});
