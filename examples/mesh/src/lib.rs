//! The first user's mesh: a `gateway` and an `inference` service that trust each other
//! through X.509-SVIDs from EnclaveID and nothing else.
//!
//! Neither service knows about attestation. Each gets its SVID and trust bundle from the
//! SPIFFE Workload API (the `spiffe` crate's [`spiffe::X509Source`]) and does mTLS with
//! `spiffe-rustls`: the inference server accepts only the gateway's SPIFFE ID, the gateway
//! only the inference service's ([`tls`]). Rotated SVIDs are picked up by the next
//! handshake. Peers' chains are also checked against CRLs ([`tls::CrlFiles`]).
//!
//! The inference service's model key is a KMS ciphertext that only the attested inference
//! enclave can open ([`enclaveid_agent::kms::release`]). [`demo`] runs all of it on one
//! machine: the fake KMS, a host, three agents, both services and an impostor.
//!
//! Addresses are the agent's ([`enclaveid_agent::transport::Address`]): `vsock://CID:PORT`
//! in an enclave, `tcp://HOST:PORT` or `unix:///PATH` elsewhere.

#![forbid(unsafe_code)]

pub mod demo;
pub mod gateway;
pub mod inference;
pub mod tls;
pub mod wire;

/// Errors of the mesh services.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Workload API could not give an SVID or bundle.
    #[error("SPIFFE Workload API: {0}")]
    Source(String),
    /// The TLS handshake failed, or the configuration could not be built.
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer's chain is revoked, or could not be checked against the CRLs.
    #[error("peer refused: {0}")]
    Revoked(String),
    /// The peer broke the request/response protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A bad option: the message names it, the value and what is accepted.
    #[error("{0}")]
    Config(String),
    /// An agent-side operation (transport, KMS release, agent start) failed.
    #[error(transparent)]
    Agent(#[from] enclaveid_agent::Error),
    /// The network or a file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
