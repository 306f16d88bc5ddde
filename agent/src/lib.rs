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
pub mod bundle_endpoint;
pub mod config;
pub mod host;
pub mod jwt;
pub mod keys;
pub mod kms;
#[cfg(feature = "aws")]
pub mod provision;
pub mod revocation;
pub mod rotation;
pub mod selector;
pub mod server;
pub mod transport;
pub mod workload_attestor;

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use enclaveid_attestor::{AttestationRequest, Policy, VerifiedDocument, Verifier, VerifyAt};

use crate::authority::Authority;
use crate::config::{AttestorConfig, AttestorKind, Config, Upstream};
use crate::kms::upstream::KmsUpstream;
use crate::rotation::{Rotator, Signer};
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
    /// The host (parent instance) did not deliver, or delivered something malformed.
    #[error("{0}")]
    Host(String),
    /// KMS refused or failed the call; the message carries AWS's error code and text.
    #[error("{0}")]
    Kms(String),
    /// `enclaveid provision` could not issue, encrypt or write the material.
    #[error("{0}")]
    Provision(String),
    /// A certificate (the `kms` material's, or a peer's) is on its issuer's CRL.
    #[error("revoked: {message}")]
    Revoked {
        /// The revoked certificate's serial, hex.
        serial: String,
        /// What the CRL says.
        message: String,
    },
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
    upstream: Option<KmsUpstream>,
    problems: tokio::sync::watch::Receiver<Option<String>>,
    bundle_endpoint: Option<bundle_endpoint::Server>,
}

impl Agent {
    /// Prepares everything that can fail on bad input before the socket is bound, then
    /// binds it. Must run inside a tokio runtime.
    pub fn start(config: Config) -> Result<Self, Error> {
        let enclave = Enclave::open(&config.attestor)?;
        let (_, verified) = enclave.attest(None)?;
        let mut node_selectors = node_selectors(&verified);
        // Only node selectors some entry names can change a match; every caller's stream
        // carries its selectors, so the others would only cost memory.
        node_selectors.retain(|s| config.entries.iter().any(|e| e.selectors.contains(s)));
        let attestor = UnixAttestor::new(
            config.entries.iter().flat_map(|e| &e.selectors),
            node_selectors,
        );
        let (problem_tx, problems) = tokio::sync::watch::channel(None);
        let (rotator, snapshots, upstream) = match &config.upstream {
            Upstream::Dev(files) => {
                let authority = match files {
                    None => Authority::generate_dev(&config.trust_domain)?,
                    Some(files) => Authority::load(files, &config.trust_domain)?,
                };
                tracing::info!(
                    trust_domain = %config.trust_domain,
                    entries = config.entries.len(),
                    ca_not_after = %humantime::format_rfc3339(authority.not_after()),
                    "upstream CA ready"
                );
                let bundle = authority.bundle_der();
                let (rotator, snapshots) = Rotator::new(
                    &config.trust_domain,
                    bundle,
                    Some(Signer::Ca(authority)),
                    &config.entries,
                );
                let jwt = jwt::JwtKeys::new(
                    &config.trust_domain,
                    config.jwt_key_rotation,
                    longest_jwt_ttl(&config),
                )?;
                (rotator.with_jwt_keys(jwt), snapshots, None)
            }
            Upstream::Kms(kms) => {
                let roots = authority::parse_pem_certs(
                    &std::fs::read(&kms.trust_bundle_path).map_err(|e| {
                        Error::Config(format!(
                            "upstream.trust_bundle_path = {:?} cannot be read: {e}",
                            kms.trust_bundle_path
                        ))
                    })?,
                    "upstream.trust_bundle_path",
                )?;
                let bundle = roots.iter().flat_map(|c| c.iter().copied()).collect();
                let (rotator, snapshots) =
                    Rotator::new(&config.trust_domain, bundle, None, &config.entries);
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let (jwt_tx, jwt_rx) = tokio::sync::mpsc::channel(1);
                let jwt = jwt::JwtKeys::provisioned(&config.trust_domain, longest_jwt_ttl(&config));
                let upstream = KmsUpstream::new(
                    kms.clone(),
                    roots,
                    enclave,
                    config.trust_domain.clone(),
                    config.entries.iter().map(|e| e.spiffe_id.clone()).collect(),
                    kms::upstream::Outlets {
                        signers: tx,
                        jwt_keys: jwt_tx,
                        problems: problem_tx,
                    },
                );
                tracing::info!(
                    trust_domain = %config.trust_domain,
                    entries = config.entries.len(),
                    host = %kms.host,
                    kms = %kms.kms_endpoint,
                    "upstream: key material released by KMS to this enclave"
                );
                let rotator = rotator
                    .with_updates(rx)
                    .with_jwt_keys(jwt)
                    .with_jwt_updates(jwt_rx);
                (rotator, snapshots, Some(upstream))
            }
        };
        let mut rotator = rotator;
        rotator.rotate_due();
        let bundle_endpoint = config
            .bundle_endpoint
            .clone()
            .map(|b| bundle_endpoint::Server::new(b, &config.trust_domain, snapshots.clone()))
            .transpose()?;
        let socket = BoundSocket::bind(&config.socket_path)?;
        tracing::info!(socket = %socket.path().display(), "serving the SPIFFE Workload API");
        Ok(Self {
            rotator,
            snapshots,
            attestor,
            socket,
            upstream,
            problems,
            bundle_endpoint,
        })
    }

    /// A handle that forces every SVID to be re-minted now (a rotation on demand).
    pub fn renewer(&self) -> rotation::Renewer {
        self.rotator.renewer()
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
        if let Some(upstream) = self.upstream {
            tokio::spawn(upstream.run(stop.clone().cancelled_owned()));
        }
        if let Some(endpoint) = self.bundle_endpoint {
            let stopped = stop.clone().cancelled_owned();
            tokio::spawn(async move {
                if let Err(error) = endpoint.serve(stopped).await {
                    tracing::error!(%error, "the SPIFFE bundle endpoint stopped; workloads are still served");
                }
            });
        }
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            trigger.cancel();
        });
        let served = server::serve(
            self.socket,
            self.snapshots,
            self.problems,
            self.attestor,
            stop.clone().cancelled_owned(),
        )
        .await;
        stop.cancel();
        let _ = rotation.await;
        served
    }
}

/// The longest JWT-SVID lifetime of any entry: how long a replaced key stays in the JWKS.
fn longest_jwt_ttl(config: &Config) -> std::time::Duration {
    config
        .entries
        .iter()
        .map(|e| e.jwt_ttl)
        .max()
        .unwrap_or(config::DEFAULT_JWT_TTL)
}

/// The enclave's attestor, and the verifier its own documents are checked with (the AWS
/// root for NSM, the fake's own root for the fake) before anything relies on them.
pub struct Enclave {
    attestor: Box<dyn enclaveid_attestor::Attestor>,
    verifier: Verifier,
    allow_debug: bool,
}

// === impl Enclave ===

impl Enclave {
    /// Opens the configured attestor.
    pub fn open(config: &AttestorConfig) -> Result<Self, Error> {
        let (attestor, verifier): (Box<dyn enclaveid_attestor::Attestor>, _) = match &config.kind {
            AttestorKind::Fake(fake) => {
                tracing::warn!(
                    "attestor kind = \"fake\": documents are signed by a fake root and prove nothing"
                );
                let attestor = enclaveid_attestor::FakeAttestor::new(fake.clone())?;
                let verifier = Verifier::with_root_der(attestor.root_der());
                (Box::new(attestor), verifier)
            }
            #[cfg(feature = "nsm")]
            AttestorKind::Nsm => (
                Box::new(enclaveid_attestor::NsmAttestor::open()?),
                Verifier::aws(),
            ),
            #[cfg(not(feature = "nsm"))]
            AttestorKind::Nsm => {
                return Err(Error::Config(
                    "attestor kind = \"nsm\" needs a build with `--features nsm`".into(),
                ));
            }
        };
        Ok(Self {
            attestor,
            verifier,
            allow_debug: config.allow_debug,
        })
    }

    /// A fresh document binding `public_key` and a random nonce, verified as a relying
    /// party would verify it.
    pub fn attest(
        &self,
        public_key: Option<Vec<u8>>,
    ) -> Result<(Vec<u8>, VerifiedDocument), Error> {
        let nonce: [u8; 32] = rand::random();
        let request = AttestationRequest {
            nonce: Some(nonce.to_vec()),
            public_key,
            ..AttestationRequest::default()
        };
        let document = self.attestor.attest(&request)?;
        let policy = Policy {
            allow_debug: self.allow_debug,
            nonce: request.nonce.clone(),
            ..Policy::default()
        };
        let verified = self.verifier.verify(
            &document,
            &policy,
            VerifyAt::Time(std::time::SystemTime::now()),
        )?;
        Ok((document, verified))
    }
}

/// The node selectors (`nitro:pcr0..8`, `nitro:module_id`) of the enclave's document.
fn node_selectors(verified: &VerifiedDocument) -> Vec<Selector> {
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
    selectors
}

/// Writes `bytes` to `path` with `mode` through a temporary file (created 0600) in the
/// same directory, synced and renamed into place: never a partial file, and a key is
/// never readable by others, not even before the rename.
pub fn write_file_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".enclaveid-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    if mode != 0o600 {
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
    }
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// The `--dev` socket: `$XDG_RUNTIME_DIR/enclaveid/agent.sock`, or
/// `/tmp/enclaveid-UID/agent.sock` without a runtime directory.
pub fn dev_socket_path(uid: u32) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("enclaveid/agent.sock"),
        None => PathBuf::from(format!("/tmp/enclaveid-{uid}/agent.sock")),
    }
}
