//! Attacks on the agent as a hostile local user mounts them (other uids via `setpriv`,
//! a raw HTTP/2 client, a hostile configuration): each is refused or bounded, and the
//! agent keeps serving everyone else. Run them with `cargo test --workspace -- hostile`.

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enclaveid_tests::bench::{cpu_time, open_fds};
use enclaveid_tests::{
    AgentProcess, can_switch_uid, enclaveid_bin, euid, first_x509_response, open_stream,
    raw_client, with_header,
};
use enclaveid_workload_api::proto::X509svidRequest;
use tonic::Code;

use super::{config, config_for_me};

/// The uid attacks run under (when the tests run as root).
const ATTACKER_UID: u32 = 4_000_003;

/// The raw HTTP/2 client (`tests/scripts/raw_h2.py`).
fn raw_h2_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/raw_h2.py")
}

/// A Python 3 that other uids can run too (a system one when there is one).
fn python() -> PathBuf {
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        system.to_owned()
    } else {
        "python3".into()
    }
}

/// `raw_h2.py ARGS`, as this uid or (when the tests run as root) as `ATTACKER_UID`: the
/// script is copied where other uids can read it.
fn raw_h2(agent: &AgentProcess, as_attacker: bool) -> Command {
    let script = agent.dir().join("raw_h2.py");
    if !script.exists() {
        std::fs::copy(raw_h2_script(), &script).unwrap();
    }
    let mut command = if as_attacker && can_switch_uid() {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={ATTACKER_UID}"))
            .arg(format!("--regid={ATTACKER_UID}"))
            .arg("--clear-groups")
            .arg(python());
        command
    } else {
        Command::new(python())
    };
    command.arg(script);
    command
}

/// The one line `raw_h2.py` prints.
fn outcome(mut command: Command) -> String {
    let output = command.stderr(Stdio::inherit()).output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn socket_arg(agent: &AgentProcess) -> String {
    agent.socket().display().to_string()
}

#[test]
fn hostile_exec_after_connect_does_not_take_the_identity_of_the_binary_execed() {
    let python = std::fs::canonicalize(python_path()).unwrap();
    let sleep = std::fs::canonicalize("/usr/bin/sleep").unwrap();
    let agent = AgentProcess::start(&config(
        "1h",
        &[
            ("python", &format!("\"unix:path:{}\"", python.display()), ""),
            ("sleep", &format!("\"unix:path:{}\"", sleep.display()), ""),
        ],
    ));

    // Control: the raw client is served its own identity.
    let mut control = raw_h2(&agent, false);
    control.args(["call", &socket_arg(&agent), "spiffe://example.org/python"]);
    assert_eq!(outcome(control), "SERVED", "{}", agent.stderr_text());

    // The attack: connect, fork; the connecting process execs `sleep` (whose path an
    // entry names) and the child calls on the inherited connection.
    let mut attack = raw_h2(&agent, false);
    attack.args([
        "exec-after-connect",
        &socket_arg(&agent),
        "spiffe://example.org/sleep",
    ]);
    attack.arg(&sleep);
    let answer = outcome(attack);
    assert!(
        answer.starts_with("REFUSED") || answer.starts_with("CLOSED"),
        "{answer}"
    );
    assert!(
        agent.stderr_text().contains("exec after connect"),
        "{}",
        agent.stderr_text()
    );
}

/// The Python `python()` runs, resolved on `PATH` when it is not absolute.
fn python_path() -> PathBuf {
    let python = python();
    if python.is_absolute() {
        return python;
    }
    let output = Command::new(&python)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

#[tokio::test]
async fn hostile_hpack_bombs_and_header_floods_leave_the_agent_small_and_serving() {
    // The address-space limit under which a 1 MiB table size update used to crash it.
    let agent = AgentProcess::start_under(&["prlimit", "--as=1073741824"], &config_for_me());
    let socket = socket_arg(&agent);
    for attack in ["hpack-bomb", "table-size-update", "empty-continuations"] {
        let mut command = raw_h2(&agent, true);
        command.args([attack, &socket]);
        let answer = outcome(command);
        assert!(
            answer.starts_with("CLOSED") || answer.starts_with("REFUSED"),
            "{attack}: {answer}"
        );
    }
    // A 64 KiB block that decodes to ~240 MB took the agent from 10 to 719 MiB.
    let peak_kib = enclaveid_tests::bench::status_kib(agent.pid(), "VmHWM:");
    assert!(peak_kib < 128 * 1024, "peak RSS {peak_kib} KiB");
    assert_eq!(first_x509_response(agent.socket()).await.svids.len(), 1);
}

#[tokio::test]
async fn hostile_idle_connections_of_another_uid_do_not_starve_root() {
    if !can_switch_uid() {
        eprintln!(
            "SKIPPED hostile_idle_connections_of_another_uid_do_not_starve_root: needs root and setpriv"
        );
        return;
    }
    let agent = AgentProcess::start_under(&["prlimit", "--nofile=1024:1024"], &config_for_me());
    // 1,100 idle connections against a 1,024 descriptor limit.
    let mut hold = raw_h2(&agent, true);
    hold.args(["hold", &socket_arg(&agent), "1100"]);
    let mut holder = Killed(hold.stdout(Stdio::piped()).spawn().unwrap());
    let mut line = String::new();
    BufReader::new(holder.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "HELD 1100");
    // A connect() returns once queued: let the agent accept and refuse what it will
    // (its descriptor count steady for half a second) before its CPU is measured.
    let descriptors = || open_fds(agent.pid());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = descriptors();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = descriptors();
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
    }

    // Root is served while they are held, and the agent does not spin.
    let cpu_before = cpu_time(agent.pid());
    let response =
        tokio::time::timeout(Duration::from_secs(10), first_x509_response(agent.socket()))
            .await
            .expect("root served while another uid holds 1,100 connections");
    assert_eq!(response.svids.len(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_time(agent.pid()) - cpu_before;
    assert!(
        spent < Duration::from_millis(800),
        "the agent spent {spent:?} of CPU in ~2 s with idle connections held"
    );
    let open = open_fds(agent.pid());
    assert!(open < 1024, "{open} descriptors open");
    assert!(
        agent
            .stderr_text()
            .contains("limits.max_connections_per_uid"),
        "{}",
        agent.stderr_text()
    );
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn hostile_bundle_endpoint_slowloris_is_capped_and_let_go() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "{}[bundle_endpoint]\nlisten = \"tcp://127.0.0.1:{port}\"\nspiffe_id = \"spiffe://example.org/me\"\nmax_connections = 16\n",
        config_for_me()
    );
    let agent = AgentProcess::start_under(&["prlimit", "--nofile=256:256"], &config);
    let bundle = first_x509_response(agent.socket()).await.svids[0]
        .bundle
        .clone();

    // 300 connections that never say a word: more than the descriptors the agent has.
    let started = Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert_eq!(slow.len(), 300);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = open_fds(agent.pid());
    assert!(open < 100, "{open} descriptors open with 300 slow clients");
    // The Workload API is not starved.
    assert_eq!(first_x509_response(agent.socket()).await.svids.len(), 1);

    // Every one is let go: those over the cap at once, the others at the handshake
    // deadline (10 s).
    for stream in &mut slow {
        let left = Duration::from_secs(20).saturating_sub(started.elapsed());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!(
                "a slow connection still open after {:?}: {other:?}",
                started.elapsed()
            ),
        }
    }
    drop(slow);

    // And the endpoint serves again.
    let cafile = agent.dir().join("bundle.pem");
    let pem: String = enclaveid_checks::certs::split_der(&bundle, "bundle")
        .unwrap()
        .iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())))
        .collect();
    std::fs::write(&cafile, pem).unwrap();
    let mut get = raw_h2(&agent, false);
    get.args(["https-get", "127.0.0.1", &port.to_string()])
        .arg(&cafile);
    let answer = outcome(get);
    assert!(
        answer.starts_with("STATUS 200 "),
        "{answer}\n{}",
        agent.stderr_text()
    );
}

/// `enclaveid run --config` with `socket_path` at `socket`; the process, not waited for.
fn run_at(dir: &Path, socket: &Path, config: &str) -> Killed {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        config.replace("{socket}", &socket.display().to_string()),
    )
    .unwrap();
    Killed(
        Command::new(enclaveid_bin())
            .args(["run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Waits for `child` to exit; its status code and stderr.
fn exit_of(mut child: Killed) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

#[test]
fn hostile_socket_directories_others_can_write_are_refused() {
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // Writable by everyone, no sticky bit: anyone could swap the socket.
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = open.join("agent.sock");
    let (code, stderr) = exit_of(run_at(base.path(), &socket, &config_for_me()));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains(&open.display().to_string()), "{stderr}");
    assert!(!socket.exists());

    if can_switch_uid() {
        // Owned by another uid, even with mode 0755.
        let theirs = base.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(
            &theirs,
            Some(nix::unistd::Uid::from_raw(ATTACKER_UID)),
            Some(nix::unistd::Gid::from_raw(ATTACKER_UID)),
        )
        .unwrap();
        let socket = theirs.join("agent.sock");
        let (code, stderr) = exit_of(run_at(base.path(), &socket, &config_for_me()));
        assert_eq!(code, Some(64), "{stderr}");
        assert!(stderr.contains(&theirs.display().to_string()), "{stderr}");
        assert!(!socket.exists());
    }

    // A directory like /tmp (ours, sticky, writable by all) is fine: only we can replace
    // what we own there.
    let sticky = base.path().join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = sticky.join("agent.sock");
    let agent = run_at(base.path(), &socket, &config_for_me());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "no socket in a sticky directory");
        std::thread::sleep(Duration::from_millis(20));
    }
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o777);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), euid());
    drop(agent);
}

#[test]
fn hostile_durations_past_a_year_are_refused_before_anything_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let entry = format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/me\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    );
    let head = "trust_domain = \"example.org\"\nsocket_path = \"{socket}\"\n";
    let tail = "[upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n";
    for (key, line) in [
        ("svid_ttl", "svid_ttl = \"300000000000y\"\n".to_owned()),
        ("jwt_ttl", "jwt_ttl = \"300000000000y\"\n".to_owned()),
        (
            "jwt_key_rotation",
            "jwt_key_rotation = \"300000000000y\"\n".to_owned(),
        ),
        ("ttl", String::new()),
    ] {
        let config = if key == "ttl" {
            format!("{head}{tail}{entry}ttl = \"300000000000y\"\n")
        } else {
            format!("{head}{line}{tail}{entry}")
        };
        let (code, stderr) = exit_of(run_at(dir.path(), &socket, &config));
        assert_eq!(code, Some(64), "{key}: {stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert!(stderr.contains("366d"), "{key}: {stderr}");
        assert!(!socket.exists(), "{key}: a socket was left behind");
    }
}

#[tokio::test]
async fn hostile_a_thousand_streams_on_one_connection_are_all_served() {
    let agent = AgentProcess::start(&config_for_me());
    let client = raw_client(agent.socket()).await;
    let calls = (0..1000).map(|_| {
        let mut client = client.clone();
        async move { open_stream(client.fetch_x509svid(with_header(X509svidRequest {}))).await }
    });
    let streams = futures_util::future::join_all(calls).await;
    assert_eq!(streams.len(), 1000);
    assert!(streams.iter().all(|(first, _)| first.svids.len() == 1));
}

#[tokio::test]
async fn hostile_streams_past_the_per_connection_cap_get_an_error_not_a_wait() {
    let config = format!(
        "{}[limits]\nmax_streams_per_connection = 100\n",
        config_for_me()
    );
    let agent = AgentProcess::start(&config);
    let client = raw_client(agent.socket()).await;
    let calls = (0..100).map(|_| {
        let mut client = client.clone();
        async move { open_stream(client.fetch_x509svid(with_header(X509svidRequest {}))).await }
    });
    let held = futures_util::future::join_all(calls).await;
    let mut one_more = client.clone();
    let status = tokio::time::timeout(Duration::from_secs(10), async move {
        let mut stream = one_more
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await?
            .into_inner();
        stream.message().await
    })
    .await
    .expect("an answer, not a wait")
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("limits.max_streams_per_connection"),
        "{status:?}"
    );
    assert!(
        agent.stderr_text().contains("max_streams_per_connection"),
        "the refusal is logged"
    );
    // Closing one makes room.
    drop(held);
    assert_eq!(first_x509_response(agent.socket()).await.svids.len(), 1);
}

#[test]
fn hostile_an_8_gib_executable_is_not_hashed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The CLI as the caller, grown to 8 GiB (sparse: the loader ignores the tail).
    let caller = dir.path().join("big-caller");
    std::fs::copy(enclaveid_bin(), &caller).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&caller)
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    let agent = AgentProcess::start(&config(
        "1h",
        &[(
            "hashed",
            &format!("\"unix:sha256:{}\"", "ab".repeat(32)),
            "",
        )],
    ));
    let output = Command::new(&caller)
        .args(["api", "fetch", "x509", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    // Refused on its size, before a byte is read.
    assert!(stderr.contains("limits.max_executable_bytes"), "{stderr}");
}

/// Whether `needle` occurs in any writable private mapping (heap, stacks, anonymous
/// memory) of process `pid`: what a heap dump or a core file would show.
fn in_memory(pid: u32, needle: &[u8]) -> bool {
    use std::io::{Seek as _, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with("rw") || !perms.ends_with('p') {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut region = vec![0u8; usize::try_from(end - start).unwrap()];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        if region.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

/// The private scalar of a PKCS#8 P-256 key (the 32 bytes after `04 20` in its
/// ECPrivateKey): unique to the key, unlike the PKCS#8 header.
fn p256_scalar(pkcs8: &[u8]) -> Vec<u8> {
    let at = pkcs8
        .windows(2)
        .position(|w| w == [0x04, 0x20])
        .expect("an ECPrivateKey octet string");
    pkcs8[at + 2..at + 34].to_vec()
}

#[tokio::test]
async fn hostile_a_rotated_out_svid_key_is_gone_from_the_agent_s_memory() {
    let agent = AgentProcess::start(&config_for_me());
    // Served on a few connections, as workloads fetch it.
    let mut old = Vec::new();
    for _ in 0..5 {
        let response = first_x509_response(agent.socket()).await;
        old = response.svids[0].x509_svid_key.to_vec();
    }
    let old_scalar = p256_scalar(&old);
    assert!(
        in_memory(agent.pid(), &old_scalar),
        "the key in service is found: the scan works"
    );

    // Rotated out (SIGUSR1 re-mints every SVID), then served again so that buffers that
    // held the old key are reused or freed.
    agent.renew();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = first_x509_response(agent.socket()).await;
        if response.svids[0].x509_svid_key[..] != old[..] {
            break;
        }
        assert!(Instant::now() < deadline, "no rotation after SIGUSR1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Streams and connections that held it end asynchronously: poll, serving meanwhile.
    let deadline = Instant::now() + Duration::from_secs(15);
    while in_memory(agent.pid(), &old_scalar) {
        assert!(
            Instant::now() < deadline,
            "a copy of the rotated-out key is still in the agent's memory"
        );
        first_x509_response(agent.socket()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
