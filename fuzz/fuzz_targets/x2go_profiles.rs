//! The X2Go session-profiles parser must never panic on any text, and every profile it accepts
//! must render for both protocols.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::x2go::{json_list, parse_profiles, plain_list};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(profiles) = parse_profiles(text)
    {
        for p in &profiles {
            assert!(!p.hosts.is_empty());
            let plain = p.for_user("u", None, false, false);
            let json = p.for_user("u", p.hosts.first().map(|h| (h.name.as_str(), 'S')), true, true);
            let _ = plain_list(Some("t"), &[(p.id.as_str(), plain)]);
            let _ = json_list(None, &[(p.id.as_str(), json)]);
            let _ = p.acl.allows("u", &["g".to_owned()], "127.0.0.1".parse().unwrap());
        }
    }
});
