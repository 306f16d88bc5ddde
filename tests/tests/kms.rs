//! The fake KMS against the real thing: its `CiphertextForRecipient` has the layout of a
//! real KMS answer byte for byte (apart from the random bytes), decrypts with the
//! agent's reader, and with OpenSSL, an independent CMS implementation.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::PathBuf;
use std::process::Command;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use enclaveid_agent::kms::cms::{EnvelopedData, RecipientKey};
use enclaveid_tests::fake_kms::cms::envelope;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/kms")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh RSA-2048 recipient: its PKCS#8 DER and SubjectPublicKeyInfo DER.
fn recipient() -> (Vec<u8>, Vec<u8>) {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = AsDer::<Pkcs8V1Der<'_>>::as_der(&key)
        .unwrap()
        .as_ref()
        .to_vec();
    let spki = key.public_key().as_der().unwrap().as_ref().to_vec();
    (pkcs8, spki)
}

/// The BER layout: every element's tag and length form, and the length of every
/// primitive, depth first. Contents of primitives are left out.
fn skeleton(mut ber: &[u8], out: &mut Vec<String>) {
    while !ber.is_empty() {
        if ber.starts_with(&[0, 0]) {
            out.push("EOC".into());
            ber = &ber[2..];
            continue;
        }
        let tag = ber[0];
        let (len, header) = match ber[1] {
            0x80 => (None, 2),
            n if n < 0x80 => (Some(usize::from(n)), 2),
            n => {
                let k = usize::from(n & 0x7f);
                (
                    Some(
                        ber[2..2 + k]
                            .iter()
                            .fold(0, |a, b| (a << 8) | usize::from(*b)),
                    ),
                    2 + k,
                )
            }
        };
        let constructed = tag & 0x20 != 0;
        match (len, constructed) {
            (None, _) => {
                out.push(format!("{tag:02x} indefinite"));
                // The rest of the input holds this element's children, its EOC and what follows.
                ber = &ber[header..];
            }
            (Some(len), true) => {
                out.push(format!("{tag:02x} {len}"));
                skeleton(&ber[header..header + len], out);
                ber = &ber[header + len..];
            }
            (Some(len), false) => {
                // OIDs and small integers are part of the layout; other contents are random.
                let shown = if tag == 0x06 || tag == 0x02 {
                    format!("{:02x?}", &ber[header..header + len])
                } else {
                    String::new()
                };
                out.push(format!("{tag:02x} {len} {shown}"));
                ber = &ber[header + len..];
            }
        }
    }
}

#[test]
fn the_fake_kms_answer_has_the_real_layout() {
    let real = fixture("ciphertext-for-recipient.ber");
    let plaintext = fixture("plaintext.bin");
    let (_, spki) = recipient();
    let fake = envelope(&plaintext, &spki).unwrap();
    let (mut real_layout, mut fake_layout) = (Vec::new(), Vec::new());
    skeleton(&real, &mut real_layout);
    skeleton(&fake, &mut fake_layout);
    assert_eq!(fake_layout, real_layout);
    assert_eq!(fake.len(), real.len());
}

#[test]
fn the_fake_kms_answer_decrypts_with_the_agent_and_with_openssl() {
    let (pkcs8, spki) = recipient();
    let plaintext = b"-----BEGIN PRIVATE KEY-----\nnot really a key, but of a key's length\n-----END PRIVATE KEY-----\n";
    let fake = envelope(plaintext, &spki).unwrap();

    let key = RecipientKey::from_pkcs8(&pkcs8).unwrap();
    let decrypted = EnvelopedData::parse(&fake).unwrap().decrypt(&key).unwrap();
    assert_eq!(decrypted.as_slice(), plaintext);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("answer.ber"), &fake).unwrap();
    std::fs::write(
        dir.path().join("key.pem"),
        pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8)),
    )
    .unwrap();
    let openssl = Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            "answer.ber",
            "-inkey",
            "key.pem",
        ])
        .output()
        .unwrap();
    assert!(
        openssl.status.success(),
        "{}",
        String::from_utf8_lossy(&openssl.stderr)
    );
    assert_eq!(openssl.stdout, plaintext);
}

#[test]
fn the_fake_kms_refuses_a_recipient_that_is_not_an_rsa_key() {
    // The debug fixture document binds the 19 bytes `my super secret key` as public_key.
    assert!(envelope(b"x", b"my super secret key").is_err());
}
