//! The `aws_nitro` node attestation protocol: what an agent (the project's SPIRE agent
//! plugin, or the EnclaveID agent with `upstream.kind = "spire"`) and the project's
//! SPIRE server plugin say to each other, through SPIRE. No I/O: the attestor is passed in.
//!
//! All messages are JSON, byte strings in standard base64:
//!
//! | step | direction | message |
//! | --- | --- | --- |
//! | payload | agent → server | `{"protocol": "enclaveid-nitro-attestor/1"}` |
//! | challenge | server → agent | 32 random bytes (raw) |
//! | challenge response | agent → server | `{"document": "<COSE_Sign1>", "signature": "<ECDSA P-256 SHA-256, DER>"}` |
//!
//! The document binds: `nonce` = the challenge; `public_key` = the DER
//! SubjectPublicKeyInfo of a P-256 key the agent plugin generated for this attestation;
//! `user_data` = [`user_data`] (this protocol and the trust domain). The signature, by
//! that key, covers [`signed_message`]: the challenge and the SHA-256 of the document.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::{AttestationRequest, Attestor};

/// Why a protocol message could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The attestor could not make a document.
    #[error(transparent)]
    Attestor(#[from] crate::Error),
    /// A message is malformed.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

use ProtocolError as Error;

/// The protocol this crate speaks; a server refuses another.
pub const PROTOCOL: &str = "enclaveid-nitro-attestor/1";

/// The size of a server's challenge.
pub const CHALLENGE_LEN: usize = 32;

/// The largest challenge response a server reads: a document (at most
/// [`crate::MAX_DOCUMENT_BYTES`]) and a signature, base64 in JSON.
pub const MAX_RESPONSE_BYTES: usize = crate::MAX_DOCUMENT_BYTES * 4 / 3 + 1024;

/// Domain separation for the proof-of-possession signature.
const SIGNATURE_CONTEXT: &[u8] = b"enclaveid-nitro-attestor/1 proof of possession\0";

/// The agent's first message.
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    /// [`PROTOCOL`].
    pub protocol: String,
}

/// The agent's answer to a challenge.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeResponse {
    /// The attestation document (COSE_Sign1), base64.
    pub document: String,
    /// The proof-of-possession signature, base64.
    pub signature: String,
}

/// The payload the agent plugin sends first.
pub fn payload() -> Vec<u8> {
    serde_json::to_vec(&Payload {
        protocol: PROTOCOL.into(),
    })
    .unwrap_or_default()
}

/// Checks the agent's payload names [`PROTOCOL`].
pub fn check_payload(bytes: &[u8]) -> Result<(), Error> {
    let payload: Payload = serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
        what: "attestation payload",
        why: format!(
            "{e}; expected {{\"protocol\": \"{PROTOCOL}\"}} from the enclaveid-nitro-attestor agent plugin"
        ),
    })?;
    if payload.protocol != PROTOCOL {
        return Err(Error::Malformed {
            what: "attestation payload",
            why: format!(
                "protocol {:?}; this server plugin speaks {PROTOCOL:?}",
                payload.protocol
            ),
        });
    }
    Ok(())
}

/// The `user_data` a document must carry: this protocol and the trust domain, so that a
/// document an enclave made for another purpose (or another trust domain) is refused.
pub fn user_data(trust_domain: &str) -> Vec<u8> {
    format!("{PROTOCOL} spiffe://{trust_domain}").into_bytes()
}

/// What the proof-of-possession signature covers.
pub fn signed_message(challenge: &[u8], document: &[u8]) -> Vec<u8> {
    let mut message = SIGNATURE_CONTEXT.to_vec();
    message.extend_from_slice(challenge);
    message.extend_from_slice(digest(&SHA256, document).as_ref());
    message
}

/// The agent plugin's answer to `challenge`: a fresh P-256 key (dropped, and so wiped by
/// aws-lc, when this returns), a document from `attestor` binding the challenge, the key
/// and [`user_data`], and the key's signature over [`signed_message`].
pub fn respond(
    attestor: &dyn Attestor,
    trust_domain: &str,
    challenge: &[u8],
) -> Result<Vec<u8>, Error> {
    if challenge.is_empty() {
        return Err(Error::Malformed {
            what: "challenge",
            why: "empty".into(),
        });
    }
    let rng = SystemRandom::new();
    let malformed = |why: String| Error::Malformed {
        what: "proof-of-possession key",
        why,
    };
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
        .map_err(|e| malformed(e.to_string()))?;
    let spki = key
        .public_key()
        .as_der()
        .map_err(|e| malformed(e.to_string()))?;
    let document = attestor.attest(&AttestationRequest {
        public_key: Some(spki.as_ref().to_vec()),
        user_data: Some(user_data(trust_domain)),
        nonce: Some(challenge.to_vec()),
    })?;
    let signature = key
        .sign(&rng, &signed_message(challenge, &document))
        .map_err(|e| malformed(e.to_string()))?;
    Ok(encode_response(&document, signature.as_ref()))
}

/// A challenge response carrying `document` and `signature`; [`parse_response`] reads it.
pub fn encode_response(document: &[u8], signature: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&ChallengeResponse {
        document: STANDARD.encode(document),
        signature: STANDARD.encode(signature),
    })
    .unwrap_or_default()
}

/// Splits a challenge response into the document and the signature.
pub fn parse_response(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let malformed = |why: String| Error::Malformed {
        what: "challenge response",
        why,
    };
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(malformed(format!(
            "{} bytes, more than the {MAX_RESPONSE_BYTES} accepted",
            bytes.len()
        )));
    }
    let response: ChallengeResponse = serde_json::from_slice(bytes).map_err(|e| {
        malformed(format!(
            "{e}; expected {{\"document\": base64, \"signature\": base64}}"
        ))
    })?;
    let document = STANDARD
        .decode(&response.document)
        .map_err(|e| malformed(format!("document is not base64: {e}")))?;
    let signature = STANDARD
        .decode(&response.signature)
        .map_err(|e| malformed(format!("signature is not base64: {e}")))?;
    Ok((document, signature))
}
