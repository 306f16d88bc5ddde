//! Everything the `kms` upstream talks to, for end-to-end tests: a test Private CA, the
//! fake KMS (in this process), moto as S3, `enclaveid host` (a real process), and the
//! agent's configuration pointing at them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enclaveid_attestor::{FakeAttestor, FakeConfig, hex};

use crate::fake_kms::server::{FakeKms, KeyPolicy};
use crate::moto::Moto;
use crate::pca::{Issued, TestPca};

/// The trust domain of the tests.
pub const TRUST_DOMAIN: &str = "example.org";
/// The bucket the key material and CRL live in.
pub const BUCKET: &str = "enclaveid-material";
/// PCR0 the key policy admits.
pub const ADMITTED_PCR0: u8 = 0xa1;
/// The parent's IAM role, as ACM certificates are associated with it.
pub const PARENT_ROLE_ARN: &str = "arn:aws:iam::111122223333:role/enclaveid-parent";
/// The bucket ACM for Nitro Enclaves writes to in the tests' region.
pub const ACM_BUCKET: &str = "aws-ec2-enclave-certificate-us-east-1-prod";

/// The pieces, wired together.
pub struct World {
    /// The Private CA.
    pub pca: TestPca,
    /// The fake KMS (state shared with the server task).
    pub kms: FakeKms,
    /// The key that encrypts the material's private key.
    pub key_arn: String,
    kms_port: u16,
    kms_task: Option<tokio::task::JoinHandle<()>>,
    /// S3.
    pub moto: Moto,
    attestor_root: enclaveid_attestor::FakeRoot,
    dir: tempfile::TempDir,
    host: Option<HostProcess>,
    jwt: bool,
    /// More arguments for `enclaveid host` (`--telemetry-listen …`).
    pub host_args: Vec<String>,
    /// Whether hosts started from now on serve `s3://BUCKET/material.json` (default).
    pub serve_material: bool,
    /// ACM certificate ARNs hosts started from now on serve (`--acm-certificate-arn`).
    pub acm_arns: Vec<String>,
}

/// A running `enclaveid host`, killed on drop.
pub struct HostProcess {
    child: Child,
    stderr: PathBuf,
}

impl World {
    /// A Private CA, a fake KMS with a key admitting PCR0 = [`ADMITTED_PCR0`], moto with
    /// the bucket. No material yet; no host yet.
    pub async fn new() -> Self {
        let moto = tokio::task::spawn_blocking(Moto::start)
            .await
            .expect("moto");
        moto.create_bucket(BUCKET).await;
        let attestor = FakeAttestor::new(FakeConfig::default()).expect("fake attestor");
        let kms = FakeKms::new(attestor.root_der());
        let key_arn = kms.create_key(KeyPolicy {
            image_sha384: vec![vec![ADMITTED_PCR0; 48]],
            ..KeyPolicy::default()
        });
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = attestor.root();
        std::fs::write(dir.path().join("attest-root.pem"), &root.cert_pem).expect("write");
        std::fs::write(dir.path().join("attest-root.key"), &root.key_pem).expect("write");
        let pca = TestPca::new("EnclaveID test Private CA root");
        std::fs::write(dir.path().join("pca-root.pem"), &pca.root_pem).expect("write");
        // Bound once and kept: a port picked and released could be taken by a concurrent
        // test's server in between.
        let kms_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the KMS port");
        let kms_port = kms_listener.local_addr().expect("address").port();
        let kms_task = Some(tokio::spawn(kms.clone().serve(kms_listener)));
        Self {
            pca,
            kms,
            key_arn,
            kms_port,
            kms_task,
            moto,
            attestor_root: root,
            dir,
            host: None,
            jwt: false,
            host_args: Vec::new(),
            serve_material: true,
            acm_arns: Vec::new(),
        }
    }

    /// Serves the fake KMS on its port again, after [`World::stop_kms`].
    pub async fn start_kms(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.kms_port))
            .await
            .expect("bind the KMS port");
        self.kms_task = Some(tokio::spawn(self.kms.clone().serve(listener)));
    }

    /// Stops the fake KMS: its port refuses connections.
    pub async fn stop_kms(&mut self) {
        if let Some(task) = self.kms_task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// The key-material JSON for `issued` (chain: the root), its key encrypted by KMS.
    pub fn material(&self, issued: &Issued) -> Vec<u8> {
        self.material_with_key(issued, issued.key_pem.as_bytes())
    }

    /// The key-material JSON for `issued` with `key_pem` encrypted as its key.
    pub fn material_with_key(&self, issued: &Issued, key_pem: &[u8]) -> Vec<u8> {
        let blob = self.kms.encrypt_to_blob(&self.key_arn, key_pem);
        enclaveid_checks::material::KeyMaterial::new(
            issued.cert_pem.clone(),
            self.pca.root_pem.clone(),
            &blob,
        )
        .to_json()
    }

    /// Uploads JWT key material to S3; hosts started from now on offer it.
    pub async fn publish_jwt(&mut self, material: Vec<u8>) {
        self.moto.put_object(BUCKET, "jwt.json", material).await;
        self.offer_jwt();
    }

    /// Hosts started from now on offer the JWT key material at `s3://BUCKET/jwt.json`.
    pub fn offer_jwt(&mut self) {
        self.jwt = true;
    }

    /// Uploads the material and the CRL to S3.
    pub async fn publish(&self, material: Vec<u8>, crl: Vec<u8>) {
        self.moto
            .put_object(BUCKET, "material.json", material)
            .await;
        self.moto.put_object(BUCKET, "crl/pca.crl", crl).await;
    }

    /// Writes `material` where ACM for Nitro Enclaves writes the object of the certificate
    /// `arn` associated with [`PARENT_ROLE_ARN`] (creating the bucket the first time),
    /// and has hosts started from now on serve it.
    pub async fn publish_acm(&mut self, arn: &str, material: Vec<u8>) {
        if self.acm_arns.is_empty() {
            self.moto.create_bucket(ACM_BUCKET).await;
        }
        self.moto
            .put_object(ACM_BUCKET, &format!("{PARENT_ROLE_ARN}/{arn}"), material)
            .await;
        if !self.acm_arns.iter().any(|a| a == arn) {
            self.acm_arns.push(arn.to_owned());
        }
    }

    /// Starts `enclaveid host` on a Unix socket, serving the material and CRL from S3 and
    /// tunnelling to the fake KMS.
    pub fn start_host(&mut self) {
        self.start_host_with(true);
    }

    /// Like [`World::start_host`], offering a CRL or not.
    pub fn start_host_with(&mut self, crl: bool) {
        self.host = None;
        let socket = self.host_socket();
        let _ = std::fs::remove_file(&socket);
        let stderr = self.dir.path().join("host.stderr");
        let child = Command::new(crate::enclaveid_bin())
            .args(["host", "--listen"])
            .arg(format!("unix://{}", socket.display()))
            .args(
                self.serve_material
                    .then(|| format!("--material=s3://{BUCKET}/material.json")),
            )
            .args(
                self.acm_arns
                    .iter()
                    .map(|arn| format!("--acm-certificate-arn={arn}")),
            )
            .args((!self.acm_arns.is_empty()).then(|| format!("--role-arn={PARENT_ROLE_ARN}")))
            .args(crl.then(|| format!("--crl=s3://{BUCKET}/crl/pca.crl")))
            .args(
                self.jwt
                    .then(|| format!("--jwt-material=s3://{BUCKET}/jwt.json")),
            )
            .arg("--kms-endpoint")
            .arg(format!("127.0.0.1:{}", self.kms_port))
            .args(["--region", "us-east-1", "--s3-endpoint"])
            .arg(self.moto.endpoint())
            .env("AWS_ACCESS_KEY_ID", "AKIAENCLAVEIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "enclaveid-test-secret")
            .env("AWS_SESSION_TOKEN", "enclaveid-test-token")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .args(&self.host_args)
            .env("ENCLAVEID_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.host_stdout()).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn enclaveid host");
        let mut host = HostProcess { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if host.child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                panic!("enclaveid host did not start:\n{}", host.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.host = Some(host);
    }

    /// Replaces the Private CA root the agent trusts.
    pub fn set_trust_bundle(&self, root_pem: &str) {
        std::fs::write(self.dir.path().join("pca-root.pem"), root_pem).expect("write");
    }

    /// The fake KMS's endpoint URL.
    pub fn kms_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.kms_port)
    }

    /// The test's temporary directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Kills `enclaveid host`.
    pub fn stop_host(&mut self) {
        self.host = None;
    }

    /// The host's log.
    pub fn host_log(&self) -> String {
        self.host
            .as_ref()
            .map(HostProcess::stderr_text)
            .unwrap_or_default()
    }

    /// Where the host writes the enclaves' log events (its stdout).
    pub fn host_stdout(&self) -> PathBuf {
        self.dir.path().join("host.stdout")
    }

    /// Where the host listens.
    pub fn host_socket(&self) -> PathBuf {
        self.dir.path().join("host.sock")
    }

    /// An agent configuration for an enclave whose PCR0 is `pcr0` (all 48 bytes), with one
    /// entry per `(spiffe_id, ttl)` for this test's uid; `extra_attestor` is added to the
    /// `[attestor]` table.
    pub fn agent_config(&self, pcr0: u8, entries: &[(&str, &str)], extra_attestor: &str) -> String {
        let dir = self.dir.path().display();
        let mut config = format!(
            r#"trust_domain = "{TRUST_DOMAIN}"
socket_path = "{{socket}}"
[upstream]
kind = "kms"
host = "unix://{host}"
trust_bundle_path = "{dir}/pca-root.pem"
region = "us-east-1"
kms_endpoint = "http://127.0.0.1:{port}"
resync_interval = "5s"
[attestor]
kind = "fake"
root_cert_path = "{dir}/attest-root.pem"
root_key_path = "{dir}/attest-root.key"
pcrs = {{ 0 = "{pcr0}" }}
{extra_attestor}
"#,
            host = self.host_socket().display(),
            port = self.kms_port,
            pcr0 = hex(&[pcr0; 48]),
        );
        for (id, ttl) in entries {
            config.push_str(&format!(
                "[[entry]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{}\"]\nttl = \"{ttl}\"\n",
                crate::euid()
            ));
        }
        config
    }

    /// The attestation root the fake attestor signs under (for checks by hand).
    pub fn attestor_root(&self) -> &enclaveid_attestor::FakeRoot {
        &self.attestor_root
    }
}

impl HostProcess {
    /// What the host logged.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
