//! `enclaveid`: the EnclaveID agent and its command-line tools, one program for every
//! side of the trust boundary. This crate only composes: it parses arguments and calls
//! the agent (`run`, `api`, `healthcheck`, `attest`), the parent instance's host
//! (`host`, feature `host`) and the operator's tooling (`provision`, feature
//! `provision`). An enclave image is built without those two:
//! `cargo build -p enclaveid-cli --no-default-features --features nsm`.
//!
//! Thin on purpose: tracing, the version line, the CLI, then library code. Bad
//! configuration exits 64 (EX_USAGE) before any socket is bound.

#![forbid(unsafe_code)]

mod api;
mod attest;
mod health;
#[cfg(feature = "host")]
mod host;
#[cfg(feature = "provision")]
mod provision;
mod proxy;
mod raw;
mod supervise;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use enclaveid_agent::Agent;
use enclaveid_agent::config::{Config, ConfigError, DEFAULT_SOCKET_PATH};

/// Every heap block is zeroed when it is freed, and a reallocation moves to a new block
/// and wipes the old one. Keys and tokens are zeroized by the types that hold them; this
/// also covers the copies made where no type of ours is in charge: tonic's encode buffer,
/// h2's send buffer, rustls and hyper records, the AWS SDK's request bodies. A rotated-out
/// key is then gone from the process, not merely unreferenced.
#[global_allocator]
static ALLOCATOR: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

/// EX_USAGE from sysexits.h: the command or its configuration is wrong.
const EXIT_USAGE: u8 = 64;

/// The environment variable that selects log levels (EnvFilter syntax).
const ENV_LOG: &str = "ENCLAVEID_LOG";
/// `plain` (default) or `json`.
const ENV_LOG_FORMAT: &str = "ENCLAVEID_LOG_FORMAT";
/// The SPIFFE-standard variable naming the Workload API endpoint.
const ENV_ENDPOINT: &str = "SPIFFE_ENDPOINT_SOCKET";

#[derive(Parser)]
#[command(
    name = "enclaveid",
    version,
    about = "SPIFFE identities for AWS Nitro Enclaves"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: mint SVIDs and serve the SPIFFE Workload API.
    Run(RunArgs),
    /// Talk to a running agent through the Workload API.
    #[command(subcommand)]
    Api(ApiCommand),
    /// Exit 0 when the agent answers and serves current SVIDs, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Nitro attestation documents: verify one, or make a fake one for development.
    #[command(subcommand)]
    Attest(AttestCommand),
    /// mTLS in front of a plain TCP service (`proxy server`) or behind a plaintext client
    /// (`proxy client`), with the SVID and bundles of the Workload API.
    #[command(subcommand)]
    Proxy(proxy::ProxyCommand),
    /// On the parent instance: serve an enclave's `kms` upstream (key material, AWS
    /// credentials, a KMS tunnel, the CRL).
    #[cfg(feature = "host")]
    Host(Box<host::HostArgs>),
    /// The operator's side: issue material with AWS Private CA, encrypt its key with KMS,
    /// write it to S3; print the KMS key policy; rotate; revoke.
    #[cfg(feature = "provision")]
    #[command(subcommand)]
    Provision(provision::ProvisionCommand),
}

#[derive(Subcommand)]
enum AttestCommand {
    /// Verify a document and print its fields as JSON (exit 1 with the reason if refused).
    Verify(Box<attest::VerifyArgs>),
    /// Write a fake document (development only), signed under a root generated now.
    #[cfg(feature = "fake")]
    Fake(Box<attest::FakeArgs>),
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    source: ConfigSource,
    /// A workload to supervise (after `--`): started once every entry has its first SVID,
    /// with SPIFFE_ENDPOINT_SOCKET set; SIGTERM and SIGINT are passed on, children are
    /// reaped, and `enclaveid` exits with the workload's status after stopping the agent.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<std::ffi::OsString>,
    /// With a COMMAND: how long to wait for the first SVIDs before giving up (exit 1,
    /// the workload not started).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// Allow `upstream.insecure_bootstrap = true` (the `spire` upstream trusts the first
    /// server that presents the SPIRE server's ID). Development only; never in an image.
    #[arg(long)]
    allow_insecure_bootstrap: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct ConfigSource {
    /// The agent's TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Development mode: trust domain enclaveid.dev, a generated CA, an identity for the
    /// invoking user, a socket in a per-user runtime directory. No file needed.
    #[arg(long)]
    dev: bool,
}

#[derive(Subcommand)]
enum ApiCommand {
    /// Fetch once and print (or write) the result.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Stream X.509-SVID updates and print each one.
    Watch(EndpointArgs),
    /// Validate through the agent.
    #[command(subcommand)]
    Validate(ValidateCommand),
}

#[derive(Subcommand)]
enum FetchCommand {
    /// Fetch X.509-SVIDs and trust bundles.
    X509(FetchX509Args),
    /// Fetch JWT-SVIDs (one per identity, or the one named) for an audience.
    Jwt(FetchJwtArgs),
    /// Fetch the JWT bundles (JWKS per trust domain).
    JwtBundles(TimeoutArgs),
    /// Print the trust domain's SPIFFE bundle document (what the bundle endpoint serves),
    /// to bootstrap a federated server: `spire-server bundle set -format spiffe`.
    Bundle(FetchBundleArgs),
}

#[derive(Args)]
struct FetchBundleArgs {
    #[command(flatten)]
    common: TimeoutArgs,
    /// The trust domain, e.g. example.org.
    #[arg(long, value_name = "TD", value_parser = |s: &str| spiffe::TrustDomain::new(s).map_err(|e| e.to_string()))]
    trust_domain: spiffe::TrustDomain,
}

#[derive(Subcommand)]
enum ValidateCommand {
    /// Validate a JWT-SVID for an audience; prints its SPIFFE ID and claims.
    Jwt(ValidateJwtArgs),
}

#[derive(Args)]
struct TimeoutArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Give up after this long (humantime).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct FetchJwtArgs {
    #[command(flatten)]
    common: TimeoutArgs,
    /// An audience the token is for (repeatable, at least one).
    #[arg(long = "audience", required = true, value_name = "AUDIENCE")]
    audience: Vec<String>,
    /// Only this identity's token (one of the caller's SPIFFE IDs).
    #[arg(long, value_name = "SPIFFE_ID")]
    spiffe_id: Option<String>,
}

#[derive(Args)]
struct ValidateJwtArgs {
    #[command(flatten)]
    common: TimeoutArgs,
    /// The audience the token must carry.
    #[arg(long, value_name = "AUDIENCE")]
    audience: String,
    /// Read the token from this file; `-` (the default) is standard input.
    #[arg(long, value_name = "PATH", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The token itself, only with --token-in-argv: on the command line every user of
    /// the machine can read it (/proc/PID/cmdline) while the command runs.
    #[arg(value_name = "TOKEN")]
    token: Option<String>,
    /// Accept TOKEN on the command line despite that exposure.
    #[arg(long)]
    token_in_argv: bool,
}

/// The largest token read from a file or standard input.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

impl ValidateJwtArgs {
    /// The token: from the command line only when asked for explicitly, else from
    /// `--token-file` or standard input.
    fn token(&self) -> anyhow::Result<String> {
        use std::io::{IsTerminal as _, Read as _};
        if let Some(token) = &self.token {
            if !self.token_in_argv {
                return Err(UsageError(
                    "a token on the command line can be read by every user of this machine (/proc/PID/cmdline); \
                     pipe it on standard input or pass --token-file PATH, or add --token-in-argv to accept that"
                        .into(),
                )
                .into());
            }
            return Ok(token.clone());
        }
        let (from, reader): (String, Box<dyn std::io::Read>) = match &self.token_file {
            Some(path) if path.as_os_str() != "-" => (
                path.display().to_string(),
                Box::new(
                    std::fs::File::open(path)
                        .map_err(|e| UsageError(format!("--token-file {}: {e}", path.display())))?,
                ),
            ),
            _ => {
                if std::io::stdin().is_terminal() {
                    eprintln!(
                        "enclaveid: reading the JWT-SVID from standard input (end with Ctrl-D)"
                    );
                }
                ("standard input".into(), Box::new(std::io::stdin()))
            }
        };
        let mut text = String::new();
        reader
            .take(MAX_TOKEN_BYTES + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading the token from {from}"))?;
        if text.len() as u64 > MAX_TOKEN_BYTES {
            return Err(UsageError(format!(
                "the token from {from} is over {MAX_TOKEN_BYTES} bytes; a JWT-SVID is far smaller"
            ))
            .into());
        }
        let token = text.trim();
        if token.is_empty() {
            return Err(UsageError(format!("no token on {from}")).into());
        }
        Ok(token.to_owned())
    }
}

#[derive(Args)]
struct EndpointArgs {
    /// The Workload API socket: a path or a `unix://` URI. Default: $SPIFFE_ENDPOINT_SOCKET,
    /// else /run/enclaveid/agent.sock or the `run --dev` socket, whichever exists.
    #[arg(long, value_name = "SOCKET")]
    socket: Option<String>,
}

#[derive(Args)]
struct FetchX509Args {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Write svid.N.pem, svid.N.key (mode 0600) and bundle.N.pem into this directory, as
    /// `spire-agent api fetch x509 -write` names them.
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
    /// Give up after this long (humantime).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct HealthcheckArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Give up after this long (humantime).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("enclaveid: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Api(ApiCommand::Fetch(FetchCommand::X509(args))) => {
                api::fetch_x509(
                    &endpoint(&args.endpoint)?,
                    args.write.as_deref(),
                    args.timeout,
                )
                .await
            }
            Command::Api(ApiCommand::Watch(args)) => api::watch(&endpoint(&args)?).await,
            Command::Api(ApiCommand::Fetch(FetchCommand::Jwt(args))) => {
                raw::fetch_jwt(
                    &endpoint(&args.common.endpoint)?,
                    &args.audience,
                    args.spiffe_id.as_deref(),
                    args.common.timeout,
                )
                .await
            }
            Command::Api(ApiCommand::Fetch(FetchCommand::Bundle(args))) => {
                raw::fetch_bundle(
                    &endpoint(&args.common.endpoint)?,
                    &args.trust_domain,
                    args.common.timeout,
                )
                .await
            }
            Command::Api(ApiCommand::Fetch(FetchCommand::JwtBundles(args))) => {
                raw::fetch_jwt_bundles(&endpoint(&args.endpoint)?, args.timeout).await
            }
            Command::Api(ApiCommand::Validate(ValidateCommand::Jwt(args))) => {
                raw::validate_jwt(
                    &endpoint(&args.common.endpoint)?,
                    &args.audience,
                    &args.token()?,
                    args.common.timeout,
                )
                .await
            }
            Command::Healthcheck(args) => {
                health::check(&endpoint(&args.endpoint)?, args.timeout).await
            }
            Command::Attest(AttestCommand::Verify(args)) => attest::verify(*args),
            Command::Proxy(command) => proxy::run(command, shutdown_signal()).await,
            #[cfg(feature = "fake")]
            Command::Attest(AttestCommand::Fake(args)) => attest::fake(*args),
            #[cfg(feature = "host")]
            Command::Host(args) => host::run(*args, shutdown_signal()).await,
            #[cfg(feature = "provision")]
            Command::Provision(command) => provision::run(command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            let usage = is_usage(&error);
            tracing::error!("{error:#}");
            eprintln!("enclaveid: {error:#}");
            if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Whether `error` is the operator's input (a flag, the configuration, a file it names),
/// for exit code 64 (EX_USAGE).
fn is_usage(error: &anyhow::Error) -> bool {
    let agent = error
        .downcast_ref::<enclaveid_agent::Error>()
        .is_some_and(enclaveid_agent::Error::is_usage);
    let config = error.downcast_ref::<ConfigError>().is_some();
    #[cfg(feature = "host")]
    let host = error.downcast_ref::<enclaveid_host::HostError>().is_some();
    #[cfg(not(feature = "host"))]
    let host = false;
    #[cfg(feature = "provision")]
    let provision = error
        .downcast_ref::<enclaveid_provision::ProvisionError>()
        .is_some_and(enclaveid_provision::ProvisionError::is_usage);
    #[cfg(not(feature = "provision"))]
    let provision = false;
    agent || config || host || provision || error.downcast_ref::<UsageError>().is_some()
}

/// A flag whose value is not accepted; the message names the flag, the value and what is
/// accepted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        git = option_env!("ENCLAVEID_GIT_SHA").unwrap_or("unknown"),
        "enclaveid starting"
    );
    let uid = nix::unistd::geteuid().as_raw();
    let config = match &args.source.config {
        Some(path) => {
            // An unreadable config file is a usage error too.
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            Config::from_toml(&text, &path.display().to_string())?
        }
        None => {
            // The socket's directory is checked when it is bound: one another user
            // created first under /tmp is refused.
            Config::dev(uid, enclaveid_agent::dev_socket_path(uid))?
        }
    };
    let mut config = config;
    config.allow_insecure_bootstrap = args.allow_insecure_bootstrap;
    // SIGHUP re-reads the configuration file; SIGUSR1 forces a rotation (every SVID
    // re-minted now). Both are caught from before the socket is bound: a signal sent as
    // soon as the socket appears is handled once the agent runs, and never takes the
    // default action, which would end the process.
    use tokio::signal::unix::{SignalKind, signal};
    let hangup = signal(SignalKind::hangup());
    let usr1 = signal(SignalKind::user_defined1());
    let agent = Agent::start(config)?;
    if args.source.dev {
        let socket = agent.socket_path().display().to_string();
        let mut out = std::io::stdout().lock();
        use std::io::Write as _;
        writeln!(
            out,
            "EnclaveID dev agent: trust domain enclaveid.dev, identity spiffe://enclaveid.dev/uid/{uid}\n\
             Workload API socket: {socket}\n\n\
             In another shell:\n  export {ENV_ENDPOINT}=unix://{socket}\n  enclaveid api fetch x509 --write ./svid\n"
        )?;
        out.flush()?;
    }
    match hangup {
        Ok(mut hangup) => {
            let reloader = agent.reloader();
            let path = args.source.config.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    let Some(path) = &path else {
                        tracing::warn!(
                            "SIGHUP: --dev has no configuration file to reload; SIGUSR1 renews every SVID"
                        );
                        continue;
                    };
                    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
                    let reread = std::fs::read_to_string(path)
                        .map_err(|source| ConfigError::Read {
                            path: path.clone(),
                            source,
                        })
                        .and_then(|text| Config::from_toml(&text, &path.display().to_string()));
                    reloader.reload(reread);
                }
            });
        }
        Err(error) => tracing::warn!(%error, "cannot watch SIGHUP; configuration reload is off"),
    }
    match usr1 {
        Ok(mut usr1) => {
            let renewer = agent.renewer();
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    renewer.renew_now();
                }
            });
        }
        Err(error) => tracing::warn!(%error, "cannot watch SIGUSR1; forced rotation is off"),
    }
    if !args.command.is_empty() {
        return supervise::supervise(agent, &args.command, args.ready_timeout).await;
    }
    agent.serve(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM; only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The Workload API endpoint as a URI: `--socket`, else `SPIFFE_ENDPOINT_SOCKET`, else
/// the first existing of the default and the dev socket.
fn endpoint(args: &EndpointArgs) -> anyhow::Result<String> {
    let from_env = std::env::var(ENV_ENDPOINT).ok().filter(|v| !v.is_empty());
    if let Some(value) = args.socket.clone().or(from_env) {
        return Ok(if value.starts_with('/') {
            format!("unix://{value}")
        } else {
            value
        });
    }
    let candidates = [
        PathBuf::from(DEFAULT_SOCKET_PATH),
        enclaveid_agent::dev_socket_path(nix::unistd::geteuid().as_raw()),
    ];
    candidates
        .iter()
        .find(|path| path.exists())
        .map(|path| format!("unix://{}", path.display()))
        .with_context(|| {
            format!(
                "no Workload API socket found at {} or {}; pass --socket or set {ENV_ENDPOINT}",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// `future`'s output, or an error naming `endpoint` when it takes longer than `timeout`.
/// The socket path of a `unix://` endpoint.
fn unix_path(endpoint: &str) -> anyhow::Result<String> {
    Ok(endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .with_context(|| format!("the Workload API is on a unix socket; {endpoint} is not one"))?
        .to_owned())
}

async fn within<T>(
    timeout: Duration,
    endpoint: &str,
    future: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, future)
        .await
        .with_context(|| {
            format!(
                "no answer from {endpoint} within {}",
                humantime::format_duration(timeout)
            )
        })
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter =
        EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new("warn,enclaveid=info"));
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // The same events also go to the parent's host once the agent starts telemetry
    // (`[telemetry]`); until then, and in the other subcommands, that layer is idle.
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(enclaveid_agent::telemetry::LogLayer);
    if std::env::var(ENV_LOG_FORMAT).is_ok_and(|f| f == "json") {
        registry.with(output.json()).init();
    } else {
        registry.with(output).init();
    }
}
