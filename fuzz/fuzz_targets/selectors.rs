//! Workload selectors (`unix:uid:0`, `nitro:pcr0:…`), from the configuration and the
//! SPIRE plugin. Any text: parsing returns (never panics), and a selector that parses
//! prints back to text that parses to the same selector.

#![no_main]

use enclaveid_agent::selector::Selector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(selector) = text.parse::<Selector>() {
        let printed = selector.to_string();
        let again: Selector = printed.parse().expect("a printed selector parses");
        assert_eq!(again, selector, "{text:?} -> {printed:?}");
    }
});
