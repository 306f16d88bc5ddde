//! The protocol between the enclave and `enclaveid host` on its parent instance.
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
//! | 1 key material | empty | the key-material JSON ([`crate::kms::material`]; 64 KiB) |
//! | 2 credentials | empty | JSON `{AccessKeyId, SecretAccessKey, SessionToken, Expiration}` (16 KiB) |
//! | 3 CRL | empty | the Private CA's CRL, DER or PEM; empty when the host has none (16 MiB) |
//! | 4 KMS tunnel | `HOST:PORT` of the KMS endpoint | empty; the connection then carries the enclave's TLS to KMS |
//! | 5 JWT key material | empty | the JWT-SVID signing key's material, same JSON as op 1; empty when the host has none (64 KiB) |
//!
//! The host is untrusted: the enclave checks every length before reading, every payload's
//! type, and trusts nothing in it until the certificate chains to its root and KMS has
//! released the key to its attestation.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The request prefix: protocol name and version.
pub const MAGIC: &[u8; 4] = b"EID1";
/// The largest request payload.
pub const MAX_REQUEST: usize = 1024;
/// The largest error text.
pub const MAX_ERROR: usize = 4096;
/// How long either side waits for the other's request or answer.
pub const TIMEOUT: Duration = Duration::from_secs(15);

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
        ]
        .into_iter()
        .find(|op| *op as u8 == byte)
    }

    /// The largest answer the enclave reads for this op.
    pub fn answer_limit(self) -> usize {
        match self {
            Self::KeyMaterial | Self::JwtKeyMaterial => {
                crate::kms::material::MAX_KEY_MATERIAL_BYTES
            }
            Self::Credentials => 16 * 1024,
            Self::Crl => 16 * 1024 * 1024,
            Self::KmsTunnel => 0,
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
        }
    }
}

/// Writes a request.
pub async fn write_request(
    w: &mut (impl AsyncWrite + Unpin),
    op: Op,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(MAGIC);
    frame.push(op as u8);
    frame.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(payload);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads a request (host side). Errors are texts to send back.
pub async fn read_request(r: &mut (impl AsyncRead + Unpin)) -> Result<(Op, Vec<u8>), String> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    if &head[..4] != MAGIC {
        return Err(format!(
            "not an EnclaveID request (starts with {:02x?}, expected \"EID1\")",
            &head[..4]
        ));
    }
    let op = Op::from_byte(head[4]).ok_or_else(|| format!("unknown op {}", head[4]))?;
    let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
    if len > MAX_REQUEST {
        return Err(format!(
            "request payload of {len} bytes; the limit is {MAX_REQUEST}"
        ));
    }
    let mut payload = vec![0; len];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    Ok((op, payload))
}

/// Writes an answer (host side).
pub async fn write_answer(
    w: &mut (impl AsyncWrite + Unpin),
    answer: Result<&[u8], &str>,
) -> std::io::Result<()> {
    let (status, payload) = match answer {
        Ok(payload) => (0u8, payload),
        Err(text) => (1u8, truncate(text.as_bytes(), MAX_ERROR)),
    };
    let mut head = [0u8; 5];
    head[0] = status;
    head[1..].copy_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// Why an answer could not be used (enclave side).
#[derive(Debug, PartialEq, Eq)]
pub enum AnswerError {
    /// The host answered with an error text (sanitized).
    Refused(String),
    /// The answer broke the protocol.
    Malformed(String),
}

/// Reads an answer to `op`, refusing any length over the op's limit before reading it.
pub async fn read_answer(r: &mut (impl AsyncRead + Unpin), op: Op) -> Result<Vec<u8>, AnswerError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await.map_err(|e| {
        AnswerError::Malformed(format!("the connection ended before an answer: {e}"))
    })?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let limit = match head[0] {
        0 => op.answer_limit(),
        1 => MAX_ERROR,
        other => {
            return Err(AnswerError::Malformed(format!(
                "status byte {other} (accepted: 0 ok, 1 error)"
            )));
        }
    };
    if len > limit {
        return Err(AnswerError::Malformed(format!(
            "{} of {len} bytes announced; the limit is {limit}",
            if head[0] == 0 {
                op.what()
            } else {
                "an error text"
            }
        )));
    }
    let mut payload = vec![0; len];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| AnswerError::Malformed(format!("{len} bytes announced, fewer sent: {e}")))?;
    if head[0] == 1 {
        return Err(AnswerError::Refused(sanitize(&payload)));
    }
    Ok(payload)
}

/// Text from the untrusted host made safe for logs: printable ASCII only.
pub fn sanitize(bytes: &[u8]) -> String {
    String::from_utf8_lossy(truncate(bytes, MAX_ERROR))
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn truncate(bytes: &[u8], limit: usize) -> &[u8] {
    &bytes[..bytes.len().min(limit)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kms_host_requests_and_answers_round_trip() {
        let mut wire = Vec::new();
        write_request(&mut wire, Op::KmsTunnel, b"kms.eu-west-1.amazonaws.com:443")
            .await
            .unwrap();
        let (op, payload) = read_request(&mut wire.as_slice()).await.unwrap();
        assert_eq!(op, Op::KmsTunnel);
        assert_eq!(payload, b"kms.eu-west-1.amazonaws.com:443");

        let mut wire = Vec::new();
        write_answer(&mut wire, Ok(b"{}")).await.unwrap();
        assert_eq!(
            read_answer(&mut wire.as_slice(), Op::KeyMaterial).await,
            Ok(b"{}".to_vec())
        );
        let mut wire = Vec::new();
        write_answer(&mut wire, Err("NoSuchKey\n\x1b[31m"))
            .await
            .unwrap();
        assert_eq!(
            read_answer(&mut wire.as_slice(), Op::KeyMaterial).await,
            Err(AnswerError::Refused("NoSuchKey??[31m".into()))
        );
    }

    #[tokio::test]
    async fn kms_host_oversized_truncated_and_garbage_answers_are_refused_before_reading() {
        let huge = [&[0u8][..], &(100u32 * 1024 * 1024).to_be_bytes()].concat();
        let Err(AnswerError::Malformed(error)) =
            read_answer(&mut huge.as_slice(), Op::KeyMaterial).await
        else {
            panic!("100 MiB accepted");
        };
        assert!(
            error.contains("104857600 bytes announced; the limit is 65536"),
            "{error}"
        );
        for garbage in [
            &b""[..],
            b"\x00\x00\x00",
            b"\x07\x00\x00\x00\x00",
            b"\x00\x00\x00\x00\x09abc",
        ] {
            assert!(matches!(
                read_answer(&mut &garbage[..], Op::Credentials).await,
                Err(AnswerError::Malformed(_))
            ));
        }
    }

    #[tokio::test]
    async fn kms_host_refuses_requests_that_are_not_ours() {
        for (wire, expected) in [
            (&b"GET / HTTP/1.1\r\n"[..], "not an EnclaveID request"),
            (b"EID1\x09\x00\x00\x00\x00", "unknown op 9"),
            (b"EID1\x04\x00\x01\x00\x00", "the limit is 1024"),
            (b"EID1\x01", "reading the request"),
        ] {
            let error = read_request(&mut &wire[..]).await.unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
