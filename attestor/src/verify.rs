//! Verification of attestation documents: `fn(document, policy, time) -> Result`.
//!
//! Order of checks, cheapest and most telling first: size and structure (COSE, payload
//! fields), the root pin (SHA-256 of `cabundle[0]`), the certificate chain (each
//! certificate signed by the one before it, CA constraints), the validity of every
//! certificate at the verification time, the ES384 signature of the document with the leaf's key, then the policy
//! (debug mode, PCRs, age, nonce, public key, user data). The first failure is returned,
//! each as its own [`Error`] variant.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::prelude::FromDer;

use crate::Error;
use crate::document::{CoseSign1, Payload};

/// The AWS Nitro Enclaves root certificate G1 (`CN=aws.nitro-enclaves`), PEM, as AWS
/// publishes it (<https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip>).
pub const AWS_NITRO_ROOT_G1_PEM: &str = include_str!("aws-nitro-root-g1.pem");

/// SHA-256 of the DER of [`AWS_NITRO_ROOT_G1_PEM`], as AWS publishes it.
pub const AWS_NITRO_ROOT_G1_SHA256: [u8; 32] = [
    0x64, 0x1a, 0x03, 0x21, 0xa3, 0xe2, 0x44, 0xef, 0xe4, 0x56, 0x46, 0x31, 0x95, 0xd6, 0x06, 0x31,
    0x7e, 0xd7, 0xcd, 0xcc, 0x3c, 0x17, 0x56, 0xe0, 0x98, 0x93, 0xf3, 0xc6, 0x8f, 0x79, 0xbb, 0x5b,
];

/// How far a document's timestamp may be ahead of the verification time (clock skew).
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(5 * 60);

/// Verifies documents against one pinned root.
#[derive(Clone, Debug)]
pub struct Verifier {
    root_sha256: [u8; 32],
}

/// At what time certificates are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyAt {
    /// At this time (normally now).
    Time(SystemTime),
    /// At the document's own timestamp: for checking archived documents only, since an
    /// old document stays valid forever this way.
    DocumentTime,
}

/// What a verified document must also satisfy. The default accepts any production-mode
/// document of any age; tighten it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// For each PCR index listed, the accepted values (any one of them).
    pub pcrs: BTreeMap<u8, Vec<Vec<u8>>>,
    /// Accept debug-mode enclaves (PCR0 all zeros). Their memory is readable by the
    /// parent instance: never in production.
    pub allow_debug: bool,
    /// The oldest accepted document, relative to the verification time.
    pub max_age: Option<Duration>,
    /// The nonce the document must carry.
    pub nonce: Option<Vec<u8>>,
    /// The public key the document must carry.
    pub public_key: Option<Vec<u8>>,
    /// The user data the document must carry.
    pub user_data: Option<Vec<u8>>,
}

/// A document whose signature, chain and policy checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedDocument {
    /// The enclave's ID.
    pub module_id: String,
    /// When NSM made the document.
    pub timestamp: SystemTime,
    /// PCRs by index.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The bound public key.
    pub public_key: Option<Vec<u8>>,
    /// The bound user data.
    pub user_data: Option<Vec<u8>>,
    /// The bound nonce.
    pub nonce: Option<Vec<u8>>,
    /// The DER leaf certificate that signed the document.
    pub certificate: Vec<u8>,
    /// Whether the enclave runs in debug mode (PCR0 all zeros).
    pub debug_mode: bool,
}

// === impl Verifier ===

impl Verifier {
    /// A verifier pinned to the AWS Nitro Enclaves root G1.
    pub fn aws() -> Self {
        Self {
            root_sha256: AWS_NITRO_ROOT_G1_SHA256,
        }
    }

    /// A verifier pinned to another root, by its DER (a fake attestor's, in tests).
    pub fn with_root_der(root_der: &[u8]) -> Self {
        Self {
            root_sha256: sha256(root_der),
        }
    }

    /// The SHA-256 of the pinned root's DER.
    pub fn root_sha256(&self) -> [u8; 32] {
        self.root_sha256
    }

    /// Verifies `document` (COSE_Sign1 bytes) at `at` and applies `policy`.
    pub fn verify(
        &self,
        document: &[u8],
        policy: &Policy,
        at: VerifyAt,
    ) -> Result<VerifiedDocument, Error> {
        let verified = self.verify_signed(document, at)?;
        let now = match at {
            VerifyAt::Time(time) => time,
            VerifyAt::DocumentTime => verified.timestamp,
        };
        policy.check(&verified, now)?;
        Ok(verified)
    }

    /// Structure, root pin, chain (valid at `at`) and signature; no policy.
    pub(crate) fn verify_signed(
        &self,
        document: &[u8],
        at: VerifyAt,
    ) -> Result<VerifiedDocument, Error> {
        let cose = CoseSign1::parse(document)?;
        cose.check_es384()?;
        if cose.signature.len() != 96 {
            return Err(Error::Malformed(format!(
                "signature is {} bytes, expected 96 (ES384 r||s)",
                cose.signature.len()
            )));
        }
        let payload = Payload::parse(&cose.payload)?;
        let timestamp = SystemTime::UNIX_EPOCH + Duration::from_millis(payload.timestamp_ms);
        let now = match at {
            VerifyAt::Time(time) => time,
            VerifyAt::DocumentTime => timestamp,
        };

        // The chain, root first, then the leaf.
        let root = &payload.cabundle[0];
        let got = sha256(root);
        if got != self.root_sha256 {
            return Err(Error::UntrustedRoot {
                got: hex(&got),
                expected: hex(&self.root_sha256),
            });
        }
        let mut parsed = Vec::with_capacity(payload.cabundle.len() + 1);
        for der in payload
            .cabundle
            .iter()
            .chain(std::iter::once(&payload.certificate))
        {
            let (rest, cert) = X509Certificate::from_der(der).map_err(|e| {
                Error::Chain(format!("certificate {} does not parse: {e}", parsed.len()))
            })?;
            if !rest.is_empty() {
                return Err(Error::Chain(format!(
                    "certificate {} has trailing bytes",
                    parsed.len()
                )));
            }
            parsed.push(cert);
        }
        let leaf_index = parsed.len() - 1;
        // Structure and signatures first: a chain that is not AWS's is reported as such
        // even when it is also out of date.
        for (i, cert) in parsed.iter().enumerate() {
            let is_ca = cert
                .basic_constraints()
                .ok()
                .flatten()
                .is_some_and(|bc| bc.value.ca);
            if i < leaf_index && !is_ca {
                return Err(Error::Chain(format!(
                    "{} is in the cabundle but is not a CA",
                    cert.subject()
                )));
            }
            // The root is pinned; every other certificate must be signed by the one before.
            let issuer = if i == 0 { cert } else { &parsed[i - 1] };
            if cert.issuer().as_raw() != issuer.subject().as_raw() {
                return Err(Error::Chain(format!(
                    "{} is issued by {}, but the certificate before it is {}",
                    cert.subject(),
                    cert.issuer(),
                    issuer.subject()
                )));
            }
            if i > 0 {
                check_path_len(&parsed[..i], i)?;
                verify_cert_signature(cert, issuer)?;
            }
        }

        for cert in &parsed {
            check_validity(cert, now)?;
        }

        // The document's signature, with the leaf's key.
        let leaf = &parsed[leaf_index];
        if curve(leaf) != Some(Curve::P384) {
            return Err(Error::Chain(format!(
                "{}: the signing key is not ECDSA P-384",
                leaf.subject()
            )));
        }
        UnparsedPublicKey::new(
            &signature::ECDSA_P384_SHA384_FIXED,
            leaf.public_key().subject_public_key.data.as_ref(),
        )
        .verify(&cose.signed_bytes(), &cose.signature)
        .map_err(|_| Error::Signature)?;

        let verified = VerifiedDocument {
            debug_mode: payload
                .pcrs
                .get(&0)
                .is_some_and(|pcr0| pcr0.iter().all(|b| *b == 0)),
            module_id: payload.module_id,
            timestamp,
            pcrs: payload.pcrs,
            public_key: payload.public_key,
            user_data: payload.user_data,
            nonce: payload.nonce,
            certificate: payload.certificate,
        };
        Ok(verified)
    }
}

// === impl Policy ===

impl Policy {
    /// Applies the policy to a document whose signature and chain checked out.
    pub fn check(&self, document: &VerifiedDocument, now: SystemTime) -> Result<(), Error> {
        if document.debug_mode && !self.allow_debug {
            return Err(Error::DebugMode);
        }
        for (index, allowed) in &self.pcrs {
            let got = document.pcrs.get(index);
            if !got.is_some_and(|got| allowed.iter().any(|a| a == got)) {
                return Err(Error::PcrMismatch {
                    index: *index,
                    got: got.map_or_else(|| "absent".to_owned(), |g| hex(g)),
                    allowed: allowed.iter().map(|a| hex(a)).collect(),
                });
            }
        }
        if let Ok(ahead) = document.timestamp.duration_since(now)
            && ahead > MAX_FUTURE_SKEW
        {
            return Err(Error::FromTheFuture { ahead });
        }
        if let Some(max_age) = self.max_age {
            let age = now.duration_since(document.timestamp).unwrap_or_default();
            if age > max_age {
                return Err(Error::TooOld { age, max_age });
            }
        }
        let bound =
            |field: &'static str, expected: &Option<Vec<u8>>, got: &Option<Vec<u8>>| match expected
            {
                Some(expected) if got.as_ref() != Some(expected) => Err(Error::Mismatch {
                    field,
                    got: got.as_deref().map_or_else(|| "absent".to_owned(), hex),
                    expected: hex(expected),
                }),
                _ => Ok(()),
            };
        bound("nonce", &self.nonce, &document.nonce)?;
        bound("public_key", &self.public_key, &document.public_key)?;
        bound("user_data", &self.user_data, &document.user_data)?;
        Ok(())
    }
}

fn check_validity(cert: &X509Certificate<'_>, now: SystemTime) -> Result<(), Error> {
    let validity = cert.validity();
    let not_before = SystemTime::from(validity.not_before.to_datetime());
    let not_after = SystemTime::from(validity.not_after.to_datetime());
    if now < not_before {
        return Err(Error::NotYetValid {
            subject: cert.subject().to_string(),
            not_before,
            at: now,
        });
    }
    if now > not_after {
        return Err(Error::Expired {
            subject: cert.subject().to_string(),
            not_after,
            at: now,
        });
    }
    Ok(())
}

/// A CA's pathLenConstraint bounds the CAs below it: `issuers` are the certificates
/// above the one at `index`.
fn check_path_len(issuers: &[X509Certificate<'_>], index: usize) -> Result<(), Error> {
    for (j, issuer) in issuers.iter().enumerate() {
        if let Ok(Some(bc)) = issuer.basic_constraints()
            && let Some(max) = bc.value.path_len_constraint
        {
            // CAs strictly between issuer j and the certificate at `index`.
            let between = index - j - 1;
            if between > max as usize {
                return Err(Error::Chain(format!(
                    "{} allows {max} CAs below it, the chain has more",
                    issuer.subject()
                )));
            }
        }
    }
    Ok(())
}

fn verify_cert_signature(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), Error> {
    let sig_oid = &cert.signature_algorithm.algorithm;
    let sha384 = *sig_oid == OID_SIG_ECDSA_WITH_SHA384;
    let sha256 = *sig_oid == OID_SIG_ECDSA_WITH_SHA256;
    let alg: &'static dyn VerificationAlgorithm = match (curve(issuer), sha384, sha256) {
        (Some(Curve::P384), true, _) => &signature::ECDSA_P384_SHA384_ASN1,
        (Some(Curve::P384), _, true) => &signature::ECDSA_P384_SHA256_ASN1,
        (Some(Curve::P256), _, true) => &signature::ECDSA_P256_SHA256_ASN1,
        (Some(Curve::P256), true, _) => &signature::ECDSA_P256_SHA384_ASN1,
        _ => {
            return Err(Error::Chain(format!(
                "{}: unsupported signature algorithm {sig_oid} by {} (accepted: ECDSA with SHA-256 or SHA-384 on P-256 or P-384)",
                cert.subject(),
                issuer.subject()
            )));
        }
    };
    UnparsedPublicKey::new(alg, issuer.public_key().subject_public_key.data.as_ref())
        .verify(
            cert.tbs_certificate.as_ref(),
            cert.signature_value.data.as_ref(),
        )
        .map_err(|_| {
            Error::Chain(format!(
                "the signature on {} by {} does not verify",
                cert.subject(),
                issuer.subject()
            ))
        })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

/// The curve of an EC public key; `None` for any other key.
fn curve(cert: &X509Certificate<'_>) -> Option<Curve> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return None;
    }
    let oid = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
    if oid == OID_NIST_EC_P384 {
        Some(Curve::P384)
    } else if oid == OID_EC_P256 {
        Some(Curve::P256)
    } else {
        None
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A SHA-384 PCR value from its 96 hex digits (either case); `None` for anything else.
pub fn parse_pcr(value: &str) -> Option<Vec<u8>> {
    parse_hex(value).filter(|bytes| bytes.len() == 48)
}

/// The bytes of a hex string (either case, even length); `None` for anything else.
pub fn parse_hex(value: &str) -> Option<Vec<u8>> {
    if !value.len().is_multiple_of(2) || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..value.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&value[i..i + 2], 16).ok())
        .collect()
}
