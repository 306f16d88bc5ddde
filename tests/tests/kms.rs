//! The fake KMS against the real thing: its `CiphertextForRecipient` has the layout of a
//! real KMS answer byte for byte (apart from the random bytes), decrypts with the
//! agent's reader, and with OpenSSL, an independent CMS implementation.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::PathBuf;
use std::process::Command;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use enclaveid_checks::cms::{EnvelopedData, RecipientKey};
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

mod fake_kms_server {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use enclaveid_attestor::{AttestationRequest, Attestor as _, FakeAttestor, FakeConfig};
    use enclaveid_tests::fake_kms::server::{FakeKms, KeyPolicy};
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// One AWS JSON 1.1 call over plain HTTP/1.1: (status, body).
    async fn call(
        addr: std::net::SocketAddr,
        target: &str,
        body: &Value,
        signed: bool,
    ) -> (u16, Value) {
        let body = body.to_string();
        let auth = if signed {
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261127/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature=00\r\n"
        } else {
            ""
        };
        let request = format!(
            "POST / HTTP/1.1\r\nHost: kms.us-east-1.amazonaws.com\r\nX-Amz-Target: {target}\r\nContent-Type: application/x-amz-json-1.1\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8(response).unwrap();
        let status = text[9..12].parse().unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        (status, serde_json::from_str(body).unwrap())
    }

    struct Setup {
        addr: std::net::SocketAddr,
        attestor: FakeAttestor,
        recipient: RecipientKey,
        blob: String,
        key: String,
    }

    const PCR0: u8 = 0xa1;

    async fn setup(policy: KeyPolicy, attestor: FakeConfig) -> Setup {
        let attestor = FakeAttestor::new(attestor).unwrap();
        let kms = FakeKms::new(attestor.root_der());
        let key = kms.create_key(policy);
        let addr = kms.spawn().await;
        let plaintext = BASE64.encode(b"the CA's private key, PEM");
        let (status, encrypted) = call(
            addr,
            "TrentService.Encrypt",
            &json!({"KeyId": key, "Plaintext": plaintext}),
            true,
        )
        .await;
        assert_eq!(status, 200, "{encrypted}");
        let (pkcs8, _) = recipient();
        Setup {
            addr,
            attestor,
            recipient: RecipientKey::from_pkcs8(&pkcs8).unwrap(),
            blob: encrypted["CiphertextBlob"].as_str().unwrap().to_owned(),
            key,
        }
    }

    fn image_policy() -> KeyPolicy {
        KeyPolicy {
            image_sha384: vec![vec![PCR0; 48]],
            ..KeyPolicy::default()
        }
    }

    fn enclave(pcr0: u8) -> FakeConfig {
        FakeConfig {
            pcrs: [(0, vec![pcr0; 48])].into(),
            ..FakeConfig::default()
        }
    }

    fn decrypt_request(setup: &Setup, document: &[u8]) -> Value {
        json!({
            "CiphertextBlob": setup.blob,
            "KeyId": setup.key,
            "Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": BASE64.encode(document)},
        })
    }

    fn document_for(setup: &Setup) -> Vec<u8> {
        let request = AttestationRequest {
            public_key: Some(setup.recipient.subject_public_key_info().to_vec()),
            ..AttestationRequest::default()
        };
        setup.attestor.attest(&request).unwrap()
    }

    #[tokio::test]
    async fn kms_releases_the_key_only_to_an_attested_enclave_in_cms() {
        let setup = setup(image_policy(), enclave(PCR0)).await;
        let document = document_for(&setup);
        let (status, answer) = call(
            setup.addr,
            "TrentService.Decrypt",
            &decrypt_request(&setup, &document),
            true,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert!(
            answer.get("Plaintext").is_none(),
            "with a Recipient, KMS returns no plaintext"
        );
        assert_eq!(answer["KeyId"], setup.key.as_str());
        let cms = BASE64
            .decode(answer["CiphertextForRecipient"].as_str().unwrap())
            .unwrap();
        let plaintext = EnvelopedData::parse(&cms)
            .unwrap()
            .decrypt(&setup.recipient)
            .unwrap();
        assert_eq!(plaintext.as_slice(), b"the CA's private key, PEM");

        // Without a Recipient, a key whose policy requires attestation refuses.
        let (status, error) = call(
            setup.addr,
            "TrentService.Decrypt",
            &json!({"CiphertextBlob": setup.blob}),
            true,
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(error["__type"], "AccessDeniedException");
    }

    #[tokio::test]
    async fn kms_refuses_pcrs_its_policy_does_not_allow_and_says_which() {
        let setup = setup(image_policy(), enclave(0xb2)).await;
        let document = document_for(&setup);
        let (status, error) = call(
            setup.addr,
            "TrentService.Decrypt",
            &decrypt_request(&setup, &document),
            true,
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(error["__type"], "AccessDeniedException");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("got {}", "b2".repeat(48))),
            "{message}"
        );
    }

    #[tokio::test]
    async fn kms_refuses_debug_mode_foreign_roots_tampering_and_unsigned_calls() {
        // Debug mode: PCRs are zero and match no condition.
        let debug = setup(
            image_policy(),
            FakeConfig {
                debug: true,
                ..FakeConfig::default()
            },
        )
        .await;
        let (_, error) = call(
            debug.addr,
            "TrentService.Decrypt",
            &decrypt_request(&debug, &document_for(&debug)),
            true,
        )
        .await;
        assert_eq!(error["__type"], "AccessDeniedException");

        // A document from another root.
        let setup = setup(image_policy(), enclave(PCR0)).await;
        let foreign = FakeAttestor::new(enclave(PCR0)).unwrap();
        let request = AttestationRequest {
            public_key: Some(setup.recipient.subject_public_key_info().to_vec()),
            ..AttestationRequest::default()
        };
        let (_, error) = call(
            setup.addr,
            "TrentService.Decrypt",
            &decrypt_request(&setup, &foreign.attest(&request).unwrap()),
            true,
        )
        .await;
        assert_eq!(error["__type"], "ValidationException");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("untrusted root")
        );

        // A tampered ciphertext blob.
        let mut blob = BASE64.decode(&setup.blob).unwrap();
        *blob.last_mut().unwrap() ^= 1;
        let mut request = decrypt_request(&setup, &document_for(&setup));
        request["CiphertextBlob"] = json!(BASE64.encode(blob));
        let (_, error) = call(setup.addr, "TrentService.Decrypt", &request, true).await;
        assert_eq!(error["__type"], "InvalidCiphertextException");

        // No signature at all.
        let (status, error) = call(
            setup.addr,
            "TrentService.Decrypt",
            &decrypt_request(&setup, &document_for(&setup)),
            false,
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(error["__type"], "MissingAuthenticationTokenException");
    }
}
