//! Telemetry on the agent's side: the metrics workloads read on the in-enclave socket,
//! and a host that stalls costing the Workload API nothing but dropped, counted events.

use std::path::Path;
use std::time::{Duration, Instant};

use enclaveid_tests::{AgentProcess, fetch_x509};

/// `curl --unix-socket PATH http://localhost/metrics`.
fn local_metrics(socket: &Path) -> String {
    let out = std::process::Command::new("curl")
        .arg("-s")
        .arg("--unix-socket")
        .arg(socket)
        .arg("http://localhost/metrics")
        .output()
        .expect("curl (the tests need it; .ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the first sample line starting with `prefix`.
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_metrics_are_served_inside_the_enclave_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.sock");
    let config = format!(
        "{}[telemetry]\nmetrics_socket = \"{}\"\n",
        super::config_for_me(),
        metrics.display()
    );
    let agent = AgentProcess::start(&config);
    wait_for_socket(&metrics);
    fetch_x509(agent.socket()).await.unwrap();
    let text = local_metrics(&metrics);
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text:\n{text}");
    let id = "spiffe://example.org/me";
    assert_eq!(
        value(
            &text,
            &format!("enclaveid_svids_issued_total{{entry=\"{id}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    let left = value(
        &text,
        &format!("enclaveid_svid_expiry_seconds{{entry=\"{id}\"}}"),
    )
    .unwrap();
    assert!(left > 3000.0 && left <= 3600.0, "a 1h SVID: {left}\n{text}");
    assert!(
        value(
            &text,
            "enclaveid_workload_api_requests_total{rpc=\"FetchX509SVID\",code=\"Ok\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

/// A host that accepts the telemetry connection and then never reads: the agent keeps
/// serving, and what it could not send is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_a_stalled_host_costs_dropped_events_not_the_workload_api() {
    use enclaveid_checks::wire;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host.sock");
    let listener = tokio::net::UnixListener::bind(&host).unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut head = [0; wire::REQUEST_HEAD];
            if stream.read_exact(&mut head).await.is_ok() {
                let _ = stream.write_all(&wire::encode_answer(Ok(&[]))).await;
            }
            held.push(stream); // never read again
        }
    });
    let metrics = dir.path().join("metrics.sock");
    let config = format!(
        "{}[telemetry]\nhost = \"unix://{}\"\nlevel = \"debug\"\nmetrics_socket = \"{}\"\n",
        super::config_for_me(),
        host.display(),
        metrics.display()
    );
    let agent = AgentProcess::start(&config);
    wait_for_socket(&metrics);
    // Every call logs at debug level: enough to fill the socket buffers of a host that
    // does not read.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut calls = 0u32;
    loop {
        for _ in 0..200 {
            fetch_x509(agent.socket())
                .await
                .expect("the Workload API keeps serving");
            calls += 1;
        }
        let text = local_metrics(&metrics);
        if value(&text, "enclaveid_telemetry_dropped_total{kind=\"log\"}").is_some_and(|n| n > 0.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing dropped after {calls} calls:\n{text}"
        );
    }
    assert!(accepted.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}
