//! Attestation documents are the first untrusted bytes the agent reads. Any input: the
//! verifier returns (never panics), and a payload that parses re-encodes to one that
//! parses to the same value.

#![no_main]

use enclaveid_attestor::{Payload, Policy, Verifier, VerifyAt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Verifier::aws().verify(data, &Policy::default(), VerifyAt::DocumentTime);
    if let Ok(payload) = Payload::parse(data) {
        let again = Payload::parse(&payload.encode()).expect("an encoded payload parses");
        assert_eq!(again, payload, "payload round trip");
    }
});
