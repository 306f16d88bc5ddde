//! `enclaveid host`: the parent instance's side of EnclaveID.
//!
//! The parent instance is outside the enclave's trust boundary: this crate only relays
//! what the enclave verifies itself. It serves, one request per connection, in the frames
//! of `enclaveid_checks::wire`: the key-material object (S3, a file, or the object ACM
//! for Nitro Enclaves writes), short-lived AWS credentials, the Private CA's CRL, the JWT
//! key's material, and a TCP tunnel to the allow-listed KMS endpoints (the enclave's TLS
//! runs end to end through it; the host sees ciphertext only).
//!
//! It is also the enclaves' [`relay`]: enclaves have no vsock path to each other or to
//! the network, so streams between them cross the parent, as ciphertext.
//!
//! It leaves to others: every check of what it serves (the enclave's), the formats
//! (`enclaveid-checks`), sockets (`enclaveid-io`).
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `aws` (default) | `s3://` objects and credentials from the AWS environment, through the AWS SDK |
//!
//! ```no_run
//! use enclaveid_host::{Host, HostConfig};
//! use enclaveid_io::{Address, AddressExt as _};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let host = Host::new(HostConfig {
//!     kms_endpoints: vec!["kms.eu-west-1.amazonaws.com:443".into()],
//!     region: Some("eu-west-1".into()),
//!     ..HostConfig::default()
//! })
//! .await?;
//! let listener = "vsock://any:8090".parse::<Address>()?.bind().await?;
//! host.serve(listener, std::future::pending()).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod objects;
pub mod relay;
mod server;
pub mod telemetry;

pub use enclaveid_checks::location::{LocationError, ObjectLocation};
pub use objects::ObjectError;
pub use relay::{Relay, RelayLimits, RelayStats, Route};
pub use server::Host;
pub use telemetry::Telemetry;

/// An ACM certificate the host serves under op 8 (the `[[acm_certificate]]` of an
/// enclave's agent): the object ACM for Nitro Enclaves writes for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmSource {
    /// The ACM certificate ARN (`arn:PARTITION:acm:REGION:ACCOUNT:certificate/ID`).
    pub certificate_arn: String,
    /// The IAM role the certificate is associated with.
    pub role_arn: String,
    /// The bucket `AssociateEnclaveCertificateIamRole` named, when not the usual
    /// `{partition}-ec2-enclave-certificate-{region}-prod`.
    pub bucket: Option<String>,
}

impl AcmSource {
    /// The certificate's ARN.
    pub fn certificate_arn(&self) -> &str {
        &self.certificate_arn
    }

    /// The object to read.
    pub fn location(&self) -> Result<ObjectLocation, LocationError> {
        match &self.bucket {
            Some(bucket) => ObjectLocation::acm_in(bucket, &self.certificate_arn, &self.role_arn),
            None => ObjectLocation::acm(&self.certificate_arn, &self.role_arn),
        }
    }
}

/// What `enclaveid host` serves.
#[derive(Clone, Debug, Default)]
pub struct HostConfig {
    /// The key-material object; `None` for a host that serves only credentials and the KMS
    /// tunnel (to enclaves that decrypt their own secrets, such as a model key).
    pub material: Option<ObjectLocation>,
    /// The Private CA's CRL, if it publishes one.
    pub crl: Option<ObjectLocation>,
    /// The JWT-SVID signing key's material, if the trust domain has one.
    pub jwt_material: Option<ObjectLocation>,
    /// ACM certificates (DNS names) served by ARN (op 8).
    pub acm: Vec<AcmSource>,
    /// The only `HOST:PORT`s a tunnel may reach.
    pub kms_endpoints: Vec<String>,
    /// The region, when not taken from the AWS environment.
    pub region: Option<String>,
    /// An S3 endpoint URL instead of AWS's (path-style addressing), for test servers.
    pub s3_endpoint: Option<String>,
    /// Credentials to serve instead of the AWS environment's (the no-AWS demo).
    pub credentials: Option<aws_credential_types::Credentials>,
    /// The destinations an enclave may name in a connect request (op 6): other
    /// enclaves (`vsock://CID:PORT`) or TCP addresses. Empty: connect is refused.
    pub relay_allow: Vec<enclaveid_io::Address>,
    /// Limits of relayed connections (connect requests and routes).
    pub relay_limits: RelayLimits,
    /// Where relayed connections are counted (shared with the routes' [`Relay`]).
    pub relay_stats: RelayStats,
    /// Where the enclaves' telemetry goes; `None`: a new one (see [`Host::telemetry`]).
    pub telemetry: Option<std::sync::Arc<Telemetry>>,
}

/// Why the host could not start. Every variant is the operator's input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// A location or ARN is malformed.
    #[error(transparent)]
    Location(#[from] LocationError),
    /// No KMS endpoint to tunnel to.
    #[error("no KMS endpoint to tunnel to: set --kms-endpoint or --region")]
    NoKmsEndpoint,
    /// An `s3://` object or the AWS credentials chain in a build without AWS support.
    #[error("{what} needs `enclaveid host` built with AWS support (feature `aws`)")]
    NoAws {
        /// What needed it.
        what: String,
    },
}
