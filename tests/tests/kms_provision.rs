//! `enclaveid provision` against moto (ACM-PCA, S3) and the fake KMS, then the material it
//! wrote through `enclaveid host` and `enclaveid run` to a workload.
//!
//! moto limitations, named where they matter: moto's `IssueCertificate` applies only the
//! `RootCACertificate/V1` and `EndEntityCertificate/V1` templates (any other template,
//! `SubordinateCACertificate_PathLen0/V1` included, issues a certificate without
//! basicConstraints) and ignores `ApiPassthrough`; moto publishes no CRL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use enclaveid_tests::kms_world::{ADMITTED_PCR0, BUCKET, World};
use enclaveid_tests::{AgentProcess, enclaveid_bin, fetch_x509, wait_for_x509svid};

/// `enclaveid provision ARGS` with AWS pointed at moto and the fake KMS.
fn provision(world: &World, args: &[&str]) -> Output {
    provision_via(world, &world.moto.endpoint(), args)
}

/// Like [`provision`], with Private CA at `pca_endpoint`.
fn provision_via(world: &World, pca_endpoint: &str, args: &[&str]) -> Output {
    Command::new(enclaveid_bin())
        .arg("provision")
        .args(args)
        .args(["--region", "us-east-1", "--s3-endpoint"])
        .arg(world.moto.endpoint())
        .env("AWS_ENDPOINT_URL_ACM_PCA", pca_endpoint)
        .env("AWS_ENDPOINT_URL_KMS", world.kms_url())
        .env("AWS_ACCESS_KEY_ID", "AKIAENCLAVEIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "enclaveid-test-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .current_dir(world.dir())
        .output()
        .unwrap()
}

/// The gateway agent's configuration, without a CRL (moto publishes none).
fn gateway_without_crl(world: &World) -> String {
    world
        .agent_config(ADMITTED_PCR0, &[("spiffe://example.org/gateway", "1h")], "")
        .replace(
            "resync_interval = \"5s\"",
            "resync_interval = \"5s\"\nrequire_crl = false",
        )
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_provision_leaf_then_host_run_and_fetch_against_moto() {
    let mut world = World::new().await;
    let pca = world.moto.create_root_pca().await;
    let out = format!("s3://{BUCKET}/material.json");
    let output = provision(
        &world,
        &[
            "leaf",
            "--pca-arn",
            &pca.arn,
            "--spiffe-id",
            "spiffe://example.org/gateway",
            "--kms-key-id",
            &world.key_arn,
            "--out",
            &out,
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("serial "), "{}", text(&output));

    // moto publishes no CRL: this agent runs without one.
    world.set_trust_bundle(&pca.root_pem);
    world.start_host_with(false);
    let config = gateway_without_crl(&world);
    let agent = AgentProcess::start(&config);
    let response = wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    let svid = &response.svids[0];
    assert_eq!(svid.spiffe_id, "spiffe://example.org/gateway");
    let root = pem::parse(&pca.root_pem).unwrap();
    assert_eq!(
        svid.bundle,
        root.contents(),
        "the bundle is moto's Private CA root"
    );
    let (_, leaf) = x509_parser::parse_x509_certificate(&svid.x509_svid).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(root.contents()).unwrap();
    assert_eq!(leaf.issuer(), root.subject());
    leaf.verify_signature(Some(root.public_key()))
        .expect("the SVID is signed by moto's Private CA root");

    // As an operator checks it by hand: `enclaveid api fetch x509 --write`.
    let written = world.dir().join("svid");
    let fetched = Command::new(enclaveid_bin())
        .args(["api", "fetch", "x509", "--socket"])
        .arg(agent.socket())
        .arg("--write")
        .arg(&written)
        .output()
        .unwrap();
    assert!(fetched.status.success(), "{}", text(&fetched));
    let svid_pem = std::fs::read(written.join("svid.0.pem")).unwrap();
    assert_eq!(pem::parse(&svid_pem).unwrap().contents(), svid.x509_svid);
    let bundle = std::fs::read(written.join("bundle.0.pem")).unwrap();
    assert_eq!(
        pem::parse(&bundle).unwrap().contents(),
        pem::parse(&pca.root_pem).unwrap().contents()
    );

    // Rotation: not due a minute in; forced, a new certificate for the same SPIFFE ID,
    // which the running agent picks up at its next sync.
    let rotate = |force: bool| {
        let mut args = vec![
            "rotate",
            "--pca-arn",
            &pca.arn,
            "--kms-key-id",
            &world.key_arn,
            "--out",
            &out,
        ];
        if force {
            args.push("--force");
        }
        provision(&world, &args)
    };
    let not_due = rotate(false);
    assert!(
        not_due.status.success() && text(&not_due).contains("not due"),
        "{}",
        text(&not_due)
    );
    let rotated = rotate(true);
    assert!(rotated.status.success(), "{}", text(&rotated));
    let new_serial = text(&rotated)
        .lines()
        .find_map(|l| l.strip_prefix("serial ").map(|s| s.replace(':', "")))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let message = fetch_x509(agent.socket()).await.unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&message.svids[0].x509_svid).unwrap();
        if enclaveid_attestor::hex(&leaf.serial.to_bytes_be()) == new_serial {
            assert_eq!(message.svids[0].spiffe_id, "spiffe://example.org/gateway");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated leaf was not picked up:\n{}",
            agent.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Revocation reaches Private CA (moto records it; it publishes no CRL to check).
    let serial = text(&output)
        .lines()
        .find_map(|l| l.strip_prefix("serial ").map(str::to_owned))
        .unwrap();
    let revoked = provision(
        &world,
        &["revoke", "--pca-arn", &pca.arn, "--serial", &serial],
    );
    assert!(revoked.status.success(), "{}", text(&revoked));
    assert!(text(&revoked).contains(&serial), "{}", text(&revoked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_provision_jwt_key_gives_the_enclave_its_jwt_signing_key() {
    let mut world = World::new().await;
    let pca = world.moto.create_root_pca().await;
    let issue = |kind: &str, subject: &[&str], out: &str| {
        let mut args = vec![
            kind,
            "--pca-arn",
            &pca.arn,
            "--kms-key-id",
            &world.key_arn,
            "--out",
            out,
        ];
        args.extend_from_slice(subject);
        provision(&world, &args)
    };
    let leaf = issue(
        "leaf",
        &["--spiffe-id", "spiffe://example.org/gateway"],
        &format!("s3://{BUCKET}/material.json"),
    );
    assert!(leaf.status.success(), "{}", text(&leaf));
    let jwt = issue(
        "jwt-key",
        &["--trust-domain", "example.org"],
        &format!("s3://{BUCKET}/jwt.json"),
    );
    assert!(jwt.status.success(), "{}", text(&jwt));
    world.set_trust_bundle(&pca.root_pem);
    world.offer_jwt();
    world.start_host_with(false);
    let config = gateway_without_crl(&world);
    let agent = AgentProcess::start(&config);
    wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    let client = spiffe::workload_api::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        match client.fetch_jwt_token(["api"], None).await {
            Ok(token) => break token,
            Err(error) => assert!(
                Instant::now() < deadline,
                "{error}\n{}",
                agent.stderr_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let validated = client.validate_jwt_token("api", &token).await.unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/gateway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_provision_writes_nothing_when_a_step_fails() {
    let world = World::new().await;
    let pca = world.moto.create_root_pca().await;
    let out = format!("s3://{BUCKET}/material.json");
    let issue = |kind: &str, id_flag: &str, id: &str, key: &str, out: &str, arn: &str| {
        provision(
            &world,
            &[
                kind,
                "--pca-arn",
                arn,
                id_flag,
                id,
                "--kms-key-id",
                key,
                "--out",
                out,
            ],
        )
    };
    let cases = [
        // moto applies no SubordinateCACertificate_PathLen0/V1 template: its "CA" has no
        // basicConstraints, which provision catches before writing anything.
        (
            issue(
                "ca",
                "--trust-domain",
                "example.org",
                &world.key_arn,
                &out,
                &pca.arn,
            ),
            "the agent would refuse it",
        ),
        (
            issue(
                "leaf",
                "--spiffe-id",
                "spiffe://example.org/a",
                "arn:aws:kms:us-east-1:111122223333:key/missing",
                &out,
                &pca.arn,
            ),
            "KMS Encrypt",
        ),
        (
            issue(
                "leaf",
                "--spiffe-id",
                "spiffe://example.org/a",
                &world.key_arn,
                "s3://no-such-bucket-enclaveid/m.json",
                &pca.arn,
            ),
            "NoSuchBucket",
        ),
        (
            issue(
                "leaf",
                "--spiffe-id",
                "spiffe://example.org/a",
                &world.key_arn,
                &out,
                "arn:aws:acm:us-east-1:111122223333:certificate/x",
            ),
            "accepted: arn:PARTITION:acm-pca",
        ),
        (
            issue(
                "ca",
                "--trust-domain",
                "Not A Domain",
                &world.key_arn,
                &out,
                &pca.arn,
            ),
            "--trust-domain",
        ),
        (
            issue(
                "leaf",
                "--spiffe-id",
                "spiffe://example.org/a",
                &world.key_arn,
                "relative.json",
                &pca.arn,
            ),
            "accepted: s3://BUCKET/KEY",
        ),
    ];
    for (output, expected) in cases {
        let said = text(&output);
        assert!(!output.status.success(), "{said}");
        assert!(said.contains(expected), "{expected:?} not in: {said}");
        assert!(!said.contains("PRIVATE KEY"), "{said}");
    }
    assert!(
        !world.moto.object_exists(BUCKET, "material.json").await,
        "no key-material object after a failed provision"
    );
    let left: Vec<_> = std::fs::read_dir(world.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.starts_with("attest-root") && name != "pca-root.pem")
        .collect();
    assert!(left.is_empty(), "nothing written to disk: {left:?}");
}

/// moto applies no `SubordinateCACertificate_PathLen0/V1` template, so a CA cannot be
/// provisioned end to end against it (provision refuses what moto issues; see
/// `kms_provision_writes_nothing_when_a_step_fails`). What provision asks Private CA for
/// is asserted here, field by field, as it went over the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_provision_ca_asks_private_ca_for_a_pathlen0_subordinate_with_the_trust_domain() {
    let world = World::new().await;
    let pca = world.moto.create_root_pca().await;
    let (proxy, recorded) = world.moto.recording_proxy().await;
    let out = format!("s3://{BUCKET}/material.json");
    let output = provision_via(
        &world,
        &proxy,
        &[
            "ca",
            "--pca-arn",
            &pca.arn,
            "--trust-domain",
            "example.org",
            "--kms-key-id",
            &world.key_arn,
            "--out",
            &out,
            "--validity",
            "45d",
        ],
    );
    assert!(
        text(&output).contains("the agent would refuse it"),
        "{}",
        text(&output)
    );

    let recorded = recorded.lock().unwrap().clone();
    let targets: Vec<&str> = recorded.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        targets[..2],
        [
            "ACMPrivateCA.DescribeCertificateAuthority",
            "ACMPrivateCA.IssueCertificate"
        ]
    );
    let issue = &recorded[1].1;
    assert_eq!(issue["CertificateAuthorityArn"], pca.arn.as_str());
    assert_eq!(
        issue["TemplateArn"],
        "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1"
    );
    assert_eq!(
        issue["SigningAlgorithm"], "SHA256WITHRSA",
        "moto's root is RSA-2048"
    );
    assert_eq!(
        issue["Validity"],
        serde_json::json!({"Value": 45, "Type": "DAYS"})
    );
    assert!(
        issue["IdempotencyToken"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    use base64::Engine as _;
    let csr_pem = base64::engine::general_purpose::STANDARD
        .decode(issue["Csr"].as_str().unwrap())
        .unwrap();
    let csr_der = pem::parse(&csr_pem).unwrap();
    assert_eq!(csr_der.tag(), "CERTIFICATE REQUEST");
    let (_, csr) =
        <x509_parser::certification_request::X509CertificationRequest<'_> as x509_parser::prelude::FromDer<'_, _>>::from_der(csr_der.contents())
            .unwrap();
    csr.verify_signature()
        .expect("the CSR is signed by its key");
    let spki = &csr.certification_request_info.subject_pki;
    assert_eq!(
        spki.algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string()),
        Some("1.2.840.10045.3.1.7".to_owned()),
        "a P-256 key"
    );
    let uris: Vec<String> = csr
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|e| match e {
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter())
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, ["spiffe://example.org"]);
}

#[test]
fn kms_provision_policy_prints_the_key_policy_for_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let eif = dir.path().join("eif.json");
    std::fs::write(
        &eif,
        format!(
            r#"{{"EnclaveName": "gateway", "Measurements": {{"HashAlgorithm": "Sha384 {{ ... }}", "PCR0": "{}", "PCR1": "{}", "PCR2": "{}"}}}}"#,
            "a1".repeat(48),
            "b2".repeat(48),
            "c3".repeat(48)
        ),
    )
    .unwrap();
    let output = Command::new(enclaveid_bin())
        .args([
            "provision",
            "policy",
            "--role-arn",
            "arn:aws:iam::111122223333:role/parent",
            "--eif-measurements",
        ])
        .arg(&eif)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let policy: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let text = policy.to_string();
    assert!(
        text.contains(&"a1".repeat(48)) && text.contains("kms:RecipientAttestation:ImageSha384")
    );
    assert!(
        !text.contains(&"b2".repeat(48)),
        "PCR1 changes with every kernel build; not pinned"
    );
}
