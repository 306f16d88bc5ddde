//! `mesh`: the gateway and inference services, and the one-command demo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use enclaveid_agent::transport::Address;
use mesh::demo::{self, Options, Transport};
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
    /// Run everything on this machine without AWS (fake KMS, fake attestor, three agents)
    /// and show it working; exits 0 when every check passed.
    Demo {
        /// How the services talk: unix or tcp.
        #[arg(long, default_value = "unix")]
        transport: Transport,
        /// Concurrent senders during the rotation under load.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// The inference service: accept the gateway over mTLS and answer prompts.
    Inference {
        /// Where to listen: vsock://any:PORT in an enclave, tcp://HOST:PORT, unix:///PATH.
        #[arg(long)]
        listen: Address,
        /// The SPIFFE IDs allowed to call (repeatable).
        #[arg(long = "allow", required = true)]
        allow: Vec<String>,
        /// The model key (file). In an enclave, open it with KMS (see docs/mesh.md).
        #[arg(long)]
        model_key: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// The gateway: send prompts to the inference service over mTLS.
    Gateway {
        /// The inference service: vsock://CID:PORT, tcp://HOST:PORT, unix:///PATH.
        #[arg(long)]
        connect: Address,
        /// The SPIFFE IDs allowed to answer (repeatable).
        #[arg(long = "allow", required = true)]
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
    /// The Workload API.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    socket: String,
    /// CRL files to check peers against (repeatable), such as the agent's
    /// upstream.crl_export_path.
    #[arg(long = "crl")]
    crls: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            // The demo's agents use the fake attestor, which warns about it at every
            // start; MESH_LOG=warn shows those too.
            tracing_subscriber::EnvFilter::try_from_env("MESH_LOG")
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
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
        Command::Demo {
            transport,
            concurrency,
        } => {
            let options = Options {
                transport,
                concurrency,
                ..Options::default()
            };
            let say = |line: &str| println!("{line}");
            let report = demo::run(&options, &say).await?;
            let gateway = format!("spiffe://{}/gateway", demo::TRUST_DOMAIN);
            let inference = format!("spiffe://{}/inference", demo::TRUST_DOMAIN);
            let problems = report.problems((&gateway, &inference));
            if problems.is_empty() {
                println!("demo: every check passed");
                Ok(ExitCode::SUCCESS)
            } else {
                for problem in &problems {
                    println!("FAILED: {problem}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Inference {
            listen,
            allow,
            model_key,
            common,
        } => {
            let key = zeroize::Zeroizing::new(
                std::fs::read(&model_key)
                    .with_context(|| format!("--model-key {}", model_key.display()))?,
            );
            let source = tls::source(&common.socket).await?;
            let server = Inference::new(source, &allow, CrlFiles::new(common.crls), key)?;
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
            let source = tls::source(&common.socket).await?;
            let gateway = Gateway::new(source, &allow, connect, CrlFiles::new(common.crls))?;
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
