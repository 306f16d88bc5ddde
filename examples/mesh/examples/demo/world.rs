//! The demo's world, without AWS: the fake KMS, a host relaying to it, a stand-in
//! Private CA (a root and the subordinate CA the agents mint under), three agents with
//! the fake attestor (gateway, inference and impostor images: different PCR0s), and the
//! two services. Shared by the demo example, the mesh tests and the benchmark.
//!
//! [`Mesh::start`] sets it all up (the benchmark reuses it); [`run`] then shows, in
//! order: the model key opened by the inference enclave and refused to the gateway's;
//! requests with both peer IDs; a rotation forced under load with zero failed requests;
//! the impostor refused both ways; a revoked leaf and a revoked intermediate refused.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use enclaveid_agent::config::{AttestorConfig, KmsEndpoint};
use enclaveid_agent::{Agent, Config, Enclave, Release, Renewer};
use enclaveid_attestor::{FakeAttestor, FakeConfig, hex};
use enclaveid_fakes::kms::server::{FakeKms, KeyPolicy};
use enclaveid_fakes::pca::TestPca;
use enclaveid_host::{Host, HostConfig, Relay, RelayLimits, RelayStats, Route};
use enclaveid_io::{Address, AddressExt as _};
use mesh::Error;
use mesh::gateway::{Gateway, Reply};
use mesh::inference::{self, Inference};
use mesh::tls::CrlFiles;
use spiffe::X509Source;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// The demo's trust domain.
pub(crate) const TRUST_DOMAIN: &str = "mesh.demo";
/// The region the fake KMS pretends to be in.
const REGION: &str = "eu-west-1";
/// How long to wait for an agent to rotate an SVID.
const ROTATION_WAIT: Duration = Duration::from_secs(15);

/// How the services talk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A Unix socket in the demo's directory.
    Unix,
    /// TCP on the loopback interface.
    Tcp,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unix" => Ok(Self::Unix),
            "tcp" => Ok(Self::Tcp),
            other => Err(format!(
                "transport {other:?} is not supported here; accepted: unix, tcp (vsock needs an enclave: run the services with --listen vsock://CID:PORT)"
            )),
        }
    }
}

/// One workload: its agent and its view of the Workload API.
pub(crate) struct Workload {
    /// Its SPIFFE ID.
    pub id: String,
    /// Its image's PCR0 (fake).
    pub pcr0: Vec<u8>,
    /// Its agent's Workload API socket.
    pub socket: PathBuf,
    /// Its agent's attestor (the enclave it runs in).
    pub attestor: AttestorConfig,
    /// Forces its agent to re-mint.
    pub renewer: Renewer,
    /// Its SVIDs and bundles, live.
    pub source: X509Source,
}

/// Everything the demo runs, set up.
pub(crate) struct Mesh {
    /// Files: agent configurations and sockets, CA files, the CRL.
    pub dir: tempfile::TempDir,
    /// The gateway workload.
    pub gateway: Workload,
    /// The inference workload.
    pub inference: Workload,
    /// A third workload with another SPIFFE ID, under the same CA.
    pub impostor: Workload,
    /// Where the inference service listens (in its enclave).
    pub inference_address: Address,
    /// Where the gateway dials: parent A's relay, which forwards to parent B's, which
    /// forwards to the inference service (as across two instances in production).
    pub relay_address: Address,
    /// Both relays' counters.
    pub relay_stats: RelayStats,
    /// Requests the inference application has received.
    pub inference_received: Arc<std::sync::atomic::AtomicU64>,
    /// The CRL file both services check peers against.
    pub crl_path: PathBuf,
    /// The stand-in Private CA root.
    pub root: TestPca,
    /// The subordinate CA the agents mint under.
    pub ca: TestPca,
    /// The subordinate CA certificate's serial.
    pub ca_serial: Vec<u8>,
    /// The model key as the inference enclave opened it.
    pub model_key: Zeroizing<Vec<u8>>,
    /// The model key's KMS ciphertext.
    pub model_key_blob: Vec<u8>,
    /// KMS's answer when the gateway's enclave asked for the model key.
    pub gateway_kms_refusal: String,
    host: Address,
    kms_endpoint: KmsEndpoint,
    stop: CancellationToken,
    agents: Vec<tokio::task::JoinHandle<()>>,
}

/// What the demo showed.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// The server's SPIFFE ID as the gateway's handshakes proved it.
    pub gateway_saw: BTreeSet<String>,
    /// The client's SPIFFE ID as the inference service's handshakes proved it.
    pub inference_saw: BTreeSet<String>,
    /// Whether every answer was the HMAC under the real model key.
    pub answers_correct: bool,
    /// Requests answered during the load with a rotation.
    pub requests_ok: usize,
    /// Requests that failed during that load, and why.
    pub failures: Vec<String>,
    /// Requests retried on a new connection after a refused handshake during that load.
    pub handshake_retries: u64,
    /// Server serials of the handshakes before the rotation.
    pub serials_before: BTreeSet<String>,
    /// Server serials of the handshakes after it.
    pub serials_after: BTreeSet<String>,
    /// Client serials the server saw after it.
    pub client_serials_after: BTreeSet<String>,
    /// The inference SVID serial before and after the forced rotation.
    pub inference_rotated: (String, String),
    /// The gateway SVID serial before and after it.
    pub gateway_rotated: (String, String),
    /// The impostor as client: the error it got (`None`: it was served).
    pub impostor_as_client: Option<String>,
    /// The impostor as server: the gateway's error (`None`: the gateway talked to it).
    pub impostor_as_server: Option<String>,
    /// A revoked gateway leaf: the error (`None`: it was served).
    pub revoked_leaf: Option<String>,
    /// Whether the gateway was served again with a new SVID after its leaf was revoked.
    pub served_after_renewal: bool,
    /// A revoked subordinate CA: the error (`None`: it was served).
    pub revoked_intermediate: Option<String>,
    /// KMS's refusal of the model key to the gateway's enclave.
    pub gateway_kms_refusal: String,
    /// Connections and bytes (both ways) each relay carried.
    pub relayed: Vec<(String, u64, u64)>,
}

/// The demo's options.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// How the services talk.
    pub transport: Transport,
    /// Concurrent senders during the load with a rotation.
    pub concurrency: usize,
    /// How long the load runs before and after the rotation.
    pub load_phase: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            transport: Transport::Unix,
            concurrency: 8,
            load_phase: Duration::from_millis(1500),
        }
    }
}

impl Mesh {
    /// Starts the fake KMS, the host, the three agents and the inference service.
    pub(crate) async fn start(transport: Transport) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("mesh-").tempdir()?;
        let path = dir.path().to_owned();
        let uid = std::fs::metadata(&path)?.uid();

        // The stand-in Private CA: a root (what images carry) and a subordinate CA for
        // the trust domain, whose key the agents mint SVIDs with.
        let root = TestPca::new("EnclaveID demo Private CA root");
        let (ca, issued) = root.subordinate(
            &format!("spiffe://{TRUST_DOMAIN}"),
            Duration::from_secs(30 * 86400),
        );
        write(&path.join("root.pem"), root.root_pem.as_bytes(), 0o644)?;
        write(&path.join("ca.pem"), issued.cert_pem.as_bytes(), 0o644)?;
        write(&path.join("ca.key"), issued.key_pem.as_bytes(), 0o600)?;

        // One fake attestation root for every enclave here, which the fake KMS trusts
        // as real KMS trusts the AWS Nitro root.
        let attestation = FakeAttestor::new(FakeConfig::default())?;
        let fake_root = attestation.root();
        write(
            &path.join("nitro-root.pem"),
            fake_root.cert_pem.as_bytes(),
            0o644,
        )?;
        write(
            &path.join("nitro-root.key"),
            fake_root.key_pem.as_bytes(),
            0o600,
        )?;

        let stop = CancellationToken::new();
        let mut agents = Vec::new();
        let gateway = start_workload(&path, "gateway", uid, &stop, &mut agents).await?;
        let inference = start_workload(&path, "inference", uid, &stop, &mut agents).await?;
        let impostor = start_workload(&path, "impostor", uid, &stop, &mut agents).await?;

        // KMS holds the model key; its policy releases it to the inference image only.
        let kms = FakeKms::new(attestation.root_der());
        let key_id = kms.create_key(KeyPolicy {
            image_sha384: vec![inference.pcr0.clone()],
            ..KeyPolicy::default()
        });
        let model_key: [u8; 32] = rand_bytes()?;
        let model_key_blob = kms.encrypt_to_blob(&key_id, &model_key);
        let kms_address = kms.spawn().await;
        let kms_endpoint = KmsEndpoint::parse(&format!("http://{kms_address}"))?;

        // The parent instance's host: credentials and the tunnel to KMS, no material.
        let host = Address::Unix(path.join("host.sock"));
        let served = Host::new(HostConfig {
            material: None,
            crl: None,
            jwt_material: None,
            kms_endpoints: vec![kms_address.to_string()],
            region: Some(REGION.into()),
            s3_endpoint: None,
            credentials: Some(aws_credential_types::Credentials::new(
                "AKIAEXAMPLEDEMO",
                "demo-secret-access-key",
                None,
                None,
                "mesh-demo",
            )),
            ..HostConfig::default()
        })
        .await?;
        let listener = host.bind().await?;
        tokio::spawn(served.serve(listener, stop.clone().cancelled_owned()));

        let opened = release(&inference, &host, &kms_endpoint, &model_key_blob).await?;
        anyhow::ensure!(
            opened[..] == model_key[..],
            "KMS released another key than the model key"
        );
        let gateway_kms_refusal =
            match release(&gateway, &host, &kms_endpoint, &model_key_blob).await {
                Ok(_) => anyhow::bail!(
                    "KMS released the model key to the gateway's enclave: the key policy is wrong"
                ),
                Err(error) => format!("{error:#}"),
            };

        let crl_path = path.join("crl.pem");
        let inference_address = match transport {
            Transport::Unix => Address::Unix(path.join("inference.sock")),
            Transport::Tcp => Address::Tcp("127.0.0.1:0".into()),
        };
        let listener = inference_address.bind().await?;
        let inference_address = listener.local_address()?;
        let server = Inference::new(
            inference.source.clone(),
            std::slice::from_ref(&gateway.id),
            CrlFiles::new(vec![crl_path.clone()]),
            opened.clone(),
        )?;
        let inference_received = server.received();
        tokio::spawn(server.serve(listener, stop.clone()));

        // Two parents' relays: the gateway's (A) forwards to the inference instance's (B),
        // which forwards into the inference enclave. They move ciphertext only.
        let relay_stats = RelayStats::default();
        let mut to = inference_address.clone();
        for parent in ["b", "a"] {
            let listen = match transport {
                Transport::Unix => Address::Unix(path.join(format!("relay-{parent}.sock"))),
                Transport::Tcp => Address::Tcp("127.0.0.1:0".into()),
            };
            let route = Route { listen, to };
            let relay = Relay::bind(&[route], RelayLimits::default(), relay_stats.clone())
                .await
                .map_err(|(route, error)| anyhow!("relay {route}: {error}"))?;
            to = relay.local_addresses().remove(0);
            tokio::spawn(relay.serve(stop.clone().cancelled_owned()));
        }
        let relay_address = to;

        Ok(Self {
            dir,
            gateway,
            inference,
            impostor,
            inference_address,
            relay_address,
            relay_stats,
            inference_received,
            crl_path,
            root,
            ca,
            ca_serial: issued.serial,
            model_key: opened,
            model_key_blob,
            gateway_kms_refusal,
            host,
            kms_endpoint,
            stop,
            agents,
        })
    }

    /// The gateway's client to the inference service.
    pub(crate) fn gateway_client(&self) -> Result<Gateway, Error> {
        self.gateway_client_at(self.relay_address.clone())
    }

    /// The gateway's client dialling `address` (the inference service itself, for the
    /// benchmark, which compares with plain TCP without relays).
    pub(crate) fn gateway_client_at(&self, address: Address) -> Result<Gateway, Error> {
        Gateway::new(
            self.gateway.source.clone(),
            std::slice::from_ref(&self.inference.id),
            address,
            CrlFiles::new(vec![self.crl_path.clone()]),
        )
    }

    /// Opens the model key as `workload`'s enclave (KMS decides).
    pub(crate) async fn open_model_key(
        &self,
        workload: &Workload,
    ) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        release(
            workload,
            &self.host,
            &self.kms_endpoint,
            &self.model_key_blob,
        )
        .await
    }

    /// The host (parent instance) relaying to the fake KMS.
    pub(crate) fn host_address(&self) -> &Address {
        &self.host
    }

    /// The fake KMS's endpoint URL.
    pub(crate) fn kms_url(&self) -> String {
        self.kms_endpoint.to_string()
    }

    /// The region the fake KMS answers for.
    pub(crate) fn region(&self) -> &'static str {
        REGION
    }

    /// Stops everything and waits for the agents to drain and remove their sockets.
    pub(crate) async fn shutdown(&mut self) {
        self.stop.cancel();
        for agent in std::mem::take(&mut self.agents) {
            let _ = agent.await;
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn release(
    workload: &Workload,
    host: &Address,
    endpoint: &KmsEndpoint,
    blob: &[u8],
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let release = Release::new(
        Enclave::open(&workload.attestor)?,
        host.clone(),
        endpoint.clone(),
        REGION,
    );
    Ok(release.decrypt(blob).await?)
}

fn rand_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow!("no randomness"))?;
    Ok(bytes)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    enclaveid_io::write_atomically(path, bytes, mode)
        .with_context(|| format!("writing {}", path.display()))
}

/// The fake PCR0 of an image named `name`.
pub(crate) fn pcr0_of(name: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA384,
        format!("demo image {name}").as_bytes(),
    )
    .as_ref()
    .to_vec()
}

async fn start_workload(
    dir: &Path,
    name: &str,
    uid: u32,
    stop: &CancellationToken,
    agents: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Workload> {
    let pcr0 = pcr0_of(name);
    let stop = stop.clone();
    let id = format!("spiffe://{TRUST_DOMAIN}/{name}");
    let socket = dir.join(format!("{name}-agent.sock"));
    let d = dir.display();
    // The entry needs both the workload's uid and the enclave's PCR0: this SVID exists
    // only in an enclave running this image, the same measurement KMS checks.
    let toml = format!(
        r#"trust_domain = "{TRUST_DOMAIN}"
socket_path = "{socket}"
svid_ttl = "1h"

[upstream]
kind = "dev"
cert_path = "{d}/ca.pem"
key_path = "{d}/ca.key"
bundle_path = "{d}/root.pem"

[attestor]
kind = "fake"
module_id = "i-0123456789abcdef0-enc-{name}"
pcrs = {{ 0 = "{pcr0}" }}
root_cert_path = "{d}/nitro-root.pem"
root_key_path = "{d}/nitro-root.key"

[[entry]]
spiffe_id = "{id}"
selectors = ["unix:uid:{uid}", "nitro:pcr0:{pcr0}"]
"#,
        socket = socket.display(),
        pcr0 = hex(&pcr0),
    );
    let config_path = dir.join(format!("{name}-agent.toml"));
    write(&config_path, toml.as_bytes(), 0o644)?;
    let config = Config::from_toml(&toml, &config_path.display().to_string())?;
    let attestor = config.attestor.clone();
    let agent = Agent::start(config)?;
    let renewer = agent.renewer();
    let name = name.to_owned();
    agents.push(tokio::spawn(async move {
        if let Err(error) = agent.serve(stop.cancelled_owned()).await {
            tracing::error!(error = %enclaveid_checks::Chain(&error), agent = %name, "agent stopped");
        }
    }));
    let source = mesh::tls::source(&format!("unix://{}", socket.display())).await?;
    Ok(Workload {
        id,
        pcr0,
        socket,
        attestor,
        renewer,
        source,
    })
}

/// Runs the demo on a fresh [`Mesh`], telling what happens through `say`.
pub(crate) async fn run(options: &Options, say: &(dyn Fn(&str) + Sync)) -> anyhow::Result<Report> {
    let mut mesh = Mesh::start(options.transport).await?;
    say(&format!(
        "mesh up in {}: trust domain {TRUST_DOMAIN}, three agents (fake attestor), fake KMS, host; inference at {}, the gateway dials it through two parents' relays at {}",
        mesh.dir.path().display(),
        mesh.inference_address,
        mesh.relay_address
    ));
    let mut report = Report {
        gateway_kms_refusal: mesh.gateway_kms_refusal.clone(),
        ..Report::default()
    };
    say(&format!(
        "model key: KMS released it to the inference enclave (PCR0 {}…); to the gateway's it said: {}",
        &hex(&mesh.inference.pcr0)[..16],
        mesh.gateway_kms_refusal
    ));

    // Load, with a forced rotation of both SVIDs in the middle.
    let gateway = Arc::new(
        mesh.gateway_client()?
            .with_max_age(Duration::from_millis(200)),
    );
    let (inference_before, gateway_before) = (serial(&mesh.inference)?, serial(&mesh.gateway)?);
    let rotated = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(true));
    let mut senders = Vec::new();
    for task in 0..options.concurrency.max(1) {
        let (gateway, rotated, running) = (gateway.clone(), rotated.clone(), running.clone());
        let key = mesh.model_key.clone();
        senders.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = 0usize;
            while running.load(Ordering::Relaxed) {
                let after = rotated.load(Ordering::Relaxed);
                let prompt = format!("prompt {task}.{i}");
                i += 1;
                let outcome = gateway.send(&prompt).await.and_then(|reply| {
                    if reply.response.answer == inference::answer(&key, &prompt) {
                        Ok(reply)
                    } else {
                        Err(Error::Protocol(format!("wrong answer to {prompt:?}")))
                    }
                });
                seen.push((after, outcome));
            }
            seen
        }));
    }
    tokio::time::sleep(options.load_phase).await;
    mesh.inference.renewer.renew_now();
    mesh.gateway.renewer.renew_now();
    let inference_after = wait_for_new_serial(&mesh.inference, &inference_before).await?;
    let gateway_after = wait_for_new_serial(&mesh.gateway, &gateway_before).await?;
    rotated.store(true, Ordering::Relaxed);
    tokio::time::sleep(options.load_phase).await;
    running.store(false, Ordering::Relaxed);
    let mut answers_correct = true;
    for sender in senders {
        let seen = sender.await.context("a sender task failed")?;
        for (after, outcome) in seen {
            match outcome {
                Ok(reply) => {
                    report.requests_ok += 1;
                    note(&mut report, &reply, after);
                }
                Err(Error::Protocol(why)) if why.starts_with("wrong answer") => {
                    answers_correct = false;
                    report.failures.push(why);
                }
                Err(error) => report.failures.push(error.to_string()),
            }
        }
    }
    report.answers_correct = answers_correct && report.requests_ok > 0;
    report.handshake_retries = gateway.handshake_retries();
    report.inference_rotated = (inference_before, inference_after);
    report.gateway_rotated = (gateway_before, gateway_after);
    say(&format!(
        "requests: {} answered, {} failed ({} retried after a refused handshake); the gateway proved it talks to {:?}, the inference service that it serves {:?}",
        report.requests_ok,
        report.failures.len(),
        report.handshake_retries,
        report.gateway_saw,
        report.inference_saw
    ));
    say(&format!(
        "rotation under load: inference SVID {} -> {}, gateway SVID {} -> {}; new handshakes after it saw server serials {:?}",
        short(&report.inference_rotated.0),
        short(&report.inference_rotated.1),
        short(&report.gateway_rotated.0),
        short(&report.gateway_rotated.1),
        report
            .serials_after
            .iter()
            .map(|s| short(s))
            .collect::<Vec<_>>()
    ));

    // The impostor: a valid SVID of the same trust domain, another SPIFFE ID.
    let impostor = client(&mesh.impostor, &mesh.inference, mesh.relay_address.clone())?;
    report.impostor_as_client = refusal(&impostor, "let me in").await;
    let impostor_address = Address::Unix(mesh.dir.path().join("impostor.sock"));
    let listener = impostor_address.bind().await?;
    let fake_server = Inference::new(
        mesh.impostor.source.clone(),
        std::slice::from_ref(&mesh.gateway.id),
        CrlFiles::default(),
        Zeroizing::new(vec![0; 32]),
    )?;
    let stop_impostor = CancellationToken::new();
    tokio::spawn(fake_server.serve(listener, stop_impostor.clone()));
    let to_impostor = client(&mesh.gateway, &mesh.inference, impostor_address)?;
    report.impostor_as_server = refusal(&to_impostor, "hello?").await;
    stop_impostor.cancel();
    say(&format!(
        "impostor {} as client: {}",
        mesh.impostor.id,
        report
            .impostor_as_client
            .as_deref()
            .unwrap_or("SERVED (wrong)")
    ));
    say(&format!(
        "impostor {} as server: {}",
        mesh.impostor.id,
        report
            .impostor_as_server
            .as_deref()
            .unwrap_or("TRUSTED (wrong)")
    ));

    // Revocation: the CA lists the gateway's current leaf; then the root lists the CA.
    let gateway_once = mesh.gateway_client()?;
    let leaf = serial(&mesh.gateway)?;
    write_crls(&mesh.crl_path, &[mesh.ca.crl(&[&parse_hex(&leaf)?])])?;
    report.revoked_leaf = refusal(&gateway_once, "revoked?").await;
    say(&format!(
        "revoked gateway leaf {}: {}",
        short(&leaf),
        report.revoked_leaf.as_deref().unwrap_or("SERVED (wrong)")
    ));
    mesh.gateway.renewer.renew_now();
    wait_for_new_serial(&mesh.gateway, &leaf).await?;
    report.served_after_renewal = gateway_once.send_once("renewed").await.is_ok();
    say(&format!(
        "after a renewal the gateway is served again: {}",
        report.served_after_renewal
    ));
    write_crls(&mesh.crl_path, &[mesh.root.crl(&[&mesh.ca_serial])])?;
    report.revoked_intermediate = refusal(&gateway_once, "ca revoked?").await;
    say(&format!(
        "revoked subordinate CA {}: {}",
        short(&hex(&mesh.ca_serial)),
        report
            .revoked_intermediate
            .as_deref()
            .unwrap_or("SERVED (wrong)")
    ));
    mesh.shutdown().await;
    for (route, stats) in mesh.relay_stats.snapshot() {
        let connections = stats.opened.load(Ordering::Relaxed);
        let bytes =
            stats.bytes_in.load(Ordering::Relaxed) + stats.bytes_out.load(Ordering::Relaxed);
        say(&format!(
            "relay {route}: {connections} connections, {bytes} bytes of ciphertext"
        ));
        report.relayed.push((route, connections, bytes));
    }
    Ok(report)
}

/// A client presenting `from`'s SVIDs to `address`, which must prove `to`'s SPIFFE ID.
fn client(from: &Workload, to: &Workload, address: Address) -> Result<Gateway, Error> {
    Gateway::new(
        from.source.clone(),
        std::slice::from_ref(&to.id),
        address,
        CrlFiles::default(),
    )
}

/// Why a request on a new connection failed; `None` when it was answered.
async fn refusal(gateway: &Gateway, prompt: &str) -> Option<String> {
    gateway.send_once(prompt).await.err().map(|e| e.to_string())
}

impl Report {
    /// What is wrong with the outcome, if anything: the demo's exit status.
    pub(crate) fn problems(&self, mesh_ids: (&str, &str)) -> Vec<String> {
        let (gateway, inference) = mesh_ids;
        let mut problems = Vec::new();
        let mut expect = |ok: bool, what: &str| {
            if !ok {
                problems.push(what.to_owned());
            }
        };
        expect(
            self.gateway_saw.iter().eq([inference]),
            "the gateway talked to another peer than inference",
        );
        expect(
            self.relayed.len() == 2 && self.relayed.iter().all(|(_, c, b)| *c > 0 && *b > 0),
            "the requests did not cross both parents' relays",
        );
        expect(
            self.inference_saw.iter().eq([gateway]),
            "inference served another client than the gateway",
        );
        expect(
            self.answers_correct,
            "some answers were not made with the model key",
        );
        expect(
            self.failures.is_empty(),
            "requests failed during the rotation",
        );
        expect(
            self.inference_rotated.0 != self.inference_rotated.1,
            "the inference SVID did not rotate",
        );
        expect(
            self.gateway_rotated.0 != self.gateway_rotated.1,
            "the gateway SVID did not rotate",
        );
        expect(
            self.serials_after.contains(&self.inference_rotated.1),
            "no handshake after the rotation used the new inference SVID",
        );
        expect(
            self.client_serials_after.contains(&self.gateway_rotated.1),
            "no handshake after the rotation used the new gateway SVID",
        );
        expect(self.impostor_as_client.is_some(), "the impostor was served");
        expect(
            self.impostor_as_server.is_some(),
            "the gateway trusted the impostor",
        );
        expect(self.revoked_leaf.is_some(), "a revoked leaf was accepted");
        expect(
            self.served_after_renewal,
            "the renewed gateway was not served",
        );
        expect(
            self.revoked_intermediate.is_some(),
            "a revoked intermediate was accepted",
        );
        expect(
            self.gateway_kms_refusal.contains("AccessDenied"),
            "KMS did not refuse the gateway's enclave",
        );
        problems
    }
}

fn note(report: &mut Report, reply: &Reply, after_rotation: bool) {
    report.gateway_saw.insert(reply.peer_id.to_string());
    report.inference_saw.insert(reply.response.client.clone());
    if reply.new_connection {
        if after_rotation {
            report.serials_after.insert(reply.peer_serial.clone());
            report
                .client_serials_after
                .insert(reply.response.client_serial.clone());
        } else {
            report.serials_before.insert(reply.peer_serial.clone());
        }
    }
}

/// The workload's current SVID serial, hex.
pub(crate) fn serial(workload: &Workload) -> Result<String, Error> {
    let svid = workload
        .source
        .svid()
        .map_err(|e| Error::Source(e.to_string()))?;
    let chain: Vec<_> = svid
        .cert_chain()
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.as_bytes()))
        .collect();
    Ok(mesh::tls::peer_identity(Some(&chain))?.1)
}

async fn wait_for_new_serial(workload: &Workload, old: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + ROTATION_WAIT;
    let mut updates = workload.source.updated();
    loop {
        let current = serial(workload)?;
        if current != old {
            return Ok(current);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "{} kept SVID {old} for {ROTATION_WAIT:?} after a forced rotation",
            workload.id
        );
        let _ = tokio::time::timeout(left, updates.changed()).await;
    }
}

/// Writes CRLs (DER) to `path` as PEM, atomically: what the agent's CRL export does.
fn write_crls(path: &Path, crls: &[Vec<u8>]) -> anyhow::Result<()> {
    let text: String = crls
        .iter()
        .map(|der| pem::encode(&pem::Pem::new("X509 CRL", der.clone())))
        .collect();
    write(path, text.as_bytes(), 0o644)
}

fn parse_hex(serial: &str) -> anyhow::Result<Vec<u8>> {
    enclaveid_attestor::parse_hex(serial).with_context(|| format!("{serial:?} is not a hex serial"))
}

fn short(serial: &str) -> &str {
    &serial[..serial.len().min(8)]
}
