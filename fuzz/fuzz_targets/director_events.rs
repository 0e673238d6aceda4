//! The broker's pool watch stream as the director reads it: server-sent events in arbitrary
//! chunks, each `pool` event's JSON decoded into a pool view. Nothing may panic, and the parser
//! must hold no more than its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_director::{PoolView, SseParser};

fuzz_target!(|data: &[u8]| {
    let mut parser = SseParser::default();
    // The first byte picks the chunk size, so events are split everywhere.
    let (size, rest) = match data.split_first() {
        Some((s, r)) => (usize::from(*s % 64) + 1, r),
        None => return,
    };
    for chunk in rest.chunks(size) {
        match parser.push(chunk) {
            Ok(events) => {
                for (event, data) in events {
                    if event == "pool" {
                        let _ = serde_json::from_str::<PoolView>(&data);
                    }
                }
            }
            Err(_) => return,
        }
    }
});
