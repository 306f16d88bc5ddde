//! The cost of one aws_nitro attestation on each side, against the floor of what any
//! Nitro node attestor must do, measured in the same run:
//!
//! - server: `ServerConfig::verify` of a challenge response (JSON and base64, the
//!   document's chain and COSE signature, the policy, the P-256 proof of possession, the
//!   selectors) against the floor `Verifier::verify` of the bare document with the same
//!   policy;
//! - agent: `protocol::respond` (a fresh P-256 key, the document, the signature, JSON)
//!   against the floor `FakeAttestor::attest` of a document with the same nonce.
//!
//! The fake attestor signs with aws-lc in this process; NSM's own time is not included.
//!
//! Run: `cargo bench -p enclaveid-spire-plugin --bench attest` (`-- --quick` for a smoke run).

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::time::{Duration, Instant, SystemTime};

use enclaveid_attestor::{
    AttestationRequest, Attestor as _, FakeAttestor, FakeConfig, Policy, Verifier, VerifyAt,
};
use enclaveid_spire_plugin::PluginConfig as _;
use enclaveid_spire_plugin::protocol;
use enclaveid_spire_plugin::server::ServerConfig;

const TD: &str = "example.org";

/// The median over `batches` of the mean time per call in a batch of `per_batch`.
fn median(batches: usize, per_batch: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..batches)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            start.elapsed() / per_batch as u32
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (batches, per_batch) = if quick { (3, 5) } else { (15, 50) };

    let enclave = FakeAttestor::new(FakeConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, enclave.root_pem()).unwrap();
    let server =
        ServerConfig::parse(&format!("root_cert_path = \"{}\"", root.display()), TD).unwrap();
    let challenge = [5u8; 32];
    let response = protocol::respond(&enclave, TD, &challenge).unwrap();
    let (document, _) = protocol::parse_response(&response).unwrap();
    let verifier = Verifier::with_root_der(enclave.root_der());
    let policy = Policy {
        max_age: Some(Duration::from_secs(300)),
        nonce: Some(challenge.to_vec()),
        user_data: Some(protocol::user_data(TD)),
        ..Policy::default()
    };

    let now = SystemTime::now();
    let floor_server = median(batches, per_batch, || {
        verifier
            .verify(&document, &policy, VerifyAt::Time(now))
            .unwrap();
    });
    let server_time = median(batches, per_batch, || {
        server.verify(&challenge, &response, now).unwrap();
    });
    let request = AttestationRequest {
        nonce: Some(challenge.to_vec()),
        ..AttestationRequest::default()
    };
    let floor_agent = median(batches, per_batch, || {
        enclave.attest(&request).unwrap();
    });
    let agent_time = median(batches, per_batch, || {
        protocol::respond(&enclave, TD, &challenge).unwrap();
    });

    println!("aws_nitro attestation, median per call ({batches} batches of {per_batch})");
    println!("| side | measured | floor | ratio |");
    println!("| --- | --- | --- | --- |");
    for (side, measured, floor) in [
        ("server: verify a response", server_time, floor_server),
        ("agent: answer a challenge", agent_time, floor_agent),
    ] {
        println!(
            "| {side} | {measured:?} | {floor:?} | {:.2}x |",
            measured.as_secs_f64() / floor.as_secs_f64()
        );
    }
}
