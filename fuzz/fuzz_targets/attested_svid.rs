//! Attested SVIDs arrive from peers in the TLS handshake. Any input, as a whole
//! certificate and as the attestation extension's value inside a well-formed one: the
//! verifier returns (never panics), and the extension can be added to any certificate.

#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use enclaveid_attestor::svid::{self, SvidPolicy};
use enclaveid_attestor::{FakeAttestor, FakeConfig, Policy, Verifier};
use libfuzzer_sys::fuzz_target;

/// A certificate to carry the extension (the fake attestor's root: valid now, with
/// extensions) and a verifier pinned to that root.
fn template() -> &'static (Vec<u8>, Verifier) {
    static TEMPLATE: OnceLock<(Vec<u8>, Verifier)> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let attestor = FakeAttestor::new(FakeConfig::default()).expect("a fake root");
        (
            attestor.root_der().to_vec(),
            Verifier::with_root_der(attestor.root_der()),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (template, verifier) = template();
    let policy = SvidPolicy::required(Policy::default());
    let now = SystemTime::now();
    let _ = verifier.verify_attested_svid(data, &policy, now);
    let cert = svid::add_raw_extension(template, data, false)
        .expect("any value fits in the template's extensions")
        .finish(&[0x30, 0x00]);
    let _ = verifier.verify_attested_svid(&cert, &policy, now);
    let _ = svid::add_extension(data, b"document");
});
