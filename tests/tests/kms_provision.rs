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

/// One request the fake EC2 received: its headers and its form fields.
type Ec2Request = (hyper::HeaderMap, Vec<(String, String)>);

/// A recording fake of EC2's `AssociateEnclaveCertificateIamRole` (moto does not implement
/// it): it keeps every request and answers as EC2 does, in the Query API's XML, with
/// `bucket`; a role named `…/unauthorized` gets EC2's `UnauthorizedOperation`.
async fn fake_ec2(
    bucket: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Ec2Request>>>) {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/", listener.local_addr().unwrap());
    let recorded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = recorded.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let fields: Vec<(String, String)> =
                                url_decode_form(&String::from_utf8_lossy(&body));
                            let field = |name: &str| {
                                fields
                                    .iter()
                                    .find(|(k, _)| k == name)
                                    .map(|(_, v)| v.clone())
                                    .unwrap_or_default()
                            };
                            let (certificate, role) = (field("CertificateArn"), field("RoleArn"));
                            record.lock().unwrap().push((parts.headers, fields));
                            let (status, xml) = if role.ends_with("/unauthorized") {
                                (403, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation.</Message></Error></Errors><RequestID>f0e1</RequestID></Response>".to_owned())
                            } else {
                                (
                                    200,
                                    format!(
                                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AssociateEnclaveCertificateIamRoleResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\n  <requestId>7a62c49f</requestId>\n  <certificateS3BucketName>{bucket}</certificateS3BucketName>\n  <certificateS3ObjectKey>{role}/{certificate}</certificateS3ObjectKey>\n  <encryptionKmsKeyId>a1b2c3d4-5678-90ab-cdef-EXAMPLE11111</encryptionKmsKeyId>\n</AssociateEnclaveCertificateIamRoleResponse>"
                                    ),
                                )
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "text/xml;charset=UTF-8")
                                    .body(http_body_util::Full::new(hyper::body::Bytes::from(xml)))
                                    .unwrap(),
                            )
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

/// `a=b&c=d%2F` → pairs, percent-decoded.
fn url_decode_form(body: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `enclaveid provision acm ARGS` with ACM at `acm` (moto behind the recording proxy) and
/// EC2 at `ec2`.
fn provision_acm(acm: &str, ec2: &str, args: &[&str]) -> Output {
    Command::new(enclaveid_bin())
        .args(["provision", "acm"])
        .args(args)
        .args(["--region", "us-east-1", "--ec2-endpoint", ec2])
        .env("AWS_ENDPOINT_URL_ACM", acm)
        .env("AWS_ACCESS_KEY_ID", "AKIAENCLAVEIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "enclaveid-test-secret")
        .env("AWS_SESSION_TOKEN", "enclaveid-test-token")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acm_route_provision_requests_associates_and_prints_the_role_policy() {
    const ROLE: &str = "arn:aws:iam::111122223333:role/enclaveid-parent";
    // The bucket as one user's association named it (no "-prod"): taken from the answer.
    const ASSOCIATED_BUCKET: &str = "aws-ec2-enclave-certificate-us-east-1";
    let world = World::new().await;
    let pca = world.moto.create_root_pca().await;
    let (acm, recorded) = world.moto.recording_proxy().await;
    let (ec2, ec2_recorded) = fake_ec2(ASSOCIATED_BUCKET).await;
    let pcr0 = "a1".repeat(48);
    let args = |role: &'static str| {
        vec![
            "--pca-arn".to_owned(),
            pca.arn.clone(),
            "--dns-name".into(),
            "inference.ephemeral-ml.internal".into(),
            "--dns-name".into(),
            "*.inference.ephemeral-ml.internal".into(),
            "--role-arn".into(),
            role.into(),
            "--pcr0".into(),
            pcr0.clone(),
        ]
    };
    let argv = args(ROLE);
    let output = provision_acm(
        &acm,
        &ec2,
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let said = text(&output);
    assert!(output.status.success(), "{said}");

    // ACM: a private certificate from the Private CA for both names, idempotent.
    let calls = recorded.lock().unwrap().clone();
    let (target, request) = &calls[0];
    assert_eq!(target, "CertificateManager.RequestCertificate");
    assert_eq!(request["DomainName"], "inference.ephemeral-ml.internal");
    assert_eq!(
        request["SubjectAlternativeNames"],
        serde_json::json!([
            "inference.ephemeral-ml.internal",
            "*.inference.ephemeral-ml.internal"
        ])
    );
    assert_eq!(request["CertificateAuthorityArn"], pca.arn.as_str());
    assert_eq!(request["KeyAlgorithm"], "RSA_2048");
    let token = request["IdempotencyToken"].as_str().unwrap();
    assert!(
        token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );
    assert!(
        calls[1..]
            .iter()
            .any(|(t, _)| t == "CertificateManager.DescribeCertificate"),
        "{calls:?}"
    );
    let certificate_arn = said
        .lines()
        .find_map(|l| l.strip_prefix("certificate "))
        .unwrap()
        .to_owned();
    assert!(
        certificate_arn.starts_with("arn:aws:acm:us-east-1:"),
        "{said}"
    );

    // EC2: one Query call, field by field, signed for ec2 in the region with the session.
    let ec2_calls = ec2_recorded.lock().unwrap().clone();
    assert_eq!(ec2_calls.len(), 1);
    let (headers, fields) = &ec2_calls[0];
    assert_eq!(
        fields,
        &[
            (
                "Action".to_owned(),
                "AssociateEnclaveCertificateIamRole".to_owned()
            ),
            ("Version".to_owned(), "2016-11-15".to_owned()),
            ("CertificateArn".to_owned(), certificate_arn.clone()),
            ("RoleArn".to_owned(), ROLE.to_owned()),
        ]
    );
    assert_eq!(
        headers["content-type"],
        "application/x-www-form-urlencoded; charset=utf-8"
    );
    let authorization = headers["authorization"].to_str().unwrap();
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIAENCLAVEIDTEST/")
            && authorization.contains("/us-east-1/ec2/aws4_request"),
        "{authorization}"
    );
    assert_eq!(headers["x-amz-security-token"], "enclaveid-test-token");

    // What the operator is told: the object, the key, the policy, the host's flags.
    let object_key = format!("{ROLE}/{certificate_arn}");
    assert!(
        said.contains(&format!("bucket {ASSOCIATED_BUCKET}\n")),
        "{said}"
    );
    assert!(
        said.contains(&format!("object key {object_key}\n")),
        "{said}"
    );
    assert!(
        said.contains("KMS key a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"),
        "{said}"
    );
    let policy_start = said.find("{\n").unwrap();
    let policy_end = policy_start + said[policy_start..].find("\n}").unwrap() + 2;
    let policy: serde_json::Value = serde_json::from_str(&said[policy_start..policy_end]).unwrap();
    assert_eq!(
        policy["Statement"][0]["Resource"],
        format!("arn:aws:s3:::{ASSOCIATED_BUCKET}/{object_key}")
    );
    assert_eq!(policy["Statement"][0]["Action"], "s3:GetObject");
    assert_eq!(policy["Statement"][1]["Action"], "kms:Decrypt");
    assert_eq!(
        policy["Statement"][1]["Condition"]["StringEqualsIgnoreCase"]["kms:RecipientAttestation:ImageSha384"],
        serde_json::json!([pcr0])
    );
    assert!(
        said.contains(&format!(
            "enclaveid host --acm-certificate-arn {certificate_arn} --role-arn {ROLE} --acm-bucket {ASSOCIATED_BUCKET}"
        )),
        "{said}"
    );

    // EC2 refusing: the call and AWS's code, and a failure exit.
    let argv = args("arn:aws:iam::111122223333:role/unauthorized");
    let output = provision_acm(
        &acm,
        &ec2,
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("ec2:AssociateEnclaveCertificateIamRole")
            && said.contains("UnauthorizedOperation"),
        "{said}"
    );

    // The operator's mistakes, before any AWS call: exit 64, the value named.
    let calls_before = recorded.lock().unwrap().len();
    for (bad, wants) in [
        (vec!["--dns-name", "bad name"], "--dns-name \"bad name\""),
        (vec!["--key-algorithm", "DSA"], "--key-algorithm \"DSA\""),
    ] {
        let mut argv = args(ROLE);
        argv.extend(bad.iter().map(|s| (*s).to_owned()));
        let output = provision_acm(
            &acm,
            &ec2,
            &argv.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert_eq!(output.status.code(), Some(64), "{}", text(&output));
        assert!(text(&output).contains(wants), "{}", text(&output));
    }
    let mut no_image = args(ROLE);
    no_image.truncate(8);
    let output = provision_acm(
        &acm,
        &ec2,
        &no_image.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_ne!(output.status.code(), Some(0), "{}", text(&output));
    assert!(text(&output).contains("--pcr0"), "{}", text(&output));
    assert_eq!(
        recorded.lock().unwrap().len(),
        calls_before,
        "no AWS call was made"
    );
}
