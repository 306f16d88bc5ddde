//! The key-material JSON (ACM for Nitro Enclaves' format) comes from S3 through the
//! untrusted parent. Any input: parsing and extracting the certificates and the
//! ciphertext return (never panic), and what parses re-encodes to the same material.

#![no_main]

use enclaveid_checks::material::KeyMaterial;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(material) = KeyMaterial::from_json(data) else {
        return;
    };
    let certificates = material.certificates();
    let blob = material.ciphertext_blob();
    let again = KeyMaterial::from_json(&material.to_json()).expect("re-encoded material parses");
    assert_eq!(again.certificates().ok(), certificates.ok());
    assert_eq!(again.ciphertext_blob().ok(), blob.ok());
});
