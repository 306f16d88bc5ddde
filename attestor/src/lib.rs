//! Nitro attestation for EnclaveID: producing attestation documents and verifying them.
//!
//! - [`Attestor`]: produces a document binding a public key, user data and a nonce.
//!   `NsmAttestor` (feature `nsm`) asks the Nitro Secure Module through `/dev/nsm`;
//!   [`FakeAttestor`] emits documents in exactly the AWS format (COSE_Sign1, ES384, the
//!   same payload map) signed under a P-384 root generated at run time, for development
//!   and tests anywhere.
//! - [`Verifier`] + [`Policy`]: checks a document (structure, chain to a pinned root at a
//!   given time, ES384 signature) and then the policy (PCR allowlists, debug mode, age,
//!   nonce, bound key and data), returning a [`VerifiedDocument`]. Every refusal is its
//!   own [`Error`] variant naming what was wrong.
//! - [`verify_attested_svid`] ([`svid`]): an X.509-SVID carrying its enclave's
//!   attestation document in an extension, bound to the certificate's key and serial,
//!   checked offline by any relying party.
//!
//! The crate does no I/O of its own (the `nsm` feature's device aside) and has no async
//! runtime: documents are bytes in, bytes out, and verification is
//! `fn(document, policy, time) -> Result`.
//!
//! ```
//! # #[cfg(feature = "fake")] {
//! use enclaveid_attestor::{AttestationRequest, Attestor, FakeAttestor, FakeConfig, Policy, Verifier, VerifyAt};
//!
//! let attestor = FakeAttestor::new(FakeConfig::default()).unwrap();
//! let request = AttestationRequest { nonce: Some(b"challenge".to_vec()), ..Default::default() };
//! let document = attestor.attest(&request).unwrap();
//!
//! let verifier = Verifier::with_root_der(attestor.root_der());
//! let policy = Policy { nonce: Some(b"challenge".to_vec()), ..Policy::default() };
//! let verified = verifier.verify(&document, &policy, VerifyAt::Time(std::time::SystemTime::now())).unwrap();
//! assert_eq!(verified.pcrs.len(), 16);
//! # }
//! ```
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `nsm` | `NsmAttestor`, through AWS's `aws-nitro-enclaves-nsm-api` |
//! | `fake` | `FakeAttestor`, documents signed under a generated root (development and tests; pulls in rcgen) |

#![forbid(unsafe_code)]

pub mod der;
mod document;
#[cfg(feature = "fake")]
mod fake;
mod fake_config;
pub mod node_protocol;
#[cfg(feature = "nsm")]
mod nsm;
pub mod svid;
mod verify;

use std::time::{Duration, SystemTime};

pub use document::{
    MAX_DOCUMENT_BYTES, MAX_NONCE_BYTES, MAX_PUBLIC_KEY_BYTES, MAX_USER_DATA_BYTES, Payload,
};
#[cfg(feature = "fake")]
pub use fake::FakeAttestor;
pub use fake_config::{FakeConfig, FakeRoot};
#[cfg(feature = "nsm")]
pub use nsm::{NSM_DEVICE, NsmAttestor};
pub use svid::{AttestedSvid, SvidError, SvidPolicy, verify_attested_svid};
pub use verify::{
    AWS_NITRO_ROOT_G1_PEM, AWS_NITRO_ROOT_G1_SHA256, MAX_FUTURE_SKEW, Policy, VerifiedDocument,
    Verifier, VerifyAt, hex, parse_hex, parse_pcr,
};

/// Errors of the attestor crate: producing documents, and each reason a document is
/// refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not inside a Nitro Enclave (or the device is not exposed to this process).
    #[error(
        "not running inside a Nitro Enclave: /dev/nsm not found; use attestor kind = \"fake\" for development"
    )]
    NoDevice,
    /// The NSM device answered with an error.
    #[error("the Nitro Secure Module refused the request: {0}")]
    Device(String),
    /// A field of an attestation request is larger than NSM accepts.
    #[error("{field} is {len} bytes; NSM accepts at most {max}")]
    RequestTooLarge {
        /// `public_key`, `user_data` or `nonce`.
        field: &'static str,
        /// Its size.
        len: usize,
        /// NSM's limit.
        max: usize,
    },
    /// The fake attestor could not make its keys or certificates.
    #[error("fake attestor: {0}")]
    Fake(String),
    /// The document is larger than any NSM produces; refused before parsing.
    #[error("attestation document is {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a COSE_Sign1 structure as Nitro makes them (CBOR, shape, trailing bytes).
    #[error("malformed attestation document: {0}")]
    Malformed(String),
    /// The protected header names another algorithm than ES384.
    #[error("unsupported COSE algorithm {0}; Nitro documents use ES384 (-35)")]
    UnsupportedAlgorithm(String),
    /// A payload field is missing, of the wrong type, or out of bounds.
    #[error("attestation document field `{field}`: {problem}")]
    Payload {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// `cabundle[0]` is not the pinned root.
    #[error(
        "the document chains to an untrusted root (SHA-256 {got}); the pinned root is {expected}"
    )]
    UntrustedRoot {
        /// SHA-256 of the document's root.
        got: String,
        /// SHA-256 of the pinned root.
        expected: String,
    },
    /// The certificate chain is broken: order, CA constraints, signatures, algorithms.
    #[error("invalid certificate chain: {0}")]
    Chain(String),
    /// A certificate of the chain expired before the verification time.
    #[error("certificate {subject} expired at {}, before the verification time {}", rfc3339(*not_after), rfc3339(*at))]
    Expired {
        /// Its subject.
        subject: String,
        /// Its notAfter.
        not_after: SystemTime,
        /// The verification time.
        at: SystemTime,
    },
    /// A certificate of the chain is not valid yet at the verification time.
    #[error("certificate {subject} is valid only from {}, after the verification time {}", rfc3339(*not_before), rfc3339(*at))]
    NotYetValid {
        /// Its subject.
        subject: String,
        /// Its notBefore.
        not_before: SystemTime,
        /// The verification time.
        at: SystemTime,
    },
    /// The COSE signature does not verify with the leaf's key.
    #[error("the attestation document's signature does not verify")]
    Signature,
    /// The enclave runs in debug mode and the policy does not allow it.
    #[error(
        "the enclave runs in debug mode (PCR0 is all zeros): its memory is readable by the parent instance; refused unless debug mode is allowed"
    )]
    DebugMode,
    /// A PCR is not among the accepted values.
    #[error("PCR{index} mismatch: got {got}, allowed {allowed:?}")]
    PcrMismatch {
        /// The PCR index.
        index: u8,
        /// The document's value, hex.
        got: String,
        /// The accepted values, hex.
        allowed: Vec<String>,
    },
    /// The document is older than the policy's maximum age.
    #[error("attestation document is {}s old; the maximum age is {}s", age.as_secs(), max_age.as_secs())]
    TooOld {
        /// Its age at the verification time.
        age: Duration,
        /// The limit.
        max_age: Duration,
    },
    /// The document's timestamp is after the verification time by more than the skew.
    #[error("attestation document is dated {}s after the verification time", ahead.as_secs())]
    FromTheFuture {
        /// By how much.
        ahead: Duration,
    },
    /// The nonce, public key or user data differs from what was expected.
    #[error("{field} mismatch: got {got}, expected {expected}")]
    Mismatch {
        /// `nonce`, `public_key` or `user_data`.
        field: &'static str,
        /// The document's value, hex.
        got: String,
        /// The expected value, hex.
        expected: String,
    },
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// What an attestation document binds: a public key, user data and a nonce (each
/// optional, as in the NSM API).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttestationRequest {
    /// A public key the enclave holds (for KMS: a DER SubjectPublicKeyInfo).
    pub public_key: Option<Vec<u8>>,
    /// Application data.
    pub user_data: Option<Vec<u8>>,
    /// A challenge from the verifier.
    pub nonce: Option<Vec<u8>>,
}

impl AttestationRequest {
    /// Refuses a request NSM would refuse, before anything is asked of a device.
    pub fn check_limits(&self) -> Result<(), Error> {
        for (field, value, max) in [
            ("public_key", &self.public_key, MAX_PUBLIC_KEY_BYTES),
            ("user_data", &self.user_data, MAX_USER_DATA_BYTES),
            ("nonce", &self.nonce, MAX_NONCE_BYTES),
        ] {
            if let Some(value) = value
                && value.len() > max
            {
                return Err(Error::RequestTooLarge {
                    field,
                    len: value.len(),
                    max,
                });
            }
        }
        Ok(())
    }
}

/// Produces attestation documents (COSE_Sign1 bytes) for this enclave.
pub trait Attestor: Send + Sync {
    /// An attestation document binding `request`.
    fn attest(&self, request: &AttestationRequest) -> Result<Vec<u8>, Error>;
}
