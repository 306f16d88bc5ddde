//! Interop with go-spiffe v2.9.0, the reference Go SPIFFE library, and with a real SPIRE
//! (v1.13.3): a Go workload (`tests/interop/go`) fetches, watches a rotation, does mTLS
//! between two identities and round-trips a JWT-SVID against `enclaveid run`, with
//! go-spiffe's own checks (key and certificate match, X.509-SVID rules, JWT validation);
//! the same programs run against a real `spire-agent` with only `SPIFFE_ENDPOINT_SOCKET`
//! changed; and a workload with an EnclaveID SVID and one with a SPIRE SVID, both under
//! one root, do mTLS with each other in both directions.
//!
//! Every test name contains `spire`: `cargo test --workspace -- spire` runs this group,
//! `cargo test --workspace -- --skip spire` skips it (CI runs it). Building the Go program
//! needs `go` and the Go module proxy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step must fail the test loudly"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use enclaveid_tests::pca::TestPca;
use enclaveid_tests::spire::{DiskUpstream, SpireAgent, SpireServer, free_port, go_build};
use enclaveid_tests::{AgentProcess, enclaveid_bin, euid};

#[path = "spire_interop/sds.rs"]
mod sds;
#[path = "spire_interop/upstream.rs"]
mod upstream;

/// Builds the Go client once per test run.
fn go_client() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/go");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spiffe-interop");
        go_build("tests/interop/go", &source, &out, &["."]);
        out
    })
}

fn run_go(agent: &AgentProcess, args: &[&str]) -> Output {
    go_at(&agent.endpoint(), args)
}

fn go_at(endpoint: &str, args: &[&str]) -> Output {
    Command::new(go_client())
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .output()
        .unwrap()
}

/// The go client's output once it succeeds (a new SPIRE agent syncs its entries every
/// few seconds).
fn go_eventually(endpoint: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = go_at(endpoint, args);
        if output.status.success() || Instant::now() > deadline {
            return stdout_of(&output);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "go-spiffe client failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An agent serving `path` to this uid; with `ca`, under that CA's files.
fn agent(path: &str, extra: &str, ca: Option<&Path>) -> AgentProcess {
    agent_for(path, euid(), extra, ca)
}

/// An agent serving `path` to `uid` under the CA files in `ca`.
fn agent_for_uid(path: &str, uid: u32, ca: &Path) -> AgentProcess {
    agent_for(path, uid, "", Some(ca))
}

fn agent_for(path: &str, uid: u32, extra: &str, ca: Option<&Path>) -> AgentProcess {
    let upstream = match ca {
        Some(dir) => format!(
            "kind = \"dev\"\ncert_path = \"{0}/ca.pem\"\nkey_path = \"{0}/ca.key\"\nbundle_path = \"{0}/root.pem\"",
            dir.display()
        ),
        None => "kind = \"dev\"".to_owned(),
    };
    AgentProcess::start(&format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\n\
         [upstream]\n{upstream}\n[attestor]\nkind = \"fake\"\n\
         [[entry]]\nspiffe_id = \"spiffe://example.org/{path}\"\nselectors = [\"unix:uid:{uid}\"]\n{extra}\n"
    ))
}

#[test]
fn spire_interop_go_spiffe_fetches_and_follows_a_rotation() {
    let agent = agent("go", "ttl = \"6s\"\nhint = \"internal\"", None);
    let fetched = stdout_of(&run_go(&agent, &["fetch"]));
    assert!(
        fetched.contains("id spiffe://example.org/go\n"),
        "{fetched}"
    );
    assert!(fetched.contains("svids 1\n"), "{fetched}");
    assert!(fetched.contains("chain 1\n"), "{fetched}");
    assert!(fetched.contains("authorities 1\n"), "{fetched}");
    assert!(fetched.contains("hint \"internal\""), "{fetched}");

    let rotated = stdout_of(&run_go(&agent, &["rotation", "20s"]));
    let serial = |prefix: &str| {
        rotated
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap()
            .to_owned()
    };
    assert_ne!(serial("old "), serial("new "), "{rotated}");
}

/// A root (what SPIRE's `disk` UpstreamAuthority signs under) and a subordinate CA for the
/// trust domain (what EnclaveID's agents mint under), written to `dir`.
fn hierarchy(dir: &Path) -> TestPca {
    let root = TestPca::new("interop root");
    let (_, ca) = root.subordinate("spiffe://example.org", Duration::from_secs(86_400));
    std::fs::write(dir.join("root.pem"), &root.root_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.join("ca.key"), &ca.key_pem).unwrap();
    root
}

/// A go-spiffe mTLS echo server on a free port, with the SVIDs at `endpoint`, accepting
/// `client_id`; killed on drop.
struct GoServer {
    child: std::process::Child,
    address: String,
}

impl GoServer {
    fn start(endpoint: &str, client_id: &str) -> Self {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(go_client())
            .args(["serve", &address, client_id])
            .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "the go-spiffe server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, address }
    }
}

impl Drop for GoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn spire_interop_go_spiffe_mtls_between_two_identities() {
    // Two agents under one CA, as two enclaves of one trust domain.
    let dir = tempfile::tempdir().unwrap();
    hierarchy(dir.path());
    let server_agent = agent("server", "", Some(dir.path()));
    let client_agent = agent("client", "", Some(dir.path()));
    let server = GoServer::start(&server_agent.endpoint(), "spiffe://example.org/client");
    let address = server.address.clone();

    let answer = stdout_of(&run_go(
        &client_agent,
        &["call", &address, "spiffe://example.org/server", "hello"],
    ));
    assert_eq!(answer, "spiffe://example.org/server says hello\n");
    // go-spiffe's authoriser refuses a server with another ID.
    let refused = run_go(
        &client_agent,
        &["call", &address, "spiffe://example.org/elsewhere", "hello"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unexpected ID"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn spire_interop_go_spiffe_jwt_round_trip() {
    let agent = agent("go", "", None);
    let out = stdout_of(&run_go(&agent, &["jwt", "interop"]));
    assert!(out.contains("id spiffe://example.org/go\n"), "{out}");
    assert!(out.contains("validated spiffe://example.org/go\n"), "{out}");
    assert!(out.contains("local spiffe://example.org/go\n"), "{out}");
    assert!(out.contains("audience interop\n"), "{out}");
}

/// A SPIRE server for `example.org` under the root `root_pem` (disk UpstreamAuthority with
/// its key `key_pem`).
fn spire_server(dir: &Path, root_pem: &str, key_pem: &str) -> SpireServer {
    SpireServer::start(
        dir,
        "example.org",
        Some(DiskUpstream {
            cert_pem: root_pem,
            key_pem,
            bundle_pem: root_pem,
        }),
    )
}

/// A SPIRE server under `root` registering `spiffe_id` for this uid, and its agent.
fn spire(dir: &Path, root: &TestPca, spiffe_id: &str, hint: &str) -> (SpireServer, SpireAgent) {
    let server = spire_server(dir, &root.root_pem, &root.key_pem);
    server.entry_create(spiffe_id, &[&format!("unix:uid:{}", euid())], hint);
    let agent = server.start_agent(dir);
    (server, agent)
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key:?} in {out}"))
}

/// The same client programs, first against EnclaveID and then against spire-agent, with
/// only `SPIFFE_ENDPOINT_SOCKET` changed.
#[test]
fn spire_same_workloads_run_unchanged_against_either_agent() {
    let dir = tempfile::tempdir().unwrap();
    let root = hierarchy(dir.path());
    let enclaveid = agent("go", "hint = \"internal\"", Some(dir.path()));
    let (_server, spire_agent) = spire(dir.path(), &root, "spiffe://example.org/go", "internal");

    let mut views = Vec::new();
    for endpoint in [enclaveid.endpoint(), spire_agent.endpoint()] {
        let fetched = go_eventually(&endpoint, &["fetch"]);
        let jwt = go_eventually(&endpoint, &["jwt", "interop"]);
        eprintln!("{endpoint}:\n{fetched}{jwt}");
        // The `spiffe` Rust crate, through `enclaveid api fetch x509`.
        let rust = Command::new(enclaveid_bin())
            .args(["api", "fetch", "x509", "--socket", &endpoint])
            .output()
            .unwrap();
        let rust = stdout_of(&rust);
        assert!(
            rust.contains("SPIFFE ID:\t\tspiffe://example.org/go")
                || rust.contains("spiffe://example.org/go"),
            "{rust}"
        );
        views.push((
            line(&fetched, "id").to_owned(),
            line(&fetched, "svids").to_owned(),
            line(&fetched, "hint").to_owned(),
            line(&jwt, "validated").to_owned(),
            line(&jwt, "local").to_owned(),
            line(&jwt, "audience").to_owned(),
        ));
    }
    assert_eq!(
        views[0], views[1],
        "EnclaveID and spire-agent look alike to the workload"
    );
    assert_eq!(views[0].0, "spiffe://example.org/go");
}

/// One trust domain, two issuers under one root: a workload with an EnclaveID SVID and one
/// with a SPIRE SVID do mTLS with each other, each side as server and as client.
#[test]
fn spire_and_enclaveid_svids_under_one_root_do_mtls_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let root = hierarchy(dir.path());
    let enclaveid = agent("enclaveid-workload", "", Some(dir.path()));
    let (_server, spire_agent) =
        spire(dir.path(), &root, "spiffe://example.org/spire-workload", "");
    go_eventually(&spire_agent.endpoint(), &["fetch"]);

    go_mtls_both_ways(
        (
            &enclaveid.endpoint(),
            "spiffe://example.org/enclaveid-workload",
        ),
        (
            &spire_agent.endpoint(),
            "spiffe://example.org/spire-workload",
        ),
    );
}

/// go-spiffe mTLS between the workloads at two Workload API endpoints, each side once as
/// the server and once as the client; each is `(endpoint, its SPIFFE ID)`.
fn go_mtls_both_ways(a: (&str, &str), b: (&str, &str)) {
    for ((server, server_id), (client, client_id)) in [(a, b), (b, a)] {
        let on_server = GoServer::start(server, client_id);
        let message = format!("from {client_id}");
        let answer = stdout_of(&go_at(
            client,
            &["call", &on_server.address, server_id, &message],
        ));
        assert_eq!(answer, format!("{server_id} says {message}\n"));
    }
}

/// Status codes and messages clients match on, compared call by call between the two
/// agents; what differs is listed in docs/spire-compat.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_status_codes_match_for_what_clients_rely_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = hierarchy(dir.path());
    let enclaveid = agent("go", "", Some(dir.path()));
    let (_server, spire_agent) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        let root_pem = root.root_pem.clone();
        let key_pem = root.key_pem.clone();
        move || {
            let server = spire_server(&dir, &root_pem, &key_pem);
            server.entry_create(
                "spiffe://example.org/go",
                &[&format!("unix:uid:{}", euid())],
                "",
            );
            let agent = server.start_agent(&dir);
            (server, agent)
        }
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking({
        let endpoint = spire_agent.endpoint();
        move || go_eventually(&endpoint, &["fetch"])
    })
    .await
    .unwrap();

    let mut answers = Vec::new();
    for socket in [enclaveid.socket(), spire_agent.socket()] {
        answers.push(status_answers(socket, "spiffe://example.org/not-mine").await);
    }
    assert_eq!(answers[0], answers[1]);
}

/// The status codes (and the messages clients match on) of calls clients get wrong:
/// no security header, no audience, a garbage token, no token, another's SPIFFE ID.
async fn status_answers(socket: &Path, other_id: &str) -> [(tonic::Code, String); 5] {
    use enclaveid_tests::{raw_client, with_header};
    use enclaveid_workload_api::proto::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};
    let mut client = raw_client(socket).await;
    let no_header = client
        .fetch_x509svid(tonic::Request::new(X509svidRequest {}))
        .await
        .unwrap_err();
    let no_audience = client
        .fetch_jwtsvid(with_header(JwtsvidRequest::default()))
        .await
        .unwrap_err();
    let garbage = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "garbage".into(),
        }))
        .await
        .unwrap_err();
    let no_token = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: String::new(),
        }))
        .await
        .unwrap_err();
    let other_id = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: other_id.into(),
        }))
        .await
        .unwrap_err();
    eprintln!("{}:", socket.display());
    for status in [&no_header, &no_audience, &garbage, &no_token, &other_id] {
        eprintln!("  {:?} {:?}", status.code(), status.message());
    }
    [
        (no_header.code(), no_header.message().to_owned()),
        (no_audience.code(), no_audience.message().to_owned()),
        (garbage.code(), String::new()),
        (no_token.code(), no_token.message().to_owned()),
        (other_id.code(), String::new()),
    ]
}

/// A SPIRE server in another trust domain federates with EnclaveID's bundle endpoint
/// (profile `https_web`: no bootstrap bundle, the endpoint's Web PKI certificate is
/// trusted through `SSL_CERT_FILE`); its workloads receive EnclaveID's bundle.
#[test]
fn spire_federates_with_the_enclaveid_bundle_endpoint() {
    use enclaveid_tests::pca::Profile;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let web = TestPca::new("web root");
    let cert = web.issue_for(
        Profile::Leaf(vec![
            rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
            rcgen::SanType::DnsName("localhost".try_into().unwrap()),
        ]),
        Duration::from_secs(86_400),
    );
    std::fs::write(d.join("web-root.pem"), &web.root_pem).unwrap();
    std::fs::write(d.join("endpoint.pem"), &cert.cert_pem).unwrap();
    std::fs::write(d.join("endpoint.key"), &cert.key_pem).unwrap();
    let port = free_port();
    let enclaveid = agent(
        "go",
        &format!(
            "[bundle_endpoint]\nlisten = \"tcp://127.0.0.1:{port}\"\ncert_path = \"{0}/endpoint.pem\"\nkey_path = \"{0}/endpoint.key\"\nrefresh_hint = \"10s\"",
            d.display()
        ),
        None,
    );
    let ours = go_eventually(&enclaveid.endpoint(), &["bundles"]);
    let ours = ours
        .lines()
        .find(|l| l.starts_with("bundle example.org "))
        .unwrap()
        .to_owned();

    let federation = format!(
        r#"federation {{
    federates_with "example.org" {{
      bundle_endpoint_url = "https://127.0.0.1:{port}"
      bundle_endpoint_profile "https_web" {{}}
    }}
  }}"#
    );
    let web_root = d.join("web-root.pem").display().to_string();
    let server = SpireServer::start_with(
        d,
        "other.org",
        None,
        &federation,
        &[("SSL_CERT_FILE", &web_root)],
    );
    server.entry_create_federated(
        "spiffe://other.org/w",
        &[&format!("unix:uid:{}", euid())],
        "spiffe://example.org",
    );
    let spire_agent = server.start_agent(d);

    let theirs = federated_bundle(&spire_agent.endpoint(), &enclaveid);
    assert_eq!(
        theirs, ours,
        "SPIRE's workload holds EnclaveID's roots, byte for byte"
    );
    assert!(
        enclaveid
            .stderr_text()
            .contains("bundle endpoint: request answered")
    );
}

/// The `https_spiffe` profile: the endpoint presents the X.509-SVID EnclaveID mints for
/// its entry; SPIRE is bootstrapped with `enclaveid api fetch bundle`, then authenticates
/// the endpoint by that SPIFFE ID at every refresh.
#[test]
fn spire_federates_over_https_spiffe_after_a_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let enclaveid = agent(
        "go",
        &format!(
            "[[entry]]\nspiffe_id = \"spiffe://example.org/bundle-endpoint\"\nselectors = [\"unix:uid:4000000\"]\n\
             [bundle_endpoint]\nlisten = \"tcp://127.0.0.1:{port}\"\nspiffe_id = \"spiffe://example.org/bundle-endpoint\"\nrefresh_hint = \"5s\""
        ),
        None,
    );
    let bootstrap = Command::new(enclaveid_bin())
        .args([
            "api",
            "fetch",
            "bundle",
            "--trust-domain",
            "example.org",
            "--socket",
        ])
        .arg(enclaveid.endpoint())
        .output()
        .unwrap();
    std::fs::write(d.join("example.org.json"), stdout_of(&bootstrap)).unwrap();

    let federation = format!(
        r#"federation {{
    federates_with "example.org" {{
      bundle_endpoint_url = "https://127.0.0.1:{port}"
      bundle_endpoint_profile "https_spiffe" {{
        endpoint_spiffe_id = "spiffe://example.org/bundle-endpoint"
      }}
    }}
  }}"#
    );
    let server = SpireServer::start_with(d, "other.org", None, &federation, &[]);
    let set = server.cli(&[
        "bundle",
        "set",
        "-format",
        "spiffe",
        "-id",
        "spiffe://example.org",
        "-path",
        &d.join("example.org.json").display().to_string(),
    ]);
    assert!(set.status.success(), "{set:?}");

    // SPIRE fetches from the endpoint over TLS authenticated by the endpoint's SVID.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !enclaveid
        .stderr_text()
        .contains("bundle endpoint: request answered")
    {
        assert!(
            Instant::now() < deadline,
            "SPIRE never fetched over https_spiffe; agent log:\n{}",
            enclaveid.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    server.entry_create_federated(
        "spiffe://other.org/w",
        &[&format!("unix:uid:{}", euid())],
        "spiffe://example.org",
    );
    let spire_agent = server.start_agent(d);
    let theirs = federated_bundle(&spire_agent.endpoint(), &enclaveid);
    let ours = federated_bundle(&enclaveid.endpoint(), &enclaveid);
    assert_eq!(theirs, ours);
}

/// The `bundle example.org …` line of the go client at `endpoint`, once it is there.
fn federated_bundle(endpoint: &str, enclaveid: &AgentProcess) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = go_at(endpoint, &["bundles"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = text.lines().find(|l| l.starts_with("bundle example.org ")) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no example.org bundle at {endpoint}:\n{text}{}\nEnclaveID log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            enclaveid.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Streams, compared message by message: both agents send the full state first, then the
/// full state again on a change (EnclaveID: a forced rotation; SPIRE: an entry's hint
/// updated), and key bundles by trust-domain ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_streams_and_bundle_keys_match() {
    use enclaveid_tests::{first_message, open_stream, raw_client, with_header};
    use enclaveid_workload_api::proto::{JwtBundlesRequest, X509BundlesRequest, X509svidRequest};
    let dir = tempfile::tempdir().unwrap();
    let root = hierarchy(dir.path());
    let enclaveid = agent("go", "", Some(dir.path()));
    let selector = format!("unix:uid:{}", euid());
    let (server, spire_agent, entry) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        let (root_pem, key_pem) = (root.root_pem.clone(), root.key_pem.clone());
        let selector = selector.clone();
        move || {
            let server = spire_server(&dir, &root_pem, &key_pem);
            let entry = server.entry_create("spiffe://example.org/go", &[&selector], "");
            let agent = server.start_agent(&dir);
            go_eventually(&agent.endpoint(), &["fetch"]);
            (server, agent, entry)
        }
    })
    .await
    .unwrap();

    let mut shapes = Vec::new();
    for (socket, is_spire) in [
        (enclaveid.socket().to_owned(), false),
        (spire_agent.socket().to_owned(), true),
    ] {
        let mut client = raw_client(&socket).await;
        let x509_bundles =
            first_message(client.fetch_x509_bundles(with_header(X509BundlesRequest {}))).await;
        let jwt_bundles =
            first_message(client.fetch_jwt_bundles(with_header(JwtBundlesRequest {}))).await;
        let (first, mut stream) =
            open_stream(client.fetch_x509svid(with_header(X509svidRequest {}))).await;
        if is_spire {
            let server = &server;
            server.entry_update(&entry, "spiffe://example.org/go", &[&selector], "changed");
        } else {
            enclaveid.renew();
        }
        let second = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("a second message after the change")
            .unwrap()
            .unwrap();
        let shape = |m: &enclaveid_workload_api::proto::X509svidResponse| {
            (
                m.svids.len(),
                m.svids
                    .iter()
                    .map(|s| s.spiffe_id.clone())
                    .collect::<Vec<_>>(),
                m.svids
                    .iter()
                    .all(|s| !s.bundle.is_empty() && !s.x509_svid_key.is_empty()),
                m.federated_bundles.keys().cloned().collect::<Vec<_>>(),
            )
        };
        shapes.push((
            shape(&first),
            shape(&second),
            x509_bundles.bundles.keys().cloned().collect::<Vec<_>>(),
            jwt_bundles.bundles.keys().cloned().collect::<Vec<_>>(),
        ));
    }
    assert_eq!(shapes[0], shapes[1], "EnclaveID, then spire-agent");
    assert_eq!(shapes[0].2, ["spiffe://example.org"]);
    drop(spire_agent);
}

/// An attested SVID (issue 22: the enclave's attestation document in a non-critical
/// extension) breaks no existing client: go-spiffe fetches it and does mTLS with it, in
/// both directions, with a workload holding a real spire-agent's SVID; py-spiffe (and the
/// `cryptography` package under it) parses it and sees the extension as non-critical.
#[test]
fn spire_interop_attested_svid_is_accepted_by_go_spiffe_py_spiffe_and_spire_agent_peers() {
    let dir = tempfile::tempdir().unwrap();
    let root = hierarchy(dir.path());
    let enclaveid = agent(
        "attested",
        "attested = true\nhint = \"internal\"",
        Some(dir.path()),
    );
    let fetched = stdout_of(&run_go(&enclaveid, &["fetch"]));
    assert!(
        fetched.contains("id spiffe://example.org/attested\n"),
        "{fetched}"
    );

    let script = format!(
        r#"
import sys
from cryptography import x509
from spiffe import WorkloadApiClient
client = WorkloadApiClient(socket_path="{endpoint}")
svid = client.fetch_x509_context().default_svid
leaf = svid.leaf
ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("{oid}"))
print("id", svid.spiffe_id)
print("critical", ext.critical)
print("chain", len(svid.cert_chain))
client.close()
"#,
        endpoint = enclaveid.endpoint(),
        oid = enclaveid_attestor::svid::ATTESTED_SVID_OID,
    );
    let python = Command::new(enclaveid_tests::moto::venv_python())
        .args(["-c", &script])
        .output()
        .unwrap();
    let python = String::from_utf8_lossy(&python.stdout).into_owned()
        + &String::from_utf8_lossy(&python.stderr);
    assert!(
        python.contains("id spiffe://example.org/attested\n"),
        "py-spiffe: {python}"
    );
    assert!(python.contains("critical False\n"), "py-spiffe: {python}");

    let (_server, spire_agent) =
        spire(dir.path(), &root, "spiffe://example.org/spire-workload", "");
    go_eventually(&spire_agent.endpoint(), &["fetch"]);
    go_mtls_both_ways(
        (&enclaveid.endpoint(), "spiffe://example.org/attested"),
        (
            &spire_agent.endpoint(),
            "spiffe://example.org/spire-workload",
        ),
    );
}
