//! The one-command demo of the mesh, without AWS: `cargo run --release -p mesh --example
//! demo`. It runs the fake KMS, a host, three agents (gateway, inference and an impostor
//! image, each with its own fake PCR0), both services and the checks: the model key
//! released to the inference enclave only, requests with both peer IDs, a rotation forced
//! under load with zero failed requests, the impostor refused both ways, a revoked leaf and
//! a revoked intermediate refused. It prints what happens and exits 0 when every check
//! passed.

#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    reason = "the demo reports on stdout, line by line"
)]

#[allow(
    dead_code,
    reason = "the world is shared with the tests and the benchmark"
)]
mod world;

use std::process::ExitCode;

use clap::Parser;
use world::{Options, Transport};

/// Runs the gateway/inference mesh on this machine without AWS (fake KMS, fake attestor,
/// three agents) and shows it working; exits 0 when every check passed.
#[derive(Parser)]
#[command(name = "demo", version)]
struct Cli {
    /// How the services talk: unix or tcp.
    #[arg(long, default_value = "unix")]
    transport: Transport,
    /// Concurrent senders during the rotation under load.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    mesh::init_tracing();
    let cli = Cli::parse();
    let options = Options {
        transport: cli.transport,
        concurrency: cli.concurrency,
        ..Options::default()
    };
    let say = |line: &str| println!("{line}");
    let report = match world::run(&options, &say).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("demo: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let gateway = format!("spiffe://{}/gateway", world::TRUST_DOMAIN);
    let inference = format!("spiffe://{}/inference", world::TRUST_DOMAIN);
    let problems = report.problems((&gateway, &inference));
    if problems.is_empty() {
        println!("demo: every check passed");
        ExitCode::SUCCESS
    } else {
        for problem in &problems {
            println!("FAILED: {problem}");
        }
        ExitCode::FAILURE
    }
}
