//! What session sources print comes from programs on the host (x2golistsessions_root, loginctl,
//! xpra, a site script): every parser must turn any output into sessions or a clear error,
//! never a panic. The first byte picks the parser.
//!
//! The /proc files parsed through the procfs crate (stat, meminfo, loadavg, pressure) are not
//! fuzzed here: they come from the kernel, and procfs panics on some malformed text (non-ASCII,
//! overflowing numbers), which this target found. The agent refuses non-ASCII text and catches
//! a panic in those parsers (`load::shielded`), turning it into an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_agent::load;
use switchboard_agent::sources::{command, logind, x2go, xpra};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 9 == 8 {
        let _ = load::parse_utmp_users(rest);
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 9 {
        0 => {
            let _ = x2go::parse_list("x2golistsessions_root", text);
        }
        1 => {
            let _ = logind::parse_list_sessions("loginctl list-sessions", text);
        }
        2 => {
            let _ = logind::parse_show_session(text);
        }
        3 => {
            let _ = xpra::parse_list(text);
            let _ = xpra::parse_info("xpra info", text);
        }
        4 => {
            let _ = command::parse_list("site list", text);
        }
        5 | 6 => {
            let _ = load::parse_cpu_mhz(text);
        }
        _ => {
            let _ = xpra::parse_getent_names(text);
        }
    }
});
