//! moto (<https://github.com/getmoto/moto>) as the S3 server of the end-to-end tests.
//!
//! `moto[server]` is installed on first use into `target/moto-venv` (a Python venv; needs
//! `python3` with `venv`, which `.ci/run` installs), or taken from `ENCLAVEID_MOTO_SERVER`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;

/// The moto version the tests are written against.
pub const MOTO_VERSION: &str = "5.2.5";

/// A running moto server, killed on drop.
pub struct Moto {
    child: Child,
    port: u16,
    _log: tempfile::NamedTempFile,
}

fn moto_server() -> &'static PathBuf {
    static SERVER: OnceLock<PathBuf> = OnceLock::new();
    SERVER.get_or_init(|| {
        if let Some(path) = std::env::var_os("ENCLAVEID_MOTO_SERVER") {
            return PathBuf::from(path);
        }
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/moto-venv");
        let server = venv.join("bin/moto_server");
        let marker = venv.join(format!(".installed-{MOTO_VERSION}"));
        if server.exists() && marker.exists() {
            return server;
        }
        let run = |command: &mut Command| {
            let output = command.output().expect("run python3 (needed for moto)");
            assert!(
                output.status.success(),
                "{command:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("moto[server]=={MOTO_VERSION}"),
        ]));
        std::fs::write(&marker, "").expect("write the install marker");
        server
    })
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers.
    pub fn start() -> Self {
        let server = moto_server();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = tempfile::NamedTempFile::new().expect("moto log");
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("start moto_server");
        let moto = Self {
            child,
            port,
            _log: log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` (path-style). moto does not check signatures, but treats a request
    /// without one as anonymous, and refuses anonymous overwrites: the requests carry an
    /// `Authorization` header of the right shape.
    pub async fn create_bucket(&self, bucket: &str) {
        self.put(&format!("/{bucket}"), Vec::new()).await;
    }

    /// Writes an object.
    pub async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) {
        self.put(&format!("/{bucket}/{key}"), body).await;
    }

    async fn put(&self, path: &str, body: Vec<u8>) {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to moto");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("HTTP handshake with moto");
        tokio::spawn(connection);
        let request = hyper::Request::put(path)
            .header("host", format!("127.0.0.1:{}", self.port))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAENCLAVEIDTEST/20261127/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
            )
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = sender.send_request(request).await.expect("PUT to moto");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(
            status.is_success(),
            "PUT {path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
