//! Interop with go-spiffe v2.9.0, the reference Go SPIFFE library: a Go workload
//! (`tests/interop/go`) fetches, watches a rotation, does mTLS between two identities and
//! round-trips a JWT-SVID against `enclaveid run`, with go-spiffe's own checks (key and
//! certificate match, X.509-SVID rules, JWT validation).
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
use enclaveid_tests::{AgentProcess, euid};

/// Builds the Go client once per test run.
fn go_client() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/go");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spiffe-interop");
        let output = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&source)
            .output()
            .expect("`go` is needed for the interop tests (skip them with -- --skip spire)");
        assert!(
            output.status.success(),
            "building tests/interop/go failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        out
    })
}

fn run_go(agent: &AgentProcess, args: &[&str]) -> Output {
    Command::new(go_client())
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", agent.endpoint())
        .output()
        .unwrap()
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
         [[entry]]\nspiffe_id = \"spiffe://example.org/{path}\"\nselectors = [\"unix:uid:{}\"]\n{extra}\n",
        euid()
    ))
}

#[test]
fn spire_interop_go_spiffe_fetches_and_follows_a_rotation() {
    let agent = agent("go", "ttl = \"6s\"\nhint = \"internal\"", None);
    let fetched = stdout_of(&run_go(&agent, &["fetch"]));
    assert!(fetched.contains("id spiffe://example.org/go\n"), "{fetched}");
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

#[test]
fn spire_interop_go_spiffe_mtls_between_two_identities() {
    // Two agents under one CA, as two enclaves of one trust domain.
    let dir = tempfile::tempdir().unwrap();
    let root = TestPca::new("interop root");
    let (_, ca) = root.subordinate("spiffe://example.org", Duration::from_secs(86_400));
    std::fs::write(dir.path().join("root.pem"), &root.root_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("ca.key"), &ca.key_pem).unwrap();
    let server_agent = agent("server", "", Some(dir.path()));
    let client_agent = agent("client", "", Some(dir.path()));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut server = Command::new(go_client())
        .args(["serve", &address, "spiffe://example.org/client"])
        .env("SPIFFE_ENDPOINT_SOCKET", server_agent.endpoint())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(Instant::now() < deadline, "the go-spiffe server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }

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
    let _ = server.kill();
    let _ = server.wait();
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
