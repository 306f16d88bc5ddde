//! Verification of a real AWS attestation document: EnclaveID's verifier against two
//! published crates and against the floor, all in one run.
//!
//! - floor: the five raw P-384 ECDSA verifications a document needs (four chain links,
//!   one COSE signature) with aws-lc-rs, everything parsed beforehand;
//! - `enclaveid-attestor`: `Verifier::verify` with the default policy;
//! - `nitro_attest` 0.2: `UnparsedAttestationDoc::parse_and_verify(time)`;
//! - `attestation-doc-validation` 0.10: `validate_and_parse_attestation_doc`, which can
//!   only verify at the current time. The document's chain expired on 2025-01-06, so this
//!   benchmark re-runs itself under `faketime` (Debian package `faketime`) with the clock
//!   set inside the chain's validity; without it that row is not measured.
//!
//! Run: `cargo bench -p enclaveid-attestor --bench verify` (`-- --quick` for a smoke run).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use ciborium::Value;
use enclaveid_attestor::{Payload, Policy, Verifier, VerifyAt};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Inside the fixture chain's validity (2025-01-06T16:07:02Z .. 19:07:05Z).
const FAKE_NOW: &str = "@2025-01-06 17:00:00";
const FAKE_NOW_UNIX: u64 = 1_736_182_800;
const MARKER: &str = "ENCLAVEID_BENCH_UNDER_FAKETIME";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os(MARKER).is_none()
        && Command::new("faketime").arg("--version").output().is_ok()
    {
        // Re-run under faketime; the monotonic clock stays real so timings are real.
        let status = Command::new("faketime")
            .args(["-f", FAKE_NOW])
            .arg(std::env::current_exe().unwrap())
            .args(&args)
            .env(MARKER, "1")
            .env("TZ", "UTC")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (batches, per_batch) = if quick { (5, 20) } else { (30, 200) };

    let document = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/nitro/2025-01-06-nitro-attest-fixture.cose"),
    )
    .unwrap();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(FAKE_NOW_UNIX);

    let floor_inputs = FloorInputs::new(&document);
    let floor = measure(batches, per_batch, || floor_inputs.verify_all());

    let verifier = Verifier::aws();
    let policy = Policy::default();
    let ours = measure(batches, per_batch, || {
        verifier
            .verify(&document, &policy, VerifyAt::Time(at))
            .unwrap();
    });

    let nitro_at = time::OffsetDateTime::from(at);
    let nitro = measure(batches, per_batch, || {
        nitro_attest::UnparsedAttestationDoc::from(document.as_slice())
            .parse_and_verify(nitro_at)
            .unwrap();
    });

    let clock_inside_validity = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|d| d.as_secs().abs_diff(FAKE_NOW_UNIX) < 3600);
    let evervault = clock_inside_validity.then(|| {
        measure(batches, per_batch, || {
            attestation_doc_validation::validate_and_parse_attestation_doc(&document).unwrap();
        })
    });

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "Verify a real AWS attestation document ({} bytes), median of {batches} batches of {per_batch}",
        document.len()
    );
    println!();
    println!("| verifier | time per document | vs floor | note |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| floor: 5 raw P-384 verifications (aws-lc-rs) | {:.1} µs | 1.00x | |",
        us(floor)
    );
    println!(
        "| enclaveid-attestor | {:.1} µs | {:.2}x | |",
        us(ours),
        us(ours) / us(floor)
    );
    println!(
        "| nitro_attest 0.2 | {:.1} µs | {:.2}x | ours is {:.1}x faster |",
        us(nitro),
        us(nitro) / us(floor),
        us(nitro) / us(ours)
    );
    match evervault {
        Some(t) => println!(
            "| attestation-doc-validation 0.10 | {:.1} µs | {:.2}x | ours is {:.1}x faster |",
            us(t),
            us(t) / us(floor),
            us(t) / us(ours)
        ),
        None => println!(
            "| attestation-doc-validation 0.10 | not measured: it verifies only at the current time and the document has expired; install `faketime` | | |"
        ),
    }
}

/// Median time of one call, over `batches` batches of `per_batch` calls.
fn measure(batches: usize, per_batch: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..per_batch {
        f();
    }
    let mut times: Vec<Duration> = (0..batches)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            started.elapsed() / per_batch as u32
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// What the five signature checks need, extracted outside the timed loop.
struct FloorInputs {
    /// (public key point, signed bytes, DER signature) per chain link.
    links: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    leaf_key: Vec<u8>,
    cose_signed: Vec<u8>,
    cose_signature: Vec<u8>,
}

impl FloorInputs {
    fn new(document: &[u8]) -> Self {
        let Value::Array(items) = ciborium::from_reader::<Value, _>(document).unwrap() else {
            panic!()
        };
        let (Value::Bytes(protected), Value::Bytes(payload), Value::Bytes(signature)) =
            (&items[0], &items[2], &items[3])
        else {
            panic!()
        };
        let parsed = Payload::parse(payload).unwrap();
        let ders: Vec<&Vec<u8>> = parsed
            .cabundle
            .iter()
            .chain(std::iter::once(&parsed.certificate))
            .collect();
        let certs: Vec<X509Certificate<'_>> = ders
            .iter()
            .map(|d| X509Certificate::from_der(d).unwrap().1)
            .collect();
        let links = certs
            .windows(2)
            .map(|pair| {
                (
                    pair[0].public_key().subject_public_key.data.to_vec(),
                    pair[1].tbs_certificate.as_ref().to_vec(),
                    pair[1].signature_value.data.to_vec(),
                )
            })
            .collect();
        let mut cose_signed = vec![0x84, 0x6a];
        cose_signed.extend_from_slice(b"Signature1");
        cose_signed.push(0x44);
        cose_signed.extend_from_slice(protected);
        cose_signed.push(0x40);
        cose_signed.extend_from_slice(&[0x59, (payload.len() >> 8) as u8, payload.len() as u8]);
        cose_signed.extend_from_slice(payload);
        Self {
            links,
            leaf_key: certs
                .last()
                .unwrap()
                .public_key()
                .subject_public_key
                .data
                .to_vec(),
            cose_signed,
            cose_signature: signature.clone(),
        }
    }

    fn verify_all(&self) {
        assert_eq!(self.links.len(), 4);
        for (key, signed, sig) in &self.links {
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_ASN1, key)
                .verify(signed, sig)
                .unwrap();
        }
        UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, &self.leaf_key)
            .verify(&self.cose_signed, &self.cose_signature)
            .unwrap();
    }
}
