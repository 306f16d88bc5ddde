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
    /// The JSON `nitro-cli build-enclave` or `describe-eif` prints (its PCR0, and PCR8
    /// when the image is signed, are pinned).
    #[arg(long, value_name = "FILE", required_unless_present = "pcr0")]
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
            let mut measurements = match &args.eif_measurements {
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
            for pcr0 in &args.pcr0 {
                measurements.add(0, pcr0, "--pcr0")?;
            }
            for pcr8 in &args.pcr8 {
                measurements.add(8, pcr8, "--pcr8")?;
            }
            let policy = provision::key_policy(
                &args.role_arn,
                args.operator_role_arn.as_deref(),
                &measurements,
            )?;
            println_out(&serde_json::to_string_pretty(&policy)?)
        }
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

fn println_out(text: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(ExitCode::SUCCESS)
}
