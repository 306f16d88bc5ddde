//! What the three sides of EnclaveID agree on byte for byte, as pure functions over bytes:
//! the enclave agent, `enclaveid host` on the untrusted parent instance, and the
//! operator's `enclaveid provision` all read and write these formats through this crate.
//!
//! | module | owns |
//! | --- | --- |
//! | [`material`] | the key-material object ACM for Nitro Enclaves writes (and `provision` too) |
//! | [`cms`] | KMS's `CiphertextForRecipient` (CMS `EnvelopedData`) and the enclave's recipient key |
//! | [`keys`] | private keys in the forms KMS releases, as certificate signers |
//! | [`certs`] | certificates from PEM and from concatenated DER |
//! | [`verify`] | the certificate-material checks: path to the Private CA root on rustls-webpki, validity, CRL, key match, and EnclaveID's rules on top (CA with pathLen 0, one SPIFFE URI on a leaf, no SHA-1) |
//! | [`crl`] | certificate revocation lists as webpki applies them, and what a revocation is |
//! | [`revocation`] | peers' chains checked against CRLs on rustls-webpki |
//! | [`wire`] | the frames of the enclave–host protocol |
//! | [`telemetry`] | the enclave's logs, metrics and health as it sends them to the host, and their Prometheus exposition |
//! | [`address`] | `vsock://CID:PORT`, `tcp://HOST:PORT`, `unix:///PATH` |
//! | [`location`] | where key material lives: `s3://BUCKET/KEY`, `file:///PATH`, ACM's bucket |
//! | [`sigv4`] | AWS Signature Version 4 on a request built by hand (KMS from the enclave, EC2 from `provision acm`) |
//!
//! It leaves I/O to others: sockets and files are `enclaveid-io`'s, AWS calls the host's
//! and the operator's crates', tokio the agent's. Every parser here takes bytes from the
//! untrusted parent instance and is fuzzed (`fuzz/`).
//!
//! ```
//! use enclaveid_checks::material::KeyMaterial;
//!
//! let error = KeyMaterial::from_json(br#"{"certificate": ""}"#).unwrap_err();
//! assert!(error.to_string().contains("key material"));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod certs;
pub mod cms;
pub mod crl;
pub mod keys;
pub mod location;
pub mod material;
pub mod peer;
pub mod revocation;
pub mod secret_pem;
pub mod sigv4;
pub mod telemetry;
pub mod verify;
pub mod wire;

mod pki;

use std::fmt;

/// Displays an error and its causes on one line, `error: cause: cause`, as `anyhow`'s
/// `{:#}` does. Log lines and health reasons use it, so that a cause held as a
/// `#[source]` is shown once and never lost.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Text from the untrusted parent instance made safe for logs: printable ASCII only, at
/// most `limit` bytes of input.
pub fn sanitize(bytes: &[u8], limit: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(limit)])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_prints_every_cause_once() {
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(Chain(&error).to_string(), "outer: inner");
    }

    #[test]
    fn sanitized_text_is_printable_and_bounded() {
        assert_eq!(sanitize(b"ok\n\x1b[31m", 100), "ok??[31m");
        assert_eq!(sanitize(b"abcdef", 3), "abc");
    }
}
