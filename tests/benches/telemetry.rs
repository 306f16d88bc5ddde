//! Telemetry never slows the Workload API: first-message latency of an agent whose host
//! stalls (it accepts the telemetry connection, then never reads) against the same agent
//! configuration with telemetry off, in one run, call by call alternating.
//!
//! The per-uid call rate limit is raised on both (one client calls back to back).
//! Both agents log at debug level (every call logs an event), and the telemetry one sends
//! every debug event: the most telemetry traffic a call can cause.
//!
//! Run: `cargo bench -p enclaveid-tests --bench telemetry` (`-- --quick` for a smoke run).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::time::{Duration, Instant};

use enclaveid_checks::wire;
use enclaveid_tests::bench::p50_p99;
use enclaveid_tests::{AgentProcess, euid, first_message, raw_client, with_header};
use enclaveid_workload_api::proto::X509svidRequest;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let samples = if quick { 300 } else { 3000 };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(measure(samples));
}

async fn measure(samples: usize) {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("stalled-host.sock");
    let listener = tokio::net::UnixListener::bind(&host).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0; wire::REQUEST_HEAD];
            if stream.read_exact(&mut head).await.is_ok() {
                let _ = stream.write_all(&wire::encode_answer(Ok(&[]))).await;
            }
            held.push(stream);
        }
    });
    let base = format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\n\
         [upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n\
         [limits]\ncalls_per_second_per_uid = 100000\ncall_burst_per_uid = 100000\n\
         [[entry]]\nspiffe_id = \"spiffe://example.org/me\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    );
    let stalled = AgentProcess::start(&format!(
        "{base}[telemetry]\nhost = \"unix://{}\"\nlevel = \"debug\"\n",
        host.display()
    ));
    let off = AgentProcess::start(&base);
    let mut to_stalled = raw_client(stalled.socket()).await;
    let mut to_off = raw_client(off.socket()).await;
    let (mut a, mut b) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for round in 0..samples + 50 {
        let started = Instant::now();
        first_message(to_stalled.fetch_x509svid(with_header(X509svidRequest {}))).await;
        let t_stalled = started.elapsed();
        let started = Instant::now();
        first_message(to_off.fetch_x509svid(with_header(X509svidRequest {}))).await;
        let t_off = started.elapsed();
        if round >= 50 {
            a.push(t_stalled);
            b.push(t_off);
        }
    }
    let (a, b) = (p50_p99(a), p50_p99(b));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "Telemetry with a stalled host: {samples} FetchX509SVID first messages each, alternating, debug logs"
    );
    println!();
    println!("| measure | telemetry to a stalled host | telemetry off (floor) | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, x, f, target) in [("p50", a.0, b.0, "≤ 1.1x"), ("p99", a.1, b.1, "")] {
        println!(
            "| first message {name} | {:.3} ms | {:.3} ms | {:.2}x | {target} |",
            ms(x),
            ms(f),
            ms(x) / ms(f)
        );
    }
}
