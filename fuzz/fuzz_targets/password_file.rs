//! The password file parser must never panic and must keep only valid entries, and checking a
//! password against any hash string must not panic either.
//!
//! A hash string carries its own cost (bcrypt's rounds, argon2's memory and passes), so a fuzzed
//! one could ask for 2^31 bcrypt rounds or gigabytes of argon2 memory: `check` runs only on hash
//! strings that fail before hashing or that ask for a trivial cost, as decided by the bcrypt and
//! argon2 crates' own parsers of the string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::str::FromStr;
use switchboard_auth::file::{check, parse};

/// Whether `check(hash, _)` is cheap: it fails while parsing the string, or the cost it asks
/// for is bcrypt's smallest (4) or at most 64 KiB and 2 passes of argon2.
fn cheap(hash: &str) -> bool {
    // The prefixes `check` sends to bcrypt; everything else goes to the PHC string parser.
    if ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| hash.starts_with(p))
    {
        return bcrypt::HashParts::from_str(hash).map_or(true, |h| h.get_cost() <= 4);
    }
    let Ok(h) = argon2::PasswordHash::new(hash) else {
        return true;
    };
    // A lane count `check` refuses before argon2 sees it (argon2 0.5's own parameter check
    // overflows on it, so this gate must not ask argon2 either).
    let lanes_ok = h
        .params
        .iter()
        .filter(|(k, _)| k.as_str() == "p")
        .all(|(_, v)| v.decimal().is_ok_and(|p| p <= argon2::Params::MAX_P_COST));
    !lanes_ok || argon2::Params::try_from(&h).map_or(true, |p| p.m_cost() <= 64 && p.t_cost() <= 2)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is a password, the rest a password file.
    let (password, file) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(entries) = parse(file) {
        assert!(entries.len() <= file.lines().count());
        for (user, hash) in &entries {
            assert!(switchboard_auth::valid_user(user));
            assert!(hash.starts_with("$argon2") || hash.starts_with("$2"));
            assert!(
                file.lines()
                    .any(|l| l.trim_end_matches('\r') == format!("{user}:{hash}"))
            );
        }
    }
    // The hash of the first few lines (after the first `:`, or the whole line).
    for line in file.lines().take(4) {
        let hash = line.split_once(':').map_or(line, |(_, h)| h);
        if cheap(hash) {
            let _ = check(hash, password);
        }
    }
});
