//! `--require-pcr0`: the gateway accepts the inference service only when its SVID carries
//! a bound attestation document of an enclave with an accepted PCR0, checked in the
//! handshake (`cargo test --workspace -- attested_svid`). Two agents under one CA play
//! the two enclaves; the inference agent's entry is `attested = true`, its fake attestor
//! signing under a root the gateway pins (`--attestation-root` in the binary).

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use enclaveid_agent::peer_tls::Attestation;
use enclaveid_attestor::{FakeAttestor, FakeConfig, Verifier, hex};
use enclaveid_fakes::pca::TestPca;
use enclaveid_io::Address;
use mesh::gateway::Gateway;
use mesh::tls::{self, CrlFiles, Trust};
use tokio_util::sync::CancellationToken;

const GATEWAY: &str = "spiffe://example.org/gateway";
const INFERENCE: &str = "spiffe://example.org/inference";
const PCR0: [u8; 48] = [0x1f; 48];

/// An agent in `dir` under the CA files there, serving `id` to this uid, its entry
/// attested or not, its fake enclave in debug mode or not; its socket.
async fn agent(
    dir: &Path,
    id: &str,
    attested: bool,
    debug: bool,
    stop: &CancellationToken,
) -> String {
    let name = id.rsplit('/').next().unwrap();
    let socket = dir.join(format!("{name}.sock"));
    let uid = std::fs::metadata(dir).unwrap().uid();
    let config = format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{socket}\"\n\
         [upstream]\nkind = \"dev\"\ncert_path = \"{d}/ca.pem\"\nkey_path = \"{d}/ca.key\"\nbundle_path = \"{d}/root.pem\"\n\
         [attestor]\nkind = \"fake\"\nallow_debug = {debug}\ndebug = {debug}\n\
         root_cert_path = \"{d}/attestation-root.pem\"\nroot_key_path = \"{d}/attestation-root.key\"\n\
         pcrs = {{ 0 = \"{pcr0}\" }}\n\
         [[entry]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{uid}\"]\nattested = {attested}\n",
        socket = socket.display(),
        d = dir.display(),
        pcr0 = hex(&PCR0),
    );
    let config = enclaveid_agent::Config::from_toml(&config, "test").unwrap();
    let agent = enclaveid_agent::Agent::start(config).unwrap();
    tokio::time::timeout(Duration::from_secs(20), agent.ready())
        .await
        .expect("the agent's SVID is minted");
    let stop = stop.clone();
    tokio::spawn(agent.serve(async move { stop.cancelled().await }));
    format!("unix://{}", socket.display())
}

async fn serve(trust: Trust) -> Address {
    super::dns::serve(trust).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_svid_mesh_gateway_requires_the_inference_pcr0_in_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let root = TestPca::new("mesh attested root");
    let (_ca, sub) = root.subordinate("spiffe://example.org", Duration::from_secs(86_400));
    std::fs::write(dir.path().join("ca.pem"), &sub.cert_pem).unwrap();
    std::fs::write(dir.path().join("ca.key"), &sub.key_pem).unwrap();
    std::fs::write(dir.path().join("root.pem"), &root.root_pem).unwrap();
    let fake = FakeAttestor::new(FakeConfig::default()).unwrap().root();
    std::fs::write(dir.path().join("attestation-root.pem"), &fake.cert_pem).unwrap();
    std::fs::write(dir.path().join("attestation-root.key"), &fake.key_pem).unwrap();
    let pinned = Verifier::with_root_der(&pem::parse(&fake.cert_pem).unwrap().into_contents());
    let stop = CancellationToken::new();

    let inference_socket = agent(dir.path(), INFERENCE, true, false, &stop).await;
    let gateway_socket = agent(dir.path(), GATEWAY, false, false, &stop).await;
    let inference = Trust::Spiffe {
        source: tls::source(&inference_socket).await.unwrap(),
        allow: vec![GATEWAY.into()],
        attestation: None,
    };
    let address = serve(inference).await;
    let gateway_source = tls::source(&gateway_socket).await.unwrap();
    let gateway = |pcr0s: Vec<Vec<u8>>| {
        Gateway::with_trust(
            Trust::Spiffe {
                source: gateway_source.clone(),
                allow: vec![INFERENCE.into()],
                attestation: Some(Attestation::with_verifier(pcr0s, pinned.clone())),
            },
            address.clone(),
            CrlFiles::default(),
        )
        .unwrap()
    };

    // The inference enclave's PCR0 among the accepted ones: served.
    let reply = gateway(vec![vec![0; 48], PCR0.to_vec()])
        .send_once("hello")
        .await
        .unwrap();
    assert_eq!(reply.peer_id, INFERENCE);
    assert_eq!(reply.response.client, GATEWAY);

    // Another image's PCR0 only: refused in the handshake, nothing answered.
    let error = gateway(vec![vec![0x2e; 48]])
        .send_once("hello")
        .await
        .unwrap_err();
    let error = enclaveid_checks::Chain(&error).to_string();
    assert!(error.contains("PCR0 mismatch"), "{error}");

    // The gateway's own SVID is plain: an inference service requiring attestation of its
    // clients refuses it before reading a byte.
    let strict = Trust::Spiffe {
        source: tls::source(&inference_socket).await.unwrap(),
        allow: vec![GATEWAY.into()],
        attestation: Some(Attestation::with_verifier(
            vec![PCR0.to_vec()],
            pinned.clone(),
        )),
    };
    let strict_address = serve(strict).await;
    let plain_client = Gateway::with_trust(
        Trust::Spiffe {
            source: gateway_source.clone(),
            allow: vec![INFERENCE.into()],
            attestation: None,
        },
        strict_address,
        CrlFiles::default(),
    )
    .unwrap();
    assert!(plain_client.send_once("hello").await.is_err());

    // A debug-mode enclave (whose memory the parent can read) is refused even with its
    // PCR0 (all zeros in debug mode) in the list.
    let debug_dir = tempfile::tempdir().unwrap();
    for file in [
        "ca.pem",
        "ca.key",
        "root.pem",
        "attestation-root.pem",
        "attestation-root.key",
    ] {
        std::fs::copy(dir.path().join(file), debug_dir.path().join(file)).unwrap();
    }
    let debug_socket = agent(debug_dir.path(), INFERENCE, true, true, &stop).await;
    let debug_address = serve(Trust::Spiffe {
        source: tls::source(&debug_socket).await.unwrap(),
        allow: vec![GATEWAY.into()],
        attestation: None,
    })
    .await;
    let to_debug = Gateway::with_trust(
        Trust::Spiffe {
            source: gateway_source.clone(),
            allow: vec![INFERENCE.into()],
            attestation: Some(Attestation::with_verifier(
                vec![vec![0; 48], PCR0.to_vec()],
                pinned.clone(),
            )),
        },
        debug_address,
        CrlFiles::default(),
    )
    .unwrap();
    let error =
        enclaveid_checks::Chain(&to_debug.send_once("hello").await.unwrap_err()).to_string();
    assert!(error.contains("debug mode"), "{error}");
    stop.cancel();
}
