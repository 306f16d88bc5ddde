//! Nitro attestation for EnclaveID.
//!
//! **Placeholder.** This crate holds only the seam the agent is written against: the
//! [`Attestor`] trait and the [`AttestationRequest`] it takes. The real pieces come with
//! the Nitro attestation issue: `NsmAttestor` (`/dev/nsm`), a `FakeAttestor` that emits
//! real COSE_Sign1/ES384 documents under a test root, and the `Verifier` + `Policy` that
//! check documents against the pinned AWS Nitro root. Until then [`FakeAttestor`]
//! refuses every request, and the agent's `dev` upstream, which needs no attestation,
//! never calls it.
//!
//! The crate is sans-IO and has no tokio: attestation documents are bytes in, bytes out.

#![forbid(unsafe_code)]

/// Errors of the attestor crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The attestor exists only as a placeholder so far.
    #[error("{0} is not implemented yet")]
    NotImplemented(&'static str),
}

/// What an attestation document binds: a public key, user data and a nonce (each
/// optional, as in the NSM API).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttestationRequest {
    /// DER SubjectPublicKeyInfo of a key the enclave holds.
    pub public_key: Option<Vec<u8>>,
    /// Application data.
    pub user_data: Option<Vec<u8>>,
    /// A challenge from the verifier.
    pub nonce: Option<Vec<u8>>,
}

/// Produces attestation documents (COSE_Sign1 bytes) for this enclave.
pub trait Attestor: Send + Sync {
    /// An attestation document binding `request`.
    fn attest(&self, request: &AttestationRequest) -> Result<Vec<u8>, Error>;
}

/// Development stand-in for the Nitro Secure Module. A placeholder: it refuses every
/// request until the fake COSE_Sign1 documents are implemented.
#[derive(Clone, Debug, Default)]
pub struct FakeAttestor;

impl Attestor for FakeAttestor {
    fn attest(&self, _request: &AttestationRequest) -> Result<Vec<u8>, Error> {
        Err(Error::NotImplemented("the fake attestor's documents"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_placeholder_refuses_instead_of_pretending() {
        let error = FakeAttestor
            .attest(&AttestationRequest::default())
            .unwrap_err();
        assert!(error.to_string().contains("not implemented"));
    }
}
