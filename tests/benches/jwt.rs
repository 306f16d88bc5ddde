//! JWT-SVID calls against the X.509 first-message time of the same agent, in one run.
//!
//! Measured on one open connection, sequential calls, each with workload attestation of
//! the caller:
//! - `FetchX509SVID` time to first message (the reference);
//! - `FetchJWTSVID` for a cached token (same audience every call);
//! - `FetchJWTSVID` for a fresh token (a new audience every call: one ES256 signature);
//! - `ValidateJWTSVID` of a token (JWKS lookup and one ES256 verification).
//!
//! Run: `cargo bench -p enclaveid-tests --bench jwt` (`-- --quick` for a smoke run).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::future::Future;
use std::time::{Duration, Instant};

use enclaveid_tests::bench::p50_p99;
use enclaveid_tests::{AgentProcess, euid, first_message, raw_client, with_header};
use enclaveid_workload_api::proto::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};

async fn percentiles<F, Fut>(n: usize, mut call: F) -> (Duration, Duration)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..n / 10 {
        call(usize::MAX - i).await;
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        call(i).await;
        samples.push(start.elapsed());
    }
    p50_p99(samples)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = if std::env::args().any(|a| a == "--quick") {
        200
    } else {
        5000
    };
    let agent = AgentProcess::start_quiet(&format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\n\
         [upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n\
         [[entry]]\nspiffe_id = \"spiffe://example.org/bench\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    ));
    let client = raw_client(agent.socket()).await;
    let fetch = |audience: String| {
        let mut client = client.clone();
        async move {
            client
                .fetch_jwtsvid(with_header(JwtsvidRequest {
                    audience: vec![audience],
                    spiffe_id: String::new(),
                }))
                .await
                .unwrap()
                .into_inner()
                .svids
                .remove(0)
                .svid
        }
    };
    let token = fetch("bench".into()).await;

    let x509 = percentiles(n, |_| {
        let mut client = client.clone();
        async move {
            first_message(client.fetch_x509svid(with_header(X509svidRequest {}))).await;
        }
    })
    .await;
    let cached = percentiles(n, |_| {
        let f = fetch("bench".into());
        async move {
            f.await;
        }
    })
    .await;
    let fresh = percentiles(n, |i| {
        let f = fetch(format!("audience-{i}"));
        async move {
            f.await;
        }
    })
    .await;
    let validate = percentiles(n, |_| {
        let mut client = client.clone();
        let token = token.clone();
        async move {
            client
                .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                    audience: "bench".into(),
                    svid: token,
                }))
                .await
                .unwrap();
        }
    })
    .await;

    let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    println!("JWT-SVID calls, {n} sequential samples each, one connection");
    println!();
    println!("| call | p50 | p99 | p50 vs X.509 first message |");
    println!("| --- | --- | --- | --- |");
    for (name, (p50, p99)) in [
        ("FetchX509SVID first message (reference)", x509),
        ("FetchJWTSVID, cached token", cached),
        ("FetchJWTSVID, fresh token (new audience)", fresh),
        ("ValidateJWTSVID", validate),
    ] {
        println!(
            "| {name} | {} | {} | {:.2}x |",
            us(p50),
            us(p99),
            p50.as_secs_f64() / x509.0.as_secs_f64()
        );
    }
}
