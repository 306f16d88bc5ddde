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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use enclaveid_io::{Address, AddressExt as _};
use mesh::gateway::Gateway;
use mesh::inference;
use mesh::tls::CrlFiles;
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

/// What a hostile relay does to the bytes it carries.
#[derive(Clone)]
enum Hostility {
    /// Forward faithfully, recording both directions.
    Record(Arc<Mutex<(Vec<u8>, Vec<u8>)>>),
    /// Flip the byte at this offset of the client's stream (`true`) or the server's.
    Flip { from_client: bool, at: usize },
    /// Forward this many of the client's bytes, then close both sides.
    Truncate(usize),
}

/// A relay on `listen` that forwards to `to` and does `hostility` on the way.
async fn hostile_relay(listen: Address, to: Address, hostility: Hostility) -> Address {
    let listener = listen.bind().await.unwrap();
    let bound = listener.local_address().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = to.connect().await.unwrap();
            let hostility = hostility.clone();
            tokio::spawn(async move {
                let (client_read, client_write) = tokio::io::split(client);
                let (server_read, server_write) = tokio::io::split(server);
                let truncates = matches!(hostility, Hostility::Truncate(_));
                let up = tokio::spawn(pipe(true, client_read, server_write, hostility.clone()));
                let down = tokio::spawn(pipe(false, server_read, client_write, hostility));
                let _ = up.await;
                if truncates {
                    // Both sides closed: the halves are dropped.
                    down.abort();
                } else {
                    let _ = down.await;
                }
            });
        }
    });
    bound
}

/// One direction of [`hostile_relay`].
async fn pipe(
    from_client: bool,
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    hostility: Hostility,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut offset = 0;
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        match &hostility {
            Hostility::Record(recorded) => {
                let mut recorded = recorded.lock().unwrap();
                let side = if from_client {
                    &mut recorded.0
                } else {
                    &mut recorded.1
                };
                side.extend_from_slice(chunk);
            }
            Hostility::Flip {
                from_client: side,
                at,
            } => {
                if *side == from_client && (offset..offset + n).contains(at) {
                    chunk[at - offset] ^= 0x01;
                }
            }
            Hostility::Truncate(keep) => {
                if from_client && offset + n >= *keep {
                    let _ = to.write_all(&chunk[..keep - offset]).await;
                    return;
                }
            }
        }
        offset += n;
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}

/// TLS records of a recorded stream: (offset, content type, length of the body).
fn records(stream: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut records = Vec::new();
    let mut at = 0;
    while at + 5 <= stream.len() {
        let len = usize::from(u16::from_be_bytes([stream[at + 3], stream[at + 4]]));
        records.push((at, stream[at], len));
        at += 5 + len;
    }
    records
}

fn gateway_via(mesh: &Mesh, address: Address) -> Gateway {
    Gateway::new(
        mesh.gateway.source.clone(),
        std::slice::from_ref(&mesh.inference.id),
        address,
        CrlFiles::default(),
    )
    .unwrap()
}

fn received(mesh: &Mesh) -> u64 {
    mesh.inference_received
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_carries_requests_through_one_and_two_parents() {
    let mut mesh = Mesh::start(Transport::Unix).await.unwrap();
    let one = enclaveid_host::Route {
        listen: Address::Unix(mesh.dir.path().join("one-relay.sock")),
        to: mesh.inference_address.clone(),
    };
    let relay = enclaveid_host::Relay::bind(
        &[one],
        enclaveid_host::RelayLimits::default(),
        enclaveid_host::RelayStats::default(),
    )
    .await
    .unwrap();
    let one = relay.local_addresses().remove(0);
    let stats = relay.stats().clone();
    tokio::spawn(relay.serve(std::future::pending()));
    for (address, hops) in [(one, 1), (mesh.relay_address.clone(), 2)] {
        let before = received(&mesh);
        let reply = gateway_via(&mesh, address)
            .send_once("through")
            .await
            .unwrap();
        assert_eq!(
            reply.response.answer,
            inference::answer(&mesh.model_key, "through")
        );
        assert_eq!(
            reply.peer_id.to_string(),
            "spiffe://mesh.demo/inference",
            "{hops} hops"
        );
        assert_eq!(received(&mesh), before + 1);
    }
    let (_, route) = &stats.snapshot()[0];
    assert_eq!(route.opened.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Both of the demo's relays carried the second request.
    for (name, route) in mesh.relay_stats.snapshot() {
        assert!(
            route.bytes_in.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "{name}"
        );
    }
    mesh.shutdown().await;
}

/// A relay flips a byte (in either direction, in the handshake or in the request),
/// truncates the client's stream, replays a recorded session, or dials the impostor:
/// the handshake or the record layer fails, and no request reaches the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_relay_flips_truncates_replays_or_swaps_and_no_request_gets_through() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut mesh = Mesh::start(Transport::Unix).await.unwrap();
    let dir = mesh.dir.path().to_owned();
    let relay_at = |name: &str| Address::Unix(dir.join(format!("hostile-{name}.sock")));

    // An honest session, recorded: the handshake and one request, before any close.
    let recorded = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let recorder = hostile_relay(
        relay_at("record"),
        mesh.inference_address.clone(),
        Hostility::Record(recorded.clone()),
    )
    .await;
    let mut connection = gateway_via(&mesh, recorder).connect().await.unwrap();
    connection.request("recorded").await.unwrap();
    let (from_client, from_server) = recorded.lock().unwrap().clone();
    drop(connection);
    let client_records = records(&from_client);
    let server_records = records(&from_server);
    assert_eq!(client_records[0].1, 22, "a ClientHello first");
    let biggest = |records: &[(usize, u8, usize)]| {
        let (at, _, len) = *records
            .iter()
            .filter(|r| r.1 == 23)
            .max_by_key(|r| r.2)
            .unwrap();
        at + 5 + len / 2
    };
    let (request_at, _, request_len) = *client_records.last().unwrap();
    assert_eq!(
        client_records.last().unwrap().1,
        23,
        "the request, encrypted"
    );
    let before = received(&mesh);
    let mut refusals = Vec::new();

    // Flipped bytes: the ClientHello, the client's certificate flight, the request; the
    // ServerHello and the server's certificate flight.
    for (what, from_client, at) in [
        ("ClientHello", true, client_records[0].0 + 5 + 40),
        (
            "client's certificate flight",
            true,
            biggest(&client_records),
        ),
        ("request record", true, request_at + 5 + request_len / 2),
        ("ServerHello", false, server_records[0].0 + 5 + 40),
        (
            "server's certificate flight",
            false,
            biggest(&server_records),
        ),
    ] {
        let relay = hostile_relay(
            relay_at(&format!("flip-{at}-{from_client}")),
            mesh.inference_address.clone(),
            Hostility::Flip { from_client, at },
        )
        .await;
        let error = gateway_via(&mesh, relay)
            .send_once("flipped")
            .await
            .unwrap_err();
        refusals.push(format!("flip in the {what}: {error}"));
    }
    // Truncated: mid-handshake, and mid-request.
    for (what, keep) in [
        ("handshake", client_records[1].0 + 3),
        ("request", request_at + 5 + request_len / 2),
    ] {
        let relay = hostile_relay(
            relay_at(&format!("truncate-{keep}")),
            mesh.inference_address.clone(),
            Hostility::Truncate(keep),
        )
        .await;
        let error = gateway_via(&mesh, relay)
            .send_once("truncated")
            .await
            .unwrap_err();
        refusals.push(format!("truncated in the {what}: {error}"));
    }
    // Replayed: the recorded client bytes, sent again to the service.
    let mut replay = mesh.inference_address.connect().await.unwrap();
    replay.write_all(&from_client).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), replay.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the replayed session is closed, not left hanging"
    );
    refusals.push(format!(
        "replayed session: closed after {} bytes",
        answer.len()
    ));

    // Swapped: the relay dials the impostor (a valid SVID of the trust domain, another ID).
    let impostor_address = Address::Unix(dir.join("impostor-behind-relay.sock"));
    let listener = impostor_address.bind().await.unwrap();
    let impostor = inference::Inference::new(
        mesh.impostor.source.clone(),
        std::slice::from_ref(&mesh.gateway.id),
        CrlFiles::default(),
        zeroize::Zeroizing::new(vec![0; 32]),
    )
    .unwrap();
    let impostor_received = impostor.received();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(impostor.serve(listener, stop.clone()));
    let relay = hostile_relay(
        relay_at("swap"),
        impostor_address,
        Hostility::Flip {
            from_client: true,
            at: usize::MAX,
        },
    )
    .await;
    let error = gateway_via(&mesh, relay)
        .send_once("to whom?")
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not authorized: spiffe://mesh.demo/impostor"),
        "{error}"
    );
    refusals.push(format!("swapped for the impostor: {error}"));
    stop.cancel();

    eprintln!("{}", refusals.join("\n"));
    assert_eq!(
        received(&mesh),
        before,
        "no request reached the application: {refusals:#?}"
    );
    assert_eq!(
        impostor_received.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // And the service still answers an honest gateway.
    let reply = mesh
        .gateway_client()
        .unwrap()
        .send("still there?")
        .await
        .unwrap();
    assert_eq!(
        reply.response.answer,
        inference::answer(&mesh.model_key, "still there?")
    );
    mesh.shutdown().await;
}

#[path = "demo/dns.rs"]
mod dns;

#[path = "demo/attested.rs"]
mod attested;
