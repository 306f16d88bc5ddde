//! Real SPIRE (v1.13.3, built from `tests/interop/spire`'s tools module) for the interop
//! tests: a server with the `join_token` node attestor, an in-memory key manager, SQLite,
//! and optionally the `disk` UpstreamAuthority or other plugins (the `aws_nitro` node
//! attestor); an agent with the `unix` workload attestor, attested with a join token or
//! another node attestor. Both are killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The SPIRE release the tests pin (also in `tests/interop/spire/go.mod`).
pub const SPIRE_VERSION: &str = "v1.13.3";

/// The directory holding `spire-server` and `spire-agent`, built on first use (about five
/// minutes on a fresh machine; `.ci/run` builds them before the tests).
pub fn spire_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = manifest
            .parent()
            .expect("workspace root")
            .join("target")
            .join(format!("spire-{SPIRE_VERSION}"));
        if dir.join("spire-server").exists() && dir.join("spire-agent").exists() {
            return dir;
        }
        go_build(
            "SPIRE",
            &manifest.join("interop/spire"),
            // A trailing slash: a directory for several binaries.
            Path::new(&format!("{}/", dir.display())),
            &[
                "github.com/spiffe/spire/cmd/spire-server",
                "github.com/spiffe/spire/cmd/spire-agent",
            ],
        );
        dir
    })
}

/// `go build -buildvcs=false -o OUT PACKAGES` in module directory `module`; fails the
/// test with Go's output, naming `what`.
pub fn go_build(what: &str, module: &Path, out: &Path, packages: &[&str]) {
    let output = Command::new("go")
        .args(["build", "-buildvcs=false", "-o"])
        .arg(out)
        .args(packages)
        .current_dir(module)
        .output()
        .unwrap_or_else(|e| {
            panic!("`go` is needed to build {what} (skip these tests with -- --skip spire): {e}")
        });
    assert!(
        output.status.success(),
        "building {what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The PCR0 the `aws_nitro` server plugin of [`nitro_server_plugin`] allows in the tests.
pub const NITRO_PCR0: [u8; 48] = [0x1c; 48];

/// A fake Nitro attestation root, written as `nitro-root.pem` and `nitro-root.key` under
/// `dir` (what the server plugin pins and the fake attestors sign with); the attestor too.
pub fn write_fake_nitro_root(dir: &Path) -> enclaveid_attestor::FakeAttestor {
    let attestor = enclaveid_attestor::FakeAttestor::new(enclaveid_attestor::FakeConfig::default())
        .expect("fake root");
    let root = attestor.root();
    std::fs::write(dir.join("nitro-root.pem"), &root.cert_pem).expect("write");
    std::fs::write(dir.join("nitro-root.key"), &root.key_pem).expect("write");
    attestor
}

/// The project's `aws_nitro` server plugin block for spire-server, pinned by checksum as
/// production configurations should be, trusting the fake root under `dir` and allowing
/// `pcr0` only.
pub fn nitro_server_plugin(dir: &Path, pcr0: &[u8]) -> String {
    let binary = std::fs::read(crate::nitro_attestor_bin()).expect("the plugin binary");
    let checksum = enclaveid_attestor::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &binary).as_ref(),
    );
    format!(
        r#"NodeAttestor "aws_nitro" {{
    plugin_cmd = "{bin}"
    plugin_args = ["server"]
    plugin_checksum = "{checksum}"
    plugin_data {{
      root_cert_path = "{dir}/nitro-root.pem"
      max_age = "5m"
      allowed_pcrs = {{
        pcr0 = ["{pcr0}"]
      }}
    }}
  }}"#,
        bin = crate::nitro_attestor_bin().display(),
        dir = dir.display(),
        pcr0 = enclaveid_attestor::hex(pcr0),
    )
}

/// A CA for the server's `disk` UpstreamAuthority.
pub struct DiskUpstream<'a> {
    /// The CA certificate (PEM) SPIRE's own CA is signed by.
    pub cert_pem: &'a str,
    /// Its key (PKCS#8 PEM).
    pub key_pem: &'a str,
    /// The roots (PEM) above it, SPIRE's trust bundle.
    pub bundle_pem: &'a str,
}

/// A running SPIRE server.
pub struct SpireServer {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    port: u16,
    trust_domain: String,
}

/// A running SPIRE agent.
pub struct SpireAgent {
    child: Child,
    socket: PathBuf,
    stderr: PathBuf,
}

/// A TCP port free on the loopback interface right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool, log: &Path) {
    let deadline = Instant::now() + within;
    while !ready() {
        if Instant::now() > deadline {
            panic!(
                "{what} not ready within {within:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl SpireServer {
    /// Starts a server for `trust_domain` with its files under `dir`.
    pub fn start(dir: &Path, trust_domain: &str, upstream: Option<DiskUpstream<'_>>) -> Self {
        Self::start_with(dir, trust_domain, upstream, "", &[])
    }

    /// [`SpireServer::start`] with `server_extra` added to the `server` block (such as a
    /// `federation` block) and `env` set for the process.
    pub fn start_with(
        dir: &Path,
        trust_domain: &str,
        upstream: Option<DiskUpstream<'_>>,
        server_extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(dir, trust_domain, upstream, server_extra, "", env)
    }

    /// [`SpireServer::start`] with `plugins` (such as another `NodeAttestor`) added to
    /// the `plugins` block.
    pub fn start_with_plugins(dir: &Path, trust_domain: &str, plugins: &str) -> Self {
        Self::launch(dir, trust_domain, None, "", plugins, &[])
    }

    /// [`SpireServer::start`] with `server_extra` in the `server` block and `plugins` in
    /// the `plugins` block.
    pub fn start_configured(
        dir: &Path,
        trust_domain: &str,
        server_extra: &str,
        plugins: &str,
    ) -> Self {
        Self::launch(dir, trust_domain, None, server_extra, plugins, &[])
    }

    /// A server for `trust_domain` with the project's `aws_nitro` node attestor (trusting
    /// the fake root it writes under `dir`, allowing [`NITRO_PCR0`]) and a `disk`
    /// KeyManager, so that its CA survives a restart as in production; `server_extra`
    /// goes in its `server` block.
    pub fn start_nitro(dir: &Path, trust_domain: &str, server_extra: &str) -> Self {
        write_fake_nitro_root(dir);
        let plugins = format!(
            "{}\n  KeyManager \"disk\" {{\n    plugin_data {{\n      keys_path = \"{}/server-keys.json\"\n    }}\n  }}",
            nitro_server_plugin(dir, &NITRO_PCR0),
            dir.display()
        );
        Self::start_configured(dir, trust_domain, server_extra, &plugins)
    }

    /// The configuration of an EnclaveID agent whose upstream is this server (a server of
    /// [`SpireServer::start_nitro`] under `dir`): the server's bundle written to `dir` as
    /// the image's bootstrap bundle, the fake attestor with `module_id` and `pcr0`, and
    /// entries synced every `sync_interval`. `{socket}` is left for [`crate::AgentProcess`].
    pub fn enclaveid_config(
        &self,
        dir: &Path,
        module_id: &str,
        pcr0: &[u8],
        sync_interval: &str,
    ) -> String {
        let bundle = dir.join("spire-bundle.pem");
        std::fs::write(&bundle, self.cli_ok(&["bundle", "show"])).expect("write the bundle");
        format!(
            r#"trust_domain = "{td}"
socket_path = "{{socket}}"
[upstream]
kind = "spire"
server_address = "tcp://127.0.0.1:{port}"
trust_bundle_path = "{bundle}"
sync_interval = "{sync_interval}"
[attestor]
kind = "fake"
module_id = "{module_id}"
pcrs = {{ 0 = "{pcr0}" }}
root_cert_path = "{dir}/nitro-root.pem"
root_key_path = "{dir}/nitro-root.key"
"#,
            td = self.trust_domain,
            port = self.port,
            bundle = bundle.display(),
            dir = dir.display(),
            pcr0 = enclaveid_attestor::hex(pcr0),
        )
    }

    /// Kills the server (an outage); [`SpireServer::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again with the same configuration, port and data, and waits for
    /// its health check.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(&self.dir, &[]);
        wait_until(
            "spire-server",
            Duration::from_secs(60),
            || self.cli(&["healthcheck"]).status.success(),
            &self.dir.join("server.stderr"),
        );
    }

    /// The `bind_port` agents dial.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(dir: &Path, env: &[(&str, &str)]) -> Child {
        let log = dir.join("server.log");
        Command::new(spire_bin_dir().join("spire-server"))
            .args(["run", "-config"])
            .arg(dir.join("server.conf"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log"),
            )
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("server.stderr"))
                    .expect("log"),
            )
            .spawn()
            .expect("spawn spire-server")
    }

    fn launch(
        dir: &Path,
        trust_domain: &str,
        upstream: Option<DiskUpstream<'_>>,
        server_extra: &str,
        plugins_extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = dir.join("spire-server");
        std::fs::create_dir_all(&dir).expect("server dir");
        let socket = dir.join("api.sock");
        let port = free_port();
        let upstream = match upstream {
            None => String::new(),
            Some(ca) => {
                std::fs::write(dir.join("upstream.pem"), ca.cert_pem).expect("write");
                std::fs::write(dir.join("upstream.key"), ca.key_pem).expect("write");
                std::fs::write(dir.join("upstream-bundle.pem"), ca.bundle_pem).expect("write");
                format!(
                    r#"UpstreamAuthority "disk" {{
    plugin_data {{
      cert_file_path = "{0}/upstream.pem"
      key_file_path = "{0}/upstream.key"
      bundle_file_path = "{0}/upstream-bundle.pem"
    }}
  }}"#,
                    dir.display()
                )
            }
        };
        let config = format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{socket}"
  trust_domain = "{trust_domain}"
  data_dir = "{dir}/data"
  log_level = "WARN"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
  {server_extra}
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{dir}/data/datastore.sqlite3"
    }}
  }}
  {key_manager}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  {upstream}
  {plugins_extra}
}}
"#,
            socket = socket.display(),
            dir = dir.display(),
            // `disk` when the caller wants the CA to survive a restart.
            key_manager = if plugins_extra.contains("KeyManager") {
                ""
            } else {
                "KeyManager \"memory\" {\n    plugin_data {}\n  }"
            },
        );
        std::fs::write(dir.join("server.conf"), config).expect("write server.conf");
        let child = Self::spawn(&dir, env);
        let server = Self {
            child,
            dir,
            socket,
            port,
            trust_domain: trust_domain.to_owned(),
        };
        wait_until(
            "spire-server",
            Duration::from_secs(60),
            || server.cli(&["healthcheck"]).status.success(),
            &server.dir.join("server.stderr"),
        );
        server
    }

    /// What the server has logged so far.
    pub fn log_text(&self) -> String {
        ["server.log", "server.stderr"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect()
    }

    /// `spire-server ARGS -socketPath …`, which must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(output.status.success(), "spire-server {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `spire-server ARGS -socketPath …`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(spire_bin_dir().join("spire-server"))
            .args(args)
            .arg("-socketPath")
            .arg(&self.socket)
            .output()
            .expect("spire-server CLI")
    }

    /// A join token for a node with SPIFFE ID `spiffe://TD/node`.
    pub fn join_token(&self) -> String {
        let node = format!("spiffe://{}/node", self.trust_domain);
        let output = self.cli(&["token", "generate", "-spiffeID", &node]);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .last()
            .expect("a token")
            .to_owned()
    }

    /// Registers `spiffe_id` for workloads with `selectors` on the node of
    /// [`SpireServer::join_token`]; returns the entry ID.
    pub fn entry_create(&self, spiffe_id: &str, selectors: &[&str], hint: &str) -> String {
        self.entry("create", None, spiffe_id, selectors, hint, &[])
    }

    /// [`SpireServer::entry_create`] for an entry that federates with `trust_domain_id`.
    pub fn entry_create_federated(
        &self,
        spiffe_id: &str,
        selectors: &[&str],
        trust_domain_id: &str,
    ) -> String {
        let extra = ["-federatesWith", trust_domain_id];
        self.entry("create", None, spiffe_id, selectors, "", &extra)
    }

    /// Changes the hint of entry `id` (the agent pushes the change to open streams).
    pub fn entry_update(&self, id: &str, spiffe_id: &str, selectors: &[&str], hint: &str) {
        self.entry("update", Some(id), spiffe_id, selectors, hint, &[]);
    }

    /// Registers `spiffe_id` for `selectors` with more `entry create` flags (such as
    /// `-x509SVIDTTL 10`); returns the entry ID.
    pub fn entry_create_with(&self, spiffe_id: &str, selectors: &[&str], extra: &[&str]) -> String {
        self.entry("create", None, spiffe_id, selectors, "", extra)
    }

    fn entry(
        &self,
        verb: &str,
        id: Option<&str>,
        spiffe_id: &str,
        selectors: &[&str],
        hint: &str,
        extra: &[&str],
    ) -> String {
        let node = format!("spiffe://{}/node", self.trust_domain);
        let mut args = vec!["entry", verb, "-parentID", &node, "-spiffeID", spiffe_id];
        if let Some(id) = id {
            args.extend(["-entryID", id]);
        }
        for selector in selectors {
            args.extend(["-selector", selector]);
        }
        if !hint.is_empty() {
            args.extend(["-hint", hint]);
        }
        args.extend_from_slice(extra);
        let output = self.cli(&args);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("Entry ID")
                    .map(|r| r.trim_start_matches([' ', ':']).trim().to_owned())
            })
            .unwrap_or_default()
    }

    /// Starts an agent attested with a fresh join token, and waits for its health check.
    pub fn start_agent(&self, dir: &Path) -> SpireAgent {
        let agent = self.spawn_agent(dir);
        agent.wait_healthy(Duration::from_secs(60));
        agent
    }

    /// Starts an agent attested with a fresh join token, without waiting for it.
    pub fn spawn_agent(&self, dir: &Path) -> SpireAgent {
        let token = format!("join_token = \"{}\"", self.join_token());
        self.spawn_agent_with(
            dir,
            &token,
            "NodeAttestor \"join_token\" {\n    plugin_data {}\n  }",
        )
    }

    /// Starts an agent with `agent_extra` in its `agent` block and `node_attestor` as its
    /// node attestor plugin block, without waiting for it.
    pub fn spawn_agent_with(
        &self,
        dir: &Path,
        agent_extra: &str,
        node_attestor: &str,
    ) -> SpireAgent {
        let dir = dir.join("spire-agent");
        std::fs::create_dir_all(&dir).expect("agent dir");
        let socket = dir.join("agent.sock");
        let config = format!(
            r#"agent {{
  data_dir = "{dir}/data"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{socket}"
  trust_domain = "{td}"
  insecure_bootstrap = true
  {agent_extra}
}}
plugins {{
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  {node_attestor}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}
"#,
            dir = dir.display(),
            port = self.port,
            socket = socket.display(),
            td = self.trust_domain,
        );
        std::fs::write(dir.join("agent.conf"), config).expect("write agent.conf");
        let stderr = dir.join("agent.stderr");
        let child = Command::new(spire_bin_dir().join("spire-agent"))
            .args(["run", "-config"])
            .arg(dir.join("agent.conf"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("agent.log")).expect("log"))
            .stderr(std::fs::File::create(&stderr).expect("log"))
            .spawn()
            .expect("spawn spire-agent");
        SpireAgent {
            child,
            socket,
            stderr,
        }
    }
}

impl SpireAgent {
    /// The Workload API endpoint, as `SPIFFE_ENDPOINT_SOCKET` takes it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agent has logged so far (stdout, then stderr).
    pub fn log_text(&self) -> String {
        [self.stderr.with_file_name("agent.log"), self.stderr.clone()]
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect()
    }

    /// Waits until the agent answers its health check; fails the test after `within`.
    pub fn wait_healthy(&self, within: Duration) {
        wait_until(
            "spire-agent",
            within,
            || {
                Command::new(spire_bin_dir().join("spire-agent"))
                    .args(["healthcheck", "-socketPath"])
                    .arg(&self.socket)
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
            &self.stderr,
        );
    }

    /// Waits up to `within` for the agent to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SpireServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SpireAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
