//! The enclave's side of the protocol with `enclaveid host` on the parent instance: one
//! request per connection, frames from `enclaveid_checks::wire`, every length checked
//! against the op's limit before anything is read, and a deadline on each exchange.

use enclaveid_checks::wire::{self, AnswerHead, Credentials, CredentialsError, Op, WireError};
use enclaveid_io::{Address, AddressExt as _, Stream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A client of the host at one address.
#[derive(Clone, Debug)]
pub(crate) struct HostClient {
    address: Address,
}

/// Why the host did not deliver. Every message names what was asked and the host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The host could not be reached.
    #[error("{what} from the host at {address}: cannot connect")]
    Connect {
        /// What was asked.
        what: &'static str,
        /// The host.
        address: Address,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be sent.
    #[error("{what} from the host at {address}: sending the request")]
    Send {
        /// What was asked.
        what: &'static str,
        /// The host.
        address: Address,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host answered with an error text (sanitized).
    #[error("{what} from the host at {address}: the host says: {text}")]
    Refused {
        /// What was asked.
        what: &'static str,
        /// The host.
        address: Address,
        /// Its text, printable ASCII only.
        text: String,
    },
    /// The answer broke the protocol.
    #[error("{what} from the host at {address}: malformed answer")]
    Malformed {
        /// What was asked.
        what: &'static str,
        /// The host.
        address: Address,
        /// How.
        #[source]
        source: AnswerError,
    },
    /// No answer in time.
    #[error(
        "{what} from the host at {address}: no answer within {:?}",
        wire::TIMEOUT
    )]
    Timeout {
        /// What was asked.
        what: &'static str,
        /// The host.
        address: Address,
    },
    /// The credentials are unusable.
    #[error("credentials from the host at {address}")]
    Credentials {
        /// The host.
        address: Address,
        /// Why.
        #[source]
        source: CredentialsError,
    },
}

/// How an answer broke the protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    /// The head announces something the protocol does not allow.
    #[error(transparent)]
    Frame(#[from] WireError),
    /// The connection ended before the head.
    #[error("the connection ended before an answer")]
    Closed(#[source] std::io::Error),
    /// Fewer bytes than announced.
    #[error("{announced} bytes announced, fewer sent")]
    Short {
        /// The announced length.
        announced: usize,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
}

// === impl HostClient ===

impl HostClient {
    /// A client of the host at `address`.
    pub(crate) fn new(address: Address) -> Self {
        Self { address }
    }

    async fn request(
        &self,
        op: Op,
        payload: &[u8],
    ) -> Result<(Box<dyn Stream>, Vec<u8>), HostError> {
        let what = op.what();
        let address = || self.address.clone();
        let exchange = async {
            let mut stream = self
                .address
                .connect()
                .await
                .map_err(|source| HostError::Connect {
                    what,
                    address: address(),
                    source,
                })?;
            let send = async {
                stream.write_all(&wire::encode_request(op, payload)).await?;
                stream.flush().await
            };
            send.await.map_err(|source| HostError::Send {
                what,
                address: address(),
                source,
            })?;
            match read_answer(&mut stream, op).await {
                Ok(Ok(answer)) => Ok((stream, answer)),
                Ok(Err(text)) => Err(HostError::Refused {
                    what,
                    address: address(),
                    text,
                }),
                Err(source) => Err(HostError::Malformed {
                    what,
                    address: address(),
                    source,
                }),
            }
        };
        tokio::time::timeout(wire::TIMEOUT, exchange)
            .await
            .map_err(|_| HostError::Timeout {
                what,
                address: address(),
            })?
    }

    /// The key-material JSON (not yet parsed).
    pub(crate) async fn key_material(&self) -> Result<Vec<u8>, HostError> {
        Ok(self.request(Op::KeyMaterial, &[]).await?.1)
    }

    /// Credentials for the KMS call.
    pub(crate) async fn credentials(&self) -> Result<Credentials, HostError> {
        let json = zeroize::Zeroizing::new(self.request(Op::Credentials, &[]).await?.1);
        Credentials::from_json(&json).map_err(|source| HostError::Credentials {
            address: self.address.clone(),
            source,
        })
    }

    /// The CRL, `None` when the host has none to offer.
    pub(crate) async fn crl(&self) -> Result<Option<Vec<u8>>, HostError> {
        self.optional(Op::Crl).await
    }

    /// The JWT signing key's material JSON, `None` when the host has none to offer.
    pub(crate) async fn jwt_key_material(&self) -> Result<Option<Vec<u8>>, HostError> {
        self.optional(Op::JwtKeyMaterial).await
    }

    /// The key-material JSON ACM for Nitro Enclaves wrote for the certificate `arn`.
    pub(crate) async fn acm_certificate(&self, arn: &str) -> Result<Vec<u8>, HostError> {
        Ok(self.request(Op::AcmCertificate, arn.as_bytes()).await?.1)
    }

    async fn optional(&self, op: Op) -> Result<Option<Vec<u8>>, HostError> {
        let answer = self.request(op, &[]).await?.1;
        Ok((!answer.is_empty()).then_some(answer))
    }

    /// A connection that carries telemetry frames to the host.
    pub(crate) async fn telemetry(&self) -> Result<Box<dyn Stream>, HostError> {
        Ok(self.request(Op::Telemetry, &[]).await?.0)
    }

    /// A byte stream to `target` (`HOST:PORT`) through the host.
    pub(crate) async fn tunnel(&self, target: &str) -> Result<Box<dyn Stream>, HostError> {
        Ok(self.request(Op::KmsTunnel, target.as_bytes()).await?.0)
    }
}

/// Reads an answer to `op`: the payload, or the host's (sanitized) error text. Any length
/// over the op's limit is refused before it is read.
async fn read_answer(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    op: Op,
) -> Result<Result<Vec<u8>, String>, AnswerError> {
    let mut head = [0u8; wire::ANSWER_HEAD];
    stream
        .read_exact(&mut head)
        .await
        .map_err(AnswerError::Closed)?;
    let (len, ok) = match wire::decode_answer_head(&head, op)? {
        AnswerHead::Ok(len) => (len, true),
        AnswerHead::Refused(len) => (len, false),
    };
    let mut payload = vec![0; len];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|source| AnswerError::Short {
            announced: len,
            source,
        })?;
    Ok(if ok {
        Ok(payload)
    } else {
        Err(wire::sanitize(&payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kms_host_answers_are_read_within_their_limits() {
        let frame = wire::encode_answer(Ok(b"{}"));
        assert_eq!(
            read_answer(&mut frame.as_slice(), Op::KeyMaterial)
                .await
                .unwrap(),
            Ok(b"{}".to_vec())
        );
        let frame = wire::encode_answer(Err("NoSuchKey\n"));
        assert_eq!(
            read_answer(&mut frame.as_slice(), Op::KeyMaterial)
                .await
                .unwrap(),
            Err("NoSuchKey?".to_owned())
        );
        for garbage in [
            &b""[..],
            b"\x00\x00\x00",
            b"\x07\x00\x00\x00\x00",
            b"\x00\x00\x00\x00\x09abc",
        ] {
            assert!(
                read_answer(&mut &garbage[..], Op::Credentials)
                    .await
                    .is_err(),
                "{garbage:?} accepted"
            );
        }
    }
}
