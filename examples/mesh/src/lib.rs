//! The first user's mesh: a `gateway` and an `inference` service that trust each other
//! through X.509-SVIDs from EnclaveID and nothing else.
//!
//! Neither service knows about attestation. Each gets its SVID and trust bundle from the
//! SPIFFE Workload API (the `spiffe` crate's [`spiffe::X509Source`]) and does mTLS with
//! `spiffe-rustls`: the inference server accepts only the gateway's SPIFFE ID, the gateway
//! only the inference service's ([`tls`]). Rotated SVIDs are picked up by the next
//! handshake. Peers' chains are also checked against CRLs ([`tls::CrlFiles`]).
//!
//! Or, as the seed designed it, by DNS name ([`dns`], `--verify dns:NAME`): each service
//! presents the ACM certificate the agent writes to files, and accepts a peer whose
//! certificate chains to the Private CA root and is valid for the name it expects.
//!
//! The inference service's model key is a KMS ciphertext that only the attested inference
//! enclave can open ([`enclaveid_agent::Release`]). The demo (`cargo run -p mesh --example
//! demo`) runs all of it on one machine: the fake KMS, a host, three agents, both services
//! and an impostor.
//!
//! What it uses of EnclaveID is a small surface: addresses and sockets
//! ([`enclaveid_io::Address`]: `vsock://CID:PORT` in an enclave, `tcp://HOST:PORT` or
//! `unix:///PATH` elsewhere), peer CRL checks
//! ([`enclaveid_checks::revocation::RevocationLists`]) and KMS release
//! ([`enclaveid_agent::Release`]). Everything else comes from the Workload API.

#![forbid(unsafe_code)]

pub mod dns;
pub mod gateway;
pub mod inference;
pub mod tls;
pub mod wire;

/// Installs the log subscriber of the mesh's programs (`mesh`, the demo): stderr, filtered
/// by `MESH_LOG` (default `error`; the demo's agents use the fake attestor, which warns
/// about it at every start, and `MESH_LOG=warn` shows those too).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESH_LOG")
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
}

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
    Usage(String),
    /// KMS did not release the model key to this enclave.
    #[error("opening the model key with KMS")]
    Release(#[from] enclaveid_agent::ReleaseError),
    /// This enclave's attestor could not be opened.
    #[error(transparent)]
    Enclave(#[from] enclaveid_agent::EnclaveError),
    /// The agent's configuration could not be read.
    #[error(transparent)]
    Config(#[from] enclaveid_agent::ConfigError),
    /// The network or a file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
