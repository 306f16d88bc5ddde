//! The seed's ACM route: a certificate for DNS names, in the object ACM for Nitro
//! Enclaves writes to S3, served by `enclaveid host --acm-certificate-arn`, released by
//! KMS to the enclave, checked by the agent and written by a `[[files]]` block, never
//! served as an X.509-SVID.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use enclaveid_tests::kms_world::{ADMITTED_PCR0, World};
use enclaveid_tests::pca::{Issued, Profile};
use enclaveid_tests::{AgentProcess, fetch_x509, wait_for_x509svid};
use rcgen::SanType;

use super::{DAY, ca_profile, gateway_config, healthcheck, wait_for_log};

const ARN: &str =
    "arn:aws:acm:us-east-1:111122223333:certificate/0b1e6a16-7c4f-4d8e-9d3b-1e2f3a4b5c6d";
const NAME: &str = "inference.ephemeral-ml.internal";

/// A leaf for `name`, as ACM issues from the Private CA.
fn dns_leaf(world: &World, name: &str) -> Issued {
    let dns = SanType::DnsName(name.try_into().unwrap());
    world.pca.issue_for(Profile::Leaf(vec![dns]), DAY)
}

/// The gateway's kms configuration plus one `[[acm_certificate]]` expecting `expected`
/// and a `[[files]]` block writing it to `DIR/tls`.
fn acm_config(world: &World, expected: &str) -> String {
    format!(
        "{}\n[[acm_certificate]]\narn = \"{ARN}\"\ndns_names = [\"{expected}\"]\nresync_interval = \"5s\"\n[[files]]\nacm_certificate = \"{ARN}\"\ndir = \"{}\"\n",
        gateway_config(world, ADMITTED_PCR0, ""),
        tls_dir(world).display()
    )
}

fn tls_dir(world: &World) -> std::path::PathBuf {
    world.dir().join("tls")
}

/// The serial (big-endian bytes) of the first certificate of a PEM file.
fn pem_serial(path: &Path) -> Option<Vec<u8>> {
    let text = std::fs::read(path).ok()?;
    let block = pem::parse_many(&text).ok()?.into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).ok()?;
    Some(cert.serial.to_bytes_be())
}

/// Waits until `DIR/tls/svid.pem` is the certificate with `serial`.
async fn wait_for_file_serial(world: &World, agent: &AgentProcess, serial: &[u8]) {
    let path = tls_dir(world).join("svid.pem");
    let deadline = Instant::now() + Duration::from_secs(40);
    while pem_serial(&path).as_deref() != Some(serial) {
        assert!(
            Instant::now() < deadline,
            "{} never held serial {serial:02x?}; agent log:\n{}\nhost log:\n{}",
            path.display(),
            agent.stderr_text(),
            world.host_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the files hold is one whole, usable TLS identity: the key is the certificate's,
/// the bundle is the Private CA root, the key is 0600.
fn assert_files_are(world: &World, issued: &Issued) {
    let dir = tls_dir(world);
    let cert = std::fs::read(dir.join("svid.pem")).unwrap();
    let key = std::fs::read(dir.join("svid_key.pem")).unwrap();
    let bundle = std::fs::read_to_string(dir.join("svid_bundle.pem")).unwrap();
    let block = pem::parse_many(&cert).unwrap().remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(block.contents()).unwrap();
    assert_eq!(parsed.serial.to_bytes_be(), issued.serial);
    let key = enclaveid_checks::keys::SigningKey::from_pem(&key, "the written key").unwrap();
    assert_eq!(key.subject_public_key_info(), parsed.public_key().raw);
    assert_eq!(
        pem::parse_many(bundle.as_bytes()).unwrap(),
        pem::parse_many(world.pca.root_pem.as_bytes()).unwrap()
    );
    let mode = std::fs::metadata(dir.join("svid_key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A world with CA material for the SVIDs and an empty CRL, an ACM object for `NAME`,
/// and its host running; with the CA material and the ACM leaf.
async fn acm_world() -> (World, Issued, Issued) {
    let mut world = World::new().await;
    let ca = world.pca.issue_for(ca_profile(), DAY);
    world.publish(world.material(&ca), world.pca.crl(&[])).await;
    let leaf = dns_leaf(&world, NAME);
    world.publish_acm(ARN, world.material(&leaf)).await;
    world.start_host();
    (world, ca, leaf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acm_route_the_certificate_reaches_files_and_follows_renewal_and_revocation() {
    let (mut world, ca, first) = acm_world().await;
    let agent = AgentProcess::start(&acm_config(&world, NAME));

    wait_for_file_serial(&world, &agent, &first.serial).await;
    assert_files_are(&world, &first);
    // The Workload API serves the SPIFFE identity only.
    let svids = wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    for svid in &svids.svids {
        assert!(
            svid.spiffe_id.starts_with("spiffe://"),
            "{}",
            svid.spiffe_id
        );
    }
    let (healthy, said) = healthcheck(&agent);
    assert!(healthy, "{said}");

    // ACM renews in place: same ARN, same object, a new certificate.
    let renewed = dns_leaf(&world, NAME);
    world.publish_acm(ARN, world.material(&renewed)).await;
    wait_for_file_serial(&world, &agent, &renewed.serial).await;
    assert_files_are(&world, &renewed);

    // Revoked: withdrawn, health says so, and the files are not replaced by anything.
    world
        .publish(
            world.material(&ca),
            world.pca.crl(&[renewed.serial.as_slice()]),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (healthy, said) = healthcheck(&agent);
        if said.contains(&format!("ACM certificate {ARN}: withdrawn")) {
            assert!(said.contains("revoked"), "{said}");
            assert!(!healthy || said.contains("degraded"), "{said}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revocation was not reported: {said}\n{}",
            agent.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        pem_serial(&tls_dir(&world).join("svid.pem")),
        Some(renewed.serial.clone())
    );
    // The SPIFFE identity, under a CA the CRL does not list, goes on.
    fetch_x509(agent.socket()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acm_route_one_object_is_refused_as_an_svid_and_written_as_files() {
    let mut world = World::new().await;
    world.serve_material = false;
    world
        .moto
        .put_object(
            enclaveid_tests::kms_world::BUCKET,
            "crl/pca.crl",
            world.pca.crl(&[]),
        )
        .await;
    let leaf = dns_leaf(&world, NAME);
    world.publish_acm(ARN, world.material(&leaf)).await;
    // One --acm-certificate-arn and no --material: the host offers it as the key material
    // too, which the kms upstream refuses with the reason.
    world.start_host();
    let agent = AgentProcess::start(&acm_config(&world, NAME));
    wait_for_file_serial(&world, &agent, &leaf.serial).await;
    assert_files_are(&world, &leaf);
    let log = wait_for_log(&agent, "key material sync failed", Duration::from_secs(30)).await;
    assert!(
        log.contains("ACM puts only DNS names") && log.contains(NAME),
        "{log}"
    );
    let status = fetch_x509(agent.socket()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acm_route_a_certificate_without_the_expected_name_is_refused() {
    let (world, _, _) = acm_world().await;
    let expected = "gateway.ephemeral-ml.internal";
    let agent = AgentProcess::start(&acm_config(&world, expected));
    let log = wait_for_log(
        &agent,
        "ACM certificate sync failed",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        log.contains(&format!("not valid for {expected:?}")) && log.contains(NAME),
        "{log}"
    );
    let (_, said) = healthcheck(&agent);
    assert!(
        said.contains(&format!("ACM certificate {ARN}: not released")),
        "{said}"
    );
    assert!(
        !tls_dir(&world).join("svid.pem").exists(),
        "nothing written"
    );
    // The SPIFFE identities are not held back by it.
    wait_for_x509svid(&agent, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acm_route_nginx_serves_the_acm_certificate_by_name_and_follows_renewal() {
    let (mut world, _, first) = acm_world().await;
    let nginx_dir = world.dir().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    // The agent signals nginx after each write, as it would in the enclave.
    let config = acm_config(&world, NAME)
        + &format!(
            "pid_file = \"{}/nginx.pid\"\nrenew_signal = \"HUP\"\n",
            nginx_dir.display()
        );
    let agent = AgentProcess::start(&config);
    wait_for_file_serial(&world, &agent, &first.serial).await;
    let nginx = enclaveid_tests::nginx::Nginx::start(&nginx_dir, &tls_dir(&world), None);

    // A standard TLS client: the name checked against the Private CA root, no SPIFFE.
    let root = world.dir().join("pca-root.pem");
    let fetch = || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "--resolve"])
            .arg(format!("{NAME}:{}:127.0.0.1", nginx.port))
            .arg("--cacert")
            .arg(&root)
            .arg(format!("https://{NAME}:{}/", nginx.port))
            .output()
            .unwrap()
    };
    let out = fetch();
    assert!(
        out.status.success() && out.stdout == b"served\n",
        "{}\nnginx: {}",
        String::from_utf8_lossy(&out.stderr),
        nginx.error_log()
    );
    let hex = |serial: &[u8]| enclaveid_attestor::hex(serial).to_uppercase();
    assert_eq!(
        nginx.served_serial(),
        format!("serial={}", hex(&first.serial))
    );

    // ACM renews: the agent writes the new certificate and signals nginx, which serves it.
    let renewed = dns_leaf(&world, NAME);
    world.publish_acm(ARN, world.material(&renewed)).await;
    wait_for_file_serial(&world, &agent, &renewed.serial).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while nginx.served_serial() != format!("serial={}", hex(&renewed.serial)) {
        assert!(
            Instant::now() < deadline,
            "nginx still serves {}; log: {}",
            nginx.served_serial(),
            nginx.error_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(fetch().status.success(), "{}", nginx.error_log());
}
