//! Gateway -> inference over mTLS with SPIFFE IDs, against the same services over plain
//! TCP without TLS (the floor), and the cost of a full mTLS handshake against verifying
//! one Nitro attestation document: per-request attestation versus TLS sessions.
//!
//! One run measures, each with one client sending requests one after another over TCP
//! loopback:
//! - plain TCP, one connection reused (floor);
//! - mTLS (spiffe-rustls, SVIDs from the demo's agents, CRL check on), one connection
//!   reused;
//! - plain TCP, a new connection per request (floor);
//! - mTLS, a new connection (a full handshake, both chains verified, CRL check) per
//!   request;
//! - `enclaveid-attestor` verifying the real AWS attestation document of
//!   `../shared/fixtures` at its own time (four certificate links and a COSE signature),
//!   what a design that attests every request would add per request at least.
//!
//! Run: `cargo bench -p mesh --bench mesh` (`-- --quick` for a smoke run).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

#[path = "../examples/demo/world.rs"]
#[allow(dead_code, reason = "the demo's world; the benchmark uses part of it")]
mod world;

use enclaveid_attestor::{Policy, Verifier, VerifyAt};
use enclaveid_io::{Address, AddressExt as _};
use mesh::inference;
use mesh::wire::{self, Request, Response};
use tokio_util::sync::CancellationToken;
use world::{Mesh, Transport};

struct Stats {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>, total: Duration) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        per_second: samples.len() as f64 / total.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

async fn measure<F, Fut>(n: usize, mut one: F) -> Stats
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..n / 10 {
        one(i).await; // warm-up
    }
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        one(i).await;
        samples.push(t.elapsed());
    }
    stats(samples, start.elapsed())
}

async fn plain_request(stream: &mut tokio::net::TcpStream, prompt: &str) -> Response {
    wire::write(
        stream,
        &Request {
            prompt: prompt.to_owned(),
        },
    )
    .await
    .unwrap();
    wire::read(stream).await.unwrap().unwrap()
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (reused_n, new_n, verify_n) = if quick {
        (200, 50, 50)
    } else {
        (20_000, 2_000, 2_000)
    };

    let mut mesh = Mesh::start(Transport::Tcp).await.unwrap();
    let stop = CancellationToken::new();
    let plain = Address::Tcp("127.0.0.1:0".into()).bind().await.unwrap();
    let Address::Tcp(plain_address) = plain.local_address().unwrap() else {
        unreachable!("bound over TCP")
    };
    tokio::spawn(inference::serve_plain(
        plain,
        mesh.model_key.clone(),
        stop.clone(),
    ));
    let key = mesh.model_key.clone();
    let check = |prompt: &str, answer: &str| assert_eq!(answer, inference::answer(&key, prompt));

    // Reused connections.
    let mut stream = tokio::net::TcpStream::connect(&plain_address)
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let plain_reused = {
        let stream = &mut stream;
        let mut samples = Vec::with_capacity(reused_n);
        let start = Instant::now();
        for i in 0..reused_n {
            let prompt = format!("p{i}");
            let t = Instant::now();
            let response = plain_request(stream, &prompt).await;
            samples.push(t.elapsed());
            check(&prompt, &response.answer);
        }
        stats(samples, start.elapsed())
    };
    let gateway = mesh
        .gateway_client_at(mesh.inference_address.clone())
        .unwrap()
        .with_max_age(Duration::from_secs(3600));
    let mut conn = gateway.connect().await.unwrap();
    let tls_reused = {
        let conn = &mut conn;
        let mut samples = Vec::with_capacity(reused_n);
        let start = Instant::now();
        for i in 0..reused_n {
            let prompt = format!("p{i}");
            let t = Instant::now();
            let response = conn.request(&prompt).await.unwrap();
            samples.push(t.elapsed());
            check(&prompt, &response.answer);
        }
        stats(samples, start.elapsed())
    };

    // A new connection per request.
    let plain_new = measure(new_n, |i| {
        let address = plain_address.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            stream.set_nodelay(true).unwrap();
            plain_request(&mut stream, &format!("n{i}")).await;
        }
    })
    .await;
    let tls_new = measure(new_n, |i| {
        let gateway = &gateway;
        async move {
            gateway.send_once(&format!("n{i}")).await.unwrap();
        }
    })
    .await;

    // One attestation document verified (the real AWS fixture, at its own time).
    let document = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/nitro/2025-01-06-nitro-attest-fixture.cose"),
    )
    .unwrap();
    let verifier = Verifier::aws();
    let policy = Policy::default();
    let verify = measure(verify_n, |_| {
        let (verifier, document, policy) = (&verifier, &document, &policy);
        async move {
            verifier
                .verify(document, policy, VerifyAt::DocumentTime)
                .unwrap();
        }
    })
    .await;

    println!("gateway -> inference, one client, sequential requests, TCP loopback");
    println!();
    println!("| measure | mTLS (SPIFFE) | plain TCP (floor) | cost vs floor |");
    println!("| --- | --- | --- | --- |");
    for (name, tls, floor) in [
        ("reused connection", &tls_reused, &plain_reused),
        ("new connection per request", &tls_new, &plain_new),
    ] {
        println!(
            "| {name}: requests/s | {:.0} | {:.0} | {:.2}x |",
            tls.per_second,
            floor.per_second,
            floor.per_second / tls.per_second
        );
        println!(
            "| {name}: p50 | {} | {} | {:.2}x |",
            micros(tls.p50),
            micros(floor.p50),
            tls.p50.as_secs_f64() / floor.p50.as_secs_f64()
        );
        println!(
            "| {name}: p99 | {} | {} | {:.2}x |",
            micros(tls.p99),
            micros(floor.p99),
            tls.p99.as_secs_f64() / floor.p99.as_secs_f64()
        );
    }
    println!();
    let handshake = tls_new.p50.saturating_sub(tls_reused.p50);
    println!("| per-request cost | p50 | vs one attestation verification |");
    println!("| --- | --- | --- |");
    println!(
        "| verify one attestation document (enclaveid-attestor, real AWS document) | {} | 1.00x |",
        micros(verify.p50)
    );
    println!(
        "| full mTLS handshake (new connection minus reused, p50) | {} | {:.2}x |",
        micros(handshake),
        handshake.as_secs_f64() / verify.p50.as_secs_f64()
    );
    println!(
        "| request on a reused mTLS connection (p50) | {} | {:.3}x |",
        micros(tls_reused.p50),
        tls_reused.p50.as_secs_f64() / verify.p50.as_secs_f64()
    );
    stop.cancel();
    mesh.shutdown().await;
}
