//! JWT-SVIDs to validate come from any workload (`ValidateJWTSVID`), the JWKS from the
//! trust bundle. Any token against any JWKS: validation returns (never panics), and a
//! token that validates names a SPIFFE ID in a trust domain of the bundles and carries
//! the audience.

#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use enclaveid_workload_api::jwt;
use libfuzzer_sys::fuzz_target;
use prost::bytes::Bytes;

fuzz_target!(|data: &[u8]| {
    // JWKS, then 0xff, then the token (a JWKS document is UTF-8, so it holds no 0xff).
    let (jwks, token) = match data.iter().position(|b| *b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"{\"keys\":[]}"[..], data),
    };
    let Ok(token) = std::str::from_utf8(token) else {
        return;
    };
    let bundles = BTreeMap::from([(
        "spiffe://example.org".to_owned(),
        Bytes::copy_from_slice(jwks),
    )]);
    // Within the seed token's lifetime (fuzz/seeds/jwt, issued at 1790000003 for 5 min).
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_100);
    if let Ok(validated) = jwt::validate(token, "fuzz", &bundles, now) {
        assert_eq!(
            validated.spiffe_id.trust_domain().to_string(),
            "example.org"
        );
    }
});
