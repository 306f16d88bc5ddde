//! `[[files]]`: SVIDs written to files for programs that read files, rotated whole
//! (`cargo test --workspace -- file_output`), and nginx serving mTLS from them
//! (`-- nginx`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enclaveid_tests::{AgentProcess, euid};

use super::config;

/// Waits until `path` exists; fails the test with the agent's log after `within`.
fn wait_for(path: &Path, agent: &AgentProcess, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared:\n{}",
            path.display(),
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The serial of the first certificate in a PEM file, and whether the key file holds its
/// private key.
fn serial_and_match(cert: &Path, key: &Path) -> (String, bool) {
    let cert_pem = std::fs::read_to_string(cert).unwrap();
    let der = pem::parse(&cert_pem).unwrap().into_contents();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let key_pem = std::fs::read_to_string(key).unwrap();
    let pair = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let matches =
        parsed.public_key().raw == rcgen::PublicKeyData::subject_public_key_info(&pair).as_slice();
    (parsed.raw_serial_as_string(), matches)
}

/// A shell that appends a line to `log` on each SIGHUP, its PID in `pid_file`.
struct HangupCounter {
    child: std::process::Child,
    log: PathBuf,
}

impl HangupCounter {
    fn start(dir: &Path) -> Self {
        let log = dir.join("hups");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap 'echo hup >> {}' HUP; echo $$ > {}/app.pid; while :; do sleep 0.1; done",
                log.display(),
                dir.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        while !dir.join("app.pid").exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, log }
    }

    fn count(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .count()
    }
}

impl Drop for HangupCounter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn file_output_rotates_whole_generations_and_signals_after_each() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let app = HangupCounter::start(dir.path());
    let files = format!(
        "[[files]]\nspiffe_id = \"spiffe://example.org/web\"\ndir = \"{}\"\njwt_audiences = [\"db\", \"https://api.example\"]\npid_file = \"{}/app.pid\"\nrenew_signal = \"SIGHUP\"\n",
        out.display(),
        dir.path().display()
    );
    let text = config("5s", &[("web", &format!("\"unix:uid:{}\"", euid()), "")]) + &files;
    let agent = AgentProcess::start(&text);
    wait_for(&out.join("svid.pem"), &agent, Duration::from_secs(10));

    // Stable names are symlinks into the current generation; modes as configured.
    for name in ["svid.pem", "svid_key.pem", "svid_bundle.pem"] {
        let link = std::fs::read_link(out.join(name)).unwrap();
        assert_eq!(link, Path::new("current").join(name));
    }
    let generation = out.join(std::fs::read_link(out.join("current")).unwrap());
    let mode = |name: &str| {
        std::fs::metadata(generation.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("svid_key.pem"), 0o600);
    assert_eq!(mode("svid.pem"), 0o644);
    assert_eq!(mode("jwt_db.token"), 0o600);
    let token = std::fs::read_to_string(generation.join("jwt_https___api.example.token")).unwrap();
    assert_eq!(token.split('.').count(), 3, "a compact JWS");

    // Over rotations (TTL 5 s), every generation read through `current` holds a key that
    // matches its certificate; the current and the previous generation are kept (plus
    // the one being written), and the app is signalled.
    let mut serials = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline {
        let generation = out.join(std::fs::read_link(out.join("current")).unwrap());
        let (serial, matches) = serial_and_match(
            &generation.join("svid.pem"),
            &generation.join("svid_key.pem"),
        );
        assert!(
            matches,
            "a certificate beside another key in {generation:?}"
        );
        serials.insert(serial);
        let generations = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(".enclaveid-gen-") && !name.contains("current")
            })
            .count();
        assert!(generations <= 3, "{generations} generations kept");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(serials.len() >= 3, "rotations seen: {serials:?}");
    assert!(app.count() >= 3, "signalled {} times", app.count());
}

#[test]
fn file_output_a_failed_write_keeps_the_previous_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let text = config("5s", &[("web", &format!("\"unix:uid:{}\"", euid()), "")])
        + &format!(
            "[[files]]\nspiffe_id = \"spiffe://example.org/web\"\ndir = \"{}\"\n",
            out.display()
        );
    let agent = AgentProcess::start(&text);
    wait_for(&out.join("svid.pem"), &agent, Duration::from_secs(10));
    let before = std::fs::read_link(out.join("current")).unwrap();
    // Something in the way of the next switch: a directory where its symlink goes.
    for n in 2..40 {
        std::fs::create_dir_all(out.join(format!(".enclaveid-gen-current-{n}"))).unwrap();
    }
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        std::fs::read_link(out.join("current")).unwrap(),
        before,
        "current did not move"
    );
    let (_, matches) = serial_and_match(&out.join("svid.pem"), &out.join("svid_key.pem"));
    assert!(matches, "the previous files are whole");
    assert!(
        agent.stderr_text().contains("the previous ones stay"),
        "{}",
        agent.stderr_text()
    );
    // Health says so, naming the directory.
    let health = std::process::Command::new(enclaveid_tests::enclaveid_bin())
        .args(["healthcheck", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&health.stderr);
    assert!(
        said.contains(&format!(
            "[[files]] {}: the last write failed",
            out.display()
        )),
        "{said}"
    );
    // No half-written generation is left behind. A retry (every few seconds) may be
    // writing one right now: it is gone once that retry fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let generations: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".enclaveid-gen-") && !n.contains("current"))
            .collect();
        if generations.len() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "generations left behind: {generations:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// nginx from the distribution, serving mTLS with the files the agent writes and reloaded
/// by SIGHUP after each write; curl with another SVID gets served throughout.
#[test]
fn nginx_serves_mtls_from_the_written_files_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = config(
        "5s",
        &[
            ("web", "\"unix:uid:65534\"", "dns_names = [\"localhost\"]"),
            ("client", "\"unix:uid:65533\"", "ttl = \"1h\""),
        ],
    ) + &format!(
        "[[files]]\nspiffe_id = \"spiffe://example.org/web\"\ndir = \"{d}/web\"\npid_file = \"{d}/nginx.pid\"\nrenew_signal = \"HUP\"\n\
         [[files]]\nspiffe_id = \"spiffe://example.org/client\"\ndir = \"{d}/client\"\n",
        d = d.display()
    );
    let agent = AgentProcess::start(&text);
    wait_for(&d.join("web/svid.pem"), &agent, Duration::from_secs(10));
    wait_for(&d.join("client/svid.pem"), &agent, Duration::from_secs(10));
    let nginx = enclaveid_tests::nginx::Nginx::start(
        d,
        &d.join("web"),
        Some(&d.join("web/svid_bundle.pem")),
    );
    let port = nginx.port;
    let url = format!("https://localhost:{port}/");
    let mut served = std::collections::BTreeSet::new();
    let mut requests = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--resolve"])
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg("--cert")
            .arg(d.join("client/svid.pem"))
            .arg("--key")
            .arg(d.join("client/svid_key.pem"))
            .arg("--cacert")
            .arg(d.join("web/svid_bundle.pem"))
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout == b"served\n",
            "request {requests} refused: {}\nnginx: {}",
            String::from_utf8_lossy(&out.stderr),
            nginx.error_log()
        );
        requests += 1;
        served.insert(nginx.served_serial());
        std::thread::sleep(Duration::from_millis(200));
    }
    // nginx's certificate follows the rotations (TTL 5 s: one every ~2.5 s).
    assert!(
        served.len() >= 3,
        "nginx served {served:?} over {requests} requests"
    );
}
