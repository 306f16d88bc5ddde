//! The EnclaveID agent, the program inside the enclave: it turns a configuration into
//! SPIFFE identities served on the Workload API socket, and keeps them current.
//!
//! Owns: the configuration ([`config`]), selectors ([`selector`]), Unix workload
//! attestation, the signing CA and SVID minting, rotation, JWT-SVID signing keys, the
//! SPIFFE bundle endpoint, the `kms` upstream (material through `enclaveid host`, key
//! released by KMS to this enclave's attestation), the `spire` upstream (the agent as the
//! SPIRE agent of its enclave: `aws_nitro` node attestation, entries and SVIDs from a
//! SPIRE server) and the socket.
//!
//! Leaves to others: the Workload API's wire contract (`enclaveid-workload-api`), Nitro
//! attestation documents (`enclaveid-attestor`), the formats and certificate checks the
//! enclave shares with the parent and the operator (`enclaveid-checks`), sockets and file
//! writes (`enclaveid-io`). It links no AWS SDK: the one AWS call made from the enclave,
//! KMS `Decrypt`, is signed here with `aws-sigv4` and sent through the host's tunnel.
//!
//! The public surface is what a binary or a workload in the enclave needs:
//!
//! | item | for |
//! | --- | --- |
//! | [`Agent`], [`Config`], [`Renewer`] | running the agent (`enclaveid run`) |
//! | [`Enclave`], [`Release`] | a workload's own secret released by KMS to this enclave (a model key) |
//! | [`bundle_document`] | the SPIFFE bundle document (`enclaveid api fetch bundle`) |
//! | [`STATUS_HEADER`] | the health reason (`enclaveid healthcheck`) |
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `fake` | the fake attestor: `attestor kind = "fake"` and `--dev` (development builds) |
//! | `nsm` | the Nitro Secure Module attestor, for builds that run in an enclave |
//!
//! ```no_run
//! # async fn demo() -> Result<(), enclaveid_agent::Error> {
//! let config = enclaveid_agent::Config::dev(1000, "/tmp/agent.sock".into())?;
//! let agent = enclaveid_agent::Agent::start(config)?; // CA ready, SVIDs minted, socket bound
//! agent.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod acm;
mod authority;
mod bundle_endpoint;
pub mod config;
mod enclave;
mod files;
mod host_client;
mod jwt;
mod kms;
pub mod peer_tls;
mod release;
mod rotation;
pub mod selector;
mod server;
mod spire;
pub mod telemetry;
mod time;
mod upstream;
mod workload_attestor;

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

pub use authority::MintError;
pub use bundle_endpoint::{BundleEndpointError, document as bundle_document};
pub use config::{Config, ConfigError};
pub use enclave::{Enclave, EnclaveError};
pub use files::FilesError;
pub use host_client::{AnswerError, HostError};
pub use jwt::JwtKeyError;
pub use kms::KmsError;
pub use release::{Release, ReleaseError};
pub use rotation::Renewer;
pub use server::{STATUS_HEADER, SocketError};
pub use spire::SpireError;

use crate::authority::Authority;
use crate::config::Upstream;
use crate::rotation::{Rotator, Signer};
use crate::server::BoundSocket;
use crate::upstream::KmsUpstream;
use crate::workload_attestor::UnixAttestor;

/// Why the agent could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration, or a file it names, is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The enclave's attestor could not be opened.
    #[error(transparent)]
    Enclave(#[from] EnclaveError),
    /// The enclave could not attest itself, or its own document was refused.
    #[error("enclave attestation")]
    Attestation(#[from] enclaveid_attestor::Error),
    /// The development CA could not be made.
    #[error("the development CA")]
    Mint(#[from] MintError),
    /// The JWT-SVID signing key could not be made.
    #[error("the JWT-SVID signing key")]
    JwtKey(#[from] JwtKeyError),
    /// The Workload API socket could not be prepared or served.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The SPIFFE bundle endpoint could not be prepared.
    #[error("the SPIFFE bundle endpoint")]
    BundleEndpoint(#[from] BundleEndpointError),
}

impl Error {
    /// Whether the error is the operator's input (configuration or the files it names),
    /// for exit code 64 (EX_USAGE).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Config(_)
                | Self::Enclave(EnclaveError::Config(_))
                | Self::Attestation(enclaveid_attestor::Error::DebugMode)
                | Self::Socket(SocketError::UnsafeDirectory { .. })
        )
    }
}

/// An agent whose CA is ready, whose first SVIDs are minted and whose socket is bound.
pub struct Agent {
    /// The snapshot's writer: the rotator (`dev`, `kms`) or the SPIRE upstream.
    writer: Writer,
    renewer: Renewer,
    snapshots: tokio::sync::watch::Receiver<std::sync::Arc<enclaveid_workload_api::Snapshot>>,
    attestor: UnixAttestor,
    socket: BoundSocket,
    problems: tokio::sync::watch::Receiver<Option<String>>,
    bundle_endpoint: Option<bundle_endpoint::Server>,
    limits: enclaveid_workload_api::Limits,
    api_metrics: std::sync::Arc<enclaveid_workload_api::ApiMetrics>,
    telemetry: config::TelemetryConfig,
    hello: enclaveid_checks::telemetry::Hello,
    files: Vec<config::FileOutput>,
    /// Envoy's SDS on the socket (`[sds]`).
    sds: enclaveid_workload_api::sds::SdsConfig,
    /// One sync per `[[acm_certificate]]`, and where they publish.
    acm: Vec<acm::AcmSync>,
    acm_served: tokio::sync::watch::Receiver<std::sync::Arc<acm::AcmCertificates>>,
    acm_problems: Vec<tokio::sync::watch::Receiver<Option<String>>>,
    reloader: Reloader,
    reload_problems: tokio::sync::watch::Receiver<Option<String>>,
}

/// Applies a re-read configuration to the running agent (`SIGHUP` to `enclaveid run`).
#[derive(Clone)]
pub struct Reloader {
    /// The running configuration's parts that a reload cannot change, to say so.
    running: std::sync::Arc<Config>,
    entries: Option<tokio::sync::mpsc::Sender<Vec<config::Entry>>>,
    attestor: UnixAttestor,
    problem: std::sync::Arc<tokio::sync::watch::Sender<Option<String>>>,
}

/// What writes the Workload API's snapshot.
enum Writer {
    /// Local minting (`dev`) or KMS-released material (`kms`).
    Rotator(Box<Rotator>, Option<Box<KmsUpstream>>),
    /// A SPIRE server (`spire`).
    Spire(Box<spire::SpireUpstream>),
}

// === impl Agent ===

impl Agent {
    /// Prepares everything that can fail on bad input before the socket is bound, then
    /// binds it. Must run inside a tokio runtime.
    pub fn start(config: Config) -> Result<Self, Error> {
        let enclave = Enclave::open(&config.attestor)?;
        let (_, verified) = enclave.attest(None)?;
        let hello = enclaveid_checks::telemetry::Hello {
            pcr0: verified
                .pcrs
                .get(&0)
                .map(|v| enclaveid_attestor::hex(v))
                .unwrap_or_default(),
            trust_domain: config.trust_domain.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let node_selectors = enclave::node_selectors(&verified);
        let attestor = match &config.upstream {
            // Entries arrive later from the server; the upstream says what they need.
            Upstream::Spire(_) => {
                UnixAttestor::for_changing_entries(config.limits.max_executable_bytes)
            }
            _ => UnixAttestor::new(
                config.entries.iter().flat_map(|e| &e.selectors),
                node_selectors,
                config.limits.max_executable_bytes,
            ),
        };
        let (problem_tx, problems) = tokio::sync::watch::channel(None);
        // Reloaded entries go to the rotator; the spire upstream takes the server's.
        let (entries_tx, entries_rx) = tokio::sync::mpsc::channel(1);
        let (writer, snapshots, entries_tx) = match &config.upstream {
            Upstream::Spire(spire) => {
                if spire.insecure_bootstrap && !config.allow_insecure_bootstrap {
                    return Err(ConfigError::InsecureBootstrap.into());
                }
                let roots = match &spire.trust_bundle_path {
                    Some(path) => config::read_certs("upstream.trust_bundle_path", path)?,
                    None => Vec::new(),
                };
                tracing::info!(
                    trust_domain = %config.trust_domain,
                    server = %spire.server_address,
                    insecure_bootstrap = spire.insecure_bootstrap,
                    "upstream: a SPIRE server; entries and SVIDs come from it"
                );
                let (upstream, snapshots) = spire::SpireUpstream::new(
                    spire.clone(),
                    config.trust_domain.clone(),
                    enclave,
                    roots,
                    problem_tx,
                    attestor.clone(),
                );
                (Writer::Spire(Box::new(upstream)), snapshots, None)
            }
            local => {
                let (rotator, snapshots, upstream) =
                    Self::local_writer(&config, local, enclave, problem_tx)?;
                let rotator = Box::new(rotator.with_reloads(entries_rx));
                (
                    Writer::Rotator(rotator, upstream.map(Box::new)),
                    snapshots,
                    Some(entries_tx),
                )
            }
        };
        let renewer = match &writer {
            Writer::Rotator(rotator, _) => rotator.renewer(),
            Writer::Spire(spire) => spire.renewer(),
        };
        let (reload_problem, reload_problems) = tokio::sync::watch::channel(None);
        let reloader = Reloader {
            running: std::sync::Arc::new(config.clone()),
            entries: entries_tx,
            attestor: attestor.clone(),
            problem: std::sync::Arc::new(reload_problem),
        };
        let bundle_endpoint = config
            .bundle_endpoint
            .clone()
            .map(|b| bundle_endpoint::Server::new(b, &config.trust_domain, snapshots.clone()))
            .transpose()?;
        let (acm_tx, acm_served) = tokio::sync::watch::channel(std::sync::Arc::default());
        let acm_tx = std::sync::Arc::new(acm_tx);
        let mut acm = Vec::new();
        let mut acm_problems = Vec::new();
        for certificate in &config.acm_certificates {
            let roots = config::read_certs(
                "acm_certificate.trust_bundle_path",
                &certificate.trust_bundle_path,
            )?;
            let (problem, problems) = tokio::sync::watch::channel(None);
            acm.push(acm::AcmSync::new(
                certificate.clone(),
                roots,
                Enclave::open(&config.attestor)?,
                acm_tx.clone(),
                problem,
            ));
            acm_problems.push(problems);
        }
        let socket = BoundSocket::bind(&config.socket_path)?;
        tracing::info!(socket = %socket.path().display(), "serving the SPIFFE Workload API");
        Ok(Self {
            writer,
            renewer,
            snapshots,
            attestor,
            socket,
            problems,
            bundle_endpoint,
            limits: config.limits.api.clone(),
            api_metrics: std::sync::Arc::default(),
            telemetry: config.telemetry.clone(),
            hello,
            files: config.files.clone(),
            sds: config.sds.for_trust_domain(&config.trust_domain),
            acm,
            acm_served,
            acm_problems,
            reloader,
            reload_problems,
        })
    }

    /// The rotator of the `dev` and `kms` upstreams, its first SVIDs minted.
    #[allow(clippy::type_complexity, reason = "private, three parts")]
    fn local_writer(
        config: &Config,
        upstream: &Upstream,
        enclave: Enclave,
        problem_tx: tokio::sync::watch::Sender<Option<String>>,
    ) -> Result<
        (
            Rotator,
            tokio::sync::watch::Receiver<std::sync::Arc<enclaveid_workload_api::Snapshot>>,
            Option<KmsUpstream>,
        ),
        Error,
    > {
        let enclave = std::sync::Arc::new(enclave);
        let (rotator, snapshots, upstream) = match upstream {
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
                    longest_jwt_ttl(config),
                )?;
                (
                    rotator.with_jwt_keys(jwt).with_enclave(enclave),
                    snapshots,
                    None,
                )
            }
            Upstream::Kms(kms) => {
                let roots =
                    config::read_certs("upstream.trust_bundle_path", &kms.trust_bundle_path)?;
                let bundle = roots.iter().flat_map(|c| c.iter().copied()).collect();
                let (rotator, snapshots) =
                    Rotator::new(&config.trust_domain, bundle, None, &config.entries);
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let (jwt_tx, jwt_rx) = tokio::sync::mpsc::channel(1);
                let jwt = jwt::JwtKeys::provisioned(&config.trust_domain, longest_jwt_ttl(config));
                let upstream = KmsUpstream::new(
                    kms.clone(),
                    roots,
                    enclave.clone(),
                    config.trust_domain.clone(),
                    config.entries.iter().map(|e| e.spiffe_id.clone()).collect(),
                    upstream::Outlets {
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
                    .with_jwt_updates(jwt_rx)
                    .with_enclave(enclave);
                (rotator, snapshots, Some(upstream))
            }
            Upstream::Spire(_) => unreachable!("the spire upstream has no rotator"),
        };
        let mut rotator = rotator;
        rotator.rotate_due();
        Ok((rotator, snapshots, upstream))
    }

    /// A handle that forces every SVID to be re-minted now (a rotation on demand).
    pub fn renewer(&self) -> Renewer {
        self.renewer.clone()
    }

    /// A handle that applies a re-read configuration (`SIGHUP`).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Resolves when every entry has an SVID: the first ones are minted (at once with the
    /// `dev` upstream; after the first sync with `kms`). A supervisor starts its workload
    /// then. It never resolves while an SVID is missing, so wait with a deadline.
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut snapshots = self.snapshots.clone();
        async move {
            let all_issued = |s: &std::sync::Arc<enclaveid_workload_api::Snapshot>| {
                s.identities.iter().all(|i| i.svid.is_some())
            };
            if snapshots.wait_for(all_issued).await.is_err() {
                // The agent stopped before it was ready: never resolve.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Serves and rotates until `shutdown` resolves, then ends open streams, drains, and
    /// removes the socket.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let stop = CancellationToken::new();
        let (files_problem, files_problems) = tokio::sync::watch::channel(None);
        let problems = merge_problems(
            [self.problems, self.reload_problems, files_problems]
                .into_iter()
                .chain(self.acm_problems)
                .collect(),
        );
        for sync in self.acm {
            tokio::spawn(sync.run(stop.clone().cancelled_owned()));
        }
        let rotation = match self.writer {
            Writer::Rotator(rotator, upstream) => {
                if let Some(upstream) = upstream {
                    tokio::spawn(upstream.run(stop.clone().cancelled_owned()));
                }
                tokio::spawn(rotator.run(stop.clone().cancelled_owned()))
            }
            Writer::Spire(spire) => tokio::spawn(spire.run(stop.clone().cancelled_owned())),
        };
        let reserved = self
            .bundle_endpoint
            .as_ref()
            .map_or(0, bundle_endpoint::Server::max_connections);
        if let Some(endpoint) = self.bundle_endpoint {
            let stopped = stop.clone().cancelled_owned();
            tokio::spawn(async move {
                if let Err(error) = endpoint.serve(stopped).await {
                    tracing::error!(error = %enclaveid_checks::Chain(&error), "the SPIFFE bundle endpoint stopped; workloads are still served");
                }
            });
        }
        let sources = || telemetry::Sources {
            snapshots: self.snapshots.clone(),
            problems: problems.clone(),
            api: self.api_metrics.clone(),
        };
        if let Some(sender) = telemetry::Sender::new(&self.telemetry, self.hello.clone(), sources())
        {
            tokio::spawn(sender.run(stop.clone().cancelled_owned()));
        }
        if let Some(path) = self.telemetry.metrics_socket.clone() {
            tokio::spawn(telemetry::serve_local(
                path,
                sources(),
                stop.clone().cancelled_owned(),
            ));
        }
        tokio::spawn(files::run(
            self.files,
            self.snapshots.clone(),
            self.acm_served,
            files_problem,
            stop.clone().cancelled_owned(),
        ));
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            trigger.cancel();
        });
        let served = server::serve(
            self.socket,
            self.snapshots,
            problems,
            self.attestor,
            self.limits,
            reserved,
            self.api_metrics,
            self.sds,
            stop.clone().cancelled_owned(),
        )
        .await;
        stop.cancel();
        let _ = rotation.await;
        Ok(served?)
    }
}

/// One health reason from all of them (the upstream's, the last reload's, each ACM
/// certificate's), joined with "; ", or `None` when none has one.
fn merge_problems(
    sources: Vec<tokio::sync::watch::Receiver<Option<String>>>,
) -> tokio::sync::watch::Receiver<Option<String>> {
    fn combine(sources: &[tokio::sync::watch::Receiver<Option<String>>]) -> Option<String> {
        let reasons: Vec<String> = sources.iter().filter_map(|s| s.borrow().clone()).collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
    let (tx, rx) = tokio::sync::watch::channel(combine(&sources));
    let tx = std::sync::Arc::new(tx);
    // One watcher per source; a source whose sender is gone keeps its last word.
    for mut source in sources.clone() {
        let (tx, all) = (tx.clone(), sources.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = source.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
                tx.send_replace(combine(&all));
            }
        });
    }
    rx
}

// === impl Reloader ===

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// Applies `reread`, the configuration file read again: its entries replace the
    /// running ones (unchanged entries keep their SVIDs and streams). A configuration that
    /// failed validation is refused: one log line naming the key and the value, the
    /// running configuration stays, and health says so until a reload succeeds. What a
    /// reload cannot change (trust domain, upstream, attestor, socket, limits, telemetry,
    /// bundle endpoint, `[[files]]`, `[[acm_certificate]]`) is logged and applies at the
    /// next start.
    pub fn reload(&self, reread: Result<Config, ConfigError>) {
        let config = match reread {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(error = %error, "configuration reload refused; the running configuration stays");
                self.problem
                    .send_replace(Some(format!("configuration reload refused: {error}")));
                return;
            }
        };
        let running = &self.running;
        let unchanged = [
            ("trust_domain", config.trust_domain == running.trust_domain),
            ("upstream", config.upstream == running.upstream),
            ("attestor", config.attestor == running.attestor),
            ("socket_path", config.socket_path == running.socket_path),
            ("limits", config.limits == running.limits),
            ("sds", config.sds == running.sds),
            ("telemetry", config.telemetry == running.telemetry),
            (
                "bundle_endpoint",
                config.bundle_endpoint == running.bundle_endpoint,
            ),
            ("files", config.files == running.files),
            (
                "acm_certificate",
                config.acm_certificates == running.acm_certificates,
            ),
            ("svid_ttl", config.svid_ttl == running.svid_ttl),
        ];
        for (key, same) in unchanged {
            if !same {
                tracing::warn!(
                    key,
                    "changed in the file; a reload does not apply it: it takes effect at the next start"
                );
            }
        }
        let Some(entries) = &self.entries else {
            tracing::info!("entries come from the SPIRE server; nothing to reload");
            self.problem.send_replace(None);
            return;
        };
        self.attestor
            .set_needs(config.entries.iter().flat_map(|e| &e.selectors));
        if entries.try_send(config.entries).is_err() {
            tracing::warn!("a reload is already being applied; this one is dropped");
            return;
        }
        self.problem.send_replace(None);
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

/// The `--dev` socket: `$XDG_RUNTIME_DIR/enclaveid/agent.sock`, or
/// `/tmp/enclaveid-UID/agent.sock` without a runtime directory.
pub fn dev_socket_path(uid: u32) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("enclaveid/agent.sock"),
        None => PathBuf::from(format!("/tmp/enclaveid-{uid}/agent.sock")),
    }
}
