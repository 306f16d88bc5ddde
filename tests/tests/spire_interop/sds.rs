//! Envoy SDS v3 on the agent socket, against the real spire-agent v1.13.3: a Go client
//! built from go-control-plane (`tests/interop/go/sds`) sends the same requests to both
//! and the answers are compared field by field (resource names and kinds, chains' shape
//! and SPIFFE IDs, key type and match, validation contexts and the SPIFFE validator's
//! trust domains, version and nonce presence, gRPC codes and messages). Both agents sign
//! under one root, so the bundles are the same bytes. Differences are in
//! docs/spire-compat.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{agent, euid, go_build, hierarchy, spire_server};

const ID: &str = "spiffe://example.org/go";

fn sds_client() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/go");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sds-interop");
        go_build("tests/interop/go/sds", &source, &out, &["./sds"]);
        out
    })
}

/// The client's JSON lines for `args` against the socket `socket`.
fn sds(socket: &Path, command: &str, envoy: &str, names: &[&str]) -> Vec<Value> {
    let output = Command::new(sds_client())
        .arg(command)
        .arg(socket)
        .arg(envoy)
        .args(names)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sds-interop {command} {names:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A response without what legitimately differs between two agents: timings, versions'
/// values, serials, and how far up a chain goes (spire-agent under an UpstreamAuthority
/// sends the upstream root too; EnclaveID stops below the root, which is in the bundle):
/// the leaf and its issuing CA are compared.
fn shape(mut value: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("elapsed_ms");
                map.remove("version");
                map.remove("leaf_serial");
                if let Some(Value::Object(chain)) = map.get_mut("chain") {
                    chain.remove("count");
                    if let Some(Value::Array(ca)) = chain.get_mut("ca") {
                        ca.truncate(2);
                    }
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    value
}

/// Asserts both agents answer `names` alike (`fetch`), and returns EnclaveID's answer.
fn same(enclaveid: &Path, spire: &Path, envoy: &str, names: &[&str]) -> Value {
    let ours = sds(enclaveid, "fetch", envoy, names).remove(0);
    let theirs = sds(spire, "fetch", envoy, names).remove(0);
    assert_eq!(
        shape(ours.clone()),
        shape(theirs.clone()),
        "Envoy {envoy}, names {names:?}:\nEnclaveID:   {ours}\nspire-agent: {theirs}"
    );
    ours
}

/// Waits until spire-agent serves the SVID over SDS (its entries sync every few seconds).
fn wait_for_svid(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = sds(socket, "fetch", "1.30", &["default"]).remove(0);
        if answer.get("resources").is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "spire-agent never served an SVID: {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn spire_sds_answers_like_spire_agent_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let root = hierarchy(dir.path());
    let server = spire_server(dir.path(), &root.root_pem, &root.key_pem);
    let spire_agent = server.start_agent(dir.path());
    let spire = spire_agent.socket().to_owned();

    // No identity yet: the trust domain's bundle only, and the same refusal of "default".
    let stranger = super::agent_for_uid("go", 4242, dir.path());
    for names in [&[][..], &["ROOTCA"], &["default"], &[ID]] {
        let answer = same(stranger.socket(), &spire, "1.30", names);
        if names.is_empty() {
            assert_eq!(answer["resources"].as_array().unwrap().len(), 1, "{answer}");
        }
    }
    let refused = sds(stranger.socket(), "fetch", "1.30", &["default"]).remove(0);
    assert_eq!(refused["code"], "InvalidArgument", "{refused}");
    assert_eq!(
        refused["message"],
        "workload is not authorized for the requested identities [\"default\"]"
    );
    drop(stranger);

    server.entry_create(ID, &[&format!("unix:uid:{}", euid())], "");
    wait_for_svid(&spire);
    let enclaveid = agent("go", "", Some(dir.path()));
    let ours = enclaveid.socket().to_owned();
    for names in [
        &[][..],
        &["default"],
        &[ID],
        &["ROOTCA"],
        &["ALL"],
        &["spiffe://example.org"],
        &["default", "ROOTCA"],
        &["ROOTCA", "ALL"],
        &["spiffe://example.org/other"],
        &["spiffe://other.org"],
    ] {
        same(&ours, &spire, "1.30", names);
    }
    // An Envoy without the SPIFFE validator gets trusted_ca, and no "ALL".
    for names in [&["ROOTCA"][..], &["ALL"], &[][..]] {
        same(&ours, &spire, "1.17", names);
    }

    let answer = same(&ours, &spire, "1.30", &["default", "spiffe://example.org"]);
    let resources = answer["resources"].as_array().unwrap();
    assert_eq!(resources[0]["validator"], "envoy.tls.cert_validator.spiffe");
    assert_eq!(resources[1]["name"], "default");
    assert_eq!(resources[1]["key_pem_type"], "PRIVATE KEY");
    assert_eq!(resources[1]["key_matches"], true);

    // DeltaSecrets: not implemented by either.
    for socket in [&ours, &spire] {
        let output = Command::new(sds_client())
            .args(["delta"])
            .arg(socket)
            .output()
            .unwrap();
        let said: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(said["code"], "Unimplemented", "{said}");
    }
}

#[test]
fn spire_sds_streams_push_rotations_and_nacks_like_spire_agent() {
    let dir = tempfile::tempdir().unwrap();
    let root = hierarchy(dir.path());
    let server = spire_server(dir.path(), &root.root_pem, &root.key_pem);
    server.entry_create_with(
        ID,
        &[&format!("unix:uid:{}", euid())],
        &["-x509SVIDTTL", "12"],
    );
    let spire_agent = server.start_agent(dir.path());
    let spire = spire_agent.socket().to_owned();
    wait_for_svid(&spire);
    let enclaveid = agent("go", "ttl = \"12s\"", Some(dir.path()));
    let ours = enclaveid.socket().to_owned();

    for command in ["stream", "nack"] {
        let answers: Vec<Vec<Value>> = [&ours, &spire]
            .iter()
            .map(|socket| sds(socket, command, "1.30", &["default", "ROOTCA"]))
            .collect();
        for (who, lines) in ["EnclaveID", "spire-agent"].iter().zip(&answers) {
            assert_eq!(lines.len(), 2, "{who} {command}: {lines:?}");
            let (first, pushed) = (&lines[0], &lines[1]);
            assert_eq!(first["has_version"], true, "{who}: {first}");
            assert_eq!(first["nonce_len"], 8, "{who}: {first}");
            assert_ne!(first["version"], pushed["version"], "{who} {command}");
            let serial = |v: &Value| v["resources"][1]["chain"]["leaf_serial"].clone();
            assert_ne!(
                serial(first),
                serial(pushed),
                "{who} {command}: a rotation was pushed"
            );
            // After an ACK or a NACK, nothing is sent until the next change: the second
            // answer is the rotation (a new SVID, above), not the NACKed version again.
        }
        assert_eq!(
            shape(answers[0][0].clone()),
            shape(answers[1][0].clone()),
            "{command}"
        );
        assert_eq!(
            shape(answers[0][1].clone()),
            shape(answers[1][1].clone()),
            "{command}"
        );
    }
}
