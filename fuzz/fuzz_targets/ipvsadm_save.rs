//! The ipvsadm parsers must never panic on any text, must refuse input over their limits, and
//! every table `parse_rules` accepts must render back to rules that parse to the same table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::ipvsadm::{MAX_INPUT, parse_list_counts, parse_rules, render_rules};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let counts = parse_list_counts(text);
    let rules = parse_rules(text);
    if text.len() > MAX_INPUT {
        assert!(counts.is_err() && rules.is_err());
    }
    if let Ok(table) = rules {
        let rendered = render_rules(&table);
        if rendered.len() <= MAX_INPUT {
            assert_eq!(parse_rules(&rendered).as_ref(), Ok(&table), "{rendered}");
        }
    }
});
