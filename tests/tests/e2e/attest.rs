//! `enclaveid attest verify` on real AWS documents and on fake ones.

use std::path::PathBuf;
use std::process::{Command, Output};

use enclaveid_tests::enclaveid_bin;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/nitro")
        .join(name)
}

fn enclaveid(args: &[&str]) -> Output {
    Command::new(enclaveid_bin()).args(args).output().unwrap()
}

const PRODUCTION_PCR0: &str = "8bb159f202bb95d6d4d98e0e103918246cea734f1d57cd263e4fd56075ed53f6fa8c68854817a32749a241e11874c26b";

#[test]
fn a_real_document_verifies_at_its_time_and_prints_its_pcrs() {
    let doc = fixture("2025-01-06-nitro-attest-fixture.cose");
    let out = enclaveid(&["attest", "verify", doc.to_str().unwrap(), "--at-doc-time"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pcrs"]["0"], PRODUCTION_PCR0);
    assert_eq!(json["module_id"], "i-0bee92034f3d60691-enc01943c5eaab3ad6a");
    assert_eq!(json["timestamp"], "2025-01-06T16:07:05.472Z");
    assert_eq!(json["debug_mode"], false);

    // The same document at an explicit time inside, then outside, the chain's validity.
    let inside = enclaveid(&[
        "attest",
        "verify",
        doc.to_str().unwrap(),
        "--at",
        "2025-01-06T17:00:00Z",
    ]);
    assert!(inside.status.success());
    let now = enclaveid(&["attest", "verify", doc.to_str().unwrap()]);
    assert_eq!(now.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&now.stderr).contains("expired at"));

    // A PCR allowlist that does not contain PCR0.
    let other = "00".repeat(47) + "01";
    let refused = enclaveid(&[
        "attest",
        "verify",
        doc.to_str().unwrap(),
        "--at-doc-time",
        "--pcr0",
        &other,
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("PCR0 mismatch: got {PRODUCTION_PCR0}")),
        "{stderr}"
    );
    let accepted = enclaveid(&[
        "attest",
        "verify",
        doc.to_str().unwrap(),
        "--at-doc-time",
        "--pcr0",
        &other,
        "--pcr0",
        PRODUCTION_PCR0,
    ]);
    assert!(
        accepted.status.success(),
        "any one of the listed values is accepted"
    );
}

#[test]
fn a_debug_document_needs_allow_debug() {
    let doc = fixture("2022-10-12-evervault-beta-debug.cose");
    let refused = enclaveid(&["attest", "verify", doc.to_str().unwrap(), "--at-doc-time"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("debug mode"));
    let allowed = enclaveid(&[
        "attest",
        "verify",
        doc.to_str().unwrap(),
        "--at-doc-time",
        "--allow-debug",
    ]);
    assert!(allowed.status.success());
    let json: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(json["debug_mode"], true);
    assert_eq!(json["user_data"], "68656c6c6f2c20776f726c6421");
}

#[test]
fn a_fake_document_verifies_only_against_its_own_root() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("fake.cose");
    let root = dir.path().join("fake-root.pem");
    let pcr0 = "ab".repeat(48);
    let made = enclaveid(&[
        "attest",
        "fake",
        "--pcr0",
        &pcr0,
        "--nonce",
        "0102",
        "--out",
        doc.to_str().unwrap(),
        "--root-out",
        root.to_str().unwrap(),
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let verified = enclaveid(&[
        "attest",
        "verify",
        doc.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--pcr0",
        &pcr0,
    ]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(json["nonce"], "0102");

    let against_aws = enclaveid(&["attest", "verify", doc.to_str().unwrap()]);
    assert_eq!(against_aws.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&against_aws.stderr).contains("untrusted root"));
}
