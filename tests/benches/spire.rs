//! EnclaveID against a real spire-agent (SPIRE v1.13.3), head to head in one run on the
//! same machine: both serve one entry to this uid over a Unix socket, X.509-SVID TTL 1 h.
//!
//! Measured for each:
//! - cold start: process start to the first X.509-SVID served (EnclaveID: its CA is
//!   generated at start; SPIRE: the agent attests to a running server with a join token);
//! - FetchX509SVID time to first message, p50/p99, on a reused connection (samples
//!   alternate between the agents) and on a new connection per call;
//! - RSS idle and with N open FetchX509SVID streams;
//! - pushing one change to all N streams: time from the first stream receiving it to the
//!   last, and the agent's CPU time over the push. EnclaveID re-mints on SIGUSR1; SPIRE
//!   pushes an entry update (a new hint) at its next sync, so its window also holds up to
//!   one sync interval of idle time (CPU is what to compare there).
//!
//! Run: `cargo bench -p enclaveid-tests --bench spire` (N = 1000), `-- --quick` for a smoke
//! run (N = 100). Needs Go to build SPIRE on first use.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use enclaveid_tests::bench::{cpu_time, first_message_latency, open_streams, p50_p99, rss_kib};
use enclaveid_tests::spire::SpireServer;
use enclaveid_tests::{AgentProcess, euid, first_message, raw_client, with_header};
use enclaveid_workload_api::proto::X509svidRequest;

const ID: &str = "spiffe://example.org/bench";

/// Polls FetchX509SVID every 2 ms until the first SVID arrives.
async fn first_svid(socket: &Path, since: Instant) -> Duration {
    loop {
        if let Ok(channel) = enclaveid_workload_api::connect_unix(socket).await {
            let mut client =
                enclaveid_workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
            if let Ok(response) = client.fetch_x509svid(with_header(X509svidRequest {})).await
                && let Ok(Some(_)) = response.into_inner().message().await
            {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "no SVID within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// p50/p99 of FetchX509SVID first message on a new connection per call.
async fn new_connection_latency(socket: &Path, samples: usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let mut client = raw_client(socket).await;
        first_message(client.fetch_x509svid(with_header(X509svidRequest {}))).await;
        times.push(started.elapsed());
    }
    p50_p99(times)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (streams, samples) = if quick { (100, 200) } else { (1000, 2000) };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(streams, samples));
}

async fn run(streams: usize, samples: usize) {
    // Both programs are built before anything is timed.
    let _ = enclaveid_tests::enclaveid_bin();
    let _ = enclaveid_tests::spire::spire_bin_dir();
    let dir = tempfile::tempdir().unwrap();
    let selector = format!("unix:uid:{}", euid());
    let spire_dir = dir.path().to_owned();
    let (server, entry) = tokio::task::spawn_blocking({
        let selector = selector.clone();
        move || {
            let server = SpireServer::start(&spire_dir, "example.org", None);
            let entry = server.entry_create(ID, &[&selector], "");
            (server, entry)
        }
    })
    .await
    .unwrap();

    // Cold starts.
    let started = Instant::now();
    let spire = server.spawn_agent(dir.path());
    let spire_cold = first_svid(spire.socket(), started).await;
    let started = Instant::now();
    let enclaveid = AgentProcess::start_quiet(&format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\nsvid_ttl = \"1h\"\n\
         [upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n\
         [[entry]]\nspiffe_id = \"{ID}\"\nselectors = [\"{selector}\"]\n"
    ));
    let enclaveid_cold = first_svid(enclaveid.socket(), started).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (e_idle, s_idle) = (rss_kib(enclaveid.pid()), rss_kib(spire.pid()));

    // First message.
    let [e_reused, s_reused] =
        first_message_latency(enclaveid.socket(), spire.socket(), samples).await;
    let e_new = new_connection_latency(enclaveid.socket(), samples / 4).await;
    let s_new = new_connection_latency(spire.socket(), samples / 4).await;

    // Streams, RSS, one push to all.
    let mut e_streams = open_streams(enclaveid.socket(), streams).await;
    let mut s_streams = open_streams(spire.socket(), streams).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (e_rss, s_rss) = (rss_kib(enclaveid.pid()), rss_kib(spire.pid()));

    let e_cpu = cpu_time(enclaveid.pid());
    let pushed = e_streams.wait_for_change();
    enclaveid.renew();
    let e_fanout = pushed.await;
    let e_push_cpu = cpu_time(enclaveid.pid()) - e_cpu;

    let s_cpu = cpu_time(spire.pid());
    let pushed = s_streams.wait_for_change();
    server.entry_update(&entry, ID, &[&selector], "pushed");
    let s_fanout = pushed.await;
    let s_push_cpu = cpu_time(spire.pid()) - s_cpu;
    drop((e_streams, s_streams));

    let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1000.0);
    let ratio = |a: f64, b: f64| format!("{:.3}x", a / b);
    println!("EnclaveID vs spire-agent (SPIRE v1.13.3): {streams} streams, {samples} samples");
    println!();
    println!("| measure | EnclaveID | spire-agent | EnclaveID / spire-agent |");
    println!("| --- | --- | --- | --- |");
    for (name, e, s) in [
        ("cold start to first SVID", enclaveid_cold, spire_cold),
        (
            "FetchX509SVID first message p50, reused connection",
            e_reused.0,
            s_reused.0,
        ),
        (
            "FetchX509SVID first message p99, reused connection",
            e_reused.1,
            s_reused.1,
        ),
        (
            "FetchX509SVID first message p50, new connection",
            e_new.0,
            s_new.0,
        ),
        (
            "FetchX509SVID first message p99, new connection",
            e_new.1,
            s_new.1,
        ),
        ("push to all streams, first to last", e_fanout, s_fanout),
        ("CPU time over the push", e_push_cpu, s_push_cpu),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            ms(e),
            ms(s),
            ratio(e.as_secs_f64(), s.as_secs_f64().max(1e-9))
        );
    }
    println!(
        "| RSS idle | {e_idle} KiB | {s_idle} KiB | {} |",
        ratio(e_idle as f64, s_idle as f64)
    );
    println!(
        "| RSS with {streams} streams | {e_rss} KiB | {s_rss} KiB | {} |",
        ratio(e_rss as f64, s_rss as f64)
    );
    drop(spire);
    drop(server);
}
