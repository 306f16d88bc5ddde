//! `enclaveid host`: the parent instance's side of the `kms` upstream.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use enclaveid_host::{
    AcmSource, Host, HostConfig, ObjectLocation, Relay, RelayLimits, RelayStats, Route, Telemetry,
};
use enclaveid_io::{Address, AddressExt as _};

use crate::UsageError;

/// Serve an enclave its key material, AWS credentials, a KMS tunnel and the CRL, and
/// relay streams between enclaves and the network (--route, --relay-allow).
///
/// Runs on the parent EC2 instance, which the enclave does not trust: the enclave checks
/// everything it is given (the certificate chains to its own Private CA root; only KMS,
/// to the enclave's attestation, releases the key). AWS credentials and region come from
/// the usual AWS environment (AWS_* variables, profile, instance role).
#[derive(Args)]
pub(crate) struct HostArgs {
    /// Where to listen: vsock://any:PORT on the parent instance; tcp://HOST:PORT or
    /// unix:///PATH to run both sides on one machine.
    #[arg(long, value_name = "ADDRESS", default_value = "vsock://any:8090")]
    listen: String,
    /// The key-material object: s3://BUCKET/KEY (as `enclaveid provision` writes it) or
    /// file:///PATH. Without it (and without --acm-certificate-arn) the host serves only
    /// credentials and the KMS tunnel, for enclaves that decrypt their own secrets.
    #[arg(long, value_name = "LOCATION")]
    material: Option<String>,
    /// Serve the object ACM for Nitro Enclaves writes for this certificate
    /// (s3://PARTITION-ec2-enclave-certificate-REGION-prod/ROLE_ARN/CERTIFICATE_ARN) to
    /// the agent's `[[acm_certificate]]` of that ARN; repeatable. With one and no
    /// --material, it is also the key material (which the kms upstream refuses: ACM
    /// certificates carry DNS names only, not a SPIFFE ID).
    #[arg(
        long = "acm-certificate-arn",
        value_name = "ARN",
        requires = "role_arn"
    )]
    acm_certificate_arns: Vec<String>,
    /// The IAM role the ACM certificates are associated with (with --acm-certificate-arn).
    #[arg(long, value_name = "ARN", requires = "acm_certificate_arns")]
    role_arn: Option<String>,
    /// The bucket AssociateEnclaveCertificateIamRole named (CertificateS3BucketName;
    /// `enclaveid provision acm` prints it), when it is not the usual
    /// PARTITION-ec2-enclave-certificate-REGION-prod.
    #[arg(long, value_name = "BUCKET", requires = "acm_certificate_arns")]
    acm_bucket: Option<String>,
    /// The Private CA's CRL: s3://BUCKET/crl/CA_ID.crl (as Private CA publishes it) or
    /// file:///PATH. Without it the host answers "no CRL", which an enclave with
    /// require_crl = true (the default) refuses.
    #[arg(long, value_name = "LOCATION")]
    crl: Option<String>,
    /// The JWT-SVID signing key's material (`enclaveid provision jwt-key`): s3://BUCKET/KEY
    /// or file:///PATH. Without it the enclave signs no JWT-SVID.
    #[arg(long, value_name = "LOCATION")]
    jwt_material: Option<String>,
    /// HOST:PORT the KMS tunnel may reach; repeatable. Default kms.REGION.amazonaws.com:443.
    #[arg(long = "kms-endpoint", value_name = "HOST:PORT")]
    kms_endpoints: Vec<String>,
    /// The AWS region. Default: from the AWS environment (AWS_REGION, profile, IMDS).
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// An S3 endpoint URL instead of AWS's, with path-style addressing (test servers
    /// such as moto).
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// Relay every connection accepted on LISTEN to DESTINATION; repeatable. Out of an
    /// enclave: vsock://any:6000=vsock://16:5000 (another enclave here) or
    /// vsock://any:6000=tcp://10.0.1.7:7000 (another instance's parent); into one:
    /// tcp://0.0.0.0:7000=vsock://16:5000. Bytes only: TLS runs end to end.
    #[arg(long = "route", value_name = "LISTEN=DESTINATION")]
    routes: Vec<String>,
    /// A destination an enclave may name in a connect request (vsock://CID:PORT or
    /// tcp://HOST:PORT); repeatable. Others are refused and logged.
    #[arg(long = "relay-allow", value_name = "ADDRESS")]
    relay_allow: Vec<String>,
    /// Close a relayed connection after this long without a byte either way.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    relay_idle_timeout: humantime::Duration,
    /// Connections one route (or one connect destination) may have open at once.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    relay_max_connections: u64,
    /// Run only the --route relays: no key material, credentials or KMS tunnel (a
    /// parent that only carries traffic, such as the inference side of two instances).
    #[arg(long, requires = "routes")]
    relay_only: bool,
    /// Serve the operator's view over HTTP here: /metrics (Prometheus: the enclaves'
    /// metrics labelled by enclave, and the host's own), /healthz and /readyz (the
    /// enclaves' health). The enclaves' log events go to stdout as JSON lines either way.
    /// Such as tcp://0.0.0.0:9090.
    #[arg(long, value_name = "ADDRESS")]
    telemetry_listen: Option<String>,
}

pub(crate) async fn run(
    args: HostArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let usage = UsageError;
    let listen: Address = args
        .listen
        .parse()
        .map_err(|e| usage(format!("--listen {e}")))?;
    let routes = args
        .routes
        .iter()
        .map(|r| r.parse::<Route>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage(format!("--route {}", enclaveid_checks::Chain(&e))))?;
    let relay_allow = args
        .relay_allow
        .iter()
        .map(|a| a.parse::<Address>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage(format!("--relay-allow {e}")))?;
    if args.relay_max_connections == 0 {
        return Err(usage("--relay-max-connections 0: at least 1 is needed".into()).into());
    }
    let relay_limits = RelayLimits {
        idle_timeout: args.relay_idle_timeout.into(),
        max_connections: args.relay_max_connections,
        ..RelayLimits::default()
    };
    let relay_stats = RelayStats::default();
    let telemetry = Telemetry::new(relay_stats.clone());
    if let Some(listen) = &args.telemetry_listen {
        let address: Address = listen
            .parse()
            .map_err(|e| usage(format!("--telemetry-listen {e}")))?;
        let listener = address
            .bind()
            .await
            .with_context(|| format!("cannot listen on --telemetry-listen {address}"))?;
        let bound = listener.local_address().unwrap_or(address);
        tracing::info!(listen = %bound, "serving /metrics, /healthz and /readyz");
        tokio::spawn(enclaveid_host::telemetry::serve_http(
            listener,
            telemetry.clone(),
            std::future::pending(),
        ));
    }
    let relay = Relay::bind(&routes, relay_limits, relay_stats.clone())
        .await
        .map_err(|(route, error)| anyhow::anyhow!("cannot listen for --route {route}: {error}"))?;
    for (route, bound) in routes.iter().zip(relay.local_addresses()) {
        tracing::info!(listen = %bound, to = %route.to, "relay route");
    }
    // The relay runs until the host stops (dropping it closes the route listeners).
    let relayed = relay.serve(std::future::pending());
    if args.relay_only {
        tokio::select! {
            () = relayed => {}
            () = shutdown => {}
        }
        return Ok(ExitCode::SUCCESS);
    }
    let location = |flag: &str, value: &str| {
        value
            .parse::<ObjectLocation>()
            .map_err(|e| usage(format!("--{flag} {e}")))
    };
    let acm: Vec<AcmSource> = match &args.role_arn {
        Some(role_arn) => args
            .acm_certificate_arns
            .iter()
            .map(|certificate_arn| {
                let source = AcmSource {
                    certificate_arn: certificate_arn.clone(),
                    role_arn: role_arn.clone(),
                    bucket: args.acm_bucket.clone(),
                };
                source
                    .location()
                    .map(|_| source)
                    .map_err(|e| usage(format!("--acm-certificate-arn: {e}")))
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let material = match (&args.material, acm.as_slice()) {
        (Some(material), _) => Some(location("material", material)?),
        (None, [only]) => Some(only.location().map_err(|e| usage(e.to_string()))?),
        (None, _) => None,
    };
    let crl = args
        .crl
        .as_deref()
        .map(|c| location("crl", c))
        .transpose()?;
    let mut kms_endpoints = args.kms_endpoints;
    for endpoint in &kms_endpoints {
        let port = endpoint.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(usage(format!(
                "--kms-endpoint {endpoint:?} is not HOST:PORT, such as kms.eu-west-1.amazonaws.com:443"
            ))
            .into());
        }
    }
    if kms_endpoints.is_empty()
        && let Some(region) = &args.region
    {
        kms_endpoints.push(format!("kms.{region}.amazonaws.com:443"));
    }
    let mut config = HostConfig {
        material,
        acm,
        crl,
        kms_endpoints,
        region: args.region,
        s3_endpoint: args.s3_endpoint,
        credentials: None,
        jwt_material: args
            .jwt_material
            .as_deref()
            .map(|l| location("jwt-material", l))
            .transpose()?,
        relay_allow,
        relay_limits,
        relay_stats,
        telemetry: Some(telemetry),
    };
    if config.kms_endpoints.is_empty() {
        // The region from the AWS environment names the endpoint.
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let region = sdk
            .region()
            .context("no AWS region: pass --region or set AWS_REGION")?;
        config
            .kms_endpoints
            .push(format!("kms.{region}.amazonaws.com:443"));
    }
    let endpoints = config.kms_endpoints.join(", ");
    let host = Host::new(config).await?;
    let listener = listen
        .bind()
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_address().unwrap_or(listen);
    tracing::info!(listen = %bound, kms = %endpoints, "enclaveid host serving");
    tokio::select! {
        () = host.serve(listener, shutdown) => {}
        () = relayed => {}
    }
    Ok(ExitCode::SUCCESS)
}
