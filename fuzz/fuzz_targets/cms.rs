//! KMS's CiphertextForRecipient (CMS EnvelopedData, BER) arrives through the untrusted
//! parent. Any input: parsing returns (never panics), and what parses opens with the
//! recipient key or is refused with an error. The key is the real vector's
//! (`shared/fixtures/kms`), so mutations of the real ciphertext reach the content
//! decryption, not only the key unwrap; without the fixtures, a fresh key.

#![no_main]

use std::sync::LazyLock;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use enclaveid_checks::cms::{EnvelopedData, RecipientKey};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<RecipientKey> = LazyLock::new(|| {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/kms/recipient-key.pem"
    );
    let fixture = std::fs::read(path).ok().and_then(|pem| {
        let block = enclaveid_checks::secret_pem::decode(&pem)?;
        let pair = aws_lc_rs::rsa::KeyPair::from_der(&block.der).ok()?;
        let pkcs8 = AsDer::<Pkcs8V1Der<'_>>::as_der(&pair).ok()?;
        RecipientKey::from_pkcs8(pkcs8.as_ref()).ok()
    });
    fixture.unwrap_or_else(|| RecipientKey::generate().expect("an RSA recipient key"))
});

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = EnvelopedData::parse(data) {
        let _ = envelope.decrypt(&KEY);
    }
});
