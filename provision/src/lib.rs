//! `enclaveid provision`: the operator's side of the `kms` upstream. Private CA issues
//! the certificate, KMS encrypts its key, and the key-material object the agent reads is
//! written to S3 (or a file). The issued certificate is checked with the agent's own
//! checks (`enclaveid-checks`) before anything is written.
//!
//! Order matters for "nothing half-written": every check and every remote call that can
//! fail runs before the object is written, and the object is written in one request (S3
//! `PutObject`, or a 0600 temporary file renamed into place). The plaintext key exists
//! only in memory (aws-lc-rs key, `Zeroizing` PEM); what leaves the process is the KMS
//! ciphertext.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acm;

use std::time::{Duration, SystemTime};

use aws_sdk_acmpca::types::{
    CertificateAuthorityStatus, KeyAlgorithm, RevocationReason, SigningAlgorithm, Validity,
    ValidityPeriodType,
};
use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, TrustDomain};

use enclaveid_checks::certs::{self, CertificateError};
use enclaveid_checks::keys::{KeyError, SigningKey};
pub use enclaveid_checks::location::ObjectLocation;
use enclaveid_checks::material::{KeyMaterial, MaterialError};
use enclaveid_checks::verify::{self, CheckError};

/// Why provisioning failed. Nothing is written unless everything before the write worked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// Not a Private CA ARN.
    #[error(
        "--pca-arn {0:?} is not a Private CA ARN; accepted: arn:PARTITION:acm-pca:REGION:ACCOUNT:certificate-authority/ID"
    )]
    PcaArn(String),
    /// Not a certificate serial.
    #[error(
        "--serial {0:?} is not a certificate serial; accepted: hex, with or without colons (as `openssl x509 -serial` or `provision` print it), at most 20 bytes"
    )]
    Serial(String),
    /// Not an IAM role ARN.
    #[error(
        "--role-arn {0:?} is not an IAM role ARN; accepted: arn:PARTITION:iam::ACCOUNT:role/NAME"
    )]
    RoleArn(String),
    /// A policy without measurements.
    #[error("no measurements: give --pcr0 (or --eif-measurements)")]
    NoMeasurements,
    /// A PCR value that is not one.
    #[error("{what} = {value:?}: accepted: PCR0 to PCR8, each 96 hex digits (SHA-384)")]
    Pcr {
        /// Where it came from.
        what: String,
        /// The value.
        value: String,
    },
    /// `nitro-cli` output that is not JSON.
    #[error("{origin}: not JSON")]
    MeasurementsJson {
        /// The file.
        origin: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// `nitro-cli` output without its measurements.
    #[error("{origin}: no \"Measurements\" object, as `nitro-cli describe-eif` prints")]
    NoMeasurementsObject {
        /// The file.
        origin: String,
    },
    /// Measurements without PCR0.
    #[error("{origin}: no PCR0 in \"Measurements\"")]
    NoPcr0 {
        /// The file.
        origin: String,
    },
    /// An AWS call failed.
    #[error("{call} ({resource}): {message}")]
    Aws {
        /// The call.
        call: &'static str,
        /// What it was about.
        resource: String,
        /// The SDK's full message (its error context).
        message: String,
    },
    /// The Private CA does not exist.
    #[error("{0}: no such Private CA")]
    NoSuchCa(String),
    /// The Private CA cannot issue.
    #[error("{pca_arn}: the Private CA is {status}, not ACTIVE")]
    Inactive {
        /// The CA.
        pca_arn: String,
        /// Its status.
        status: String,
    },
    /// An AWS answer without what it must carry.
    #[error("{0}")]
    Incomplete(&'static str),
    /// The issued certificate does not pass the agent's checks.
    #[error(
        "Private CA issued {certificate_arn} with template {template_arn}, but the agent would refuse it; nothing was written"
    )]
    Refused {
        /// The certificate.
        certificate_arn: String,
        /// The template it was issued with.
        template_arn: String,
        /// The agent's reason.
        #[source]
        source: Box<CheckError>,
    },
    /// The issued certificate is of another role than asked for.
    #[error(
        "Private CA issued {certificate_arn} with template {template_arn} as {role:?}, not {expected:?}: the agent would refuse it for this role; nothing was written"
    )]
    WrongRole {
        /// The certificate.
        certificate_arn: String,
        /// The template it was issued with.
        template_arn: String,
        /// What it is.
        role: Box<verify::Role>,
        /// What was asked for.
        expected: Box<verify::Role>,
    },
    /// A certificate from Private CA does not parse.
    #[error("{what}")]
    Certificate {
        /// Which.
        what: &'static str,
        /// Why.
        #[source]
        source: CertificateError,
    },
    /// The existing material does not say what it was issued for.
    #[error("the existing certificate has no spiffe:// URI SAN naming a trust domain")]
    NoUri,
    /// A key-material object is malformed.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// A key could not be made or serialized.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The CSR could not be built.
    #[error("building the CSR")]
    Csr(#[source] rcgen::Error),
    /// `provision acm` without a DNS name.
    #[error("no DNS name: give --dns-name at least once")]
    NoDnsNames,
    /// A `--dns-name` that is not one.
    #[error(
        "--dns-name {0:?} is not a DNS name; accepted: a name such as inference.example.internal, or *.example.internal"
    )]
    DnsName(String),
    /// A key algorithm ACM does not know.
    #[error(
        "--key-algorithm {0:?} is not one of ACM's; accepted: RSA_2048, RSA_3072, RSA_4096, EC_prime256v1, EC_secp384r1, EC_secp521r1"
    )]
    KeyAlgorithm(String),
    /// Not an ACM certificate ARN.
    #[error(
        "{0:?} is not an ACM certificate ARN; accepted: arn:PARTITION:acm:REGION:ACCOUNT:certificate/ID"
    )]
    AcmArn(String),
    /// An endpoint URL that is not one.
    #[error("{flag} {value:?} is not a URL; accepted: https://HOST[:PORT]/")]
    Endpoint {
        /// The option.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// ACM did not issue the certificate.
    #[error("{certificate_arn} is {status}, not ISSUED: {reason}")]
    NotIssued {
        /// The certificate.
        certificate_arn: String,
        /// Its status.
        status: String,
        /// ACM's failure reason, or why the wait ended.
        reason: String,
    },
    /// The key-material file could not be written or read.
    #[error("{location}")]
    File {
        /// The file.
        location: ObjectLocation,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ProvisionError {
    /// Whether the error is the operator's input, for exit code 64 (EX_USAGE).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::PcaArn(_)
                | Self::Serial(_)
                | Self::RoleArn(_)
                | Self::NoMeasurements
                | Self::Pcr { .. }
                | Self::MeasurementsJson { .. }
                | Self::NoMeasurementsObject { .. }
                | Self::NoPcr0 { .. }
                | Self::NoDnsNames
                | Self::DnsName(_)
                | Self::KeyAlgorithm(_)
                | Self::AcmArn(_)
                | Self::Endpoint { .. }
        )
    }
}

/// The AWS clients provisioning uses.
pub struct Aws {
    pca: aws_sdk_acmpca::Client,
    kms: aws_sdk_kms::Client,
    s3: aws_sdk_s3::Client,
}

/// What to issue.
#[derive(Clone, Debug)]
pub enum Subject {
    /// A subordinate CA (pathLen 0) for a trust domain: the agent mints SVIDs under it.
    Ca(TrustDomain),
    /// An end-entity X.509-SVID for one SPIFFE ID.
    Leaf(SpiffeId),
    /// The trust domain's JWT-SVID signing key: an end-entity certificate whose only URI
    /// SAN is the trust-domain ID.
    JwtKey(TrustDomain),
}

impl Subject {
    /// The trust domain it belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        match self {
            Self::Ca(td) | Self::JwtKey(td) => td.clone(),
            Self::Leaf(id) => id.trust_domain().clone(),
        }
    }
}

/// One issuance.
#[derive(Clone, Debug)]
pub struct Request {
    /// The Private CA (`arn:PARTITION:acm-pca:REGION:ACCOUNT:certificate-authority/ID`).
    pub pca_arn: String,
    /// CA or leaf.
    pub subject: Subject,
    /// The KMS key that encrypts the private key (its policy decides which enclave
    /// image may have it released).
    pub kms_key_id: String,
    /// Where the key-material object goes.
    pub out: ObjectLocation,
    /// How long the certificate is valid.
    pub validity: Duration,
}

/// What was issued and written.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate's ARN in Private CA.
    pub certificate_arn: String,
    /// Its serial, hex with colons (as `provision revoke` takes it).
    pub serial: String,
    /// Its notAfter.
    pub not_after: SystemTime,
}

// === impl Aws ===

impl Aws {
    /// Clients from the AWS environment; `s3_endpoint` selects an S3-compatible server
    /// (path-style). Private CA and KMS endpoints follow the SDK's own settings
    /// (`AWS_ENDPOINT_URL_ACM_PCA`, `AWS_ENDPOINT_URL_KMS`).
    pub async fn load(region: Option<String>, s3_endpoint: Option<String>) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        let sdk = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk);
        if let Some(endpoint) = s3_endpoint {
            s3 = s3.endpoint_url(endpoint).force_path_style(true);
        }
        Self {
            pca: aws_sdk_acmpca::Client::new(&sdk),
            kms: aws_sdk_kms::Client::new(&sdk),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
        }
    }

    /// Issues a certificate for `request`, checks it as the agent will, encrypts its key
    /// with KMS and writes the key-material object.
    pub async fn issue(&self, request: &Request) -> Result<Issued, ProvisionError> {
        let partition = pca_partition(&request.pca_arn)?;
        let days = request.validity.as_secs().div_ceil(86_400).max(1);
        let ca = self
            .pca
            .describe_certificate_authority()
            .certificate_authority_arn(&request.pca_arn)
            .send()
            .await
            .map_err(|e| {
                aws(
                    "Private CA DescribeCertificateAuthority",
                    &request.pca_arn,
                    e,
                )
            })?;
        let ca = ca
            .certificate_authority()
            .ok_or_else(|| ProvisionError::NoSuchCa(request.pca_arn.clone()))?;
        if ca.status() != Some(&CertificateAuthorityStatus::Active) {
            return Err(ProvisionError::Inactive {
                pca_arn: request.pca_arn.clone(),
                status: format!("{:?}", ca.status()),
            });
        }
        let signing_algorithm = match ca
            .certificate_authority_configuration()
            .map(|c| c.key_algorithm())
        {
            Some(KeyAlgorithm::EcPrime256v1) => SigningAlgorithm::Sha256Withecdsa,
            Some(KeyAlgorithm::EcSecp384r1) => SigningAlgorithm::Sha384Withecdsa,
            _ => SigningAlgorithm::Sha256Withrsa,
        };

        let key = SigningKey::generate_p256()?;
        let (uri, template, common_name) = match &request.subject {
            Subject::Ca(td) => (
                td.id_string(),
                "SubordinateCACertificate_PathLen0/V1",
                format!("EnclaveID CA for {td}"),
            ),
            Subject::Leaf(id) => (id.to_string(), "EndEntityCertificate/V1", id.to_string()),
            Subject::JwtKey(td) => (
                td.id_string(),
                "EndEntityCertificate/V1",
                format!("EnclaveID JWT-SVID key for {td}"),
            ),
        };
        let csr = csr(&key, &uri, &common_name)?;
        let template_arn = format!("arn:{partition}:acm-pca:::template/{template}");
        let issued = self
            .pca
            .issue_certificate()
            .certificate_authority_arn(&request.pca_arn)
            .csr(aws_sdk_acmpca::primitives::Blob::new(csr.into_bytes()))
            .signing_algorithm(signing_algorithm)
            .template_arn(&template_arn)
            .validity(
                Validity::builder()
                    .value(days as i64)
                    .r#type(ValidityPeriodType::Days)
                    .build()
                    .map_err(|e| aws("Private CA Validity", &request.pca_arn, e))?,
            )
            .idempotency_token(enclaveid_attestor::hex(&rand::random::<[u8; 16]>()))
            .send()
            .await
            .map_err(|e| aws("Private CA IssueCertificate", &request.pca_arn, e))?;
        let certificate_arn = issued
            .certificate_arn()
            .ok_or(ProvisionError::Incomplete(
                "IssueCertificate returned no ARN",
            ))?
            .to_owned();
        let (cert_pem, chain_pem) = self
            .wait_for_certificate(&request.pca_arn, &certificate_arn)
            .await?;

        // What is written must be what the agent accepts.
        let issued = |what| move |source| ProvisionError::Certificate { what, source };
        let mut certs = certs::parse_pem(cert_pem.as_bytes(), "the issued certificate")
            .map_err(issued("the issued certificate"))?;
        let chain = certs::parse_pem(chain_pem.as_bytes(), "the issued chain")
            .map_err(issued("the issued chain"))?;
        let roots: Vec<CertificateDer<'static>> = chain
            .iter()
            .filter(|c| is_self_signed(c))
            .cloned()
            .collect();
        certs.extend(chain.iter().cloned());
        let trust_domain = request.subject.trust_domain();
        let checked = verify::check(&certs, &key, &roots, None, &trust_domain, SystemTime::now())
            .map_err(|source| ProvisionError::Refused {
            certificate_arn: certificate_arn.clone(),
            template_arn: template_arn.clone(),
            source: Box::new(source),
        })?;
        let expected_role = match &request.subject {
            Subject::Ca(_) => verify::Role::Ca,
            Subject::Leaf(id) => verify::Role::Leaf(id.clone()),
            Subject::JwtKey(_) => verify::Role::JwtSigner,
        };
        if checked.role != expected_role {
            return Err(ProvisionError::WrongRole {
                certificate_arn,
                template_arn,
                role: Box::new(checked.role),
                expected: Box::new(expected_role),
            });
        }

        // The key's PEM is zeroized here; the copy the AWS SDK makes for the request body
        // (on the operator's machine, not in an enclave) is the SDK's and is not.
        let key_pem = enclaveid_checks::secret_pem::encode("PRIVATE KEY", &key.to_pkcs8_der()?);
        let encrypted = self
            .kms
            .encrypt()
            .key_id(&request.kms_key_id)
            .plaintext(aws_sdk_kms::primitives::Blob::new(
                key_pem.as_bytes().to_vec(),
            ))
            .send()
            .await
            .map_err(|e| aws("KMS Encrypt", &request.kms_key_id, e))?;
        drop(key_pem);
        let blob = encrypted
            .ciphertext_blob()
            .ok_or(ProvisionError::Incomplete(
                "KMS Encrypt returned no CiphertextBlob",
            ))?;
        let material = KeyMaterial::new(cert_pem, chain_pem, blob.as_ref()).to_json();
        self.write(&request.out, material).await?;
        Ok(Issued {
            certificate_arn,
            serial: colon_hex(&checked.serial),
            not_after: checked.not_after,
        })
    }

    async fn wait_for_certificate(
        &self,
        pca_arn: &str,
        certificate_arn: &str,
    ) -> Result<(String, String), ProvisionError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            match self
                .pca
                .get_certificate()
                .certificate_authority_arn(pca_arn)
                .certificate_arn(certificate_arn)
                .send()
                .await
            {
                Ok(got) => {
                    let cert = got.certificate().unwrap_or_default().to_owned();
                    let chain = got.certificate_chain().unwrap_or_default().to_owned();
                    return Ok((cert, chain));
                }
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_request_in_progress_exception())
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(aws("Private CA GetCertificate", certificate_arn, e)),
            }
        }
    }

    /// Writes the key-material object.
    async fn write(&self, out: &ObjectLocation, material: Vec<u8>) -> Result<(), ProvisionError> {
        match out {
            ObjectLocation::S3 { bucket, key } => {
                self.s3
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .content_type("application/json")
                    .body(material.into())
                    .send()
                    .await
                    .map_err(|e| aws("S3 PutObject", &out.to_string(), e))?;
                Ok(())
            }
            ObjectLocation::File(path) => enclaveid_io::write_atomically(path, &material, 0o600)
                .map_err(|source| ProvisionError::File {
                    location: out.clone(),
                    source,
                }),
        }
    }

    /// Revokes a certificate; Private CA lists it in its next CRL.
    pub async fn revoke(
        &self,
        pca_arn: &str,
        serial: &str,
        reason: RevocationReason,
    ) -> Result<(), ProvisionError> {
        pca_partition(pca_arn)?;
        let serial = parse_serial(serial)?;
        self.pca
            .revoke_certificate()
            .certificate_authority_arn(pca_arn)
            .certificate_serial(&serial)
            .revocation_reason(reason)
            .send()
            .await
            .map_err(|e| aws("Private CA RevokeCertificate", pca_arn, e))?;
        Ok(())
    }

    /// Reads a key-material object (for `rotate`).
    pub async fn read(&self, location: &ObjectLocation) -> Result<KeyMaterial, ProvisionError> {
        let bytes = match location {
            ObjectLocation::File(path) => {
                std::fs::read(path).map_err(|source| ProvisionError::File {
                    location: location.clone(),
                    source,
                })?
            }
            ObjectLocation::S3 { bucket, key } => self
                .s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| aws("S3 GetObject", &location.to_string(), e))?
                .body
                .collect()
                .await
                .map_err(|e| aws("S3 GetObject", &location.to_string(), e))?
                .into_bytes()
                .to_vec(),
        };
        Ok(KeyMaterial::from_json(&bytes)?)
    }
}

/// Whether material valid from `not_before` to `not_after` is due for re-issue at `now`:
/// past 2/3 of its validity, as the agent re-syncs.
pub fn due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    now >= not_before + lifetime * 2 / 3
}

/// What the material's certificate is issued for, and its validity: for `rotate`.
pub fn describe(
    material: &KeyMaterial,
) -> Result<(Subject, SystemTime, SystemTime), ProvisionError> {
    let certs = material.certificates()?;
    let cert = certs::parse(&certs[0], "the existing certificate", 0).map_err(|source| {
        ProvisionError::Certificate {
            what: "the existing certificate",
            source,
        }
    })?;
    let uri = verify::uri_sans(&cert)
        .into_iter()
        .next()
        .ok_or(ProvisionError::NoUri)?;
    let id = SpiffeId::new(&uri).ok();
    let trust_domain =
        || TrustDomain::new(uri.trim_start_matches("spiffe://")).map_err(|_| ProvisionError::NoUri);
    let subject = match id {
        _ if cert.is_ca() => Subject::Ca(trust_domain()?),
        Some(id) if !id.path().is_empty() => Subject::Leaf(id),
        _ => Subject::JwtKey(trust_domain()?),
    };
    let validity = cert.validity();
    Ok((
        subject,
        SystemTime::from(validity.not_before.to_datetime()),
        SystemTime::from(validity.not_after.to_datetime()),
    ))
}

/// The enclave image's measurements a key policy pins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Measurements {
    /// Accepted PCR values by index (hex, 96 digits); PCR0 is `ImageSha384`.
    pub pcrs: std::collections::BTreeMap<u8, Vec<String>>,
}

impl Measurements {
    /// Reads what `nitro-cli build-enclave` or `describe-eif` prints:
    /// `{"Measurements": {"HashAlgorithm": …, "PCR0": "…", "PCR1": "…", "PCR2": "…", …}}`.
    pub fn from_nitro_cli_json(json: &[u8], origin: &str) -> Result<Self, ProvisionError> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|source| ProvisionError::MeasurementsJson {
                origin: origin.to_owned(),
                source,
            })?;
        let table = value
            .get("Measurements")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| ProvisionError::NoMeasurementsObject {
                origin: origin.to_owned(),
            })?;
        let mut measurements = Self::default();
        for (name, value) in table {
            let Some(index) = name.strip_prefix("PCR").and_then(|i| i.parse::<u8>().ok()) else {
                continue;
            };
            let hex = value.as_str().unwrap_or_default();
            measurements.add(index, hex, &format!("{origin}: {name}"))?;
        }
        if !measurements.pcrs.contains_key(&0) {
            return Err(ProvisionError::NoPcr0 {
                origin: origin.to_owned(),
            });
        }
        Ok(measurements)
    }

    /// Adds an accepted value of PCR `index`.
    pub fn add(&mut self, index: u8, hex: &str, what: &str) -> Result<(), ProvisionError> {
        let ok = index <= 8 && enclaveid_attestor::parse_pcr(hex).is_some();
        if !ok {
            return Err(ProvisionError::Pcr {
                what: what.to_owned(),
                value: hex.to_owned(),
            });
        }
        self.pcrs
            .entry(index)
            .or_default()
            .push(hex.to_ascii_lowercase());
        Ok(())
    }
}

/// The KMS key policy: the account administers the key, `operator_role_arn` may
/// `Encrypt`, `parent_role_arn` may `Decrypt` only with an attestation document whose
/// measurements match, and an explicit `Deny` refuses `Decrypt` to anyone without them.
pub fn key_policy(
    parent_role_arn: &str,
    operator_role_arn: Option<&str>,
    measurements: &Measurements,
) -> Result<serde_json::Value, ProvisionError> {
    let account = parent_role_arn
        .split(':')
        .nth(4)
        .filter(|a| {
            a.len() == 12
                && a.bytes().all(|b| b.is_ascii_digit())
                && parent_role_arn.starts_with("arn:")
                && parent_role_arn.contains(":role/")
        })
        .ok_or_else(|| ProvisionError::RoleArn(parent_role_arn.to_owned()))?;
    let partition = parent_role_arn.split(':').nth(1).unwrap_or("aws");
    let conditions = recipient_conditions(measurements)?;
    let operator = operator_role_arn.map_or_else(
        || format!("arn:{partition}:iam::{account}:root"),
        str::to_owned,
    );
    let mut statements = vec![
        serde_json::json!({
            "Sid": "Key administration by the account",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:{partition}:iam::{account}:root")},
            "Action": [
                "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*",
                "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*",
                "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
                "kms:CancelKeyDeletion"
            ],
            "Resource": "*"
        }),
        serde_json::json!({
            "Sid": "The operator encrypts the material's key (enclaveid provision)",
            "Effect": "Allow",
            "Principal": {"AWS": operator},
            "Action": ["kms:Encrypt", "kms:DescribeKey"],
            "Resource": "*"
        }),
        serde_json::json!({
            "Sid": "The parent instance's role may decrypt, for the attested image only",
            "Effect": "Allow",
            "Principal": {"AWS": parent_role_arn},
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringEqualsIgnoreCase": conditions}
        }),
    ];
    // One Deny per condition key: a missing key makes a StringNotEquals… condition true,
    // so no IAM policy can grant Decrypt without the attestation.
    for (k, values) in &conditions {
        statements.push(serde_json::json!({
            "Sid": format!("Nobody decrypts without {k}"),
            "Effect": "Deny",
            "Principal": "*",
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringNotEqualsIgnoreCase": {k.clone(): values}}
        }));
    }
    Ok(serde_json::json!({"Version": "2012-10-17", "Statement": statements}))
}

/// The `kms:RecipientAttestation:*` condition keys for `measurements`, each with its
/// accepted values (PCR0 is `ImageSha384`).
pub(crate) fn recipient_conditions(
    measurements: &Measurements,
) -> Result<serde_json::Map<String, serde_json::Value>, ProvisionError> {
    if measurements.pcrs.is_empty() {
        return Err(ProvisionError::NoMeasurements);
    }
    let key = |i: u8| {
        if i == 0 {
            "kms:RecipientAttestation:ImageSha384".to_owned()
        } else {
            format!("kms:RecipientAttestation:PCR{i}")
        }
    };
    Ok(measurements
        .pcrs
        .iter()
        .map(|(i, values)| (key(*i), serde_json::json!(values)))
        .collect())
}

/// A PEM CSR for `key` with the URI SAN `uri` and the common name `cn`.
fn csr(key: &SigningKey, uri: &str, cn: &str) -> Result<String, ProvisionError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "EnclaveID");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.subject_alt_names = vec![rcgen::SanType::URI(
        uri.to_owned().try_into().map_err(ProvisionError::Csr)?,
    )];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(ProvisionError::Csr)
}

/// The partition of a Private CA ARN, or an error naming what is accepted.
pub fn pca_partition(arn: &str) -> Result<&str, ProvisionError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "acm-pca", region, account, resource]
            if !partition.is_empty()
                && !region.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource
                    .strip_prefix("certificate-authority/")
                    .is_some_and(|id| !id.is_empty() && !id.contains('/')) =>
        {
            Ok(partition)
        }
        _ => Err(ProvisionError::PcaArn(arn.to_owned())),
    }
}

/// A serial as Private CA's RevokeCertificate takes it: lower-case hex pairs joined by
/// colons. Accepts hex with or without colons.
pub fn parse_serial(serial: &str) -> Result<String, ProvisionError> {
    let mut digits: String = serial.chars().filter(|c| *c != ':').collect();
    if digits.len() % 2 == 1 {
        digits.insert(0, '0');
    }
    match enclaveid_attestor::parse_hex(&digits) {
        Some(bytes) if !bytes.is_empty() && bytes.len() <= 20 => {
            Ok(colon_hex(&enclaveid_attestor::hex(&bytes)))
        }
        _ => Err(ProvisionError::Serial(serial.to_owned())),
    }
}

fn colon_hex(hex: &str) -> String {
    let padded = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_owned()
    };
    padded
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_lowercase())
        .collect::<Vec<_>>()
        .join(":")
}

fn is_self_signed(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert).is_ok_and(|(_, c)| c.subject() == c.issuer())
}

fn aws<E: std::error::Error + 'static>(
    call: &'static str,
    resource: &str,
    error: E,
) -> ProvisionError {
    ProvisionError::Aws {
        call,
        resource: resource.to_owned(),
        message: aws_sdk_kms::error::DisplayErrorContext(&error).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_provision_refuses_malformed_pca_arns_and_serials() {
        assert_eq!(
            pca_partition("arn:aws:acm-pca:eu-west-1:111122223333:certificate-authority/0b1e")
                .unwrap(),
            "aws"
        );
        for bad in [
            "arn:aws:acm:eu-west-1:111122223333:certificate/0b1e",
            "arn:aws:acm-pca:eu-west-1:1111:certificate-authority/0b1e",
            "arn:aws:acm-pca:eu-west-1:111122223333:certificate-authority/",
            "0b1e",
        ] {
            let error = pca_partition(bad).unwrap_err().to_string();
            assert!(error.contains("accepted: arn:PARTITION:acm-pca"), "{error}");
        }
        assert_eq!(parse_serial("0A1B:2c").unwrap(), "0a:1b:2c");
        assert_eq!(parse_serial("abc").unwrap(), "0a:bc");
        for bad in ["", "xyz", &"ab".repeat(21)] {
            assert!(
                parse_serial(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("accepted: hex")
            );
        }
    }

    #[test]
    fn kms_provision_policy_pins_the_image_and_denies_decrypt_without_it() {
        let pcr0 = "a1".repeat(48);
        let pcr8 = "b2".repeat(48);
        let json = format!(
            r#"{{"Measurements": {{"HashAlgorithm": "Sha384 {{ ... }}", "PCR0": "{pcr0}", "PCR1": "{}", "PCR2": "{}", "PCR8": "{pcr8}"}}}}"#,
            "c3".repeat(48),
            "d4".repeat(48)
        );
        let mut measurements =
            Measurements::from_nitro_cli_json(json.as_bytes(), "eif.json").unwrap();
        measurements.pcrs.retain(|i, _| *i == 0 || *i == 8);
        let policy =
            key_policy("arn:aws:iam::111122223333:role/parent", None, &measurements).unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        let allow = statements
            .iter()
            .find(|s| s["Action"] == "kms:Decrypt" && s["Effect"] == "Allow")
            .unwrap();
        assert_eq!(
            allow["Principal"]["AWS"],
            "arn:aws:iam::111122223333:role/parent"
        );
        assert_eq!(
            allow["Condition"]["StringEqualsIgnoreCase"]["kms:RecipientAttestation:ImageSha384"],
            serde_json::json!([pcr0])
        );
        assert_eq!(
            allow["Condition"]["StringEqualsIgnoreCase"]["kms:RecipientAttestation:PCR8"],
            serde_json::json!([pcr8])
        );
        let denies: Vec<_> = statements
            .iter()
            .filter(|s| s["Effect"] == "Deny")
            .collect();
        assert_eq!(denies.len(), 2, "one Deny per condition key");
        assert!(
            denies
                .iter()
                .all(|d| d["Principal"] == "*" && d["Action"] == "kms:Decrypt")
        );
        let operator = statements
            .iter()
            .find(|s| s["Action"][0] == "kms:Encrypt")
            .unwrap();
        assert_eq!(
            operator["Principal"]["AWS"],
            "arn:aws:iam::111122223333:root"
        );
        assert!(
            !statements
                .iter()
                .any(|s| s["Effect"] == "Allow" && s["Action"] == "kms:*"),
            "nothing grants kms:* (which would include Decrypt)"
        );

        for (json, expected) in [
            ("{}", "no \"Measurements\""),
            (r#"{"Measurements": {"PCR0": "abc"}}"#, "96 hex digits"),
            (r#"{"Measurements": {"PCR1": "00"}}"#, "96 hex digits"),
        ] {
            let error = Measurements::from_nitro_cli_json(json.as_bytes(), "eif.json")
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
        let error = key_policy("arn:aws:iam::1:user/x", None, &measurements)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not an IAM role ARN"), "{error}");
    }

    #[test]
    fn kms_provision_rotates_at_two_thirds_of_the_validity() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(3000);
        assert!(!due(start, end, start + Duration::from_secs(1999)));
        assert!(due(start, end, start + Duration::from_secs(2000)));
    }
}
