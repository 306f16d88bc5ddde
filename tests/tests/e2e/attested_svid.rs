//! Attested SVIDs end to end (`cargo test --workspace -- attested_svid`): agents whose
//! entry is `attested = true` (the fake attestor, its root on disk so that relying
//! parties can pin it), `enclaveid proxy` with `--require-pcr0` on either side, and the
//! SVID as openssl and the `spiffe` crate (`enclaveid api fetch x509`) read it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use enclaveid_attestor::hex;
use enclaveid_attestor::svid::ATTESTED_SVID_OID;
use enclaveid_tests::{AgentProcess, enclaveid_bin, euid};

use super::proxy::{Proxy, ask, ca, connect, echo_server};

const INFERENCE: &str = "spiffe://example.org/inference";
const GATEWAY: &str = "spiffe://example.org/gateway";
const PCR0: [u8; 48] = [0x3c; 48];

/// The CA files (`ca.pem`, `ca.key`, `root.pem`) and a fake attestation root
/// (`attestation-root.pem`, `.key`) in `dir`, the root made as docs/attested-svids.md
/// says: `enclaveid attest fake --root-out --root-key-out`.
fn world(dir: &Path) {
    ca(dir);
    let out = Command::new(enclaveid_bin())
        .args(["attest", "fake", "--out"])
        .arg(dir.join("document.cose"))
        .arg("--root-out")
        .arg(dir.join("attestation-root.pem"))
        .arg("--root-key-out")
        .arg(dir.join("attestation-root.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(dir.join("attestation-root.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is the owner's only");
}

/// An agent under the CA of `dir` serving `id`, attested or not, its enclave's PCR0
/// `pcr0` (or in debug mode).
fn agent(dir: &Path, id: &str, attested: bool, pcr0: &[u8], debug: bool) -> AgentProcess {
    AgentProcess::start(&format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\n\
         [upstream]\nkind = \"dev\"\ncert_path = \"{d}/ca.pem\"\nkey_path = \"{d}/ca.key\"\nbundle_path = \"{d}/root.pem\"\n\
         [attestor]\nkind = \"fake\"\ndebug = {debug}\nallow_debug = {debug}\n\
         root_cert_path = \"{d}/attestation-root.pem\"\nroot_key_path = \"{d}/attestation-root.key\"\n\
         pcrs = {{ 0 = \"{pcr0}\" }}\n\
         [[entry]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{uid}\"]\nattested = {attested}\n",
        d = dir.display(),
        pcr0 = hex(pcr0),
        uid = euid(),
    ))
}

/// `proxy server` in front of `target` on `inference`, and `proxy client` on `gateway`
/// dialling it, with the extra arguments of each side.
fn proxies(
    dir: &Path,
    target: u16,
    inference: &AgentProcess,
    server_args: &[&str],
    gateway: &AgentProcess,
    client_args: &[&str],
) -> (Proxy, Proxy) {
    let target = format!("tcp://127.0.0.1:{target}");
    let mut args = vec!["--target", &target, "--allow", GATEWAY];
    args.extend_from_slice(server_args);
    let server = Proxy::start(dir, "server", inference, &args);
    let address = server.address();
    let mut args = vec!["--target", &address, "--expect", INFERENCE];
    args.extend_from_slice(client_args);
    let client = Proxy::start(dir, "client", gateway, &args);
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_svid_proxy_requires_the_peers_pcr0_in_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let target = echo_server(false).await;
    let root = d.join("attestation-root.pem").display().to_string();
    let pcr0 = hex(&PCR0);
    let other = hex(&[0x77; 48]);

    let (inference, gateway, attested_gateway) = tokio::task::spawn_blocking({
        let d = d.clone();
        move || {
            world(&d);
            (
                agent(&d, INFERENCE, true, &PCR0, false),
                agent(&d, GATEWAY, false, &PCR0, false),
                agent(&d, GATEWAY, true, &PCR0, false),
            )
        }
    })
    .await
    .unwrap();

    // The client requires the server's PCR0 (one of two accepted): served.
    let require = [
        "--require-pcr0",
        &other,
        "--require-pcr0",
        &pcr0,
        "--attestation-root",
        &root,
    ];
    let (_server, client) = proxies(&d, target, &inference, &[], &gateway, &require);
    let mut stream = connect(client.port).await;
    assert_eq!(
        ask(&mut stream, "hello").await.unwrap(),
        "echo: hello\n",
        "{}",
        client.log_text()
    );

    // Another image only: refused in the handshake, nothing reaches the service.
    let require = ["--require-pcr0", &other, "--attestation-root", &root];
    let (_server, client) = proxies(&d, target, &inference, &[], &gateway, &require);
    let mut stream = connect(client.port).await;
    assert_eq!(ask(&mut stream, "hello").await.unwrap_or_default(), "");
    let log = client.log_text();
    assert!(log.contains("peer refused in the handshake"), "{log}");
    assert!(log.contains("PCR0 mismatch"), "{log}");

    // Pinned to the AWS root (no --attestation-root), a fake document is refused.
    let (_server, client) = proxies(
        &d,
        target,
        &inference,
        &[],
        &gateway,
        &["--require-pcr0", &pcr0],
    );
    let mut stream = connect(client.port).await;
    assert_eq!(ask(&mut stream, "hello").await.unwrap_or_default(), "");
    assert!(
        client.log_text().contains("untrusted root"),
        "{}",
        client.log_text()
    );

    // The server requires its clients' attestation: a plain gateway SVID is refused
    // (fail closed), an attested one is served.
    let require = ["--require-pcr0", &pcr0, "--attestation-root", &root];
    let (server, client) = proxies(&d, target, &inference, &require, &gateway, &[]);
    let mut stream = connect(client.port).await;
    assert_eq!(ask(&mut stream, "hello").await.unwrap_or_default(), "");
    assert!(
        server
            .log_text()
            .contains("carries no attestation extension"),
        "{}",
        server.log_text()
    );
    let (_server, client) = proxies(&d, target, &inference, &require, &attested_gateway, &[]);
    let mut stream = connect(client.port).await;
    assert_eq!(
        ask(&mut stream, "both attested").await.unwrap(),
        "echo: both attested\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_svid_proxy_refuses_a_debug_mode_enclave() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let target = echo_server(false).await;
    let root = d.join("attestation-root.pem").display().to_string();
    let (inference, gateway) = tokio::task::spawn_blocking({
        let d = d.clone();
        move || {
            world(&d);
            (
                agent(&d, INFERENCE, true, &PCR0, true),
                agent(&d, GATEWAY, false, &PCR0, false),
            )
        }
    })
    .await
    .unwrap();
    // A debug-mode enclave reports PCR0 all zeros; listing it does not let it in.
    let zeros = hex(&[0; 48]);
    let require = ["--require-pcr0", &zeros, "--attestation-root", &root];
    let (_server, client) = proxies(&d, target, &inference, &[], &gateway, &require);
    let mut stream = connect(client.port).await;
    assert_eq!(ask(&mut stream, "hello").await.unwrap_or_default(), "");
    assert!(
        client.log_text().contains("debug mode"),
        "{}",
        client.log_text()
    );
}

#[test]
fn attested_svid_usage_errors_name_the_flag_and_what_is_accepted() {
    let out = Command::new(enclaveid_bin())
        .args([
            "proxy",
            "client",
            "--listen",
            "tcp://127.0.0.1:1",
            "--target",
            "tcp://127.0.0.1:2",
            "--expect",
            INFERENCE,
            "--require-pcr0",
            "abc",
            "--socket",
            "/nonexistent/agent.sock",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--require-pcr0 \"abc\""), "{stderr}");
    assert!(stderr.contains("96 hex digits"), "{stderr}");
}

/// The attested SVID as others read it: `enclaveid api fetch x509 --write` (the `spiffe`
/// crate parses it), then openssl prints the extension under its OID and verifies the
/// chain for TLS client and server use.
#[test]
fn attested_svid_is_read_by_the_spiffe_crate_and_verified_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    world(dir.path());
    let agent = agent(dir.path(), INFERENCE, true, &PCR0, false);
    let out_dir = dir.path().join("fetched");
    let out = Command::new(enclaveid_bin())
        .args(["api", "fetch", "x509", "--socket"])
        .arg(agent.socket())
        .arg("--write")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(INFERENCE), "{stdout}");

    let svid = out_dir.join("svid.0.pem");
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&svid)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(ATTESTED_SVID_OID), "{text}");
    assert!(text.contains(INFERENCE), "{text}");
    for purpose in ["sslclient", "sslserver"] {
        let verify = Command::new("openssl")
            .args(["verify", "-purpose", purpose, "-CAfile"])
            .arg(dir.path().join("root.pem"))
            .arg("-untrusted")
            .arg(dir.path().join("ca.pem"))
            .arg(&svid)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "openssl verify -purpose {purpose}: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    // The certificate grew by the document, and the key stayed where it belongs.
    let der = pem::parse(std::fs::read(&svid).unwrap()).unwrap();
    assert!(der.contents().len() > 3000, "{}", der.contents().len());
}
