//! Private keys that sign certificates: the CA key SVIDs are minted with, each SVID's own
//! key, and keys in the forms KMS releases them (the PEM `provision` encrypted).
//!
//! Keys are aws-lc-rs key pairs, never rcgen's `KeyPair`: rcgen keeps an unzeroized copy
//! of the PKCS#8 bytes for the key's lifetime, while aws-lc-rs frees key material with
//! `OPENSSL_cleanse` and zeroizes the PKCS#8 documents it hands out. The only serialized
//! copies made here are `Zeroizing`.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    RSA_PKCS1_SHA256,
};
use zeroize::Zeroizing;

/// The key types accepted, for messages.
const ACCEPTED: &str = "ECDSA P-256, ECDSA P-384, RSA of 2048 bits or more";

/// Why a key could not be used. `what` names the key's origin (a configuration key, "the
/// private key KMS released").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not an unencrypted PKCS#8 key of an accepted type.
    #[error("{what}: not an unencrypted PKCS#8 private key of an accepted type ({ACCEPTED})")]
    Unsupported {
        /// The key's origin.
        what: String,
    },
    /// An RSA key below 2048 bits.
    #[error("{what}: RSA key of {bits} bits is too small; accepted: {ACCEPTED}")]
    RsaTooSmall {
        /// The key's origin.
        what: String,
        /// Its size.
        bits: usize,
    },
    /// Not PEM.
    #[error(
        "{what}: not a PEM private key (accepted: PRIVATE KEY, EC PRIVATE KEY, RSA PRIVATE KEY)"
    )]
    NotPem {
        /// The key's origin.
        what: String,
    },
    /// A PEM block of another kind.
    #[error("{what}: a PEM {tag:?} block; accepted: PRIVATE KEY, EC PRIVATE KEY, RSA PRIVATE KEY")]
    PemTag {
        /// The key's origin.
        what: String,
        /// The block's tag.
        tag: String,
    },
    /// An `EC PRIVATE KEY` that is not SEC1 P-256 or P-384.
    #[error("{what}: not a P-256 or P-384 SEC1 key")]
    Sec1 {
        /// The key's origin.
        what: String,
    },
    /// An `RSA PRIVATE KEY` that is not PKCS#1.
    #[error("{what}: not a PKCS#1 RSA key")]
    Pkcs1 {
        /// The key's origin.
        what: String,
    },
    /// aws-lc refused an operation on a key it had accepted (generation, encoding).
    #[error("{0} failed")]
    Crypto(&'static str),
}

/// A private key that signs certificates (rcgen's `SigningKey`).
pub struct SigningKey {
    inner: Inner,
    /// The public key as rcgen wants it: the BIT STRING content of the
    /// SubjectPublicKeyInfo (the EC point, or the RSAPublicKey DER).
    public_key: Vec<u8>,
    spki: Vec<u8>,
}

enum Inner {
    Ecdsa(EcdsaKeyPair, &'static rcgen::SignatureAlgorithm),
    Rsa(RsaKeyPair),
}

// === impl SigningKey ===

impl SigningKey {
    /// A new ECDSA P-256 key (the SVID default, as SPIRE's).
    pub fn generate_p256() -> Result<Self, KeyError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| KeyError::Crypto("generating a P-256 key"))?;
        Self::from_ecdsa(pair, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// Parses a PKCS#8 (`PRIVATE KEY`) DER key: ECDSA P-256, P-384, or RSA of 2048 bits or
    /// more. `what` names the key's origin in errors.
    pub fn from_pkcs8_der(der: &[u8], what: &str) -> Result<Self, KeyError> {
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der) {
            return Self::from_ecdsa(pair, &rcgen::PKCS_ECDSA_P256_SHA256);
        }
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, der) {
            return Self::from_ecdsa(pair, &rcgen::PKCS_ECDSA_P384_SHA384);
        }
        match RsaKeyPair::from_pkcs8(der) {
            Ok(pair) => Self::from_rsa(pair, what),
            Err(_) => Err(KeyError::Unsupported {
                what: what.to_owned(),
            }),
        }
    }

    /// Parses a PEM private key, as KMS releases it to the enclave: `PRIVATE KEY`
    /// (PKCS#8), `EC PRIVATE KEY` (SEC1, P-256 or P-384) or `RSA PRIVATE KEY` (PKCS#1).
    pub fn from_pem(pem_bytes: &[u8], what: &str) -> Result<Self, KeyError> {
        let block = crate::secret_pem::decode(pem_bytes).ok_or_else(|| KeyError::NotPem {
            what: what.to_owned(),
        })?;
        let (tag, der) = (block.label, block.der);
        match tag.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8_der(&der, what),
            "EC PRIVATE KEY" => {
                if let Ok(pair) =
                    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
                {
                    return Self::from_ecdsa(pair, &rcgen::PKCS_ECDSA_P256_SHA256);
                }
                EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_ASN1_SIGNING, &der)
                    .map_err(|_| KeyError::Sec1 {
                        what: what.to_owned(),
                    })
                    .and_then(|pair| Self::from_ecdsa(pair, &rcgen::PKCS_ECDSA_P384_SHA384))
            }
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der)
                .map_err(|_| KeyError::Pkcs1 {
                    what: what.to_owned(),
                })
                .and_then(|pair| Self::from_rsa(pair, what)),
            _ => Err(KeyError::PemTag {
                what: what.to_owned(),
                tag,
            }),
        }
    }

    fn from_rsa(pair: RsaKeyPair, what: &str) -> Result<Self, KeyError> {
        let bits = pair.public_modulus_len() * 8;
        if bits < 2048 {
            return Err(KeyError::RsaTooSmall {
                what: what.to_owned(),
                bits,
            });
        }
        let public_key = pair.public_key().as_ref().to_vec();
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|_| KeyError::Crypto("encoding an RSA public key"))?
            .as_ref()
            .to_vec();
        Ok(Self {
            inner: Inner::Rsa(pair),
            public_key,
            spki,
        })
    }

    fn from_ecdsa(
        pair: EcdsaKeyPair,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> Result<Self, KeyError> {
        let public_key = pair.public_key().as_ref().to_vec();
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|_| KeyError::Crypto("encoding an EC public key"))?
            .as_ref()
            .to_vec();
        Ok(Self {
            inner: Inner::Ecdsa(pair, alg),
            public_key,
            spki,
        })
    }

    /// The key as unencrypted PKCS#8 DER, as the Workload API sends it to the workload.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let document = match &self.inner {
            Inner::Ecdsa(pair, _) => pair
                .to_pkcs8v1()
                .map(|d| Zeroizing::new(d.as_ref().to_vec())),
            Inner::Rsa(pair) => pair.as_der().map(|d| Zeroizing::new(d.as_ref().to_vec())),
        };
        document.map_err(|_| KeyError::Crypto("serializing a private key"))
    }

    /// The DER SubjectPublicKeyInfo, to compare with a certificate's.
    pub fn subject_public_key_info(&self) -> &[u8] {
        &self.spki
    }
}

impl rcgen::PublicKeyData for SigningKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match &self.inner {
            Inner::Ecdsa(_, alg) => alg,
            Inner::Rsa(_) => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl rcgen::SigningKey for SigningKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Ecdsa(pair, _) => pair
                .sign(&rng, msg)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| rcgen::Error::RingUnspecified),
            Inner::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut signature)
                    .map_err(|_| rcgen::Error::RingUnspecified)?;
                Ok(signature)
            }
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::Ecdsa(_, alg) if *alg == &rcgen::PKCS_ECDSA_P384_SHA384 => "ecdsa-p384",
            Inner::Ecdsa(..) => "ecdsa-p256",
            Inner::Rsa(_) => "rsa",
        };
        f.debug_struct("SigningKey")
            .field("kind", &kind)
            .field("private_key", &"[secret key elided]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_round_trips_through_pkcs8() {
        let key = SigningKey::generate_p256().unwrap();
        let der = key.to_pkcs8_der().unwrap();
        let again = SigningKey::from_pkcs8_der(&der, "test").unwrap();
        assert_eq!(
            key.subject_public_key_info(),
            again.subject_public_key_info()
        );
    }

    #[test]
    fn garbage_and_small_keys_are_refused_with_what_is_accepted() {
        let error = SigningKey::from_pkcs8_der(b"not a key", "upstream.key_path").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("upstream.key_path"), "{message}");
        assert!(message.contains("ECDSA P-256"), "{message}");
    }

    #[test]
    fn pem_keys_in_every_form_kms_may_release_parse() {
        let key = SigningKey::generate_p256().unwrap();
        let pkcs8 = pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            key.to_pkcs8_der().unwrap().to_vec(),
        ));
        let again = SigningKey::from_pem(pkcs8.as_bytes(), "released key").unwrap();
        assert_eq!(
            again.subject_public_key_info(),
            key.subject_public_key_info()
        );
        for (bad, expected) in [
            (&b"hello"[..], "not a PEM private key"),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "\"CERTIFICATE\" block",
            ),
            (
                b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
                "SEC1",
            ),
        ] {
            let error = SigningKey::from_pem(bad, "released key")
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("released key") && error.contains(expected),
                "{error}"
            );
        }
    }

    #[test]
    fn debug_elides_the_key() {
        let key = SigningKey::generate_p256().unwrap();
        assert!(format!("{key:?}").contains("elided"));
    }
}
