//! The key-material object: the JSON that ACM for Nitro Enclaves writes to S3, read and
//! written by one type, so that a certificate associated through ACM and one provisioned
//! by `enclaveid provision` are read the same way.
//!
//! Fields, as the ACM for Nitro Enclaves application deserializes them (`KeyMaterialDb`
//! in aws/aws-nitro-enclaves-acm, `src/vtok_agent/src/agent/mngtok.rs`; see
//! `docs/research/acm-key-material.md`):
//!
//! | field | content |
//! | --- | --- |
//! | `certificate` | the leaf (or CA) certificate, PEM |
//! | `certificateChain` | the certificates above it, PEM, issuer first, root optional |
//! | `encryptedPrivateKey` | base64 of the KMS `CiphertextBlob` of the PEM private key |
//! | `encryptionMethod` | `SYMMETRIC_DEFAULT` |
//!
//! All four are required; other fields are ignored, as ACM's reader does. The object
//! comes from the untrusted parent instance: it is size-capped, and nothing in it is
//! trusted until the certificate chains to the configured root and KMS has released the
//! key to this enclave.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::certs::{self, CertificateError};

/// The largest key-material object accepted.
pub const MAX_KEY_MATERIAL_BYTES: usize = 64 * 1024;

/// The only `encryptionMethod` ACM writes.
pub const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

/// Why a key-material object was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaterialError {
    /// Larger than any key-material object.
    #[error("key material of {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not the JSON object ACM writes (a field missing, or of another type).
    #[error("key material is not the JSON object ACM writes")]
    Json(#[source] serde_json::Error),
    /// An `encryptionMethod` other than ACM's.
    #[error("key material: encryptionMethod = {found:?}; accepted: {SYMMETRIC_DEFAULT:?}")]
    EncryptionMethod {
        /// What the object says.
        found: String,
    },
    /// `encryptedPrivateKey` is not base64.
    #[error("key material: encryptedPrivateKey is not base64")]
    NotBase64(#[source] base64::DecodeError),
    /// A certificate field does not hold certificates.
    #[error("key material")]
    Certificates(#[source] CertificateError),
    /// `certificate` holds more than one certificate.
    #[error("key material: `certificate` holds {count} certificates, expected 1")]
    CertificateCount {
        /// How many it holds.
        count: usize,
    },
}

/// A key-material object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMaterial {
    /// The certificate, PEM.
    pub certificate: String,
    /// The chain above it, PEM.
    #[serde(rename = "certificateChain")]
    pub certificate_chain: String,
    /// Base64 of the KMS `CiphertextBlob` of the PEM private key.
    #[serde(rename = "encryptedPrivateKey")]
    pub encrypted_private_key: String,
    /// How the key was encrypted.
    #[serde(rename = "encryptionMethod")]
    pub encryption_method: String,
}

// === impl KeyMaterial ===

impl KeyMaterial {
    /// A key-material object for `certificate` and `chain` (PEM) and a KMS ciphertext.
    pub fn new(certificate: String, certificate_chain: String, ciphertext_blob: &[u8]) -> Self {
        Self {
            certificate,
            certificate_chain,
            encrypted_private_key: BASE64.encode(ciphertext_blob),
            encryption_method: SYMMETRIC_DEFAULT.to_owned(),
        }
    }

    /// Parses the JSON object, refusing oversized input and missing fields by name.
    pub fn from_json(json: &[u8]) -> Result<Self, MaterialError> {
        if json.len() > MAX_KEY_MATERIAL_BYTES {
            return Err(MaterialError::TooLarge {
                len: json.len(),
                max: MAX_KEY_MATERIAL_BYTES,
            });
        }
        let material: Self = serde_json::from_slice(json).map_err(MaterialError::Json)?;
        if material.encryption_method != SYMMETRIC_DEFAULT {
            return Err(MaterialError::EncryptionMethod {
                found: material.encryption_method,
            });
        }
        Ok(material)
    }

    /// The JSON object, as ACM writes it.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing four strings cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The KMS `CiphertextBlob` to send to `Decrypt`.
    pub fn ciphertext_blob(&self) -> Result<Vec<u8>, MaterialError> {
        BASE64
            .decode(self.encrypted_private_key.trim())
            .map_err(MaterialError::NotBase64)
    }

    /// The certificate, then its chain, as DER.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
        let mut certs = certs::parse_pem(self.certificate.as_bytes(), "`certificate`")
            .map_err(MaterialError::Certificates)?;
        if certs.len() != 1 {
            return Err(MaterialError::CertificateCount { count: certs.len() });
        }
        if !self.certificate_chain.trim().is_empty() {
            certs.extend(
                certs::parse_pem(self.certificate_chain.as_bytes(), "`certificateChain`")
                    .map_err(MaterialError::Certificates)?,
            );
        }
        Ok(certs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }

    #[test]
    fn key_material_round_trips_in_acm_field_names() {
        let material = KeyMaterial::new(
            cert_pem("leaf.test"),
            cert_pem("ca.test"),
            b"\x01\x02ciphertext",
        );
        let json = material.to_json();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        for field in [
            "certificate",
            "certificateChain",
            "encryptedPrivateKey",
            "encryptionMethod",
        ] {
            assert!(value.get(field).is_some(), "{field} missing from {value}");
        }
        assert_eq!(value["encryptionMethod"], "SYMMETRIC_DEFAULT");
        let parsed = KeyMaterial::from_json(&json).unwrap();
        assert_eq!(parsed, material);
        assert_eq!(parsed.ciphertext_blob().unwrap(), b"\x01\x02ciphertext");
        assert_eq!(parsed.certificates().unwrap().len(), 2);
    }

    #[test]
    fn acm_objects_with_extra_fields_are_read() {
        let json = serde_json::json!({
            "certificate": cert_pem("leaf.test"),
            "certificateChain": "",
            "encryptedPrivateKey": "AQID",
            "encryptionMethod": "SYMMETRIC_DEFAULT",
            "somethingNew": 1,
        });
        let material = KeyMaterial::from_json(json.to_string().as_bytes()).unwrap();
        assert_eq!(material.certificates().unwrap().len(), 1);
    }

    #[test]
    fn bad_key_material_is_refused_by_name() {
        let good = KeyMaterial::new(cert_pem("leaf.test"), String::new(), b"x");
        let mut value: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
        value.as_object_mut().unwrap().remove("encryptedPrivateKey");
        let error = KeyMaterial::from_json(value.to_string().as_bytes()).unwrap_err();
        let error = crate::Chain(&error).to_string();
        assert!(error.contains("encryptedPrivateKey"), "{error}");

        let other_method = KeyMaterial {
            encryption_method: "RSAES_OAEP_SHA_256".into(),
            ..good.clone()
        };
        let error = KeyMaterial::from_json(&other_method.to_json())
            .unwrap_err()
            .to_string();
        assert!(error.contains("accepted: \"SYMMETRIC_DEFAULT\""), "{error}");

        let not_base64 = KeyMaterial {
            encrypted_private_key: "%%%".into(),
            ..good.clone()
        };
        assert!(
            not_base64
                .ciphertext_blob()
                .unwrap_err()
                .to_string()
                .contains("not base64")
        );

        let not_pem = KeyMaterial {
            certificate: "hello".into(),
            ..good.clone()
        };
        assert!(not_pem.certificates().is_err());

        let two = KeyMaterial {
            certificate: format!("{}{}", cert_pem("a.test"), cert_pem("b.test")),
            ..good
        };
        assert!(
            two.certificates()
                .unwrap_err()
                .to_string()
                .contains("expected 1")
        );

        let huge = vec![b' '; MAX_KEY_MATERIAL_BYTES + 1];
        assert!(
            KeyMaterial::from_json(&huge)
                .unwrap_err()
                .to_string()
                .contains("accepted")
        );
        assert!(KeyMaterial::from_json(b"[1, 2").is_err());
    }
}
