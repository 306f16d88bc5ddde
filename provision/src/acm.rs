//! `enclaveid provision acm`: the seed's route. ACM requests a private certificate for
//! DNS names from the Private CA, EC2 associates it with the parent instance's IAM role
//! (ACM for Nitro Enclaves then writes the key-material object to S3, its key encrypted
//! under an AWS-managed KMS key), and the operator gets the bucket, the object key, the
//! KMS key and the IAM policy the role needs.
//!
//! `AssociateEnclaveCertificateIamRole` is an EC2 Query API call. aws-sdk-ec2 is some
//! 1.2 M lines for this one operation, so the call is built, signed (SigV4, through
//! `enclaveid_checks::sigv4`) and sent here, on the SDK's own HTTPS stack.

use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials as _;
use aws_sdk_acm::types::{CertificateStatus, KeyAlgorithm};
use http_body_util::BodyExt as _;

use crate::{Measurements, ProvisionError};

/// The EC2 Query API version the call is made with.
const EC2_API_VERSION: &str = "2016-11-15";
/// How long ACM has to issue the certificate.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest EC2 answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// What to request.
#[derive(Clone, Debug)]
pub struct AcmRequest {
    /// The Private CA (`arn:PARTITION:acm-pca:REGION:ACCOUNT:certificate-authority/ID`).
    pub pca_arn: String,
    /// The DNS names; the first is the certificate's domain name.
    pub dns_names: Vec<String>,
    /// ACM's key algorithm name (`RSA_2048`, `EC_prime256v1`, …).
    pub key_algorithm: String,
    /// The parent instance's IAM role.
    pub role_arn: String,
}

/// What ACM and EC2 answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Association {
    /// The ACM certificate.
    pub certificate_arn: String,
    /// `CertificateS3BucketName`.
    pub bucket: String,
    /// `CertificateS3ObjectKey` (`ROLE_ARN/CERTIFICATE_ARN`).
    pub object_key: String,
    /// `EncryptionKmsKeyId`: the AWS-managed key the private key is encrypted under.
    pub kms_key_id: String,
}

/// The ACM and EC2 clients of `enclaveid provision acm`.
pub struct AcmAws {
    acm: aws_sdk_acm::Client,
    sdk: aws_config::SdkConfig,
    ec2_endpoint: Option<String>,
}

impl AcmAws {
    /// Clients from the AWS environment. ACM's endpoint follows the SDK's settings
    /// (`AWS_ENDPOINT_URL_ACM`); EC2's is `ec2_endpoint`, else `AWS_ENDPOINT_URL_EC2`,
    /// else `https://ec2.REGION.amazonaws.com`.
    pub async fn load(region: Option<String>, ec2_endpoint: Option<String>) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        let sdk = loader.load().await;
        let ec2_endpoint = ec2_endpoint.or_else(|| {
            std::env::var("AWS_ENDPOINT_URL_EC2")
                .ok()
                .filter(|v| !v.is_empty())
        });
        Self {
            acm: aws_sdk_acm::Client::new(&sdk),
            sdk,
            ec2_endpoint,
        }
    }

    /// Requests the certificate (idempotent for an hour: the same request returns the same
    /// certificate), waits until ACM has issued it, and associates it with the role.
    pub async fn request_and_associate(
        &self,
        request: &AcmRequest,
    ) -> Result<Association, ProvisionError> {
        let certificate_arn = self.request(request).await?;
        self.wait_issued(&certificate_arn).await?;
        self.associate(&certificate_arn, &request.role_arn).await
    }

    /// `RequestCertificate` with `CertificateAuthorityArn`: a private certificate.
    async fn request(&self, request: &AcmRequest) -> Result<String, ProvisionError> {
        let [domain, ..] = request.dns_names.as_slice() else {
            return Err(ProvisionError::NoDnsNames);
        };
        check_dns_names(&request.dns_names)?;
        let algorithm = KeyAlgorithm::from(request.key_algorithm.as_str());
        if !KeyAlgorithm::values().contains(&request.key_algorithm.as_str()) {
            return Err(ProvisionError::KeyAlgorithm(request.key_algorithm.clone()));
        }
        let output = self
            .acm
            .request_certificate()
            .domain_name(domain)
            .set_subject_alternative_names(Some(request.dns_names.clone()))
            .certificate_authority_arn(&request.pca_arn)
            .key_algorithm(algorithm)
            .idempotency_token(idempotency_token(request))
            .send()
            .await
            .map_err(|e| crate::aws("acm:RequestCertificate", &request.pca_arn, e))?;
        output
            .certificate_arn()
            .map(str::to_owned)
            .ok_or(ProvisionError::Incomplete(
                "RequestCertificate answered without a CertificateArn",
            ))
    }

    /// Polls `DescribeCertificate` until the certificate is `ISSUED`.
    async fn wait_issued(&self, certificate_arn: &str) -> Result<(), ProvisionError> {
        let deadline = tokio::time::Instant::now() + ISSUE_TIMEOUT;
        let mut pause = Duration::from_millis(500);
        loop {
            let output = self
                .acm
                .describe_certificate()
                .certificate_arn(certificate_arn)
                .send()
                .await
                .map_err(|e| crate::aws("acm:DescribeCertificate", certificate_arn, e))?;
            let detail = output.certificate();
            match detail.and_then(|d| d.status()) {
                Some(CertificateStatus::Issued) => return Ok(()),
                Some(status @ (CertificateStatus::Failed | CertificateStatus::Revoked)) => {
                    return Err(ProvisionError::NotIssued {
                        certificate_arn: certificate_arn.to_owned(),
                        status: status.as_str().to_owned(),
                        reason: detail
                            .and_then(|d| d.failure_reason())
                            .map(|r| r.as_str().to_owned())
                            .unwrap_or_default(),
                    });
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(ProvisionError::NotIssued {
                        certificate_arn: certificate_arn.to_owned(),
                        status: detail
                            .and_then(|d| d.status())
                            .map_or("unknown", |s| s.as_str())
                            .to_owned(),
                        reason: format!("not issued within {}", humantime_secs(ISSUE_TIMEOUT)),
                    });
                }
                _ => {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// EC2 `AssociateEnclaveCertificateIamRole`.
    pub async fn associate(
        &self,
        certificate_arn: &str,
        role_arn: &str,
    ) -> Result<Association, ProvisionError> {
        const CALL: &str = "ec2:AssociateEnclaveCertificateIamRole";
        let region =
            self.sdk
                .region()
                .map(|r| r.as_ref().to_owned())
                .ok_or(ProvisionError::Incomplete(
                    "no AWS region: pass --region or set AWS_REGION",
                ))?;
        let endpoint = self
            .ec2_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com/"));
        let uri: http::Uri = endpoint.parse().map_err(|_| ProvisionError::Endpoint {
            flag: "--ec2-endpoint",
            value: endpoint.clone(),
        })?;
        let host = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .ok_or_else(|| ProvisionError::Endpoint {
                flag: "--ec2-endpoint",
                value: endpoint.clone(),
            })?;
        let body = query_body(&[
            ("Action", "AssociateEnclaveCertificateIamRole"),
            ("Version", EC2_API_VERSION),
            ("CertificateArn", certificate_arn),
            ("RoleArn", role_arn),
        ]);
        let failed = |message: String| ProvisionError::Aws {
            call: CALL,
            resource: certificate_arn.to_owned(),
            message,
        };
        let mut request = http::Request::builder()
            .method("POST")
            .uri(uri)
            .header("host", host)
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(body.into_bytes())
            .map_err(|e| failed(e.to_string()))?;
        let credentials = self
            .sdk
            .credentials_provider()
            .ok_or(ProvisionError::Incomplete("no AWS credentials provider"))?
            .provide_credentials()
            .await
            .map_err(|e| failed(format!("AWS credentials: {e}")))?;
        enclaveid_checks::sigv4::sign(
            &mut request,
            "ec2",
            &region,
            credentials,
            std::time::SystemTime::now(),
        )
        .map_err(|e| failed(enclaveid_checks::Chain(&e).to_string()))?;
        let (status, answer) = send(request).await.map_err(failed)?;
        let text = String::from_utf8_lossy(&answer);
        if !status.is_success() {
            let (code, message) = ec2_error(&text);
            return Err(failed(format!("HTTP {status}: {code}: {message}")));
        }
        parse_association(certificate_arn, &text).map_err(failed)
    }
}

/// Sends `request` over HTTPS (the system's roots) or plain HTTP (test servers).
async fn send(request: http::Request<Vec<u8>>) -> Result<(http::StatusCode, Vec<u8>), String> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector);
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(
        parts,
        http_body_util::Full::new(hyper::body::Bytes::from(body)),
    );
    let response = tokio::time::timeout(Duration::from_secs(60), client.request(request))
        .await
        .map_err(|_| "no answer within 60 s".to_owned())?
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes()
        .to_vec();
    Ok((status, body))
}

/// `application/x-www-form-urlencoded` of `pairs`, as the EC2 Query API takes it.
fn query_body(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The three fields of `AssociateEnclaveCertificateIamRoleResponse`.
fn parse_association(certificate_arn: &str, xml: &str) -> Result<Association, String> {
    let fields = xml_children(
        xml,
        "AssociateEnclaveCertificateIamRoleResponse",
        &[
            "certificateS3BucketName",
            "certificateS3ObjectKey",
            "encryptionKmsKeyId",
        ],
    )?;
    let [bucket, object_key, kms_key_id] = fields;
    let missing = |name: &str| format!("the answer has no {name}");
    Ok(Association {
        certificate_arn: certificate_arn.to_owned(),
        bucket: bucket.ok_or_else(|| missing("certificateS3BucketName"))?,
        object_key: object_key.ok_or_else(|| missing("certificateS3ObjectKey"))?,
        kms_key_id: kms_key_id.ok_or_else(|| missing("encryptionKmsKeyId"))?,
    })
}

/// The code and message of an EC2 error answer (`Response/Errors/Error`).
fn ec2_error(xml: &str) -> (String, String) {
    let sanitize =
        |s: Option<String>| enclaveid_checks::wire::sanitize(s.unwrap_or_default().as_bytes());
    let inner = || -> Result<[Option<String>; 2], String> {
        let doc = &mut aws_smithy_xml::decode::Document::new(xml);
        let mut root = doc.root_element().map_err(|e| e.to_string())?;
        while let Some(mut errors) = root.next_tag() {
            if !errors.start_el().matches("Errors") {
                continue;
            }
            while let Some(mut error) = errors.next_tag() {
                if error.start_el().matches("Error") {
                    return children(&mut error, &["Code", "Message"]);
                }
            }
        }
        Ok([None, None])
    };
    match inner() {
        Ok([code @ Some(_), message]) => (sanitize(code), sanitize(message)),
        _ => (
            "not EC2 XML".into(),
            enclaveid_checks::wire::sanitize(&xml.as_bytes()[..xml.len().min(200)]),
        ),
    }
}

/// The text of the named children of the root element `root`.
fn xml_children<const N: usize>(
    xml: &str,
    root: &str,
    names: &[&str; N],
) -> Result<[Option<String>; N], String> {
    let doc = &mut aws_smithy_xml::decode::Document::new(xml);
    let mut element = doc.root_element().map_err(|e| format!("not XML: {e}"))?;
    if !element.start_el().matches(root) {
        return Err(format!("the answer is not an {root}"));
    }
    children(&mut element, names)
}

fn children<const N: usize>(
    element: &mut aws_smithy_xml::decode::ScopedDecoder<'_, '_>,
    names: &[&str; N],
) -> Result<[Option<String>; N], String> {
    let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
    while let Some(mut child) = element.next_tag() {
        if let Some(i) = names.iter().position(|n| child.start_el().matches(n)) {
            found[i] = Some(
                aws_smithy_xml::decode::try_data(&mut child)
                    .map_err(|e| e.to_string())?
                    .into_owned(),
            );
        }
    }
    Ok(found)
}

/// Refuses a `--dns-name` that is not a DNS name (a wildcard `*.NAME` is one).
pub fn check_dns_names(names: &[String]) -> Result<(), ProvisionError> {
    for name in names {
        let plain = name.strip_prefix("*.").unwrap_or(name);
        if rustls_pki_types::DnsName::try_from(plain).is_err() || plain.contains('*') {
            return Err(ProvisionError::DnsName(name.clone()));
        }
    }
    Ok(())
}

/// ACM's idempotency token for `request` (at most 32 alphanumerics): the same request
/// within an hour returns the same certificate instead of a second one.
fn idempotency_token(request: &AcmRequest) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!(
            "{}\n{}\n{}",
            request.pca_arn,
            request.dns_names.join(","),
            request.key_algorithm
        )
        .as_bytes(),
    );
    enclaveid_attestor::hex(&digest.as_ref()[..16])
}

/// The IAM policy the parent instance's role needs: read this object, and decrypt with
/// the key ACM named, for the measured enclave image only (`kms:RecipientAttestation`
/// conditions, evaluated by KMS on the attestation document the enclave sends).
pub fn role_policy(
    association: &Association,
    measurements: &Measurements,
) -> Result<serde_json::Value, ProvisionError> {
    let (partition, region) =
        enclaveid_checks::location::acm_certificate_region(&association.certificate_arn)
            .map_err(|_| ProvisionError::AcmArn(association.certificate_arn.clone()))?;
    let conditions = crate::recipient_conditions(measurements)?;
    let key = if association.kms_key_id.starts_with("arn:") {
        association.kms_key_id.clone()
    } else {
        // The key is AWS-managed, in an account the operator does not know.
        format!(
            "arn:{partition}:kms:{region}:*:key/{}",
            association.kms_key_id
        )
    };
    Ok(serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Read the certificate object ACM for Nitro Enclaves writes",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": format!("arn:{partition}:s3:::{}/{}", association.bucket, association.object_key)
            },
            {
                "Sid": "Decrypt its private key, for the attested enclave image only",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": key,
                "Condition": {"StringEqualsIgnoreCase": conditions}
            }
        ]
    }))
}

fn humantime_secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "arn:aws:acm:eu-west-1:111122223333:certificate/0b1e6a16";

    #[test]
    fn acm_route_the_association_answer_and_ec2_errors_are_read() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<AssociateEnclaveCertificateIamRoleResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>
    <certificateS3BucketName>aws-ec2-enclave-certificate-eu-west-1</certificateS3BucketName>
    <certificateS3ObjectKey>arn:aws:iam::111122223333:role/parent/arn:aws:acm:eu-west-1:111122223333:certificate/0b1e6a16</certificateS3ObjectKey>
    <encryptionKmsKeyId>a1b2c3d4-5678-90ab-cdef-EXAMPLE11111</encryptionKmsKeyId>
</AssociateEnclaveCertificateIamRoleResponse>"#;
        let association = parse_association(CERT, xml).unwrap();
        assert_eq!(association.bucket, "aws-ec2-enclave-certificate-eu-west-1");
        assert!(association.object_key.ends_with("certificate/0b1e6a16"));
        assert_eq!(
            association.kms_key_id,
            "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"
        );

        let error = parse_association(CERT, "<Other/>").unwrap_err();
        assert!(
            error.contains("not an AssociateEnclaveCertificateIamRoleResponse"),
            "{error}"
        );
        let partial = xml.replace(
            "<encryptionKmsKeyId>a1b2c3d4-5678-90ab-cdef-EXAMPLE11111</encryptionKmsKeyId>",
            "",
        );
        assert!(
            parse_association(CERT, &partial)
                .unwrap_err()
                .contains("encryptionKmsKeyId")
        );

        let refusal = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation.</Message></Error></Errors><RequestID>x</RequestID></Response>"#;
        assert_eq!(
            ec2_error(refusal),
            (
                "UnauthorizedOperation".to_owned(),
                "You are not authorized to perform this operation.".to_owned()
            )
        );
        assert_eq!(
            ec2_error("<html>gateway</html>"),
            ("not EC2 XML".to_owned(), "<html>gateway</html>".to_owned())
        );
    }

    #[test]
    fn acm_route_the_query_body_encodes_arns() {
        assert_eq!(
            query_body(&[("CertificateArn", "arn:aws:acm:r:1:certificate/a b")]),
            "CertificateArn=arn%3Aaws%3Aacm%3Ar%3A1%3Acertificate%2Fa%20b"
        );
    }

    #[test]
    fn acm_route_the_role_policy_reads_one_object_and_decrypts_for_the_image_only() {
        let association = Association {
            certificate_arn: CERT.into(),
            bucket: "aws-ec2-enclave-certificate-eu-west-1-prod".into(),
            object_key: format!("arn:aws:iam::111122223333:role/parent/{CERT}"),
            kms_key_id: "a1b2c3d4".into(),
        };
        let mut measurements = Measurements::default();
        measurements.add(0, &"ab".repeat(48), "--pcr0").unwrap();
        let policy = role_policy(&association, &measurements).unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(
            statements[0]["Resource"],
            format!(
                "arn:aws:s3:::aws-ec2-enclave-certificate-eu-west-1-prod/arn:aws:iam::111122223333:role/parent/{CERT}"
            )
        );
        assert_eq!(
            statements[1]["Resource"],
            "arn:aws:kms:eu-west-1:*:key/a1b2c3d4"
        );
        assert_eq!(
            statements[1]["Condition"]["StringEqualsIgnoreCase"]["kms:RecipientAttestation:ImageSha384"],
            serde_json::json!(["ab".repeat(48)])
        );
        let error = role_policy(&association, &Measurements::default()).unwrap_err();
        assert!(error.to_string().contains("--pcr0"), "{error}");
    }
}
