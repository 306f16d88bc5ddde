//! The demo as an integration test: every promise of the mesh, over each address kind
//! that can run here (Unix and TCP; vsock needs an enclave).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

#[path = "../examples/demo/world.rs"]
#[allow(dead_code, reason = "the demo's world; the tests use part of it")]
mod world;

use std::time::Duration;

use enclaveid_io::AddressExt as _;
use mesh::inference;
use world::{Mesh, Options, Report, TRUST_DOMAIN, Transport};

fn ids() -> (String, String) {
    (
        format!("spiffe://{TRUST_DOMAIN}/gateway"),
        format!("spiffe://{TRUST_DOMAIN}/inference"),
    )
}

async fn run(transport: Transport) -> Report {
    let options = Options {
        transport,
        concurrency: 4,
        load_phase: Duration::from_millis(600),
    };
    world::run(&options, &|line| eprintln!("{line}"))
        .await
        .unwrap()
}

fn assert_demo(report: &Report) {
    let (gateway, inference) = ids();
    assert_eq!(report.gateway_saw.iter().collect::<Vec<_>>(), [&inference]);
    assert_eq!(report.inference_saw.iter().collect::<Vec<_>>(), [&gateway]);
    assert!(report.answers_correct);
    assert!(report.requests_ok > 0);
    assert_eq!(
        report.failures,
        Vec::<String>::new(),
        "zero failed requests across the rotation"
    );
    // New handshakes after the rotation present the new SVIDs, on both sides.
    assert_ne!(report.inference_rotated.0, report.inference_rotated.1);
    assert_ne!(report.gateway_rotated.0, report.gateway_rotated.1);
    assert!(
        report.serials_after.contains(&report.inference_rotated.1),
        "{report:?}"
    );
    assert!(
        !report.serials_after.contains(&report.inference_rotated.0),
        "{report:?}"
    );
    assert!(
        report
            .client_serials_after
            .contains(&report.gateway_rotated.1),
        "{report:?}"
    );
    // The impostor has a valid SVID of the trust domain, and is refused both ways.
    let as_client = report
        .impostor_as_client
        .as_deref()
        .expect("impostor served");
    assert!(
        as_client.contains("HandshakeFailure") || as_client.contains("closed"),
        "{as_client}"
    );
    let as_server = report
        .impostor_as_server
        .as_deref()
        .expect("impostor trusted");
    assert!(
        as_server.contains("not authorized: spiffe://mesh.demo/impostor"),
        "{as_server}"
    );
    // Revocation: the leaf by the inference service, the intermediate by the gateway.
    assert!(
        report
            .revoked_leaf
            .as_deref()
            .expect("revoked leaf served")
            .contains("closed the connection")
    );
    assert!(report.served_after_renewal);
    let intermediate = report
        .revoked_intermediate
        .as_deref()
        .expect("revoked CA served");
    assert!(
        intermediate.contains("revoked") && intermediate.contains("subordinate CA"),
        "{intermediate}"
    );
    assert!(
        report.gateway_kms_refusal.contains("AccessDeniedException"),
        "{}",
        report.gateway_kms_refusal
    );
    assert!(
        report.gateway_kms_refusal.contains("PCR0 mismatch"),
        "{}",
        report.gateway_kms_refusal
    );
    assert_eq!(
        report.problems((&gateway, &inference)),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_holds_over_unix_sockets() {
    assert_demo(&run(Transport::Unix).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_holds_over_tcp() {
    assert_demo(&run(Transport::Tcp).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_key_opens_only_in_the_inference_enclave() {
    let mut mesh = Mesh::start(Transport::Unix).await.unwrap();
    let opened = mesh.open_model_key(&mesh.inference).await.unwrap();
    assert_eq!(opened.len(), 32);
    assert_eq!(
        *opened, *mesh.model_key,
        "the same key each time KMS releases it"
    );
    for refused in [&mesh.gateway, &mesh.impostor] {
        let error = format!("{:#}", mesh.open_model_key(refused).await.unwrap_err());
        assert!(error.contains("AccessDeniedException"), "{error}");
        // The refusal names this enclave's measurement, to compare with the key policy.
        assert!(
            error.contains(&enclaveid_attestor::hex(&refused.pcr0)),
            "{error}"
        );
    }
    // The service answers with the key it opened: a gateway request proves it.
    let gateway = mesh.gateway_client().unwrap();
    let reply = gateway.send("what is 6 x 7?").await.unwrap();
    assert_eq!(
        reply.response.answer,
        inference::answer(&opened, "what is 6 x 7?")
    );
    assert_ne!(
        reply.response.answer,
        inference::answer(&[0; 32], "what is 6 x 7?")
    );
    mesh.shutdown().await;
}

/// The README's command: the demo example, run as built, exits 0 and says so.
#[test]
fn the_readme_demo_command_exits_zero() {
    let output = std::process::Command::new(demo_example())
        .args(["--transport", "tcp", "--concurrency", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("demo: every check passed"), "{stdout}");
    assert!(stdout.contains("spiffe://mesh.demo/inference"), "{stdout}");
}

/// The demo example, which `cargo test` builds with the tests:
/// target/<profile>/examples/demo.
fn demo_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(std::path::Path::parent).unwrap();
    profile_dir.join("examples/demo")
}

/// The old spelling, `mesh demo`, says where the demo went instead of failing obscurely.
#[test]
fn mesh_demo_points_to_the_example() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["demo", "--transport", "tcp"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--example demo"), "{stderr}");
}

#[test]
fn transports_name_what_is_accepted() {
    assert_eq!("unix".parse::<Transport>(), Ok(Transport::Unix));
    assert_eq!("tcp".parse::<Transport>(), Ok(Transport::Tcp));
    let error = "vsock".parse::<Transport>().unwrap_err();
    assert!(error.contains("accepted: unix, tcp"), "{error}");
    assert!(error.contains("vsock://CID:PORT"), "{error}");
}

#[test]
fn a_bad_address_is_refused_with_what_is_accepted() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args([
            "gateway",
            "--connect",
            "vsock://parent",
            "--allow",
            "spiffe://td/x",
            "--socket",
            "unix:///nowhere",
            "hi",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"vsock://parent\" is not an address: no :PORT"),
        "{stderr}"
    );
    assert!(stderr.contains("accepted: vsock://CID:PORT"), "{stderr}");
}

/// `mesh inference --model-key-ciphertext` as it runs in an enclave: the binary opens the
/// key with KMS through the host, as its agent's attestor, and serves with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inference_binary_opens_its_model_key_with_kms() {
    let mut mesh = Mesh::start(Transport::Unix).await.unwrap();
    let dir = mesh.dir.path().to_owned();
    std::fs::write(dir.join("model.key.kms"), &mesh.model_key_blob).unwrap();
    let listen = dir.join("bin-inference.sock");
    let spawn = |agent: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
            .arg("inference")
            .args(["--listen", &format!("unix://{}", listen.display())])
            .args(["--allow", "spiffe://mesh.demo/gateway"])
            .args([
                "--model-key-ciphertext",
                &dir.join("model.key.kms").display().to_string(),
            ])
            .args([
                "--agent-config",
                &dir.join(format!("{agent}-agent.toml"))
                    .display()
                    .to_string(),
            ])
            .args(["--kms-region", mesh.region()])
            .args(["--kms-host", &mesh.host_address().to_string()])
            .args(["--kms-endpoint", &mesh.kms_url()])
            .args([
                "--socket",
                &format!(
                    "unix://{}",
                    dir.join(format!("{agent}-agent.sock")).display()
                ),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };

    // As the gateway's enclave, KMS refuses and the service does not start.
    let refused = tokio::task::spawn_blocking({
        let child = spawn("gateway");
        move || child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("opening the model key with KMS")
            && stderr.contains("AccessDeniedException"),
        "{stderr}"
    );

    // As the inference enclave, it opens the key and answers with it.
    let mut child = spawn("inference");
    let gateway = mesh::gateway::Gateway::new(
        mesh.gateway.source.clone(),
        std::slice::from_ref(&mesh.inference.id),
        enclaveid_io::Address::Unix(listen.clone()),
        mesh::tls::CrlFiles::default(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reply = loop {
        match gateway.send_once("hello").await {
            Ok(reply) => break reply,
            Err(error) => {
                assert!(std::time::Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        reply.response.answer,
        inference::answer(&mesh.model_key, "hello")
    );
    assert_eq!(reply.peer_id.to_string(), "spiffe://mesh.demo/inference");
    let _ = child.kill();
    let _ = child.wait();
    mesh.shutdown().await;
}

/// Garbage, a half handshake and a client without a certificate get nothing, and the
/// service keeps answering the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inference_service_survives_garbage_and_keeps_serving() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut mesh = Mesh::start(Transport::Tcp).await.unwrap();
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff],
        &[0u8; 4096],
    ] {
        let mut stream = mesh.inference_address.connect().await.unwrap();
        stream.write_all(junk).await.unwrap();
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the connection is closed, not left hanging");
        assert!(
            !String::from_utf8_lossy(&answer).contains("answer"),
            "nothing served"
        );
    }
    // A TLS client with no certificate at all.
    let bundle = rustls::RootCertStore::empty();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(bundle)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let stream = mesh.inference_address.connect().await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("inference").unwrap();
    assert!(
        connector.connect(name, stream).await.is_err(),
        "no anonymous TLS"
    );

    let gateway = mesh.gateway_client().unwrap();
    let reply = gateway.send("still there?").await.unwrap();
    assert_eq!(
        reply.response.answer,
        inference::answer(&mesh.model_key, "still there?")
    );
    mesh.shutdown().await;
}
