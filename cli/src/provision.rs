//! `enclaveid provision`: the operator's side (Private CA, KMS, S3).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use enclaveid_provision::{self as provision, Aws, Measurements, ObjectLocation, Request, Subject};

use crate::UsageError;

#[derive(Subcommand)]
pub(crate) enum ProvisionCommand {
    /// Have Private CA issue a subordinate CA (pathLen 0, URI SAN spiffe://TD) for the
    /// agent to mint SVIDs under; encrypt its key with KMS; write the key material.
    Ca(CaArgs),
    /// Have Private CA issue one X.509-SVID (URI SAN = the SPIFFE ID) for an enclave
    /// type; encrypt its key with KMS; write the key material.
    Leaf(LeafArgs),
    /// Have Private CA certify the trust domain's JWT-SVID signing key (an end-entity
    /// certificate whose only URI SAN is spiffe://TD); encrypt the key with KMS; write
    /// the key material for `enclaveid host --jwt-material`.
    JwtKey(CaArgs),
    /// Print the KMS key policy that releases the key only to the measured enclave image.
    Policy(PolicyArgs),
    /// The ACM route (DNS names, for TLS servers such as nginx): have ACM request a
    /// private certificate from the Private CA, associate it with the parent instance's
    /// role (ACM for Nitro Enclaves then writes its object to S3), and print the bucket,
    /// the object key, the KMS key and the IAM policy the role needs.
    Acm(AcmArgs),
    /// Re-issue the material at --out when 2/3 of its validity has passed (for cron).
    Rotate(RotateArgs),
    /// Revoke a certificate; Private CA lists it in its next CRL.
    Revoke(RevokeArgs),
}

#[derive(Args)]
pub(crate) struct AwsArgs {
    /// The AWS region. Default: from the AWS environment.
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// An S3 endpoint URL instead of AWS's, path-style (test servers such as moto).
    /// Private CA and KMS endpoints follow AWS_ENDPOINT_URL_ACM_PCA / AWS_ENDPOINT_URL_KMS.
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
}

#[derive(Args)]
pub(crate) struct IssueArgs {
    /// The Private CA: arn:PARTITION:acm-pca:REGION:ACCOUNT:certificate-authority/ID.
    #[arg(long, value_name = "ARN")]
    pca_arn: String,
    /// The KMS key (ID, ARN or alias) that encrypts the private key.
    #[arg(long, value_name = "KEY")]
    kms_key_id: String,
    /// Where to write the key material: s3://BUCKET/KEY or file:///PATH (0600).
    #[arg(long, value_name = "LOCATION")]
    out: String,
    /// How long the certificate is valid (humantime; whole days at Private CA).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    validity: Duration,
    #[command(flatten)]
    aws: AwsArgs,
}

#[derive(Args)]
pub(crate) struct CaArgs {
    /// The trust domain, e.g. example.org.
    #[arg(long, value_name = "TD", value_parser = parse_trust_domain)]
    trust_domain: spiffe::TrustDomain,
    #[command(flatten)]
    issue: IssueArgs,
}

#[derive(Args)]
pub(crate) struct LeafArgs {
    /// The SPIFFE ID, e.g. spiffe://example.org/inference.
    #[arg(long, value_name = "ID", value_parser = parse_spiffe_id)]
    spiffe_id: spiffe::SpiffeId,
    #[command(flatten)]
    issue: IssueArgs,
}

#[derive(Args)]
pub(crate) struct PolicyArgs {
    /// The parent instance's IAM role, the only principal that may Decrypt.
    #[arg(long, value_name = "ARN")]
    role_arn: String,
    /// The operator's role, allowed to Encrypt. Default: the account.
    #[arg(long, value_name = "ARN")]
    operator_role_arn: Option<String>,
    #[command(flatten)]
    measurements: MeasurementArgs,
}

#[derive(Args)]
pub(crate) struct AcmArgs {
    /// The Private CA that issues the certificate:
    /// arn:PARTITION:acm-pca:REGION:ACCOUNT:certificate-authority/ID.
    #[arg(long, value_name = "ARN", required_unless_present = "certificate_arn")]
    pca_arn: Option<String>,
    /// A DNS name of the certificate (the first is its domain name); repeatable.
    #[arg(
        long = "dns-name",
        value_name = "NAME",
        required_unless_present = "certificate_arn"
    )]
    dns_names: Vec<String>,
    /// ACM's key algorithm: RSA_2048 (ACM's default), RSA_3072, RSA_4096, EC_prime256v1,
    /// EC_secp384r1, EC_secp521r1.
    #[arg(long, value_name = "ALGORITHM", default_value = "RSA_2048")]
    key_algorithm: String,
    /// Associate this existing ACM certificate instead of requesting one.
    #[arg(long, value_name = "ARN", conflicts_with_all = ["pca_arn", "dns_names"])]
    certificate_arn: Option<String>,
    /// The parent instance's IAM role, which reads the object and decrypts its key.
    #[arg(long, value_name = "ARN")]
    role_arn: String,
    #[command(flatten)]
    measurements: MeasurementArgs,
    /// The AWS region. Default: from the AWS environment.
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// An EC2 endpoint URL instead of AWS's (test servers). Default: AWS_ENDPOINT_URL_EC2,
    /// else `https://ec2.REGION.amazonaws.com/`. ACM's follows AWS_ENDPOINT_URL_ACM.
    #[arg(long, value_name = "URL")]
    ec2_endpoint: Option<String>,
}

/// The enclave image a policy admits.
#[derive(Args)]
pub(crate) struct MeasurementArgs {
    /// The JSON `nitro-cli build-enclave` or `describe-eif` prints (its PCR0, and PCR8
    /// when the image is signed, are pinned).
    #[arg(long, value_name = "FILE")]
    eif_measurements: Option<PathBuf>,
    /// An accepted image measurement (PCR0, 96 hex digits); repeatable.
    #[arg(long, value_name = "HEX")]
    pcr0: Vec<String>,
    /// An accepted signing-certificate measurement (PCR8); repeatable.
    #[arg(long, value_name = "HEX")]
    pcr8: Vec<String>,
}

#[derive(Args)]
pub(crate) struct RotateArgs {
    /// Re-issue even before 2/3 of the validity has passed.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    issue: IssueArgs,
}

#[derive(Args)]
pub(crate) struct RevokeArgs {
    /// The Private CA that issued the certificate.
    #[arg(long, value_name = "ARN")]
    pca_arn: String,
    /// The certificate's serial, hex (colons optional), as `provision` prints it.
    #[arg(long, value_name = "HEX")]
    serial: String,
    /// KEY_COMPROMISE, CERTIFICATE_AUTHORITY_COMPROMISE, AFFILIATION_CHANGED, SUPERSEDED,
    /// CESSATION_OF_OPERATION, PRIVILEGE_WITHDRAWN, UNSPECIFIED, A_A_COMPROMISE.
    #[arg(long, default_value = "KEY_COMPROMISE")]
    reason: String,
    #[command(flatten)]
    aws: AwsArgs,
}

fn parse_trust_domain(s: &str) -> Result<spiffe::TrustDomain, String> {
    spiffe::TrustDomain::new(s).map_err(|e| {
        format!("{e}; accepted: lower-case letters, digits, '.', '-', '_', such as example.org")
    })
}

fn parse_spiffe_id(s: &str) -> Result<spiffe::SpiffeId, String> {
    match spiffe::SpiffeId::new(s) {
        Ok(id) if !id.path().is_empty() => Ok(id),
        Ok(_) => Err("a workload ID needs a path; accepted: spiffe://TD/PATH".into()),
        Err(e) => Err(format!("{e}; accepted: spiffe://TD/PATH")),
    }
}

fn location(value: &str) -> anyhow::Result<ObjectLocation> {
    Ok(value
        .parse()
        .map_err(|e| UsageError(format!("--out {e}")))?)
}

async fn issue(args: IssueArgs, subject: Subject) -> anyhow::Result<ExitCode> {
    provision::pca_partition(&args.pca_arn)?;
    let request = Request {
        pca_arn: args.pca_arn,
        subject,
        kms_key_id: args.kms_key_id,
        out: location(&args.out)?,
        validity: args.validity,
    };
    let aws = Aws::load(args.aws.region, args.aws.s3_endpoint).await;
    let issued = aws.issue(&request).await?;
    println_out(&format!(
        "wrote {}\ncertificate {}\nserial {}\nnot after {}",
        request.out,
        issued.certificate_arn,
        issued.serial,
        humantime::format_rfc3339_seconds(issued.not_after)
    ))
}

pub(crate) async fn run(command: ProvisionCommand) -> anyhow::Result<ExitCode> {
    match command {
        ProvisionCommand::Ca(args) => issue(args.issue, Subject::Ca(args.trust_domain)).await,
        ProvisionCommand::Leaf(args) => issue(args.issue, Subject::Leaf(args.spiffe_id)).await,
        ProvisionCommand::JwtKey(args) => {
            issue(args.issue, Subject::JwtKey(args.trust_domain)).await
        }
        ProvisionCommand::Policy(args) => {
            let measurements = args.measurements.read()?;
            let policy = provision::key_policy(
                &args.role_arn,
                args.operator_role_arn.as_deref(),
                &measurements,
            )?;
            println_out(&serde_json::to_string_pretty(&policy)?)
        }
        ProvisionCommand::Acm(args) => acm(args).await,
        ProvisionCommand::Rotate(args) => {
            let out = location(&args.issue.out)?;
            let aws = Aws::load(
                args.issue.aws.region.clone(),
                args.issue.aws.s3_endpoint.clone(),
            )
            .await;
            let existing = aws.read(&out).await?;
            let (subject, not_before, not_after) = provision::describe(&existing)?;
            if !args.force && !provision::due(not_before, not_after, SystemTime::now()) {
                return println_out(&format!(
                    "{out}: not due (valid until {}; re-issued after 2/3 of its validity)",
                    humantime::format_rfc3339_seconds(not_after)
                ));
            }
            issue(args.issue, subject).await
        }
        ProvisionCommand::Revoke(args) => {
            use aws_sdk_acmpca::types::RevocationReason;
            let reason = RevocationReason::from(args.reason.as_str());
            if !RevocationReason::values().contains(&args.reason.as_str()) {
                return Err(UsageError(format!(
                    "--reason {:?} is not a revocation reason; accepted: KEY_COMPROMISE, CERTIFICATE_AUTHORITY_COMPROMISE, AFFILIATION_CHANGED, SUPERSEDED, CESSATION_OF_OPERATION, PRIVILEGE_WITHDRAWN, UNSPECIFIED, A_A_COMPROMISE",
                    args.reason
                ))
                .into());
            }
            let aws = Aws::load(args.aws.region, args.aws.s3_endpoint).await;
            aws.revoke(&args.pca_arn, &args.serial, reason).await?;
            println_out(&format!(
                "revoked {} at {}; it is listed in the CA's next CRL, which `enclaveid host --crl` serves to the agent",
                provision::parse_serial(&args.serial)?,
                args.pca_arn
            ))
        }
    }
}

impl MeasurementArgs {
    /// The image's PCR0 (and PCR8 when signed) from the options.
    fn read(&self) -> anyhow::Result<Measurements> {
        let mut measurements = match &self.eif_measurements {
            Some(path) => {
                let json = std::fs::read(path).map_err(|e| {
                    UsageError(format!("--eif-measurements {}: {e}", path.display()))
                })?;
                let mut all =
                    Measurements::from_nitro_cli_json(&json, &path.display().to_string())?;
                // The image and its signer; PCR1/PCR2 change with every kernel build.
                all.pcrs.retain(|i, _| *i == 0 || *i == 8);
                all
            }
            None => Measurements::default(),
        };
        for pcr0 in &self.pcr0 {
            measurements.add(0, pcr0, "--pcr0")?;
        }
        for pcr8 in &self.pcr8 {
            measurements.add(8, pcr8, "--pcr8")?;
        }
        if !measurements.pcrs.contains_key(&0) {
            return Err(provision::ProvisionError::NoMeasurements.into());
        }
        Ok(measurements)
    }
}

async fn acm(args: AcmArgs) -> anyhow::Result<ExitCode> {
    use provision::acm::{AcmAws, AcmRequest};
    // Everything the operator typed is checked before any AWS call.
    let measurements = args.measurements.read()?;
    if !args.role_arn.starts_with("arn:") || !args.role_arn.contains(":role/") {
        return Err(provision::ProvisionError::RoleArn(args.role_arn).into());
    }
    provision::acm::check_dns_names(&args.dns_names)?;
    if let Some(pca_arn) = &args.pca_arn {
        provision::pca_partition(pca_arn)?;
    }
    let aws = AcmAws::load(args.region, args.ec2_endpoint).await;
    let association = match (&args.certificate_arn, args.pca_arn) {
        (Some(certificate_arn), _) => {
            enclaveid_checks::location::acm_certificate_region(certificate_arn)
                .map_err(|e| UsageError(format!("--certificate-arn {e}")))?;
            aws.associate(certificate_arn, &args.role_arn).await?
        }
        (None, Some(pca_arn)) => {
            let request = AcmRequest {
                pca_arn,
                dns_names: args.dns_names.clone(),
                key_algorithm: args.key_algorithm,
                role_arn: args.role_arn.clone(),
            };
            aws.request_and_associate(&request).await?
        }
        (None, None) => unreachable!("clap requires --pca-arn or --certificate-arn"),
    };
    let policy = provision::acm::role_policy(&association, &measurements)?;
    let usual_bucket = enclaveid_checks::location::ObjectLocation::acm(
        &association.certificate_arn,
        &args.role_arn,
    )
    .ok()
    .and_then(|location| match location {
        ObjectLocation::S3 { bucket, .. } => Some(bucket),
        ObjectLocation::File(_) => None,
    });
    let bucket_flag = if usual_bucket.as_deref() == Some(association.bucket.as_str()) {
        String::new()
    } else {
        format!(" --acm-bucket {}", association.bucket)
    };
    let names = if args.dns_names.is_empty() {
        "\"NAME\"".to_owned()
    } else {
        args.dns_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println_out(&format!(
        "certificate {arn}\nbucket {bucket}\nobject key {key}\nKMS key {kms}\n\n\
         IAM policy for {role} (attach it to the role):\n{policy}\n\n\
         On the parent instance:\n  enclaveid host --acm-certificate-arn {arn} --role-arn {role}{bucket_flag}\n\n\
         In the enclave's agent configuration (docs/aws-setup.md, \"ACM certificates (DNS names)\"):\n\
         [[acm_certificate]]\narn = \"{arn}\"\ndns_names = [{names}]\n\n\
         [[files]]\nacm_certificate = \"{arn}\"\ndir = \"/run/enclaveid/tls\"\n\n\
         The KMS key is AWS-managed and its key policy is AWS's: check on AWS that it releases the key to this enclave image before relying on it.",
        arn = association.certificate_arn,
        bucket = association.bucket,
        key = association.object_key,
        kms = association.kms_key_id,
        role = args.role_arn,
        policy = serde_json::to_string_pretty(&policy)?,
    ))
}

fn println_out(text: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(ExitCode::SUCCESS)
}
