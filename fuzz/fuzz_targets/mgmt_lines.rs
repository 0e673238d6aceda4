//! The management socket's line parser must never panic on any line, and must accept only
//! lines within its size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::mgmt::{MAX_LINE, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let r = parse(line);
        if line.len() > MAX_LINE {
            assert!(r.is_err());
        }
    }
});
