//! `enclaveid run --config FILE -- COMMAND`: the agent supervising one workload, as in an
//! enclave with no init system.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `enclaveid run --config … -- sh -c SCRIPT`, in a fresh directory (`$DIR` in the
/// script), with the standard streams in files.
struct Supervised {
    child: Child,
    dir: tempfile::TempDir,
}

impl Supervised {
    fn start(script: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let config = super::config_for_me().replace("{socket}", &socket.display().to_string());
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(enclaveid_tests::enclaveid_bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(["--", "sh", "-c", script])
            .env("DIR", dir.path())
            .env("ENCLAVEID", enclaveid_tests::enclaveid_bin())
            .env("ENCLAVEID_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("stderr")).unwrap_or_default()
    }

    fn wait_for_file(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.path(name).exists() {
            assert!(Instant::now() < deadline, "no {name}:\n{}", self.log());
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("exited with {status} before {name}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("still running:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn supervisor_starts_the_workload_after_the_first_svids_with_the_endpoint_set() {
    // The workload's very first call must find its SVID: no retry, a short timeout.
    let mut run = Supervised::start(
        "echo \"$SPIFFE_ENDPOINT_SOCKET\" > \"$DIR/endpoint\" && \
         \"$ENCLAVEID\" api fetch x509 --timeout 2s --write \"$DIR/svid\" > \"$DIR/fetched\" 2>&1; \
         exit 3",
    );
    assert_eq!(
        run.exit_code(),
        Some(3),
        "the workload's status:\n{}",
        run.log()
    );
    let endpoint = std::fs::read_to_string(run.path("endpoint")).unwrap();
    assert_eq!(
        endpoint.trim(),
        format!("unix://{}", run.path("agent.sock").display())
    );
    let fetched = std::fs::read_to_string(run.path("fetched")).unwrap();
    assert!(fetched.contains("spiffe://example.org/me"), "{fetched}");
    assert!(
        run.path("svid/svid.pem").exists() || run.path("svid").exists(),
        "{fetched}"
    );
    // The agent stopped cleanly after the workload: its socket is gone.
    assert!(!run.path("agent.sock").exists(), "{}", run.log());
    let log = run.log();
    assert!(
        log.contains("workload started") && log.contains("workload exited"),
        "{log}"
    );
}

#[test]
fn supervisor_passes_sigterm_and_sigint_on_and_exits_with_the_workload_status() {
    for (signal, code) in [("TERM", 7), ("INT", 8)] {
        let mut run = Supervised::start(&format!(
            "trap 'echo got > \"$DIR/got\"; exit {code}' {signal}; touch \"$DIR/ready\"; \
             while :; do sleep 0.05; done"
        ));
        run.wait_for_file("ready");
        run.signal(signal);
        assert_eq!(run.exit_code(), Some(code), "{signal}:\n{}", run.log());
        assert!(run.path("got").exists(), "the workload saw SIG{signal}");
        assert!(!run.path("agent.sock").exists());
    }
}

#[test]
fn supervisor_reports_a_workload_killed_by_a_signal_as_128_plus_n() {
    let mut run = Supervised::start("kill -9 $$");
    assert_eq!(run.exit_code(), Some(128 + 9), "{}", run.log());
}

#[test]
fn supervisor_reaps_orphans_of_the_workload() {
    // The workload leaves a background child behind that exits while the workload runs.
    // It is re-parented to the agent (a child subreaper, as PID 1 in an enclave), which
    // must reap it: no zombie stays.
    let mut run = Supervised::start(
        "sh -c 'sleep 2 & echo $! > \"$DIR/orphan\"' ; touch \"$DIR/ready\"; sleep 10",
    );
    run.wait_for_file("ready");
    let orphan: u32 = std::fs::read_to_string(run.path("orphan"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stat = Path::new("/proc").join(orphan.to_string()).join("stat");
    let fields = |text: &str| -> (char, u32) {
        let after = text.rsplit(") ").next().unwrap_or("");
        let mut parts = after.split(' ');
        let state = parts.next().unwrap_or("?").chars().next().unwrap_or('?');
        (state, parts.next().unwrap_or("0").parse().unwrap_or(0))
    };
    let (_, parent) = fields(&std::fs::read_to_string(&stat).unwrap());
    assert_eq!(parent, run.child.id(), "the orphan is the agent's now");
    // It exits about 2 s after the start; the workload lives on for 10 s, so the orphan
    // is gone well before then only if the agent reaps it.
    let deadline = Instant::now() + Duration::from_secs(7);
    while let Ok(text) = std::fs::read_to_string(&stat) {
        assert!(
            Instant::now() < deadline,
            "the orphan {orphan} was not reaped: {:?}",
            fields(&text)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(run.exit_code(), Some(0));
}

#[test]
fn supervisor_a_missing_command_exits_127_and_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let config = super::config_for_me().replace("{socket}", &socket.display().to_string());
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, config).unwrap();
    let out = Command::new(enclaveid_tests::enclaveid_bin())
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .args(["--", "/nonexistent/server", "--port", "8000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("/nonexistent/server"), "{text}");
    assert!(!socket.exists());
}
