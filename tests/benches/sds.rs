//! Envoy SDS: the time to the first response, against the Workload API's first message
//! on the same agent (the floor: the same snapshot, the same socket, a smaller answer)
//! and against a real spire-agent's SDS (SPIRE v1.13.3), in one run on one machine. Both
//! agents serve one entry to this uid.
//!
//! Measured, p50/p99 over samples alternating between the agents, on reused connections:
//! - `FetchSecrets(["default", "ROOTCA"])`;
//! - `StreamSecrets`: a new stream, one request, the first response;
//! - EnclaveID's `FetchX509SVID` first message (the floor).
//!
//! Run: `cargo bench -p enclaveid-tests --bench sds` (`-- --quick`: fewer samples). Needs
//! Go to build SPIRE on first use.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use enclaveid_tests::bench::p50_p99;
use enclaveid_tests::spire::SpireServer;
use enclaveid_tests::{AgentProcess, euid, first_message, raw_client, with_header};
use enclaveid_workload_api::proto::X509svidRequest;
use enclaveid_workload_api::sds::SECRET_TYPE_URL;
use enclaveid_workload_api::sds::proto::envoy::service::discovery::v3::DiscoveryRequest;
use enclaveid_workload_api::sds::proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use tonic::transport::Channel;

const ID: &str = "spiffe://example.org/bench";

fn request() -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: vec!["default".into(), "ROOTCA".into()],
        type_url: SECRET_TYPE_URL.into(),
        ..DiscoveryRequest::default()
    }
}

async fn sds_client(socket: &Path) -> SecretDiscoveryServiceClient<Channel> {
    SecretDiscoveryServiceClient::new(enclaveid_workload_api::connect_unix(socket).await.unwrap())
}

/// Waits until `socket` answers SDS with both secrets (a new spire-agent syncs first).
async fn ready(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(channel) = enclaveid_workload_api::connect_unix(socket).await
            && let Ok(response) = SecretDiscoveryServiceClient::new(channel)
                .fetch_secrets(request())
                .await
            && response.get_ref().resources.len() == 2
        {
            return;
        }
        assert!(Instant::now() < deadline, "no SDS answer within 2 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fetch(client: &mut SecretDiscoveryServiceClient<Channel>) -> Duration {
    let started = Instant::now();
    let response = client.fetch_secrets(request()).await.unwrap();
    assert_eq!(response.get_ref().resources.len(), 2);
    started.elapsed()
}

async fn stream(client: &mut SecretDiscoveryServiceClient<Channel>) -> Duration {
    let started = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request()).await.unwrap();
    let mut responses = client
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(first.resources.len(), 2);
    // Ending the requests ends the stream on both agents, freeing its slot.
    drop(tx);
    while let Ok(Some(_)) = responses.message().await {}
    elapsed
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let samples = if quick { 200 } else { 2000 };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(samples));
}

async fn run(samples: usize) {
    let _ = enclaveid_tests::enclaveid_bin();
    let _ = enclaveid_tests::spire::spire_bin_dir();
    let dir = tempfile::tempdir().unwrap();
    let selector = format!("unix:uid:{}", euid());
    let spire_dir = dir.path().to_owned();
    let (server, spire) = tokio::task::spawn_blocking({
        let selector = selector.clone();
        move || {
            let server = SpireServer::start(&spire_dir, "example.org", None);
            server.entry_create(ID, &[&selector], "");
            let agent = server.start_agent(&spire_dir);
            (server, agent)
        }
    })
    .await
    .unwrap();
    let enclaveid = AgentProcess::start_quiet(&format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\nsvid_ttl = \"1h\"\n\
         [upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n\
         [[entry]]\nspiffe_id = \"{ID}\"\nselectors = [\"{selector}\"]\n\
         [limits]\ncalls_per_second_per_uid = 100000\ncall_burst_per_uid = 100000\n"
    ));
    ready(enclaveid.socket()).await;
    ready(spire.socket()).await;

    let mut clients = [
        sds_client(enclaveid.socket()).await,
        sds_client(spire.socket()).await,
    ];
    let mut floor = raw_client(enclaveid.socket()).await;
    let mut fetched = [Vec::new(), Vec::new()];
    let mut streamed = [Vec::new(), Vec::new()];
    let mut workload = Vec::new();
    for round in 0..(samples + 50) {
        let keep = round >= 50;
        let started = Instant::now();
        first_message(floor.fetch_x509svid(with_header(X509svidRequest {}))).await;
        if keep {
            workload.push(started.elapsed());
        }
        for (i, client) in clients.iter_mut().enumerate() {
            let f = fetch(client).await;
            let s = stream(client).await;
            if keep {
                fetched[i].push(f);
                streamed[i].push(s);
            }
        }
    }
    drop(server);
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    let floor = p50_p99(workload);
    let [e_fetch, s_fetch] = fetched.map(p50_p99);
    let [e_stream, s_stream] = streamed.map(p50_p99);
    println!("Envoy SDS, EnclaveID vs spire-agent (SPIRE v1.13.3), {samples} samples each");
    println!();
    println!(
        "| measure | EnclaveID p50 / p99 | spire-agent p50 / p99 | EnclaveID / spire-agent (p50) | EnclaveID / its Workload API first message (p50) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, e, s) in [
        ("FetchSecrets [default, ROOTCA]", e_fetch, s_fetch),
        ("StreamSecrets first response", e_stream, s_stream),
    ] {
        println!(
            "| {name} | {} / {} | {} / {} | {:.2}x | {:.2}x |",
            us(e.0),
            us(e.1),
            us(s.0),
            us(s.1),
            e.0.as_secs_f64() / s.0.as_secs_f64(),
            e.0.as_secs_f64() / floor.0.as_secs_f64(),
        );
    }
    println!(
        "| Workload API FetchX509SVID first message (floor) | {} / {} | | | 1.00x |",
        us(floor.0),
        us(floor.1)
    );
}
