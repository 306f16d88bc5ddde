//! `mesh`: the gateway and inference services. The one-command demo is an example of
//! this package (`cargo run --release -p mesh --example demo`): it links the fake KMS and
//! the host, which this binary, deployed in enclaves, does not.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use enclaveid_io::{Address, AddressExt as _};
use mesh::gateway::Gateway;
use mesh::inference::Inference;
use mesh::tls::{self, CrlFiles};
use tokio_util::sync::CancellationToken;

/// The first user's mesh over EnclaveID: mTLS by SPIFFE ID between a gateway and an
/// inference service, over vsock in enclaves (TCP or Unix sockets elsewhere).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The demo moved: `cargo run --release -p mesh --example demo`.
    #[command(hide = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
    /// The inference service: accept the gateway over mTLS and answer prompts.
    Inference {
        /// Where to listen: vsock://any:PORT in an enclave, tcp://HOST:PORT, unix:///PATH.
        #[arg(long)]
        listen: Address,
        /// The SPIFFE IDs allowed to call (repeatable).
        #[arg(
            long = "allow",
            required_unless_present = "verify",
            conflicts_with = "verify"
        )]
        allow: Vec<String>,
        /// The model key's KMS ciphertext (a `CiphertextBlob`, binary), opened with KMS
        /// `Decrypt` released to this enclave's attestation only.
        #[arg(long, value_name = "FILE", required_unless_present = "model_key")]
        model_key_ciphertext: Option<PathBuf>,
        /// The agent's configuration: its [attestor] is this enclave's, and with
        /// `upstream.kind = "kms"` its host, region and KMS endpoint are the defaults.
        #[arg(long, value_name = "FILE", requires = "model_key_ciphertext")]
        agent_config: Option<PathBuf>,
        /// The AWS region of the KMS key (default: the agent's upstream.region).
        #[arg(long, value_name = "REGION")]
        kms_region: Option<String>,
        /// The host relaying to KMS (default: the agent's upstream.host, else vsock://3:8090).
        #[arg(long, value_name = "ADDRESS")]
        kms_host: Option<Address>,
        /// The KMS endpoint (default: the agent's, else https://kms.REGION.amazonaws.com).
        #[arg(long, value_name = "URL")]
        kms_endpoint: Option<String>,
        /// The model key in plain (file), outside an enclave only.
        #[arg(long, value_name = "FILE", conflicts_with = "model_key_ciphertext")]
        model_key: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// The gateway: send prompts to the inference service over mTLS.
    Gateway {
        /// The inference service: vsock://CID:PORT, tcp://HOST:PORT, unix:///PATH.
        #[arg(long)]
        connect: Address,
        /// The SPIFFE IDs allowed to answer (repeatable).
        #[arg(
            long = "allow",
            required_unless_present = "verify",
            conflicts_with = "verify"
        )]
        allow: Vec<String>,
        /// The prompts to send.
        #[arg(required = true)]
        prompts: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args)]
struct Common {
    /// The Workload API (with --allow).
    #[arg(
        long,
        env = "SPIFFE_ENDPOINT_SOCKET",
        required_unless_present = "verify"
    )]
    socket: Option<String>,
    /// Verify the peer by DNS name instead of SPIFFE ID: dns:NAME. Its certificate must
    /// chain to the Private CA root in --cert-dir and be valid for NAME (the seed's ACM
    /// route; docs/mesh.md).
    #[arg(long, value_name = "dns:NAME", requires = "cert_dir")]
    verify: Option<String>,
    /// With --verify: the directory the agent's [[files]] block writes our ACM
    /// certificate to (svid.pem, svid_key.pem, svid_bundle.pem), re-read at every
    /// handshake so a renewal is used without a restart.
    #[arg(long, value_name = "DIR", requires = "verify")]
    cert_dir: Option<PathBuf>,
    /// CRL files to check peers against (repeatable), such as the agent's
    /// upstream.crl_export_path.
    #[arg(long = "crl")]
    crls: Vec<PathBuf>,
    /// With --allow: the peer's SVID must also carry a bound attestation document of an
    /// enclave whose PCR0 is this (96 hex digits); repeatable. Checked in the handshake
    /// (docs/attested-svids.md).
    #[arg(long = "require-pcr0", value_name = "HEX", conflicts_with = "verify")]
    require_pcr0: Vec<String>,
    /// With --require-pcr0: documents chain to this root (PEM) instead of the AWS Nitro
    /// Enclaves root G1: the fake attestor's, in development and tests only.
    #[arg(long, value_name = "PEM", requires = "require_pcr0")]
    attestation_root: Option<PathBuf>,
}

impl Common {
    /// Who we are and whom we accept: SPIFFE IDs in `allow` through the Workload API, or
    /// the DNS name of --verify with the files of --cert-dir.
    async fn trust(&self, allow: Vec<String>) -> anyhow::Result<tls::Trust> {
        match (&self.verify, &self.cert_dir, &self.socket) {
            (Some(verify), Some(dir), _) => {
                let files = mesh::dns::CertFiles::new(dir);
                files
                    .certified_key()
                    .with_context(|| format!("--cert-dir {}", dir.display()))?;
                Ok(tls::Trust::Dns {
                    files,
                    peer: mesh::dns::parse_verify(verify)?,
                })
            }
            (_, _, Some(socket)) => Ok(tls::Trust::Spiffe {
                source: tls::source(socket).await?,
                allow,
                attestation: enclaveid_agent::peer_tls::Attestation::from_flags(
                    &self.require_pcr0,
                    self.attestation_root.as_deref(),
                )?,
            }),
            _ => anyhow::bail!("--socket (with --allow) or --verify with --cert-dir is needed"),
        }
    }
}

/// Where and as whom the model key's ciphertext is opened.
struct ModelKeyRelease {
    agent_config: Option<PathBuf>,
    region: Option<String>,
    host: Option<Address>,
    endpoint: Option<String>,
}

impl ModelKeyRelease {
    async fn open(
        self,
        ciphertext: &std::path::Path,
    ) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
        use enclaveid_agent::Release;
        use enclaveid_agent::config::{
            AttestorConfig, AttestorKind, Config, KmsEndpoint, Upstream,
        };
        let blob = std::fs::read(ciphertext)
            .with_context(|| format!("--model-key-ciphertext {}", ciphertext.display()))?;
        let (attestor, kms) = match &self.agent_config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--agent-config {}", path.display()))?;
                let config = Config::from_toml(&text, &path.display().to_string())?;
                let kms = match config.upstream {
                    Upstream::Kms(kms) => Some(kms),
                    _ => None,
                };
                (config.attestor, kms)
            }
            None => (
                AttestorConfig {
                    kind: AttestorKind::Nsm,
                    allow_debug: false,
                },
                None,
            ),
        };
        let region = self
            .region
            .or_else(|| kms.as_ref().map(|k| k.region.clone()))
            .context(
                "--kms-region is needed (or an --agent-config with upstream.kind = \"kms\")",
            )?;
        let host = match (self.host, &kms) {
            (Some(host), _) => host,
            (None, Some(kms)) => kms.host.clone(),
            (None, None) => "vsock://3:8090".parse().map_err(anyhow::Error::msg)?,
        };
        let endpoint = match (self.endpoint, &kms) {
            (Some(url), _) => KmsEndpoint::parse(&url)
                .map_err(|e| anyhow::anyhow!("--kms-endpoint {url:?}: {e}"))?,
            (None, Some(kms)) => kms.kms_endpoint.clone(),
            (None, None) => KmsEndpoint::for_region(&region),
        };
        let enclave = enclaveid_agent::Enclave::open(&attestor)?;
        let release = Release::new(enclave, host, endpoint, region);
        release
            .decrypt(&blob)
            .await
            .context("opening the model key with KMS")
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    mesh::init_tracing();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("mesh: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(
    clippy::print_stdout,
    reason = "the demo and the gateway report on stdout"
)]
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo { rest } => {
            let mut err = std::io::stderr().lock();
            use std::io::Write as _;
            writeln!(
                err,
                "mesh: the demo is an example of this package now (it links the fake KMS, which the mesh binary does not): cargo run --release -p mesh --example demo -- {}",
                rest.join(" ")
            )?;
            Ok(ExitCode::from(64))
        }
        Command::Inference {
            listen,
            allow,
            model_key_ciphertext,
            agent_config,
            kms_region,
            kms_host,
            kms_endpoint,
            model_key,
            common,
        } => {
            let key = match (model_key_ciphertext, model_key) {
                (Some(ciphertext), _) => {
                    let release = ModelKeyRelease {
                        agent_config,
                        region: kms_region,
                        host: kms_host,
                        endpoint: kms_endpoint,
                    };
                    release.open(&ciphertext).await?
                }
                (None, Some(path)) => zeroize::Zeroizing::new(
                    std::fs::read(&path)
                        .with_context(|| format!("--model-key {}", path.display()))?,
                ),
                (None, None) => unreachable!("clap requires one of them"),
            };
            let trust = common.trust(allow).await?;
            let server = Inference::with_trust(trust, CrlFiles::new(common.crls), key)?;
            let listener = listen
                .bind()
                .await
                .with_context(|| format!("--listen {listen}"))?;
            let stop = CancellationToken::new();
            let trigger = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                trigger.cancel();
            });
            server.serve(listener, stop).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gateway {
            connect,
            allow,
            prompts,
            common,
        } => {
            let trust = common.trust(allow).await?;
            let gateway = Gateway::with_trust(trust, connect, CrlFiles::new(common.crls))?;
            for prompt in prompts {
                let reply = gateway.send(&prompt).await?;
                println!(
                    "{} answered {prompt:?} with {} (it saw us as {})",
                    reply.peer_id, reply.response.answer, reply.response.client
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
