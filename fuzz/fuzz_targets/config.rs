//! The agent's TOML configuration. Any text: parsing returns a checked configuration or
//! an error naming the key (never panics, never overflows a duration).

#![no_main]

use enclaveid_agent::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The fake attestor's root files are read while parsing: keep the fuzzer off the
    // file system.
    if text.contains("root_cert_path") || text.contains("root_key_path") {
        return;
    }
    if let Err(error) = Config::from_toml(text, "fuzz.toml") {
        let _ = error.to_string();
    }
});
