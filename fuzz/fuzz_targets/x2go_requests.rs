//! The X2Go request form, the pubkey check and the SESSION_INFO rewrite must never panic, and must
//! hold their limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::x2go::{MAX_FORM, as_suspended, check_pubkey, parse_form};

fuzz_target!(|data: &[u8]| {
    match parse_form(data) {
        Ok(f) => {
            assert!(data.len() <= MAX_FORM);
            assert!(!f.profile.chars().any(char::is_control));
            if let Ok(k) = check_pubkey(&f.pubkey) {
                assert!(!k.contains('\n'));
            }
        }
        Err(_) => {}
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = check_pubkey(text);
        let _ = as_suspended(text);
    }
});
