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
/// The Python `prometheus-client` whose parser checks the host's `/metrics` text.
pub const PROMETHEUS_CLIENT_VERSION: &str = "0.21.1";
/// py-spiffe (`spiffe` on PyPI), the Python SPIFFE library, for the interop tests.
pub const PY_SPIFFE_VERSION: &str = "0.3.2";

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
        let marker = venv.join(format!(
            ".installed-{MOTO_VERSION}-prometheus-client-{PROMETHEUS_CLIENT_VERSION}-spiffe-{PY_SPIFFE_VERSION}"
        ));
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
            &format!("prometheus-client=={PROMETHEUS_CLIENT_VERSION}"),
            &format!("spiffe=={PY_SPIFFE_VERSION}"),
        ]));
        std::fs::write(&marker, "").expect("write the install marker");
        server
    })
}

/// The Python of the tests' venv (moto, `prometheus-client` and py-spiffe installed).
pub fn venv_python() -> PathBuf {
    moto_server().with_file_name("python")
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers as moto (another
    /// process may take the port between its choice and moto's bind: then again).
    pub fn start() -> Self {
        let server = moto_server();
        for _ in 0..5 {
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
            let mut moto = Self {
                child,
                port,
                _log: log,
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if moto.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if moto.answers_as_moto() {
                    return moto;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("moto did not start");
    }

    /// Whether our port answers an S3 ListBuckets as moto does.
    fn answers_as_moto(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let request = format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=AKIAENCLAVEIDTEST/20261127/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\nConnection: close\r\n\r\n",
            self.port
        );
        let mut answer = String::new();
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.contains("ListAllMyBucketsResult")
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

/// What went through a [`Moto::recording_proxy`]: `(X-Amz-Target, JSON body)` per request.
pub type Recorded = std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>;

impl Moto {
    /// A proxy in front of moto that records every AWS JSON request it forwards, so that
    /// tests can assert what was sent where moto ignores it (templates, for one). Returns
    /// its endpoint URL and the record; it serves until the runtime ends.
    pub async fn recording_proxy(&self) -> (String, Recorded) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let recorded = Recorded::default();
        let record = recorded.clone();
        let port = self.port;
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let record = record.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                if let Some(target) = parts
                                    .headers
                                    .get("x-amz-target")
                                    .and_then(|v| v.to_str().ok())
                                {
                                    let json = serde_json::from_slice(&body)
                                        .unwrap_or(serde_json::Value::Null);
                                    record
                                        .lock()
                                        .expect("record lock")
                                        .push((target.to_owned(), json));
                                }
                                let upstream =
                                    tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                                let (mut sender, connection) =
                                    hyper::client::conn::http1::handshake(
                                        hyper_util::rt::TokioIo::new(upstream),
                                    )
                                    .await
                                    .map_err(std::io::Error::other)?;
                                tokio::spawn(connection);
                                let mut forward = hyper::Request::builder()
                                    .method(parts.method)
                                    .uri(parts.uri);
                                for (name, value) in &parts.headers {
                                    forward = forward.header(name, value);
                                }
                                let response = sender
                                    .send_request(
                                        forward
                                            .body(Full::new(body))
                                            .map_err(std::io::Error::other)?,
                                    )
                                    .await
                                    .map_err(std::io::Error::other)?;
                                let (parts, body) = response.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map_err(std::io::Error::other)?
                                    .to_bytes();
                                Ok::<_, std::io::Error>(hyper::Response::from_parts(
                                    parts,
                                    Full::new(body),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (endpoint, recorded)
    }
}
