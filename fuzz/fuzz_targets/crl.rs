//! CRLs come from S3 through the untrusted parent. Any input: reading it for the
//! revocation lists and for the replay check returns (never panics), and a CRL just
//! recorded is not refused as older than itself.

#![no_main]

use enclaveid_checks::crl::CrlMemory;
use enclaveid_checks::revocation::RevocationLists;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lists = RevocationLists::default();
    let _ = lists.add(data, "fuzz");
    let mut memory = CrlMemory::default();
    if memory.check(data).is_ok() {
        memory.record(data);
        assert!(memory.check(data).is_ok(), "a CRL is not older than itself");
    }
});
