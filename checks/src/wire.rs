//! The frames of the protocol between the enclave and `enclaveid host` on its parent
//! instance, as pure functions: both sides read and write through them, and the I/O
//! around them (one request per connection, timeouts) is each side's own.
//!
//! One request per connection, length-prefixed, big-endian:
//!
//! ```text
//! request  = "EID1" op:u8 len:u32 payload[len]      payload ≤ 1 KiB
//! response = status:u8 len:u32 payload[len]          status 0 = ok, 1 = error (UTF-8 text)
//! ```
//!
//! | op | request payload | ok payload (limit the enclave enforces) |
//! | --- | --- | --- |
//! | 1 key material | empty | the key-material JSON ([`crate::material`]; 64 KiB) |
//! | 2 credentials | empty | [`Credentials`] as JSON (16 KiB) |
//! | 3 CRL | empty | the Private CA's CRL, DER or PEM; empty when the host has none (16 MiB) |
//! | 4 KMS tunnel | `HOST:PORT` of the KMS endpoint | empty; the connection then carries the enclave's TLS to KMS |
//! | 5 JWT key material | empty | the JWT-SVID signing key's material, same JSON as op 1; empty when the host has none (64 KiB) |
//! | 6 connect | a destination [`crate::address::Address`] on the host's relay allow-list | empty; the connection then carries the enclave's bytes (its own TLS) to that destination |
//! | 7 telemetry | empty | empty; the connection then carries [`crate::telemetry`] frames from the enclave |
//! | 8 ACM certificate | an ACM certificate ARN the host was given (`--acm-certificate-arn`) | the object ACM for Nitro Enclaves writes for it, same JSON as op 1 (64 KiB) |
//!
//! The host is untrusted: the enclave checks every length before reading, every payload's
//! type, and trusts nothing in it until the certificate chains to its root and KMS has
//! released the key to its attestation.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The request prefix: protocol name and version.
pub const MAGIC: &[u8; 4] = b"EID1";
/// The largest request payload.
pub const MAX_REQUEST: usize = 1024;
/// The largest error text.
pub const MAX_ERROR: usize = 4096;
/// How long either side waits for the other's request or answer.
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// The length of a request's head: magic, op, payload length.
pub const REQUEST_HEAD: usize = 9;
/// The length of an answer's head: status, payload length.
pub const ANSWER_HEAD: usize = 5;

/// What the enclave asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// The key-material object.
    KeyMaterial = 1,
    /// Temporary AWS credentials for the KMS call.
    Credentials = 2,
    /// The Private CA's CRL.
    Crl = 3,
    /// A TCP tunnel to the KMS endpoint.
    KmsTunnel = 4,
    /// The JWT-SVID signing key's material object.
    JwtKeyMaterial = 5,
    /// A relayed stream to an allow-listed destination (another enclave, a TCP address).
    Connect = 6,
    /// The enclave's logs, metrics and health, streamed to the host.
    Telemetry = 7,
    /// The key material ACM for Nitro Enclaves wrote for one certificate (DNS names).
    AcmCertificate = 8,
}

/// A frame that breaks the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A request that does not start with [`MAGIC`].
    #[error("not an EnclaveID request (starts with {found:02x?}, expected \"EID1\")")]
    Magic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// An op byte no version of the protocol defines.
    #[error("unknown op {0}")]
    UnknownOp(u8),
    /// A request payload over [`MAX_REQUEST`].
    #[error("request payload of {len} bytes; the limit is {MAX_REQUEST}")]
    RequestTooLarge {
        /// The announced length.
        len: usize,
    },
    /// A status byte other than 0 and 1.
    #[error("status byte {0} (accepted: 0 ok, 1 error)")]
    Status(u8),
    /// An answer longer than the enclave reads for its op.
    #[error("{what} of {len} bytes announced; the limit is {limit}")]
    AnswerTooLarge {
        /// What was announced: the op's payload, or an error text.
        what: &'static str,
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// What an answer's head announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerHead {
    /// Status 0: this many payload bytes follow.
    Ok(usize),
    /// Status 1: an error text of this many bytes follows.
    Refused(usize),
}

// === impl Op ===

impl Op {
    /// The op of a request byte.
    pub fn from_byte(byte: u8) -> Option<Self> {
        [
            Self::KeyMaterial,
            Self::Credentials,
            Self::Crl,
            Self::KmsTunnel,
            Self::JwtKeyMaterial,
            Self::Connect,
            Self::Telemetry,
            Self::AcmCertificate,
        ]
        .into_iter()
        .find(|op| *op as u8 == byte)
    }

    /// The largest answer the enclave reads for this op.
    pub fn answer_limit(self) -> usize {
        match self {
            Self::KeyMaterial | Self::JwtKeyMaterial | Self::AcmCertificate => {
                crate::material::MAX_KEY_MATERIAL_BYTES
            }
            Self::Credentials => 16 * 1024,
            Self::Crl => 16 * 1024 * 1024,
            Self::KmsTunnel | Self::Connect | Self::Telemetry => 0,
        }
    }

    /// What the op fetches, for messages.
    pub fn what(self) -> &'static str {
        match self {
            Self::KeyMaterial => "key material",
            Self::Credentials => "credentials",
            Self::Crl => "CRL",
            Self::KmsTunnel => "KMS tunnel",
            Self::JwtKeyMaterial => "JWT key material",
            Self::Connect => "relayed connection",
            Self::Telemetry => "telemetry",
            Self::AcmCertificate => "ACM certificate material",
        }
    }
}

/// A request frame.
pub fn encode_request(op: Op, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(REQUEST_HEAD + payload.len());
    frame.extend_from_slice(MAGIC);
    frame.push(op as u8);
    frame.extend_from_slice(&length(payload.len()));
    frame.extend_from_slice(payload);
    frame
}

/// The op and payload length of a request head; the payload is read only when this is
/// `Ok`.
pub fn decode_request_head(head: &[u8; REQUEST_HEAD]) -> Result<(Op, usize), WireError> {
    let [m0, m1, m2, m3, op, l0, l1, l2, l3] = *head;
    if [m0, m1, m2, m3] != *MAGIC {
        return Err(WireError::Magic {
            found: [m0, m1, m2, m3],
        });
    }
    let op = Op::from_byte(op).ok_or(WireError::UnknownOp(op))?;
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    if len > MAX_REQUEST {
        return Err(WireError::RequestTooLarge { len });
    }
    Ok((op, len))
}

/// An answer frame: the payload, or an error text (cut to [`MAX_ERROR`] bytes).
pub fn encode_answer(answer: Result<&[u8], &str>) -> Vec<u8> {
    let (status, payload) = match answer {
        Ok(payload) => (0u8, payload),
        Err(text) => (1u8, &text.as_bytes()[..text.len().min(MAX_ERROR)]),
    };
    let mut frame = Vec::with_capacity(ANSWER_HEAD + payload.len());
    frame.push(status);
    frame.extend_from_slice(&length(payload.len()));
    frame.extend_from_slice(payload);
    frame
}

/// What an answer head to `op` announces, refusing any length over the op's limit (so
/// that nothing is allocated for it).
pub fn decode_answer_head(head: &[u8; ANSWER_HEAD], op: Op) -> Result<AnswerHead, WireError> {
    let [status, l0, l1, l2, l3] = *head;
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    let (limit, what, answer) = match status {
        0 => (op.answer_limit(), op.what(), AnswerHead::Ok(len)),
        1 => (MAX_ERROR, "an error text", AnswerHead::Refused(len)),
        other => return Err(WireError::Status(other)),
    };
    if len > limit {
        return Err(WireError::AnswerTooLarge { what, len, limit });
    }
    Ok(answer)
}

/// Text from the untrusted host made safe for logs: printable ASCII only.
pub fn sanitize(bytes: &[u8]) -> String {
    crate::sanitize(bytes, MAX_ERROR)
}

fn length(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// Temporary AWS credentials, as the host hands them over (op 2): JSON
/// `{AccessKeyId, SecretAccessKey, SessionToken, Expiration}`, as AWS's own credential
/// endpoints write them. Zeroized on drop; `Debug` shows the key ID only.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(rename_all = "PascalCase")]
pub struct Credentials {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: String,
    /// `SessionToken`, for temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,
    /// `Expiration`, RFC 3339, when known.
    #[serde(default)]
    pub expiration: Option<String>,
}

/// Credentials the enclave cannot use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// Not the JSON object.
    #[error("not the expected JSON object")]
    Json(#[source] serde_json::Error),
    /// A field would not fit an HTTP header: empty, too long, or not printable ASCII.
    #[error("empty, too long, or not printable ASCII")]
    Unprintable,
}

// === impl Credentials ===

impl Credentials {
    /// Parses and checks the JSON the host sent. They end up in HTTP headers: only what
    /// AWS issues (visible ASCII, bounded) is accepted.
    pub fn from_json(json: &[u8]) -> Result<Self, CredentialsError> {
        let credentials: Self = serde_json::from_slice(json).map_err(CredentialsError::Json)?;
        let fine = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
        };
        if !fine(&credentials.access_key_id, 128)
            || !fine(&credentials.secret_access_key, 128)
            || credentials
                .session_token
                .as_deref()
                .is_some_and(|t| !fine(t, 8192))
        {
            return Err(CredentialsError::Unprintable);
        }
        Ok(credentials)
    }

    /// The JSON the host sends.
    pub fn to_json(&self) -> zeroize::Zeroizing<Vec<u8>> {
        // Serializing four strings cannot fail.
        zeroize::Zeroizing::new(serde_json::to_vec(self).unwrap_or_default())
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_host_requests_and_answers_round_trip() {
        let frame = encode_request(Op::KmsTunnel, b"kms.eu-west-1.amazonaws.com:443");
        let head: [u8; REQUEST_HEAD] = frame[..REQUEST_HEAD].try_into().unwrap();
        assert_eq!(
            decode_request_head(&head),
            Ok((Op::KmsTunnel, "kms.eu-west-1.amazonaws.com:443".len()))
        );
        assert_eq!(&frame[REQUEST_HEAD..], b"kms.eu-west-1.amazonaws.com:443");

        let frame = encode_answer(Ok(b"{}"));
        let head: [u8; ANSWER_HEAD] = frame[..ANSWER_HEAD].try_into().unwrap();
        assert_eq!(
            decode_answer_head(&head, Op::KeyMaterial),
            Ok(AnswerHead::Ok(2))
        );
        let frame = encode_answer(Err("NoSuchKey\n\x1b[31m"));
        let head: [u8; ANSWER_HEAD] = frame[..ANSWER_HEAD].try_into().unwrap();
        let Ok(AnswerHead::Refused(len)) = decode_answer_head(&head, Op::KeyMaterial) else {
            panic!("not a refusal");
        };
        assert_eq!(sanitize(&frame[ANSWER_HEAD..][..len]), "NoSuchKey??[31m");
    }

    #[test]
    fn kms_host_oversized_and_garbage_answers_are_refused_before_reading() {
        let mut head = [0u8; ANSWER_HEAD];
        head[1..].copy_from_slice(&(100u32 * 1024 * 1024).to_be_bytes());
        let error = decode_answer_head(&head, Op::KeyMaterial).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("104857600 bytes announced; the limit is 65536"),
            "{error}"
        );
        assert_eq!(
            decode_answer_head(&[7, 0, 0, 0, 0], Op::Credentials),
            Err(WireError::Status(7))
        );
        let long_error = [1, 0, 0, 0x10, 1];
        assert!(decode_answer_head(&long_error, Op::Credentials).is_err());
    }

    #[test]
    fn kms_host_refuses_requests_that_are_not_ours() {
        for (head, expected) in [
            (*b"GET / HTTP", "not an EnclaveID request"),
            (*b"EID1\x09\x00\x00\x00\x00\x00", "unknown op 9"),
            (*b"EID1\x04\x00\x01\x00\x00\x00", "the limit is 1024"),
        ] {
            let head: [u8; REQUEST_HEAD] = head[..REQUEST_HEAD].try_into().unwrap();
            let error = decode_request_head(&head).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn credentials_round_trip_and_unprintable_ones_are_refused() {
        let credentials = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: Some("token".into()),
            expiration: None,
        };
        let again = Credentials::from_json(&credentials.to_json()).unwrap();
        assert_eq!(again.session_token.as_deref(), Some("token"));
        assert!(!format!("{again:?}").contains("secret"));
        let bad = br#"{"AccessKeyId": "a\nb", "SecretAccessKey": "s"}"#;
        assert!(matches!(
            Credentials::from_json(bad),
            Err(CredentialsError::Unprintable)
        ));
        assert!(Credentials::from_json(b"[]").is_err());
    }
}
