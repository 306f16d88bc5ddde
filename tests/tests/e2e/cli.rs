//! The commands users type: `run --dev`, `api fetch x509 --write`, `healthcheck`.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enclaveid_tests::{AgentProcess, enclaveid_bin, euid};

use super::config;

#[test]
fn written_files_pass_openssl_verify_and_an_mtls_handshake() {
    let uid = euid();
    let agent = AgentProcess::start(&config(
        "1h",
        &[
            ("gateway", &format!("\"unix:uid:{uid}\""), ""),
            ("inference", &format!("\"unix:uid:{uid}\""), ""),
        ],
    ));
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("svid");
    let fetch = Command::new(enclaveid_bin())
        .args(["api", "fetch", "x509", "--write"])
        .arg(&dir)
        .env("SPIFFE_ENDPOINT_SOCKET", agent.endpoint())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&fetch.stdout);
    assert!(
        fetch.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&fetch.stderr)
    );
    assert!(
        stdout.contains("spiffe://example.org/gateway")
            && stdout.contains("spiffe://example.org/inference")
    );

    for i in 0..2 {
        let key = dir.join(format!("svid.{i}.key"));
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600,
            "key files are 0600"
        );
        assert!(
            std::fs::read_to_string(&key)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        let verify = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(dir.join(format!("bundle.{i}.pem")))
            .arg(dir.join(format!("svid.{i}.pem")))
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    assert!(
        !dir.read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".tmp")),
        "no temporary files left"
    );

    mtls_handshake(&dir);
}

/// `openssl s_server` with svid.0 requiring a client certificate, `s_client` with
/// svid.1; both verify the other against the bundle.
fn mtls_handshake(dir: &std::path::Path) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .current_dir(dir)
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "svid.0.pem",
            "-key",
            "svid.0.key",
        ])
        .args([
            "-CAfile",
            "bundle.0.pem",
            "-Verify",
            "1",
            "-verify_return_error",
            "-naccept",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // s_server prints ACCEPT once listening; probing the port would use up its one accept.
    let mut server_stdout = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        use std::io::BufRead as _;
        let mut line = String::new();
        assert!(
            server_stdout.read_line(&mut line).unwrap() > 0,
            "s_server exited: {seen}"
        );
        seen.push_str(&line);
        if line.starts_with("ACCEPT") {
            break;
        }
    }
    let client = Command::new("openssl")
        .current_dir(dir)
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "svid.1.pem",
            "-key",
            "svid.1.key",
        ])
        .args(["-CAfile", "bundle.1.pem", "-verify_return_error", "-brief"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let client_err = String::from_utf8_lossy(&client.stderr);
    let _ = server.kill();
    let server_out = server.wait_with_output().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut server_stdout, &mut rest);
    let server_text = format!(
        "{seen}{rest}{}",
        String::from_utf8_lossy(&server_out.stderr)
    );
    assert!(
        client.status.success(),
        "client: {client_err}\nserver: {server_text}"
    );
    assert!(
        client_err.contains("Verification: OK"),
        "client verified the server: {client_err}"
    );
    assert!(
        server_text.contains("spiffe://example.org/inference")
            || server_text.contains("Client certificate"),
        "server saw the client's SVID: {server_text}"
    );
}

#[test]
fn healthcheck_passes_on_a_live_agent_and_fails_fast_otherwise() {
    let mut agent = AgentProcess::start(&config("1h", &[("me", "\"unix:uid:1\"", "")]));
    let check = |socket: &std::path::Path| {
        let started = Instant::now();
        let status = Command::new(enclaveid_bin())
            .arg("healthcheck")
            .arg("--socket")
            .arg(socket)
            .output()
            .unwrap();
        (status, started.elapsed())
    };
    let (ok, _) = check(agent.socket());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let socket = agent.socket().to_owned();
    agent
        .terminate(Duration::from_secs(10))
        .expect("agent stops");
    let (missing, elapsed) = check(&socket);
    assert!(!missing.status.success());
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // A socket nobody answers on (a listener that never accepts).
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&dead).unwrap();
    let (dead_status, elapsed) = check(&dead);
    assert!(!dead_status.status.success());
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn run_dev_needs_no_file_and_serves_the_invoking_user() {
    let runtime = tempfile::tempdir().unwrap();
    let mut child = Command::new(enclaveid_bin())
        .args(["run", "--dev"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = runtime.path().join("enclaveid/agent.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "dev agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let fetch = Command::new(enclaveid_bin())
        .args(["api", "fetch", "x509"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let output = child.wait_with_output_or_kill();
    let stdout = String::from_utf8_lossy(&fetch.stdout);
    assert!(
        fetch.status.success(),
        "fetch found the dev socket by itself: {stdout}{}",
        String::from_utf8_lossy(&fetch.stderr)
    );
    assert!(
        stdout.contains(&format!("spiffe://enclaveid.dev/uid/{}", euid())),
        "{stdout}"
    );
    assert!(
        output.contains(&format!(
            "export SPIFFE_ENDPOINT_SOCKET=unix://{}",
            socket.display()
        )),
        "{output}"
    );
    assert!(!socket.exists(), "socket removed on SIGTERM");
}

trait WaitOrKill {
    fn wait_with_output_or_kill(&mut self) -> String;
}

impl WaitOrKill for std::process::Child {
    fn wait_with_output_or_kill(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut text = String::new();
        if let Some(mut stdout) = self.stdout.take() {
            use std::io::Read as _;
            let _ = stdout.read_to_string(&mut text);
        }
        text
    }
}
