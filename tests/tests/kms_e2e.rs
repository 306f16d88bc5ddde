//! End to end, the `kms` upstream: fake KMS + moto S3 + `enclaveid host` + `enclaveid run`
//! with `upstream.kind = "kms"` and the fake attestor. A workload gets an SVID chaining to
//! the test Private CA root; every failure ends in a clear error or a degraded state, never
//! a served bad identity.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use enclaveid_tests::kms_world::{ADMITTED_PCR0, World};
use enclaveid_tests::pca::{Profile, TestPca};
use enclaveid_tests::{AgentProcess, enclaveid_bin, fetch_x509, wait_for_x509svid};
use enclaveid_workload_api::proto::X509svidResponse;
use rcgen::SanType;

const GATEWAY: &str = "spiffe://example.org/gateway";
const DAY: Duration = Duration::from_secs(86_400);

fn ca_profile() -> Profile<'static> {
    Profile::Ca {
        trust_domain_uri: "spiffe://example.org",
    }
}

/// Polls until the agent's log contains `text`.
async fn wait_for_log(agent: &AgentProcess, text: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = agent.stderr_text();
        if log.contains(text) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} not logged within {within:?}; agent log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `enclaveid healthcheck`: (exit success, what it printed).
fn healthcheck(agent: &AgentProcess) -> (bool, String) {
    let output = std::process::Command::new(enclaveid_bin())
        .args(["healthcheck", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The material is refused: the log says `why`, no SVID is served, health says why.
async fn assert_refused(world: &World, agent: &AgentProcess, why: &str) {
    let log = wait_for_log(agent, "key material sync failed", Duration::from_secs(30)).await;
    assert!(
        log.contains(why),
        "{why:?} not in the agent log:\n{log}\nhost log:\n{}",
        world.host_log()
    );
    let status = fetch_x509(agent.socket()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let (healthy, said) = healthcheck(agent);
    assert!(!healthy, "{said}");
    assert!(
        said.contains("no valid key material") && said.contains(why),
        "{said}"
    );
}

fn gateway_config(world: &World, pcr0: u8, extra_attestor: &str) -> String {
    world.agent_config(pcr0, &[(GATEWAY, "1h")], extra_attestor)
}

/// A world whose S3 holds what `make` returns (material JSON, CRL), its host running, and
/// an agent for an enclave with PCR0 `pcr0` (`extra_attestor` added to `[attestor]`).
async fn start(
    pcr0: u8,
    extra_attestor: &str,
    make: impl FnOnce(&World) -> (Vec<u8>, Vec<u8>),
) -> (World, AgentProcess) {
    let mut world = World::new().await;
    let (material, crl) = make(&world);
    world.publish(material, crl).await;
    world.start_host();
    let agent = AgentProcess::start(&gateway_config(&world, pcr0, extra_attestor));
    (world, agent)
}

/// [`start`] with CA material for the trust domain, valid a day, and an empty CRL.
async fn start_with_ca(pcr0: u8, extra_attestor: &str) -> (World, AgentProcess) {
    start(pcr0, extra_attestor, |world| {
        let ca = world.pca.issue_for(ca_profile(), DAY);
        (world.material(&ca), world.pca.crl(&[]))
    })
    .await
}

/// Checks that the SVID chains to `root_pem` with webpki, as a TLS peer would.
fn assert_chains_to(response: &X509svidResponse, root_pem: &str) {
    let svid = &response.svids[0];
    let certs: Vec<Vec<u8>> = {
        let mut rest = &svid.x509_svid[..];
        let mut certs = Vec::new();
        while !rest.is_empty() {
            let (after, _) = x509_parser::parse_x509_certificate(rest).unwrap();
            certs.push(rest[..rest.len() - after.len()].to_vec());
            rest = after;
        }
        certs
    };
    let root = pem::parse(root_pem).unwrap().into_contents();
    let root = rustls_pki_types::CertificateDer::from(root);
    let anchors = [webpki::anchor_from_trusted_cert(&root).unwrap().to_owned()];
    let leaf = rustls_pki_types::CertificateDer::from(certs[0].clone());
    let intermediates: Vec<_> = certs[1..]
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.clone()))
        .collect();
    webpki::EndEntityCert::try_from(&leaf)
        .unwrap()
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .expect("the SVID chains to the Private CA root");
    assert_eq!(svid.bundle, *root, "the bundle is the Private CA root");
}

fn second_cert_serial(response: &X509svidResponse) -> Vec<u8> {
    let (rest, _) = x509_parser::parse_x509_certificate(&response.svids[0].x509_svid).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(rest).unwrap();
    ca.serial.to_bytes_be()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_e2e_a_workload_gets_an_svid_chaining_to_the_private_ca_root() {
    let mut serial = Vec::new();
    let (world, agent) = start(ADMITTED_PCR0, "", |world| {
        let ca = world.pca.issue_for(ca_profile(), DAY);
        serial.clone_from(&ca.serial);
        (world.material(&ca), world.pca.crl(&[]))
    })
    .await;

    let response = wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    assert_eq!(response.svids[0].spiffe_id, GATEWAY);
    assert_chains_to(&response, &world.pca.root_pem);
    // Without JWT key material from the host the agent signs no JWT-SVID, rather than
    // with a key of its own that other enclaves would not know.
    let status = fetch_jwt(&agent, "a").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no JWT-SVID signing key"),
        "{status:?}"
    );
    assert_eq!(
        second_cert_serial(&response),
        serial,
        "the SVID carries the released CA certificate"
    );
    let (healthy, said) = healthcheck(&agent);
    assert!(healthy && said.contains("healthy"), "{said}");

    let log = agent.stderr_text();
    assert!(
        log.contains("key material released by KMS and checked"),
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "no key in the agent's logs");
    let host_log = world.host_log();
    assert!(host_log.contains("tunnel open"), "{host_log}");
    assert!(
        !host_log.contains("PRIVATE KEY"),
        "no key in the host's logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_leaf_material_with_a_spiffe_uri_is_served_as_the_svid() {
    let mut leaf_pem = String::new();
    let (world, agent) = start(ADMITTED_PCR0, "", |world| {
        let uri = SanType::URI(GATEWAY.try_into().unwrap());
        let leaf = world.pca.issue_for(Profile::Leaf(vec![uri]), DAY);
        leaf_pem.clone_from(&leaf.cert_pem);
        (world.material(&leaf), world.pca.crl(&[]))
    })
    .await;

    let response = wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    assert_eq!(response.svids[0].spiffe_id, GATEWAY);
    assert_chains_to(&response, &world.pca.root_pem);
    assert_eq!(
        response.svids[0].x509_svid,
        pem::parse(&leaf_pem).unwrap().contents(),
        "the Private CA's own certificate is the SVID (no intermediates, no root)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_refuses_pcrs_the_key_policy_does_not_allow_and_names_them() {
    let (world, agent) = start_with_ca(0xb2, "").await;
    assert_refused(&world, &agent, "AccessDeniedException").await;
    let log = agent.stderr_text();
    assert!(
        log.contains(&format!(
            "this enclave's measurements, to compare with the key policy's kms:RecipientAttestation conditions: ImageSha384 (PCR0) = {}",
            enclaveid_attestor::hex(&[0xb2; 48])
        )),
        "the enclave's PCR0 is shown next to the refusal: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_refuses_a_debug_mode_enclave() {
    // The agent is told to accept its own debug-mode document; KMS still refuses it.
    let (world, agent) = start_with_ca(ADMITTED_PCR0, "debug = true\nallow_debug = true").await;
    assert_refused(&world, &agent, "AccessDeniedException").await;
    assert!(
        agent
            .stderr_text()
            .contains(&enclaveid_attestor::hex(&[0; 48]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_refuses_a_tampered_ciphertext() {
    let (world, agent) = start(ADMITTED_PCR0, "", |world| {
        let ca = world.pca.issue_for(ca_profile(), DAY);
        let mut blob = world
            .kms
            .encrypt_to_blob(&world.key_arn, ca.key_pem.as_bytes());
        let last = blob.len() - 1;
        blob[last] ^= 0x01;
        let material = enclaveid_checks::material::KeyMaterial::new(
            ca.cert_pem.clone(),
            world.pca.root_pem.clone(),
            &blob,
        );
        (material.to_json(), world.pca.crl(&[]))
    })
    .await;
    assert_refused(&world, &agent, "InvalidCiphertextException").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_refuses_a_certificate_from_another_ca() {
    let (world, agent) = start(ADMITTED_PCR0, "", |world| {
        let ca = TestPca::new("Some other CA").issue_for(ca_profile(), DAY);
        (world.material(&ca), world.pca.crl(&[]))
    })
    .await;
    assert_refused(&world, &agent, "does not chain to the Private CA root").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_refuses_a_revoked_certificate() {
    let (world, agent) = start(ADMITTED_PCR0, "", |world| {
        let ca = world.pca.issue_for(ca_profile(), DAY);
        (world.material(&ca), world.pca.crl(&[&ca.serial]))
    })
    .await;
    assert_refused(&world, &agent, "is revoked since").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_revocation_of_the_served_material_withdraws_every_svid_at_once() {
    let mut ca = None;
    let (world, agent) = start(ADMITTED_PCR0, "", |world| {
        let issued = world.pca.issue_for(ca_profile(), DAY);
        let material = world.material(&issued);
        ca = Some(issued);
        (material, world.pca.crl(&[]))
    })
    .await;
    wait_for_x509svid(&agent, Duration::from_secs(30)).await;

    let ca = ca.unwrap();
    world
        .publish(world.material(&ca), world.pca.crl(&[&ca.serial]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match fetch_x509(agent.socket()).await {
            Err(status) => break status,
            Ok(_) => assert!(Instant::now() < deadline, "still served after revocation"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let (healthy, said) = healthcheck(&agent);
    assert!(!healthy && said.contains("is revoked since"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_refuses_an_expired_certificate() {
    let (world, agent) = start(ADMITTED_PCR0, "", |world| {
        let now = SystemTime::now();
        let ca = world.pca.issue(ca_profile(), now - 2 * DAY, now - DAY);
        (world.material(&ca), world.pca.crl(&[]))
    })
    .await;
    assert_refused(&world, &agent, "expired at").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_refuses_a_key_that_is_not_the_certificates() {
    let (world, agent) = start(ADMITTED_PCR0, "", |world| {
        let ca = world.pca.issue_for(ca_profile(), DAY);
        let other = world.pca.issue_for(ca_profile(), DAY);
        let material = world.material_with_key(&ca, other.key_pem.as_bytes());
        (material, world.pca.crl(&[]))
    })
    .await;
    assert_refused(&world, &agent, "does not belong to the certificate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_refuses_a_dns_only_leaf_as_acm_issues_and_says_why() {
    let (world, agent) = start(ADMITTED_PCR0, "", |world| {
        let dns = SanType::DnsName("gateway.example.com".try_into().unwrap());
        let leaf = world.pca.issue_for(Profile::Leaf(vec![dns]), DAY);
        (world.material(&leaf), world.pca.crl(&[]))
    })
    .await;
    assert_refused(&world, &agent, "ACM puts only DNS names").await;
    let log = agent.stderr_text();
    assert!(
        log.contains("gateway.example.com") && log.contains("Private CA route"),
        "{log}"
    );
}

/// A hostile host: answers each connection with `answer`, whatever was asked.
async fn hostile_host(socket: &Path, answer: Vec<u8>) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut request = [0u8; 9];
                let _ = stream.read_exact(&mut request).await;
                let _ = stream.write_all(&answer).await;
                // Then hang, as a host that never finishes would.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_survives_a_host_answering_garbage_or_100_mib() {
    let world = World::new().await;
    for (answer, why) in [
        (
            [&[0u8][..], &(100u32 << 20).to_be_bytes()].concat(),
            "104857600 bytes announced; the limit is",
        ),
        (b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), "status byte 72"),
    ] {
        let _ = std::fs::remove_file(world.host_socket());
        let host = hostile_host(&world.host_socket(), answer).await;
        let agent = AgentProcess::start(&gateway_config(&world, ADMITTED_PCR0, ""));
        assert_refused(&world, &agent, why).await;
        // Still up and answering.
        let (_, said) = healthcheck(&agent);
        assert!(said.contains("not serving"), "{said}");
        host.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_host_down_keeps_serving_until_expiry_then_nothing() {
    let mut not_after = None;
    let (mut world, agent) = start(ADMITTED_PCR0, "", |world| {
        // The CA expires soon: SVIDs never outlive it. Counted from here, once moto is
        // up, so that a slow start-up does not eat the window.
        let now = SystemTime::now();
        let soon = now + Duration::from_secs(35);
        not_after = Some(soon);
        let ca = world
            .pca
            .issue(ca_profile(), now - Duration::from_secs(60), soon);
        (world.material(&ca), world.pca.crl(&[]))
    })
    .await;
    let not_after = not_after.expect("the CA was made");
    let first = wait_for_x509svid(&agent, Duration::from_secs(20)).await;
    world.stop_host();

    wait_for_log(&agent, "key material sync failed", Duration::from_secs(20)).await;
    let still = fetch_x509(agent.socket())
        .await
        .expect("the cached SVID is still served");
    assert_eq!(still.svids[0].spiffe_id, first.svids[0].spiffe_id);
    let (healthy, said) = healthcheck(&agent);
    assert!(healthy && said.contains("degraded"), "{said}");

    // After the CA's notAfter nothing is served.
    let expiry = not_after + Duration::from_secs(2);
    if let Ok(wait) = expiry.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fetch_x509(agent.socket()).await {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
                break;
            }
            Ok(response) => {
                assert!(Instant::now() < deadline, "still served after expiry");
                for svid in &response.svids {
                    let (_, cert) = x509_parser::parse_x509_certificate(&svid.x509_svid).unwrap();
                    assert!(cert.validity().is_valid(), "an expired SVID was served");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (healthy, said) = healthcheck(&agent);
    assert!(!healthy && said.contains("not serving"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_down_then_back_recovers_without_restart() {
    let mut world = World::new().await;
    let ca = world.pca.issue_for(ca_profile(), DAY);
    world.publish(world.material(&ca), world.pca.crl(&[])).await;
    world.start_host();
    world.stop_kms().await;
    let agent = AgentProcess::start(&gateway_config(&world, ADMITTED_PCR0, ""));
    assert_refused(&world, &agent, "Connection refused").await;

    world.start_kms().await;
    let response = wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    assert_chains_to(&response, &world.pca.root_pem);
    let (healthy, said) = healthcheck(&agent);
    assert!(healthy && said.contains("healthy"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_resync_picks_up_a_new_certificate_without_restart() {
    let mut first_serial = Vec::new();
    let (world, agent) = start(ADMITTED_PCR0, "", |world| {
        let ca = world.pca.issue_for(ca_profile(), DAY);
        first_serial.clone_from(&ca.serial);
        (world.material(&ca), world.pca.crl(&[]))
    })
    .await;
    let first = wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    assert_eq!(second_cert_serial(&first), first_serial);

    let second_ca = world.pca.issue_for(ca_profile(), DAY);
    world
        .publish(world.material(&second_ca), world.pca.crl(&[]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = fetch_x509(agent.socket()).await.unwrap();
        if second_cert_serial(&response) == second_ca.serial {
            assert_chains_to(&response, &world.pca.root_pem);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new CA was not picked up:\n{}",
            agent.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_exports_each_checked_crl_for_workloads() {
    let mut world = World::new().await;
    let ca = world.pca.issue_for(ca_profile(), DAY);
    let first = world.pca.crl(&[&[1, 2, 3]]);
    world.publish(world.material(&ca), first.clone()).await;
    world.start_host();
    let export = world.dir().join("export/crl.pem");
    std::fs::create_dir(export.parent().unwrap()).unwrap();
    let config = gateway_config(&world, ADMITTED_PCR0, "").replace(
        "resync_interval = \"5s\"",
        &format!(
            "resync_interval = \"5s\"\ncrl_export_path = \"{}\"",
            export.display()
        ),
    );
    let agent = AgentProcess::start(&config);
    wait_for_x509svid(&agent, Duration::from_secs(30)).await;

    let exported = |export: &Path| {
        let text = std::fs::read(export).ok()?;
        Some(pem::parse(text).unwrap().into_contents())
    };
    assert_eq!(
        exported(&export).as_deref(),
        Some(&first[..]),
        "the CRL the agent checked"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&export).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "workloads under other uids read it");

    // A new CRL, revoking the material itself: workloads get it at the next sync too.
    let second = world.pca.crl(&[&ca.serial]);
    world.publish(world.material(&ca), second.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while exported(&export).as_deref() != Some(&second[..]) {
        assert!(Instant::now() < deadline, "the new CRL was not exported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leftovers: Vec<_> = std::fs::read_dir(export.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["crl.pem"], "no temporary file left behind");
}

/// The JWT key's certificate: an end-entity certificate whose only URI SAN is the
/// trust-domain ID.
fn jwt_profile() -> Profile<'static> {
    Profile::Leaf(vec![SanType::URI(
        "spiffe://example.org".try_into().unwrap(),
    )])
}

async fn fetch_jwt(agent: &AgentProcess, audience: &str) -> Result<String, tonic::Status> {
    enclaveid_tests::raw_client(agent.socket())
        .await
        .fetch_jwtsvid(enclaveid_tests::with_header(
            enclaveid_workload_api::proto::JwtsvidRequest {
                audience: vec![audience.into()],
                spiffe_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner().svids.remove(0).svid)
}

async fn validate_jwt(
    agent: &AgentProcess,
    audience: &str,
    token: &str,
) -> Result<String, tonic::Status> {
    enclaveid_tests::raw_client(agent.socket())
        .await
        .validate_jwtsvid(enclaveid_tests::with_header(
            enclaveid_workload_api::proto::ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: token.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().spiffe_id)
}

async fn wait_for_jwt(agent: &AgentProcess) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match fetch_jwt(agent, "aud").await {
            Ok(token) => return token,
            Err(status) => assert!(
                Instant::now() < deadline,
                "no JWT-SVID: {status:?}\n{}",
                agent.stderr_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_jwt_key_signs_tokens_that_validate_in_every_enclave() {
    let mut world = World::new().await;
    let ca = world.pca.issue_for(ca_profile(), DAY);
    world.publish(world.material(&ca), world.pca.crl(&[])).await;
    let jwt = world.pca.issue_for(jwt_profile(), DAY);
    world.publish_jwt(world.material(&jwt)).await;
    world.start_host();
    let first = AgentProcess::start(&gateway_config(&world, ADMITTED_PCR0, ""));
    let second = AgentProcess::start(&gateway_config(&world, ADMITTED_PCR0, ""));

    let token = wait_for_jwt(&first).await;
    let other = wait_for_jwt(&second).await;
    // The same key in both enclaves, named alike: one enclave's token validates in the other.
    let kid = |t: &str| {
        let header = t.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .unwrap(),
        )
        .unwrap();
        header["kid"].as_str().unwrap().to_owned()
    };
    assert_eq!(kid(&token), kid(&other));
    assert_eq!(validate_jwt(&second, "aud", &token).await.unwrap(), GATEWAY);
    assert_eq!(validate_jwt(&first, "aud", &other).await.unwrap(), GATEWAY);

    // The JWKS holds exactly the certified key, and a JOSE library agrees.
    let client = spiffe::workload_api::WorkloadApiClient::connect_to(first.endpoint())
        .await
        .unwrap();
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let authorities: Vec<_> = bundles
        .get(&td)
        .unwrap()
        .jwt_authorities()
        .map(|a| a.key_id().to_owned())
        .collect();
    assert_eq!(authorities, [kid(&token)]);
    spiffe::JwtSvid::parse_and_validate(&token, &bundles, &["aud"]).unwrap();
    assert!(
        !first.stderr_text().contains("PRIVATE KEY"),
        "no key in the agent's logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_jwt_key_from_another_ca_is_refused_and_x509_goes_on() {
    let mut world = World::new().await;
    let ca = world.pca.issue_for(ca_profile(), DAY);
    world.publish(world.material(&ca), world.pca.crl(&[])).await;
    // A hostile host slips in a JWT key certified by a CA the enclave does not trust.
    let foreign = TestPca::new("hostile CA");
    let jwt = foreign.issue_for(jwt_profile(), DAY);
    let material = enclaveid_checks::material::KeyMaterial::new(
        jwt.cert_pem.clone(),
        foreign.root_pem.clone(),
        &world
            .kms
            .encrypt_to_blob(&world.key_arn, jwt.key_pem.as_bytes()),
    )
    .to_json();
    world.publish_jwt(material).await;
    world.start_host();
    let agent = AgentProcess::start(&gateway_config(&world, ADMITTED_PCR0, ""));

    wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    let log = wait_for_log(&agent, "JWT signing key refused", Duration::from_secs(30)).await;
    assert!(
        log.contains("does not chain to the Private CA root"),
        "{log}"
    );
    let status = fetch_jwt(&agent, "aud").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let (healthy, said) = healthcheck(&agent);
    assert!(
        healthy && said.contains("JWT signing key refused"),
        "{said}"
    );
    // And material that is a JWT key is not taken for the CA.
    assert!(!log.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_revoked_jwt_key_leaves_the_jwks_at_once() {
    let mut world = World::new().await;
    let ca = world.pca.issue_for(ca_profile(), DAY);
    world.publish(world.material(&ca), world.pca.crl(&[])).await;
    let jwt = world.pca.issue_for(jwt_profile(), DAY);
    world.publish_jwt(world.material(&jwt)).await;
    world.start_host();
    let agent = AgentProcess::start(&gateway_config(&world, ADMITTED_PCR0, ""));
    let token = wait_for_jwt(&agent).await;
    assert_eq!(validate_jwt(&agent, "aud", &token).await.unwrap(), GATEWAY);

    world
        .publish(world.material(&ca), world.pca.crl(&[&jwt.serial]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match validate_jwt(&agent, "aud", &token).await {
            Err(status) => break status,
            Ok(_) => assert!(Instant::now() < deadline, "still valid after revocation"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("is not in the JWT bundle"),
        "{status:?}"
    );
    assert_eq!(
        fetch_jwt(&agent, "aud").await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    // X.509-SVIDs go on: the CA material is not revoked.
    fetch_x509(agent.socket()).await.unwrap();
}

/// Polls until a call is refused with `PermissionDenied` (what is served is withdrawn);
/// fails the test after `within`.
async fn wait_until_withdrawn(agent: &AgentProcess, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match fetch_x509(agent.socket()).await {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
                return;
            }
            Ok(_) => assert!(
                Instant::now() < deadline,
                "still served after {within:?}; agent log:\n{}",
                agent.stderr_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `gateway_config` with `lines` added to `[upstream]`.
fn gateway_config_with(world: &World, lines: &str) -> String {
    gateway_config(world, ADMITTED_PCR0, "").replace(
        "resync_interval = \"5s\"",
        &format!("resync_interval = \"5s\"\n{lines}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_host_rolling_a_crl_back_does_not_bring_revoked_material_back() {
    let now = time::OffsetDateTime::now_utc();
    let mut world = World::new().await;
    let ca = world.pca.issue_for(ca_profile(), DAY);
    let first = world
        .pca
        .crl_numbered(1, now - time::Duration::minutes(30), &[]);
    world.publish(world.material(&ca), first.clone()).await;
    world.start_host();
    let agent = AgentProcess::start(&gateway_config(&world, ADMITTED_PCR0, ""));
    wait_for_x509svid(&agent, Duration::from_secs(30)).await;

    // CRL 2 revokes the material in service: withdrawn.
    let revoking = world
        .pca
        .crl_numbered(2, now - time::Duration::minutes(20), &[&ca.serial]);
    world.publish(world.material(&ca), revoking).await;
    wait_until_withdrawn(&agent, Duration::from_secs(30)).await;

    // The host serves CRL 1 again: refused as a replay, and nothing comes back.
    world.publish(world.material(&ca), first).await;
    wait_for_log(
        &agent,
        "CRL number 01 is older than number 02",
        Duration::from_secs(30),
    )
    .await;
    let status = fetch_x509(agent.socket()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let (healthy, said) = healthcheck(&agent);
    assert!(
        !healthy && said.contains("a replayed CRL is refused"),
        "{said}"
    );

    // A newer CRL that no longer lists it (forged by a host that cannot sign would not
    // verify; this one is the CA's own): a revocation once seen is not forgotten.
    let forgetful = world
        .pca
        .crl_numbered(3, now - time::Duration::minutes(10), &[]);
    world.publish(world.material(&ca), forgetful).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let status = fetch_x509(agent.socket()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let (healthy, said) = healthcheck(&agent);
    assert!(!healthy && said.contains("is revoked since"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_host_withholding_crls_loses_the_material_after_crl_max_age() {
    let mut world = World::new().await;
    let ca = world.pca.issue_for(ca_profile(), DAY);
    world.publish(world.material(&ca), world.pca.crl(&[])).await;
    world.start_host();
    let agent = AgentProcess::start(&gateway_config_with(&world, "crl_max_age = \"15s\""));
    wait_for_x509svid(&agent, Duration::from_secs(30)).await;

    // The host goes on relaying the material, but no CRL.
    world.start_host_with(false);
    wait_for_log(&agent, "offers no CRL", Duration::from_secs(30)).await;
    let (healthy, said) = healthcheck(&agent);
    assert!(healthy && said.contains("degraded"), "{said}");
    // Not until the material's notAfter (a day): within crl_max_age of the last CRL.
    wait_until_withdrawn(&agent, Duration::from_secs(30)).await;
    let (healthy, said) = healthcheck(&agent);
    assert!(!healthy && said.contains("upstream.crl_max_age"), "{said}");

    // A host that serves CRLs again brings it back, without a restart.
    world.start_host();
    wait_for_x509svid(&agent, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_host_stalling_the_tunnel_fails_each_sync_at_sync_timeout() {
    let mut world = World::new().await;
    let ca = world.pca.issue_for(ca_profile(), DAY);
    world.publish(world.material(&ca), world.pca.crl(&[])).await;
    world.start_host();
    let agent = AgentProcess::start(&gateway_config_with(
        &world,
        "sync_timeout = \"5s\"\ncrl_max_age = \"20s\"",
    ));
    wait_for_x509svid(&agent, Duration::from_secs(30)).await;

    // The host accepts and then relays nothing.
    world.stop_host();
    let _ = std::fs::remove_file(world.host_socket());
    let stalled = hostile_host(&world.host_socket(), Vec::new()).await;
    wait_for_log(&agent, "upstream.sync_timeout", Duration::from_secs(30)).await;
    let (healthy, said) = healthcheck(&agent);
    assert!(
        healthy && said.contains("degraded") && said.contains("stalled"),
        "{said}"
    );
    // The material in service goes once its last CRL is older than crl_max_age.
    wait_until_withdrawn(&agent, Duration::from_secs(40)).await;
    let (healthy, said) = healthcheck(&agent);
    assert!(!healthy && said.contains("upstream.crl_max_age"), "{said}");

    // Recovery without a restart.
    stalled.abort();
    world.start_host();
    wait_for_x509svid(&agent, Duration::from_secs(40)).await;
}

/// `curl` against the host's telemetry endpoint: (HTTP status, body).
fn curl(url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl (the tests need it; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The host's `/metrics`, parsed by the Python `prometheus-client` OpenMetrics parser:
/// `(name, labels, value)` per sample.
fn parse_metrics(text: &str) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    let script = "import json, sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = []\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       out.append([s.name, s.labels, s.value])\n\
        print(json.dumps(out))\n";
    let out = enclaveid_tests::output_with_stdin(
        std::process::Command::new(enclaveid_tests::moto::venv_python()).args(["-c", script]),
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A production enclave has no console: with only the parent's view (the host's stdout and
/// its HTTP endpoints, never the agent's stderr), an operator sees that KMS refused the
/// image, which PCR0 it was, that the enclave is not ready, and the failed syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_a_refused_kms_policy_is_visible_on_the_parent() {
    let mut world = World::new().await;
    let ca = world.pca.issue_for(ca_profile(), DAY);
    world.publish(world.material(&ca), world.pca.crl(&[])).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    world.host_args = vec![format!("--telemetry-listen=tcp://127.0.0.1:{port}")];
    world.start_host();
    let config = format!(
        "{}[telemetry]\ninterval = \"5s\"\n",
        gateway_config(&world, 0xb2, "")
    );
    let _agent = AgentProcess::start(&config);
    let pcr0 = enclaveid_attestor::hex(&[0xb2; 48]);

    // The refusal, on the host's stdout, tagged with the enclave's PCR0.
    let deadline = Instant::now() + Duration::from_secs(40);
    let line = loop {
        let out = std::fs::read_to_string(world.host_stdout()).unwrap_or_default();
        if let Some(line) = out
            .lines()
            .find(|l| l.contains("AccessDeniedException") && l.contains("key material sync failed"))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no refusal on the host's stdout:\n{out}\nhost log:\n{}",
            world.host_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = std::fs::read_to_string(world.host_stdout()).unwrap();
    for line in out.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is one JSON event");
    }
    assert!(
        !out.contains("PRIVATE KEY")
            && !out.contains("-----BEGIN")
            && !out.contains("enclaveid-test-secret"),
        "no key material or credentials leave the enclave in telemetry:\n{out}"
    );
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(event["pcr0"], pcr0.as_str(), "{line}");
    assert_eq!(event["level"], "ERROR", "{line}");
    assert!(
        event["enclave"]
            .as_str()
            .is_some_and(|e| e.starts_with("pcr0:b2b2")),
        "{line}"
    );

    // Not ready, and why.
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = curl(&format!("{base}/readyz"));
        if body.contains("AccessDeniedException") {
            assert_eq!(status, 503, "{body}");
            assert!(
                body.contains("not ready") && body.contains("b2b2b2"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "/readyz: {status} {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(curl(&format!("{base}/healthz")).0, 200);

    // The failed syncs, in Prometheus text a real parser reads.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = curl(&format!("{base}/metrics"));
        assert_eq!(status, 200, "{text}");
        let samples = parse_metrics(&text);
        let failed = samples.iter().find(|(name, labels, _)| {
            name == "enclaveid_upstream_syncs_total"
                && labels.get("result").map(String::as_str) == Some("failed")
        });
        if let Some((_, labels, value)) = failed
            && *value >= 1.0
        {
            assert!(labels["enclave"].starts_with("pcr0:b2b2"), "{labels:?}");
            assert!(samples.iter().any(|(name, labels, value)| name
                == "enclaveid_host_enclave_ready"
                && labels.contains_key("enclave")
                && *value == 0.0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed sync in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[path = "kms_e2e/acm.rs"]
mod acm;
