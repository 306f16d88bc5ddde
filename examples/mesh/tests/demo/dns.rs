//! `--verify dns:NAME`: the seed's design, peers verified by DNS name against the Private
//! CA root, each service presenting the ACM certificate the agent writes to files. The
//! files are laid out as the agent's `[[files]]` writes them (a generation directory and
//! the `current` symlink); the agent's side is tested in `tests/tests/kms_e2e/acm.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use enclaveid_fakes::pca::{Issued, Profile, TestPca};
use enclaveid_io::{Address, AddressExt as _};
use mesh::dns::{self, CertFiles};
use mesh::gateway::Gateway;
use mesh::inference::Inference;
use mesh::tls::{CrlFiles, Trust};
use rcgen::SanType;
use tokio_util::sync::CancellationToken;

const GATEWAY: &str = "gateway.ephemeral-ml.internal";
const INFERENCE: &str = "inference.ephemeral-ml.internal";

fn leaf(pca: &TestPca, name: &str) -> Issued {
    pca.issue_for(
        Profile::Leaf(vec![SanType::DnsName(name.try_into().unwrap())]),
        Duration::from_secs(86_400),
    )
}

/// Writes generation `n` of `issued` into `dir` as the agent does, and makes it current.
fn write_generation(dir: &Path, n: u32, issued: &Issued, root_pem: &str) {
    let name = format!(".enclaveid-gen-test-{n}");
    let generation = dir.join(&name);
    std::fs::create_dir_all(&generation).unwrap();
    std::fs::write(generation.join("svid.pem"), &issued.cert_pem).unwrap();
    std::fs::write(generation.join("svid_key.pem"), &issued.key_pem).unwrap();
    std::fs::write(generation.join("svid_bundle.pem"), root_pem).unwrap();
    let staged = dir.join(".enclaveid-gen-current-test");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(&name, &staged).unwrap();
    std::fs::rename(&staged, dir.join("current")).unwrap();
}

struct Side {
    dir: PathBuf,
    files: CertFiles,
}

fn side(root: &Path, label: &str, pca: &TestPca, name: &str) -> Side {
    let dir = root.join(label);
    write_generation(&dir, 1, &leaf(pca, name), &pca.root_pem);
    Side {
        files: CertFiles::new(&dir),
        dir,
    }
}

fn trust(side: &Side, peer: &str) -> Trust {
    Trust::Dns {
        files: side.files.clone(),
        peer: dns::parse_verify(&format!("dns:{peer}")).unwrap(),
    }
}

/// The inference service with `trust` on a free port; its address and its stop token.
pub(super) async fn serve(trust: Trust) -> (Address, CancellationToken) {
    let listener = "tcp://127.0.0.1:0"
        .parse::<Address>()
        .unwrap()
        .bind()
        .await
        .unwrap();
    let address = listener.local_address().unwrap();
    let server =
        Inference::with_trust(trust, CrlFiles::default(), b"model key".to_vec().into()).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(listener, stop.clone()));
    (address, stop)
}

#[tokio::test]
async fn acm_route_mesh_verifies_peers_by_dns_name_and_follows_renewal() {
    let root = tempfile::tempdir().unwrap();
    let pca = TestPca::new("Private CA root");
    let gateway_side = side(root.path(), "gateway", &pca, GATEWAY);
    let inference_side = side(root.path(), "inference", &pca, INFERENCE);
    let (address, stop) = serve(trust(&inference_side, GATEWAY)).await;

    let gateway = Gateway::with_trust(
        trust(&gateway_side, INFERENCE),
        address.clone(),
        CrlFiles::default(),
    )
    .unwrap();
    let reply = gateway.send_once("hello").await.unwrap();
    assert_eq!(reply.peer_id, format!("dns:{INFERENCE}"));
    assert_eq!(reply.response.client, format!("dns:{GATEWAY}"));
    assert_eq!(reply.response.served_by, format!("dns:{INFERENCE}"));

    // ACM renewed the inference certificate: the next full handshake presents it (a new
    // client, so that no session is resumed).
    let renewed = leaf(&pca, INFERENCE);
    write_generation(&inference_side.dir, 2, &renewed, &pca.root_pem);
    let gateway = Gateway::with_trust(
        trust(&gateway_side, INFERENCE),
        address.clone(),
        CrlFiles::default(),
    )
    .unwrap();
    let reply = gateway.send_once("again").await.unwrap();
    assert_eq!(reply.peer_serial, enclaveid_attestor::hex(&renewed.serial));

    // A gateway that expects another name refuses the server in the handshake.
    let wrong_name = Gateway::with_trust(
        trust(&gateway_side, "other.ephemeral-ml.internal"),
        address.clone(),
        CrlFiles::default(),
    )
    .unwrap();
    let error = wrong_name.send_once("x").await.unwrap_err().to_string();
    assert!(
        error.contains("certificate not valid for name \"other.ephemeral-ml.internal\""),
        "{error}"
    );

    // A client of the same CA under another name: refused before its request is read.
    let intruder = side(
        root.path(),
        "intruder",
        &pca,
        "intruder.ephemeral-ml.internal",
    );
    let gateway = Gateway::with_trust(
        trust(&intruder, INFERENCE),
        address.clone(),
        CrlFiles::default(),
    )
    .unwrap();
    let error = gateway.send_once("x").await.unwrap_err().to_string();
    assert!(error.contains("closed the connection"), "{error}");

    // A client of another CA: refused in the handshake.
    let other_pca = TestPca::new("another root");
    let outsider = side(root.path(), "outsider", &other_pca, GATEWAY);
    let outsider_trust = Trust::Dns {
        files: outsider.files.clone(),
        peer: dns::parse_verify(&format!("dns:{INFERENCE}")).unwrap(),
    };
    // It trusts the real root, so that only the server's refusal is tested.
    std::fs::write(
        outsider.dir.join("current").join("svid_bundle.pem"),
        format!("{}{}", pca.root_pem, other_pca.root_pem),
    )
    .unwrap();
    let gateway = Gateway::with_trust(outsider_trust, address, CrlFiles::default()).unwrap();
    assert!(gateway.send_once("x").await.is_err());
    stop.cancel();
}

#[test]
fn acm_route_mesh_verify_takes_dns_names_only() {
    for bad in [
        "spiffe://example.org/inference",
        "dns:",
        "dns:bad name",
        "inference",
    ] {
        let error = dns::parse_verify(bad).unwrap_err().to_string();
        assert!(error.contains("accepted: dns:NAME"), "{bad}: {error}");
    }
}

#[tokio::test]
async fn acm_route_mesh_binary_runs_both_services_by_dns_name() {
    let root = tempfile::tempdir().unwrap();
    let pca = TestPca::new("Private CA root");
    let gateway_side = side(root.path(), "gateway", &pca, GATEWAY);
    let inference_side = side(root.path(), "inference", &pca, INFERENCE);
    let key = root.path().join("model.key");
    std::fs::write(&key, b"model key").unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["inference", "--listen", &format!("tcp://127.0.0.1:{port}")])
        .args(["--verify", &format!("dns:{GATEWAY}"), "--cert-dir"])
        .arg(&inference_side.dir)
        .arg("--model-key")
        .arg(&key)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mesh inference did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["gateway", "--connect", &format!("tcp://127.0.0.1:{port}")])
        .args(["--verify", &format!("dns:{INFERENCE}"), "--cert-dir"])
        .arg(&gateway_side.dir)
        .arg("hello")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("dns:{INFERENCE} answered \"hello\""))
            && stdout.contains(&format!("(it saw us as dns:{GATEWAY})")),
        "{stdout}"
    );
}
