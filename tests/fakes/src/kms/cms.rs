//! `CiphertextForRecipient` as KMS writes it: a BER `ContentInfo`/`EnvelopedData` with
//! one `KeyTransRecipientInfo` (RSAES-OAEP, SHA-256, MGF1-SHA-256, recipient named by
//! the SHA-256 of its SubjectPublicKeyInfo) and AES-256-CBC content, with KMS's exact
//! layout: indefinite lengths on the five outer constructions, definite lengths from
//! `recipientInfos` down, and the encrypted content as a constructed `[0]` holding one
//! OCTET STRING (see `shared/fixtures/kms/README.md`).

use aws_lc_rs::cipher::{AES_256, EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
// A definite-length element.
use enclaveid_attestor::der::encode as der;

/// Why the fake could not encrypt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The recipient's public key is not an RSA SubjectPublicKeyInfo KMS would accept.
    #[error(
        "the attestation document's public_key is not an RSA public key (DER SubjectPublicKeyInfo)"
    )]
    RecipientKey,
    /// A cryptographic operation failed.
    #[error("encryption failed")]
    Crypto,
}

const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

/// Encrypts `plaintext` to the RSA key `recipient_spki` (DER SubjectPublicKeyInfo, the
/// attestation document's `public_key`) as KMS does for a `Recipient`.
pub fn envelope(plaintext: &[u8], recipient_spki: &[u8]) -> Result<Vec<u8>, Error> {
    let public = PublicEncryptingKey::from_der(recipient_spki).map_err(|_| Error::RecipientKey)?;
    let oaep = OaepPublicEncryptingKey::new(public).map_err(|_| Error::RecipientKey)?;

    let content_key: [u8; 32] = rand_bytes()?;
    let iv: [u8; 16] = rand_bytes()?;
    let key = UnboundCipherKey::new(&AES_256, &content_key).map_err(|_| Error::Crypto)?;
    let encrypting = PaddedBlockEncryptingKey::cbc_pkcs7(key).map_err(|_| Error::Crypto)?;
    let mut content = plaintext.to_vec();
    encrypting
        .less_safe_encrypt(
            &mut content,
            EncryptionContext::Iv128(FixedLength::from(iv)),
        )
        .map_err(|_| Error::Crypto)?;
    let mut encrypted_key = vec![0; oaep.ciphertext_size()];
    let encrypted_key = oaep
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            &content_key,
            &mut encrypted_key,
            None,
        )
        .map_err(|_| Error::Crypto)?
        .to_vec();
    let key_id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, recipient_spki);

    let sha256 = der(0x30, &[der(0x06, OID_SHA256), der(0x05, &[])].concat());
    let oaep_params = der(
        0x30,
        &[
            der(0xa0, &sha256),
            der(
                0xa1,
                &der(0x30, &[der(0x06, OID_MGF1), sha256.clone()].concat()),
            ),
        ]
        .concat(),
    );
    let ktri = der(
        0x30,
        &[
            der(0x02, &[2]),
            der(0x80, key_id.as_ref()),
            der(0x30, &[der(0x06, OID_RSAES_OAEP), oaep_params].concat()),
            der(0x04, &encrypted_key),
        ]
        .concat(),
    );
    let encrypted_content_info = indefinite(
        0x30,
        &[
            der(0x06, OID_DATA),
            der(0x30, &[der(0x06, OID_AES256_CBC), der(0x04, &iv)].concat()),
            indefinite(0xa0, &der(0x04, &content)),
        ]
        .concat(),
    );
    let enveloped_data = indefinite(
        0x30,
        &[der(0x02, &[2]), der(0x31, &ktri), encrypted_content_info].concat(),
    );
    Ok(indefinite(
        0x30,
        &[
            der(0x06, OID_ENVELOPED_DATA),
            indefinite(0xa0, &enveloped_data),
        ]
        .concat(),
    ))
}

fn rand_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| Error::Crypto)?;
    Ok(out)
}

/// An indefinite-length constructed element, closed by end-of-contents.
fn indefinite(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag, 0x80];
    out.extend_from_slice(contents);
    out.extend_from_slice(&[0, 0]);
    out
}
