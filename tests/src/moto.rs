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
        let (status, answer) = self.send(hyper::Request::put(path), "s3", body).await;
        assert!(
            status.is_success(),
            "PUT {path}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }

    /// Sends one request with a well-formed (unchecked) SigV4 `Authorization` header for
    /// `service`: (status, body).
    async fn send(
        &self,
        request: hyper::http::request::Builder,
        service: &str,
        body: Vec<u8>,
    ) -> (hyper::StatusCode, Bytes) {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to moto");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("HTTP handshake with moto");
        tokio::spawn(connection);
        let request = request
            .header("host", format!("127.0.0.1:{}", self.port))
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=AKIAENCLAVEIDTEST/20261127/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=00"),
            )
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = sender.send_request(request).await.expect("request to moto");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A root Private CA in moto, ACTIVE.
pub struct MotoPca {
    /// Its ARN.
    pub arn: String,
    /// Its self-signed certificate, PEM.
    pub root_pem: String,
}

impl Moto {
    /// One ACM-PCA call (AWS JSON 1.1, `ACMPrivateCA.<operation>`); the answer's JSON.
    pub async fn acm_pca(&self, operation: &str, body: serde_json::Value) -> serde_json::Value {
        let request = hyper::Request::post("/")
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", format!("ACMPrivateCA.{operation}"));
        let (status, answer) = self
            .send(request, "acm-pca", body.to_string().into_bytes())
            .await;
        assert!(
            status.is_success(),
            "ACMPrivateCA.{operation}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
        if answer.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&answer).expect("JSON answer")
    }

    /// Creates a root CA (RSA-2048), issues its certificate with the RootCACertificate/V1
    /// template and imports it, as an operator does on AWS.
    pub async fn create_root_pca(&self) -> MotoPca {
        use base64::Engine as _;
        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
        let created = self
            .acm_pca(
                "CreateCertificateAuthority",
                serde_json::json!({
                    "CertificateAuthorityConfiguration": {
                        "KeyAlgorithm": "RSA_2048",
                        "SigningAlgorithm": "SHA256WITHRSA",
                        "Subject": {"CommonName": "EnclaveID moto root", "Organization": "EnclaveID tests"}
                    },
                    "CertificateAuthorityType": "ROOT",
                    "IdempotencyToken": "enclaveid"
                }),
            )
            .await;
        let arn = created["CertificateAuthorityArn"]
            .as_str()
            .expect("ARN")
            .to_owned();
        let csr = self
            .acm_pca(
                "GetCertificateAuthorityCsr",
                serde_json::json!({"CertificateAuthorityArn": arn}),
            )
            .await;
        let issued = self
            .acm_pca(
                "IssueCertificate",
                serde_json::json!({
                    "CertificateAuthorityArn": arn,
                    "Csr": b64(csr["Csr"].as_str().expect("CSR")),
                    "SigningAlgorithm": "SHA256WITHRSA",
                    "TemplateArn": "arn:aws:acm-pca:::template/RootCACertificate/V1",
                    "Validity": {"Value": 3650, "Type": "DAYS"}
                }),
            )
            .await;
        let certificate = self
            .acm_pca(
                "GetCertificate",
                serde_json::json!({"CertificateAuthorityArn": arn, "CertificateArn": issued["CertificateArn"]}),
            )
            .await;
        let root_pem = certificate["Certificate"]
            .as_str()
            .expect("certificate")
            .to_owned();
        self.acm_pca(
            "ImportCertificateAuthorityCertificate",
            serde_json::json!({"CertificateAuthorityArn": arn, "Certificate": b64(&root_pem)}),
        )
        .await;
        MotoPca { arn, root_pem }
    }

    /// Whether `bucket/key` exists.
    pub async fn object_exists(&self, bucket: &str, key: &str) -> bool {
        let request = hyper::Request::get(format!("/{bucket}/{key}"));
        self.send(request, "s3", Vec::new()).await.0.is_success()
    }
}
