//! Support for EnclaveID's end-to-end tests: start the real `enclaveid` binary with a
//! temporary configuration, wait for its socket, and stop it.

#![forbid(unsafe_code)]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test support: a failed set-up must fail the test loudly"
)]

pub mod bench;
pub use enclaveid_fakes::kms as fake_kms;
pub use enclaveid_fakes::pca;
pub mod kms_world;
pub mod moto;
pub mod nginx;
pub mod spire;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `enclaveid` binary, built once per test run with the same profile as the tests.
pub fn enclaveid_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("enclaveid-cli", "enclaveid"))
}

/// The `enclaveid-nitro-attestor` binary (the SPIRE plugins), built like
/// [`enclaveid_bin`].
pub fn nitro_attestor_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("enclaveid-spire-plugin", "enclaveid-nitro-attestor"))
}

/// Builds binary `bin` of workspace package `package` with the tests' profile.
///
/// Cargo only hands `CARGO_BIN_EXE_*` to the tests of the package that owns the binary,
/// so this crate builds it explicitly; cargo releases its build lock before tests run,
/// so the nested build does not wait on the outer one.
fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut build = Command::new(cargo);
    build.args([
        "build",
        "--quiet",
        "-p",
        package,
        "--bin",
        bin,
        "--manifest-path",
    ]);
    build.arg(&manifest);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("running cargo build for {bin}: {e}"));
    assert!(status.success(), "building {bin} failed");
    // target/<profile>/deps/<test-binary> -> target/<profile>/<bin>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join(bin);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A running `enclaveid run` process with its own temporary directory; killed on drop.
pub struct AgentProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    stderr: PathBuf,
}

impl AgentProcess {
    /// Writes `config` (TOML; `{socket}` is replaced by the socket path) to a temporary
    /// directory and starts `enclaveid run --config`, waiting until the socket answers.
    pub fn start(config: &str) -> Self {
        Self::try_start(config)
            .unwrap_or_else(|agent| panic!("agent did not start:\n{}", agent.stderr_text()))
    }

    /// Like [`AgentProcess::start`], with the agent's default log level (as measured by
    /// the benchmarks) instead of debug logs.
    pub fn start_quiet(config: &str) -> Self {
        Self::try_start_with_log(config, "warn,enclaveid=info")
            .unwrap_or_else(|agent| panic!("agent did not start:\n{}", agent.stderr_text()))
    }

    /// Like [`AgentProcess::start`], but returns the process (exited or not answering)
    /// instead of panicking.
    pub fn try_start(config: &str) -> Result<Self, Self> {
        Self::try_start_with_log(config, "debug,h2=info,hyper=info,tower=info")
    }

    /// Like [`AgentProcess::start`], run under `prefix` (`prlimit --nofile=…`, say).
    pub fn start_under(prefix: &[&str], config: &str) -> Self {
        Self::try_start_under(prefix, config, "debug,h2=info,hyper=info,tower=info")
            .unwrap_or_else(|agent| panic!("agent did not start:\n{}", agent.stderr_text()))
    }

    fn try_start_with_log(config: &str, log: &str) -> Result<Self, Self> {
        Self::try_start_under(&[], config, log)
    }

    fn try_start_under(prefix: &[&str], config: &str, log: &str) -> Result<Self, Self> {
        let dir = tempfile::tempdir().expect("temporary directory");
        // Other uids (tests run callers under setpriv) must reach the socket.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let socket = dir.path().join("agent.sock");
        let config_path = dir.path().join("agent.toml");
        std::fs::write(
            &config_path,
            config.replace("{socket}", &socket.display().to_string()),
        )
        .expect("config");
        let stderr = dir.path().join("agent.stderr");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(enclaveid_bin());
                command
            }
            None => Command::new(enclaveid_bin()),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("ENCLAVEID_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawning enclaveid");
        let mut agent = Self {
            child: Some(child),
            dir,
            socket,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&agent.socket).is_ok() {
                return Ok(agent);
            }
            if let Some(child) = agent.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                return Err(agent);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(agent)
    }

    /// The Workload API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The socket as a `unix://` endpoint URI.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The agent's temporary directory (config, socket, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the agent logged so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The agent's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Sends SIGUSR1: the agent re-mints every SVID now (and replaces its `dev` JWT key).
    pub fn renew(&self) {
        self.signal("-USR1");
    }

    /// Sends SIGHUP: the agent re-reads its configuration file.
    pub fn reload(&self) {
        self.signal("-HUP");
    }

    /// The path of the configuration file the agent was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {signal} {} failed", self.pid());
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits for the process to exit by itself (a refused configuration, say).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A raw Workload API client over a Unix socket, without the security header: tests
/// add it (or not) themselves.
pub async fn raw_client(
    socket: &Path,
) -> enclaveid_workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::transport::Channel,
> {
    let channel = enclaveid_workload_api::connect_unix(socket)
        .await
        .expect("connecting to the agent");
    enclaveid_workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel)
}

/// The first message of a `FetchX509SVID` stream (with the security header) on a new
/// connection to `socket`.
pub async fn first_x509_response(socket: &Path) -> enclaveid_workload_api::proto::X509svidResponse {
    first_message(raw_client(socket).await.fetch_x509svid(with_header(
        enclaveid_workload_api::proto::X509svidRequest {},
    )))
    .await
}

/// The first message of a streaming call that must succeed.
pub async fn first_message<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
) -> T {
    open_stream(call).await.0
}

/// A streaming call that must succeed: its first message, and the stream kept open for
/// the messages that follow (a rotation, a changed entry).
pub async fn open_stream<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
) -> (T, tonic::Streaming<T>) {
    let mut stream = call.await.expect("the call").into_inner();
    let first = stream
        .message()
        .await
        .expect("a first message")
        .expect("a first message, not the end of the stream");
    (first, stream)
}

/// The first message of a `FetchX509SVID` stream on a new connection, or the call's
/// error.
pub async fn fetch_x509(
    socket: &Path,
) -> Result<enclaveid_workload_api::proto::X509svidResponse, tonic::Status> {
    let mut stream = raw_client(socket)
        .await
        .fetch_x509svid(with_header(
            enclaveid_workload_api::proto::X509svidRequest {},
        ))
        .await?
        .into_inner();
    stream
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("the stream ended"))
}

/// Polls `agent` until it serves an X.509-SVID; fails the test after `within`.
pub async fn wait_for_x509svid(
    agent: &AgentProcess,
    within: Duration,
) -> enclaveid_workload_api::proto::X509svidResponse {
    let deadline = Instant::now() + within;
    loop {
        match fetch_x509(agent.socket()).await {
            Ok(response) if !response.svids.is_empty() => return response,
            other => assert!(
                Instant::now() < deadline,
                "no SVID within {within:?} ({:?}); agent log:\n{}",
                other.map(|_| "empty"),
                agent.stderr_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `request` with the `workload.spiffe.io: true` header.
pub fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        enclaveid_workload_api::SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether tests may switch to other uids with `setpriv` (root only).
pub fn can_switch_uid() -> bool {
    euid() == 0
        && Command::new("setpriv")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Runs `command` with `stdin` written to its standard input; its output.
pub fn output_with_stdin(command: &mut Command, stdin: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}
