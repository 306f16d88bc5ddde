//! The EnclaveID agent: it turns a configuration into SPIFFE identities served on the
//! Workload API socket.
//!
//! Owns: the configuration ([`config`]), selectors ([`selector`]), Unix workload
//! attestation ([`workload_attestor`]), the signing CA and SVID minting ([`authority`],
//! [`keys`]), rotation ([`rotation`]) and the socket ([`server`]). Leaves the wire
//! protocol to `enclaveid-workload-api` and enclave attestation to `enclaveid-attestor`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), enclaveid_agent::Error> {
//! let config = enclaveid_agent::config::Config::dev(1000, "/tmp/agent.sock".into())?;
//! let agent = enclaveid_agent::Agent::start(config)?; // CA ready, SVIDs minted, socket bound
//! agent.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod authority;
pub mod config;
pub mod keys;
pub mod kms;
pub mod rotation;
pub mod selector;
pub mod server;
pub mod workload_attestor;

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::authority::Authority;
use crate::config::{AttestorConfig, AttestorKind, Config, Upstream};
use crate::rotation::Rotator;
use crate::selector::Selector;
use crate::server::BoundSocket;
use crate::workload_attestor::UnixAttestor;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is malformed or inconsistent; the message names the key, the
    /// value and what is accepted.
    #[error("{0}")]
    Config(String),
    /// A private key could not be used.
    #[error("{0}")]
    Key(String),
    /// A certificate could not be used.
    #[error("{0}")]
    Certificate(String),
    /// A cryptographic operation failed.
    #[error("{0}")]
    Crypto(String),
    /// The enclave could not attest itself, or its own document was refused.
    #[error("enclave attestation: {0}")]
    Attestation(#[from] enclaveid_attestor::Error),
    /// A key-material object is malformed.
    #[error("key material: {0}")]
    KeyMaterial(String),
    /// A KMS `CiphertextForRecipient` is malformed, or does not decrypt with our key.
    #[error("CiphertextForRecipient: {0}")]
    Cms(String),
    /// An SVID could not be minted.
    #[error("{0}")]
    Mint(String),
    /// The Workload API socket could not be prepared or served.
    #[error("{0}")]
    Socket(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the error is the operator's input (configuration or the files it names),
    /// for exit code 64 (EX_USAGE).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Key(_) | Self::Certificate(_))
            || matches!(
                self,
                Self::Attestation(enclaveid_attestor::Error::DebugMode)
            )
    }
}

/// An agent whose CA is ready, whose first SVIDs are minted and whose socket is bound.
pub struct Agent {
    rotator: Rotator,
    snapshots: tokio::sync::watch::Receiver<std::sync::Arc<enclaveid_workload_api::Snapshot>>,
    attestor: UnixAttestor,
    socket: BoundSocket,
}

impl Agent {
    /// Prepares everything that can fail on bad input before the socket is bound, then
    /// binds it. Must run inside a tokio runtime.
    pub fn start(config: Config) -> Result<Self, Error> {
        let authority = match &config.upstream {
            Upstream::Dev(None) => Authority::generate_dev(&config.trust_domain)?,
            Upstream::Dev(Some(files)) => Authority::load(files, &config.trust_domain)?,
        };
        let mut node_selectors = attest_enclave(&config.attestor)?;
        // Only node selectors some entry names can change a match; every caller's stream
        // carries its selectors, so the others would only cost memory.
        node_selectors.retain(|s| config.entries.iter().any(|e| e.selectors.contains(s)));
        tracing::info!(
            trust_domain = %config.trust_domain,
            entries = config.entries.len(),
            ca_not_after = %humantime::format_rfc3339(authority.not_after()),
            "upstream CA ready"
        );
        let attestor = UnixAttestor::new(
            config.entries.iter().flat_map(|e| &e.selectors),
            node_selectors,
        );
        let (mut rotator, snapshots) = Rotator::new(authority, &config.entries);
        rotator.rotate_due();
        let socket = BoundSocket::bind(&config.socket_path)?;
        tracing::info!(socket = %socket.path().display(), "serving the SPIFFE Workload API");
        Ok(Self {
            rotator,
            snapshots,
            attestor,
            socket,
        })
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Serves and rotates until `shutdown` resolves, then ends open streams, drains, and
    /// removes the socket.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let stop = CancellationToken::new();
        let rotation = tokio::spawn(self.rotator.run(stop.clone().cancelled_owned()));
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            trigger.cancel();
        });
        let served = server::serve(
            self.socket,
            self.snapshots,
            self.attestor,
            stop.clone().cancelled_owned(),
        )
        .await;
        stop.cancel();
        let _ = rotation.await;
        served
    }
}

/// Attests this enclave with the configured attestor and verifies its own document (the
/// AWS root for NSM, the fake's own root for the fake), returning the node selectors
/// (`nitro:pcr0..8`, `nitro:module_id`) that entries may require.
fn attest_enclave(config: &AttestorConfig) -> Result<Vec<Selector>, Error> {
    use enclaveid_attestor::{AttestationRequest, Attestor as _, Policy, Verifier, VerifyAt};

    let nonce: [u8; 32] = rand::random();
    let request = AttestationRequest {
        nonce: Some(nonce.to_vec()),
        ..AttestationRequest::default()
    };
    let (document, verifier) = match &config.kind {
        AttestorKind::Fake(fake) => {
            tracing::warn!(
                "attestor kind = \"fake\": documents are signed by a root made at start and prove nothing"
            );
            let attestor = enclaveid_attestor::FakeAttestor::new(fake.clone())?;
            (
                attestor.attest(&request)?,
                Verifier::with_root_der(attestor.root_der()),
            )
        }
        #[cfg(feature = "nsm")]
        AttestorKind::Nsm => (
            enclaveid_attestor::NsmAttestor::open()?.attest(&request)?,
            Verifier::aws(),
        ),
        #[cfg(not(feature = "nsm"))]
        AttestorKind::Nsm => {
            return Err(Error::Config(
                "attestor kind = \"nsm\" needs a build with `--features nsm`".into(),
            ));
        }
    };
    let policy = Policy {
        allow_debug: config.allow_debug,
        nonce: request.nonce.clone(),
        ..Policy::default()
    };
    let verified = verifier.verify(
        &document,
        &policy,
        VerifyAt::Time(std::time::SystemTime::now()),
    )?;
    let mut selectors: Vec<Selector> = verified
        .pcrs
        .iter()
        .filter(|(i, _)| **i <= 8)
        .map(|(i, v)| Selector::Pcr(*i, enclaveid_attestor::hex(v)))
        .collect();
    selectors.push(Selector::ModuleId(verified.module_id.clone()));
    tracing::info!(
        module_id = %verified.module_id,
        pcr0 = %verified.pcrs.get(&0).map(|v| enclaveid_attestor::hex(v)).unwrap_or_default(),
        debug_mode = verified.debug_mode,
        "enclave attested"
    );
    Ok(selectors)
}

/// The `--dev` socket: `$XDG_RUNTIME_DIR/enclaveid/agent.sock`, or
/// `/tmp/enclaveid-UID/agent.sock` without a runtime directory.
pub fn dev_socket_path(uid: u32) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("enclaveid/agent.sock"),
        None => PathBuf::from(format!("/tmp/enclaveid-{uid}/agent.sock")),
    }
}
