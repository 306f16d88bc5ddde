//! Workload API benchmark: the agent against a floor measured in the same run.
//!
//! The floor is a bare tonic server (default settings) on the same kind of socket (Unix),
//! serving `FetchX509SVID` from a pre-built message of the same size as the agent's (the
//! agent's own first response, re-encoded), with no attestation and no minting. Both run
//! as separate processes so that their RSS can be read from `/proc/PID/status`.
//!
//! Measured, for the agent and the floor:
//! 1. FetchX509SVID time to first message, p50/p99 (a new call on an open connection;
//!    for the agent this includes workload attestation of the caller).
//! 2. Rotation fan-out to N open streams (one connection each): time from the first
//!    stream receiving the new SVID to the last one receiving it. The agent rotates by
//!    itself at half-life; the floor swaps its message on SIGHUP.
//! 3. RSS with N streams open, and its growth over the idle process.
//!
//! Run: `cargo bench -p enclaveid-tests --bench workload_api` (N = 1000), or with
//! `-- --quick` for a smoke run (N = 100) as CI does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enclaveid_tests::bench::{anon_kib, first_message_latency, open_streams, rss_kib};
use enclaveid_tests::{AgentProcess, euid, first_x509_response};
use enclaveid_workload_api::proto::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use enclaveid_workload_api::proto::{self, X509svidRequest, X509svidResponse};
use futures_util::Stream;
use prost::Message as _;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

struct Settings {
    streams: usize,
    samples: usize,
    ttl: &'static str,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--floor-server") {
        return floor_server(Path::new(&args[i + 1]), Path::new(&args[i + 2]));
    }
    let quick = args.iter().any(|a| a == "--quick");
    let settings = if quick {
        Settings {
            streams: 100,
            samples: 200,
            ttl: "10s",
        }
    } else {
        Settings {
            streams: 1000,
            samples: 2000,
            ttl: "30s",
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(settings));
}

async fn run(settings: Settings) {
    let uid = euid();
    let agent = AgentProcess::start_quiet(&format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\nsvid_ttl = \"{}\"\n\
         [upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n\
         [[entry]]\nspiffe_id = \"spiffe://example.org/bench\"\nselectors = [\"unix:uid:{uid}\"]\n",
        settings.ttl
    ));
    let agent_socket = agent.socket().to_owned();
    let agent_idle_rss = rss_kib(agent.pid());

    // The floor serves the agent's own first message, so sizes match exactly.
    let first = first_x509_response(&agent_socket).await;
    let work = tempfile::tempdir().unwrap();
    let message_path = work.path().join("message.bin");
    std::fs::write(&message_path, first.encode_to_vec()).unwrap();
    let floor_socket = work.path().join("floor.sock");
    let mut floor = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--floor-server")
        .arg(&floor_socket)
        .arg(&message_path)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&floor_socket).is_err() {
        assert!(Instant::now() < deadline, "floor server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let floor_pid = floor.id();
    let floor_idle_rss = rss_kib(floor_pid);

    println!(
        "Workload API benchmark: {} streams, {} first-message samples, message {} bytes",
        settings.streams,
        settings.samples,
        first.encoded_len()
    );

    // Streams and RSS first: the agent's rotation clock started with the agent.
    let mut agent_streams = open_streams(&agent_socket, settings.streams).await;
    let mut floor_streams = open_streams(&floor_socket, settings.streams).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let agent_rss = rss_kib(agent.pid());
    let floor_rss = rss_kib(floor_pid);
    let agent_anon = anon_kib(agent.pid());
    let floor_anon = anon_kib(floor_pid);

    let floor_fanout = {
        let rotated = floor_streams.wait_for_change();
        let _ = std::process::Command::new("kill")
            .arg("-HUP")
            .arg(floor_pid.to_string())
            .status();
        rotated.await
    };
    let agent_fanout = agent_streams.wait_for_change().await;
    drop(agent_streams);
    drop(floor_streams);

    let [agent_latency, floor_latency] =
        first_message_latency(&agent_socket, &floor_socket, settings.samples).await;

    let _ = floor.kill();
    let _ = floor.wait();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!("| measure | agent | floor (bare tonic) | ratio |");
    println!("| --- | --- | --- | --- |");
    for (name, a, f) in [
        (
            "FetchX509SVID first message p50",
            agent_latency.0,
            floor_latency.0,
        ),
        (
            "FetchX509SVID first message p99",
            agent_latency.1,
            floor_latency.1,
        ),
        (
            "rotation fan-out, first to last stream",
            agent_fanout,
            floor_fanout,
        ),
    ] {
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.2}x |",
            ms(a),
            ms(f),
            ms(a) / ms(f)
        );
    }
    println!(
        "| RSS with {} streams open | {} KiB | {} KiB | {:.2}x |",
        settings.streams,
        agent_rss,
        floor_rss,
        agent_rss as f64 / floor_rss as f64
    );
    println!(
        "| anonymous RSS (heap) with {} streams open | {} KiB | {} KiB | {:.2}x |",
        settings.streams,
        agent_anon,
        floor_anon,
        agent_anon as f64 / floor_anon as f64
    );
    let agent_growth = agent_rss.saturating_sub(agent_idle_rss);
    let floor_growth = floor_rss.saturating_sub(floor_idle_rss);
    println!(
        "| RSS growth per open stream | {:.1} KiB | {:.1} KiB | {:.2}x |",
        agent_growth as f64 / settings.streams as f64,
        floor_growth as f64 / settings.streams as f64,
        agent_growth as f64 / floor_growth.max(1) as f64
    );
    println!("| idle RSS | {agent_idle_rss} KiB | {floor_idle_rss} KiB | |");
}

// === The floor: a bare tonic server ===

fn floor_server(socket: &Path, message: &Path) {
    let message = X509svidResponse::decode(std::fs::read(message).unwrap().as_slice()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (tx, rx) = watch::channel(Arc::new(message));
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
            while hup.recv().await.is_some() {
                // Same size, different bytes: flip one byte of the certificate.
                let mut next = (**tx.borrow()).clone();
                let mut cert = next.svids[0].x509_svid.to_vec();
                let last = cert.len() - 1;
                cert[last] ^= 0xff;
                next.svids[0].x509_svid = cert.into();
                tx.send_replace(Arc::new(next));
            }
        });
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(Floor(rx)))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
}

struct Floor(watch::Receiver<Arc<X509svidResponse>>);

type FloorStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Floor {
    type FetchX509SVIDStream = FloorStream<X509svidResponse>;
    type FetchX509BundlesStream = FloorStream<proto::X509BundlesResponse>;
    type FetchJWTBundlesStream = FloorStream<proto::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let rx = self.0.clone();
        let stream = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let message = (**rx.borrow_and_update()).clone();
            Some((Ok(message), (rx, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<proto::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn fetch_jwtsvid(
        &self,
        _: Request<proto::JwtsvidRequest>,
    ) -> Result<Response<proto::JwtsvidResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<proto::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<proto::ValidateJwtsvidRequest>,
    ) -> Result<Response<proto::ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
}
