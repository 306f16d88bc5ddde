//! Noisy neighbour: one uid calls the Workload API as fast as it can, on many
//! connections, while another uid's first-message latency is measured. The floor is the
//! same measurement on the same agent without the noise, in the same run; the per-uid
//! limits (`[limits]`, their defaults) are what keeps the two apart.
//!
//! The noisy uid runs this binary again (`--noisy`) under `setpriv`, so it needs root;
//! without it the benchmark says so and stops.
//!
//! Run: `cargo bench -p enclaveid-tests --bench noisy_neighbour`, or `-- --quick` for a
//! smoke run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use enclaveid_tests::bench::p50_p99;
use enclaveid_tests::{AgentProcess, can_switch_uid, euid, first_message, raw_client, with_header};
use enclaveid_workload_api::proto::X509svidRequest;

/// The noisy uid (no system account uses it).
const NOISY_UID: u32 = 4_000_010;
/// The noisy client's connections (under the default 256 per uid).
const NOISY_CONNECTIONS: usize = 64;
/// The measured caller's pace: a well-behaved workload, under the default 200 calls per
/// second per uid.
const CALLS_PER_SECOND: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--noisy") {
        return noisy(
            Path::new(&args[i + 1]),
            Duration::from_secs(args[i + 2].parse().unwrap()),
        );
    }
    let quick = args.iter().any(|a| a == "--quick");
    if !can_switch_uid() {
        println!(
            "SKIPPED noisy_neighbour: needs root and setpriv to run the noisy caller as another uid"
        );
        return;
    }
    let samples = if quick { 300 } else { 3000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(measure(samples));
}

async fn measure(samples: usize) {
    let uid = euid();
    let agent = AgentProcess::start_quiet(&format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\n\
         [upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n\
         [[entry]]\nspiffe_id = \"spiffe://example.org/quiet\"\nselectors = [\"unix:uid:{uid}\"]\n\
         [[entry]]\nspiffe_id = \"spiffe://example.org/noisy\"\nselectors = [\"unix:uid:{NOISY_UID}\"]\n"
    ));
    let socket = agent.socket().to_owned();

    // Quiet first, then with the noise: the same number of samples on one connection.
    let quiet = latencies(&socket, samples).await;
    // The build directory may not be reachable by other uids: run a copy.
    let copy = agent.dir().join("noisy-neighbour");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let seconds = 4 + samples / CALLS_PER_SECOND;
    let mut noisy = std::process::Command::new("setpriv")
        .arg(format!("--reuid={NOISY_UID}"))
        .arg(format!("--regid={NOISY_UID}"))
        .arg("--clear-groups")
        .arg(&copy)
        .arg("--noisy")
        .arg(&socket)
        .arg(seconds.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let noise_started = Instant::now();
    let noisy_latency = latencies(&socket, samples).await;
    let measured_for = noise_started.elapsed();
    let output = tokio::task::spawn_blocking(move || {
        let _ = noisy.wait();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut noisy.stdout.take().unwrap(), &mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(
        measured_for < Duration::from_secs(u64::try_from(seconds).unwrap() - 1),
        "the noise stopped before the measurement ended; raise its duration"
    );

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "Noisy neighbour: {samples} FetchX509SVID first-message samples by uid {uid} ({CALLS_PER_SECOND} calls/s), quiet and while uid {NOISY_UID} calls flat out on {NOISY_CONNECTIONS} connections (default limits)"
    );
    println!("noisy caller: {}", output.trim());
    println!();
    println!("| measure | with the noise | quiet (floor) | ratio |");
    println!("| --- | --- | --- | --- |");
    for (name, a, f) in [
        ("first message p50", noisy_latency.0, quiet.0),
        ("first message p99", noisy_latency.1, quiet.1),
    ] {
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.2}x |",
            ms(a),
            ms(f),
            ms(a) / ms(f)
        );
    }
}

/// p50 and p99 of `samples` first messages of new calls on one open connection, one
/// every 1/[`CALLS_PER_SECOND`] s.
async fn latencies(socket: &Path, samples: usize) -> (Duration, Duration) {
    let mut client = raw_client(socket).await;
    let mut times = Vec::with_capacity(samples);
    let mut pace =
        tokio::time::interval(Duration::from_secs(1) / u32::try_from(CALLS_PER_SECOND).unwrap());
    for round in 0..samples + 20 {
        pace.tick().await;
        let started = Instant::now();
        first_message(client.fetch_x509svid(with_header(X509svidRequest {}))).await;
        if round >= 20 {
            times.push(started.elapsed());
        }
    }
    p50_p99(times)
}

/// The noisy caller: `NOISY_CONNECTIONS` connections, each calling in a loop for
/// `duration`; prints what it got.
fn noisy(socket: &Path, duration: Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let deadline = Instant::now() + duration;
        let tasks: Vec<_> = (0..NOISY_CONNECTIONS)
            .map(|_| {
                let (socket, served, refused): (PathBuf, _, _) =
                    (socket.to_owned(), served.clone(), refused.clone());
                tokio::spawn(async move {
                    let mut client = raw_client(&socket).await;
                    while Instant::now() < deadline {
                        let call = client.fetch_x509svid(with_header(X509svidRequest {}));
                        match call.await {
                            Ok(response) => match response.into_inner().message().await {
                                Ok(Some(_)) => served.fetch_add(1, Ordering::Relaxed),
                                _ => refused.fetch_add(1, Ordering::Relaxed),
                            },
                            Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let seconds = duration.as_secs_f64();
    #[allow(clippy::cast_precision_loss, reason = "call counts far below 2^52")]
    let (served, refused) = (
        served.load(Ordering::Relaxed) as f64 / seconds,
        refused.load(Ordering::Relaxed) as f64 / seconds,
    );
    println!("{served:.0} calls/s served, {refused:.0} calls/s refused (ResourceExhausted)");
}
