//! The CMS (RFC 5652) subset KMS answers with in `CiphertextForRecipient`: a BER
//! `ContentInfo` holding an `EnvelopedData` with one `KeyTransRecipientInfo`
//! (RSAES-OAEP with SHA-256 and MGF1-SHA-256, the recipient named by the SHA-256 of its
//! SubjectPublicKeyInfo) and AES-256-CBC content.
//!
//! Hand-written because no maintained Rust CMS crate reads BER: KMS uses indefinite
//! lengths on the outer constructions and sends the encrypted content either as a
//! constructed or as a primitive `[0]` (both seen in AWS's own SDK tests). Anything else
//! (another algorithm, a second recipient, originator info, unprotected attributes,
//! trailing bytes) is refused: this parser reads what KMS sends and nothing more.
//!
//! On any failure nothing is returned: no partial or garbage plaintext.

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey};
use zeroize::Zeroizing;

/// The largest `CiphertextForRecipient` accepted (KMS plaintexts are at most 4 KiB).
pub const MAX_CMS_BYTES: usize = 64 * 1024;
/// Constructions nested deeper than this are refused (the KMS layout has six levels).
const MAX_DEPTH: usize = 12;

const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const NULL: u8 = 0x05;

/// Why a `CiphertextForRecipient` was refused. Nothing of a refused answer is used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CmsError {
    /// Larger than any KMS answer.
    #[error("{len} bytes, more than the {max} accepted")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An element is missing: the input ends early.
    #[error("{what} is missing (truncated)")]
    Missing {
        /// The element.
        what: &'static str,
    },
    /// An element's BER encoding is broken.
    #[error("{what}")]
    Encoding {
        /// The element.
        what: &'static str,
        /// What is wrong with its encoding.
        #[source]
        source: BerError,
    },
    /// An element has another tag than KMS's layout has there.
    #[error("{what}: found tag {found:#04x}, expected {expected:#04x}")]
    Tag {
        /// The element.
        what: &'static str,
        /// The tag found.
        found: u8,
        /// The tag expected.
        expected: u8,
    },
    /// Bytes follow where KMS's layout ends.
    #[error("{what} has {bytes} unexpected trailing bytes")]
    Trailing {
        /// The element.
        what: &'static str,
        /// How many bytes follow.
        bytes: usize,
    },
    /// An object identifier or version other than KMS's.
    #[error("expected {expected}")]
    Unexpected {
        /// What KMS sends there.
        expected: &'static str,
    },
    /// The AES-CBC IV is not 16 bytes.
    #[error("the AES-CBC IV is not 16 bytes")]
    IvLength,
    /// The ciphertext is not a whole number of AES blocks.
    #[error("encryptedContent is {len} bytes, not a whole number of AES blocks")]
    ContentLength {
        /// Its size.
        len: usize,
    },
    /// The answer names another recipient key than ours.
    #[error("the ciphertext is addressed to another recipient key (rid differs)")]
    WrongRecipient,
    /// RSA-OAEP refused the wrapped content key.
    #[error("the content key does not unwrap with the recipient key (wrong key or tampered)")]
    Unwrap,
    /// The unwrapped content key is not an AES-256 key.
    #[error("the content key is {len} bytes, not an AES-256 key")]
    ContentKeySize {
        /// Its size.
        len: usize,
    },
    /// AES-CBC padding is wrong: tampered content or the wrong key.
    #[error("the content does not decrypt (bad padding: tampered or wrong key)")]
    Padding,
    /// aws-lc refused an operation on valid input (key generation, encoding).
    #[error("{0} failed")]
    Crypto(&'static str),
}

/// What is wrong with one BER element's encoding.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BerError {
    /// The input ends inside the element.
    #[error("truncated")]
    Truncated,
    /// The length announces more bytes than there are.
    #[error("truncated: {announced} bytes announced, {present} present")]
    Short {
        /// The announced length.
        announced: usize,
        /// The bytes present.
        present: usize,
    },
    /// An indefinite length without its end-of-contents octets.
    #[error("truncated: end-of-contents missing")]
    NoEndOfContents,
    /// Constructions nested deeper than KMS's layout.
    #[error("nested too deeply")]
    TooDeep,
    /// A tag number of 31 or more.
    #[error("high tag numbers are not used by KMS")]
    HighTag,
    /// An indefinite length on a primitive element.
    #[error("indefinite length on a primitive element")]
    IndefinitePrimitive,
    /// A length of more than four octets, or a reserved form.
    #[error("unsupported length encoding")]
    LengthEncoding,
}

/// The parts of a KMS `CiphertextForRecipient`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopedData {
    /// `rid`: SHA-256 of the recipient's DER SubjectPublicKeyInfo.
    pub recipient_key_id: Vec<u8>,
    /// The AES key, RSA-OAEP-encrypted to the recipient.
    pub encrypted_key: Vec<u8>,
    /// The AES-256-CBC IV.
    pub iv: [u8; 16],
    /// The AES-256-CBC ciphertext (PKCS#7 padded).
    pub encrypted_content: Vec<u8>,
}

/// One BER element: its identifier octet and its contents (for an indefinite length,
/// the bytes between the header and the end-of-contents octets).
#[derive(Clone, Copy, Debug)]
struct Tlv<'a> {
    tag: u8,
    contents: &'a [u8],
}

// === impl EnvelopedData ===

impl EnvelopedData {
    /// Parses a `CiphertextForRecipient`.
    pub fn parse(ber: &[u8]) -> Result<Self, CmsError> {
        if ber.len() > MAX_CMS_BYTES {
            return Err(CmsError::TooLarge {
                len: ber.len(),
                max: MAX_CMS_BYTES,
            });
        }
        let content_info = only(ber, SEQUENCE, "ContentInfo")?;
        let mut items = Reader::new(content_info.contents);
        expect_oid(
            items.next(OID, "ContentInfo.contentType")?,
            OID_ENVELOPED_DATA,
            "contentType envelopedData",
        )?;
        let explicit = items.next(0xa0, "ContentInfo.content [0]")?;
        items.end("ContentInfo")?;

        let enveloped = only(explicit.contents, SEQUENCE, "EnvelopedData")?;
        let mut items = Reader::new(enveloped.contents);
        let version = items.next(INTEGER, "EnvelopedData.version")?;
        if version.contents != [2] {
            return Err(CmsError::Unexpected {
                expected: "EnvelopedData.version 2",
            });
        }
        // originatorInfo [0] is optional in CMS but never sent by KMS: next must be the SET.
        let recipient_infos = items.next(
            SET,
            "EnvelopedData.recipientInfos (originatorInfo is not accepted)",
        )?;
        let encrypted_content_info = items.next(SEQUENCE, "EnvelopedData.encryptedContentInfo")?;
        items.end("EnvelopedData (unprotectedAttrs are not accepted)")?;

        let ktri = only(
            recipient_infos.contents,
            SEQUENCE,
            "recipientInfos (exactly one KeyTransRecipientInfo)",
        )?;
        let mut items = Reader::new(ktri.contents);
        if items
            .next(INTEGER, "KeyTransRecipientInfo.version")?
            .contents
            != [2]
        {
            return Err(CmsError::Unexpected {
                expected: "KeyTransRecipientInfo.version 2 (rid a subjectKeyIdentifier)",
            });
        }
        let rid = items.next(0x80, "KeyTransRecipientInfo.rid [0] subjectKeyIdentifier")?;
        let algorithm = items.next(SEQUENCE, "KeyTransRecipientInfo.keyEncryptionAlgorithm")?;
        let encrypted_key = items.next(OCTET_STRING, "KeyTransRecipientInfo.encryptedKey")?;
        items.end("KeyTransRecipientInfo")?;
        check_oaep_sha256(algorithm.contents)?;

        let mut items = Reader::new(encrypted_content_info.contents);
        expect_oid(
            items.next(OID, "EncryptedContentInfo.contentType")?,
            OID_DATA,
            "contentType data",
        )?;
        let cipher = items.next(SEQUENCE, "EncryptedContentInfo.contentEncryptionAlgorithm")?;
        let content = items.next_any("EncryptedContentInfo.encryptedContent [0]")?;
        items.end("EncryptedContentInfo")?;
        let mut cipher_items = Reader::new(cipher.contents);
        expect_oid(
            cipher_items.next(OID, "contentEncryptionAlgorithm")?,
            OID_AES256_CBC,
            "aes256-CBC",
        )?;
        let iv = cipher_items.next(OCTET_STRING, "aes256-CBC IV")?;
        cipher_items.end("contentEncryptionAlgorithm")?;
        let iv: [u8; 16] = iv.contents.try_into().map_err(|_| CmsError::IvLength)?;

        let encrypted_content = match content.tag {
            // [0] IMPLICIT OCTET STRING, primitive.
            0x80 => content.contents.to_vec(),
            // [0] IMPLICIT OCTET STRING, constructed: the concatenation of its segments.
            0xa0 => {
                let mut out = Vec::new();
                let mut segments = Reader::new(content.contents);
                while !segments.is_empty() {
                    out.extend_from_slice(
                        segments
                            .next(OCTET_STRING, "encryptedContent segment")?
                            .contents,
                    );
                }
                out
            }
            found => {
                return Err(CmsError::Tag {
                    what: "EncryptedContentInfo.encryptedContent",
                    found,
                    expected: 0xa0,
                });
            }
        };
        if encrypted_content.is_empty() || !encrypted_content.len().is_multiple_of(16) {
            return Err(CmsError::ContentLength {
                len: encrypted_content.len(),
            });
        }
        Ok(Self {
            recipient_key_id: rid.contents.to_vec(),
            encrypted_key: encrypted_key.contents.to_vec(),
            iv,
            encrypted_content,
        })
    }

    /// Decrypts the content with the recipient's RSA key: unwrap the AES key with
    /// RSA-OAEP-SHA-256, then AES-256-CBC with PKCS#7 padding.
    pub fn decrypt(&self, key: &RecipientKey) -> Result<Zeroizing<Vec<u8>>, CmsError> {
        if key.key_id().as_slice() != self.recipient_key_id.as_slice() {
            return Err(CmsError::WrongRecipient);
        }
        let mut unwrapped = Zeroizing::new(vec![0u8; key.oaep.min_output_size()]);
        let content_key = key
            .oaep
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                &self.encrypted_key,
                &mut unwrapped,
                None,
            )
            .map_err(|_| CmsError::Unwrap)?;
        if content_key.len() != 32 {
            return Err(CmsError::ContentKeySize {
                len: content_key.len(),
            });
        }
        let cipher_key = UnboundCipherKey::new(&AES_256, content_key)
            .map_err(|_| CmsError::Crypto("loading the AES key"))?;
        let decrypting = PaddedBlockDecryptingKey::cbc_pkcs7(cipher_key)
            .map_err(|_| CmsError::Crypto("preparing AES-CBC"))?;
        let mut buffer = Zeroizing::new(self.encrypted_content.clone());
        let plaintext_len = decrypting
            .decrypt(
                &mut buffer,
                DecryptionContext::Iv128(FixedLength::from(self.iv)),
            )
            .map_err(|_| CmsError::Padding)?
            .len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }
}

/// The enclave's ephemeral RSA key that KMS encrypts to (the attestation document's
/// `public_key`). Lives only in memory; aws-lc frees it with cleansing.
pub struct RecipientKey {
    oaep: OaepPrivateDecryptingKey,
    spki: Vec<u8>,
}

// === impl RecipientKey ===

impl RecipientKey {
    /// A new RSA-2048 key, as KMS expects for `RSAES_OAEP_SHA_256`.
    pub fn generate() -> Result<Self, CmsError> {
        let key = PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| CmsError::Crypto("generating an RSA-2048 key"))?;
        Self::new(key)
    }

    /// A key from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, CmsError> {
        let key = PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|_| CmsError::Crypto("reading an RSA PKCS#8 private key"))?;
        Self::new(key)
    }

    fn new(key: PrivateDecryptingKey) -> Result<Self, CmsError> {
        let spki = key
            .public_key()
            .as_der()
            .map_err(|_| CmsError::Crypto("encoding the recipient's public key"))?
            .as_ref()
            .to_vec();
        let oaep = OaepPrivateDecryptingKey::new(key)
            .map_err(|_| CmsError::Crypto("preparing RSA-OAEP"))?;
        Ok(Self { oaep, spki })
    }

    /// The DER SubjectPublicKeyInfo, for the attestation document's `public_key`.
    pub fn subject_public_key_info(&self) -> &[u8] {
        &self.spki
    }

    /// SHA-256 of the SubjectPublicKeyInfo: how KMS names the recipient (`rid`).
    pub fn key_id(&self) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.spki)
            .as_ref()
            .to_vec()
    }
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKey")
            .field("private_key", &"[secret key elided]")
            .finish_non_exhaustive()
    }
}

fn check_oaep_sha256(algorithm: &[u8]) -> Result<(), CmsError> {
    let wrong = || CmsError::Unexpected {
        expected: "keyEncryptionAlgorithm RSAES-OAEP with SHA-256 and MGF1-SHA-256",
    };
    let mut items = Reader::new(algorithm);
    expect_oid(
        items.next(OID, "keyEncryptionAlgorithm")?,
        OID_RSAES_OAEP,
        "id-RSAES-OAEP",
    )?;
    let params = items.next(SEQUENCE, "RSAES-OAEP-params")?;
    items.end("keyEncryptionAlgorithm")?;
    let mut params = Reader::new(params.contents);
    // hashFunc [0] AlgorithmIdentifier sha256
    let hash = only(
        params.next(0xa0, "RSAES-OAEP-params.hashFunc")?.contents,
        SEQUENCE,
        "hashFunc",
    )?;
    check_sha256_identifier(hash.contents).map_err(|_| wrong())?;
    // maskGenFunc [1] AlgorithmIdentifier { id-mgf1, sha256 }
    let mgf = only(
        params.next(0xa1, "RSAES-OAEP-params.maskGenFunc")?.contents,
        SEQUENCE,
        "maskGenFunc",
    )?;
    let mut mgf = Reader::new(mgf.contents);
    expect_oid(mgf.next(OID, "maskGenFunc")?, OID_MGF1, "id-mgf1").map_err(|_| wrong())?;
    check_sha256_identifier(mgf.next(SEQUENCE, "maskGenFunc hash")?.contents)
        .map_err(|_| wrong())?;
    mgf.end("maskGenFunc")?;
    // pSourceFunc [2] absent: the default, an empty label.
    params.end("RSAES-OAEP-params (a label is not accepted)")
}

fn check_sha256_identifier(contents: &[u8]) -> Result<(), CmsError> {
    let mut items = Reader::new(contents);
    expect_oid(items.next(OID, "hash algorithm")?, OID_SHA256, "sha256")?;
    if !items.is_empty() {
        let null = items.next(NULL, "hash parameters")?;
        if !null.contents.is_empty() {
            return Err(CmsError::Unexpected {
                expected: "NULL hash parameters",
            });
        }
    }
    items.end("hash AlgorithmIdentifier")
}

fn expect_oid(tlv: Tlv<'_>, oid: &[u8], name: &'static str) -> Result<(), CmsError> {
    if tlv.contents == oid {
        Ok(())
    } else {
        Err(CmsError::Unexpected { expected: name })
    }
}

/// The single element of `input`, with tag `tag`, and nothing after it.
fn only<'a>(input: &'a [u8], tag: u8, what: &'static str) -> Result<Tlv<'a>, CmsError> {
    let mut reader = Reader::new(input);
    let tlv = reader.next(tag, what)?;
    reader.end(what)?;
    Ok(tlv)
}

// === Reader: BER elements one after another ===

struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    /// The next element, which must have tag `tag`.
    fn next(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>, CmsError> {
        let tlv = self.next_any(what)?;
        if tlv.tag != tag {
            return Err(CmsError::Tag {
                what,
                found: tlv.tag,
                expected: tag,
            });
        }
        Ok(tlv)
    }

    fn next_any(&mut self, what: &'static str) -> Result<Tlv<'a>, CmsError> {
        if self.input.is_empty() {
            return Err(CmsError::Missing { what });
        }
        let (tlv, rest) =
            read_tlv(self.input, 0).map_err(|source| CmsError::Encoding { what, source })?;
        self.input = rest;
        Ok(tlv)
    }

    /// Nothing may follow.
    fn end(&self, what: &'static str) -> Result<(), CmsError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(CmsError::Trailing {
                what,
                bytes: self.input.len(),
            })
        }
    }
}

/// One element from the front of `input`; returns it and what follows.
fn read_tlv(input: &[u8], depth: usize) -> Result<(Tlv<'_>, &[u8]), BerError> {
    if depth > MAX_DEPTH {
        return Err(BerError::TooDeep);
    }
    let (&tag, rest) = input.split_first().ok_or(BerError::Truncated)?;
    if tag & 0x1f == 0x1f {
        return Err(BerError::HighTag);
    }
    let constructed = tag & 0x20 != 0;
    let (&first, rest) = rest.split_first().ok_or(BerError::Truncated)?;
    match first {
        0x80 => {
            // Indefinite length: children until the end-of-contents octets.
            if !constructed {
                return Err(BerError::IndefinitePrimitive);
            }
            let mut cursor = rest;
            loop {
                if cursor.starts_with(&[0, 0]) {
                    let len = rest.len() - cursor.len();
                    return Ok((
                        Tlv {
                            tag,
                            contents: &rest[..len],
                        },
                        &cursor[2..],
                    ));
                }
                if cursor.is_empty() {
                    return Err(BerError::NoEndOfContents);
                }
                let (_, after) = read_tlv(cursor, depth + 1)?;
                cursor = after;
            }
        }
        0x00..=0x7f => split(tag, rest, usize::from(first)),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            if rest.len() < n {
                return Err(BerError::Truncated);
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            split(tag, &rest[n..], len)
        }
        _ => Err(BerError::LengthEncoding),
    }
}

fn split(tag: u8, rest: &[u8], len: usize) -> Result<(Tlv<'_>, &[u8]), BerError> {
    if rest.len() < len {
        return Err(BerError::Short {
            announced: len,
            present: rest.len(),
        });
    }
    let (contents, after) = rest.split_at(len);
    Ok((Tlv { tag, contents }, after))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/kms")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The fixture's PKCS#1 key, as the PKCS#8 the agent holds.
    fn recipient_key() -> RecipientKey {
        let pem = pem::parse(fixture("recipient-key.pem")).unwrap();
        assert_eq!(pem.tag(), "RSA PRIVATE KEY");
        let pair = aws_lc_rs::rsa::KeyPair::from_der(pem.contents()).unwrap();
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&pair).unwrap();
        RecipientKey::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    #[test]
    fn the_real_kms_vector_decrypts_to_its_plaintext() {
        let ber = fixture("ciphertext-for-recipient.ber");
        let plaintext = EnvelopedData::parse(&ber)
            .unwrap()
            .decrypt(&recipient_key())
            .unwrap();
        assert_eq!(plaintext.as_slice(), fixture("plaintext.bin").as_slice());
    }

    #[test]
    fn the_aws_sdk_vectors_parse_to_their_expected_parts() {
        for name in ["aws-sdk-c-cms", "aws-sdk-c-cms-ctx-primitive"] {
            let parsed = EnvelopedData::parse(&fixture(&format!("parse-only/{name}.ber"))).unwrap();
            let expected = |part: &str| fixture(&format!("parse-only/{name}.expected-{part}.bin"));
            assert_eq!(parsed.encrypted_key, expected("encrypted-key"), "{name}");
            assert_eq!(parsed.iv.as_slice(), expected("iv").as_slice(), "{name}");
            assert_eq!(
                parsed.encrypted_content,
                expected("encrypted-content"),
                "{name}"
            );
        }
    }

    #[test]
    fn every_truncation_and_a_trailing_byte_are_refused() {
        let ber = fixture("ciphertext-for-recipient.ber");
        for len in 0..ber.len() {
            assert!(
                EnvelopedData::parse(&ber[..len]).is_err(),
                "truncated to {len} was accepted"
            );
        }
        let mut trailing = ber.clone();
        trailing.push(0);
        let error = EnvelopedData::parse(&trailing).unwrap_err().to_string();
        assert!(error.contains("trailing"), "{error}");
    }

    #[test]
    fn a_wrong_key_gives_nothing() {
        let ber = fixture("ciphertext-for-recipient.ber");
        let other = RecipientKey::generate().unwrap();
        let parsed = EnvelopedData::parse(&ber).unwrap();
        let error = parsed.decrypt(&other).unwrap_err().to_string();
        assert!(error.contains("another recipient key"), "{error}");
        // Even when the rid is made to match, OAEP refuses the wrong key.
        let forged = EnvelopedData {
            recipient_key_id: other.key_id(),
            ..parsed
        };
        let error = forged.decrypt(&other).unwrap_err().to_string();
        assert!(error.contains("does not unwrap"), "{error}");
    }

    #[test]
    fn a_flipped_ciphertext_or_padding_byte_gives_nothing() {
        let ber = fixture("ciphertext-for-recipient.ber");
        let parsed = EnvelopedData::parse(&ber).unwrap();
        let key = recipient_key();
        // The last block carries the padding: flipping a byte of the block before it
        // flips the same byte of the padding after decryption.
        let n = parsed.encrypted_content.len();
        for i in [n - 17, n - 1] {
            let mut tampered = parsed.clone();
            tampered.encrypted_content[i] ^= 0x01;
            assert!(
                tampered.decrypt(&key).is_err(),
                "flipped byte {i} was accepted"
            );
        }
        let mut tampered_key = parsed.clone();
        tampered_key.encrypted_key[100] ^= 0x01;
        assert!(tampered_key.decrypt(&key).is_err());
    }

    #[test]
    fn an_extra_element_is_refused() {
        let ber = fixture("ciphertext-for-recipient.ber");
        // Insert a NULL right after EnvelopedData's version (INTEGER 2), where KMS puts
        // nothing: `02 01 02` is followed by the recipientInfos SET.
        let at = ber
            .windows(4)
            .position(|w| w == [0x02, 0x01, 0x02, 0x31])
            .unwrap()
            + 3;
        let mut extra = ber.clone();
        extra.splice(at..at, [0x05, 0x00]);
        let error = EnvelopedData::parse(&extra).unwrap_err().to_string();
        assert!(error.contains("recipientInfos"), "{error}");
        // And garbage is refused with a message, not a panic.
        assert!(EnvelopedData::parse(b"\x30\x80\x30\x80\x30\x80").is_err());
        assert!(EnvelopedData::parse(&[0x30; 64]).is_err());
    }
}
