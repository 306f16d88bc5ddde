//! The host's server: S3 objects, the instance's credentials and a tunnel to KMS, one
//! request per connection.

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::{ProvideCredentials as _, SharedCredentialsProvider};
use tokio::io::AsyncWriteExt as _;

use super::protocol::{self, Op};
use crate::Error;
use crate::transport::{Listener, Stream};

/// The largest object the host fetches from S3 (the enclave's own limits are smaller).
const MAX_OBJECT: usize = 16 * 1024 * 1024;
/// How many enclave connections are served at once.
const MAX_CONNECTIONS: usize = 64;
/// A KMS tunnel is closed after this long, used or not.
const TUNNEL_LIFETIME: Duration = Duration::from_secs(120);

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectLocation {
    /// `s3://BUCKET/KEY`.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// `file:///PATH` on the parent instance.
    File(std::path::PathBuf),
}

/// Where the key-material object comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaterialSource {
    /// An object named directly.
    Object(ObjectLocation),
    /// The object ACM for Nitro Enclaves writes for a certificate associated with a role:
    /// `s3://{partition}-ec2-enclave-certificate-{region}-prod/{role_arn}/{certificate_arn}`.
    Acm {
        /// The ACM certificate ARN (`arn:PARTITION:acm:REGION:ACCOUNT:certificate/ID`).
        certificate_arn: String,
        /// The IAM role the certificate is associated with.
        role_arn: String,
    },
}

/// What `enclaveid host` serves.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The key-material object; `None` for a host that serves only credentials and the KMS
    /// tunnel (to enclaves that decrypt their own secrets, such as a model key).
    pub material: Option<MaterialSource>,
    /// The Private CA's CRL, if it publishes one.
    pub crl: Option<ObjectLocation>,
    /// The JWT-SVID signing key's material, if the trust domain has one.
    pub jwt_material: Option<ObjectLocation>,
    /// The only `HOST:PORT`s a tunnel may reach.
    pub kms_endpoints: Vec<String>,
    /// The region, when not taken from the AWS environment.
    pub region: Option<String>,
    /// An S3 endpoint URL instead of AWS's (path-style addressing), for test servers.
    pub s3_endpoint: Option<String>,
    /// Credentials to serve instead of the AWS environment's (the no-AWS demo).
    pub credentials: Option<aws_credential_types::Credentials>,
}

/// A ready host: AWS configuration loaded.
pub struct Host {
    material: Option<ObjectLocation>,
    crl: Option<ObjectLocation>,
    jwt_material: Option<ObjectLocation>,
    kms_endpoints: Vec<String>,
    s3: aws_sdk_s3::Client,
    credentials: Option<SharedCredentialsProvider>,
}

// === impl ObjectLocation ===

impl std::str::FromStr for ObjectLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("s3://") {
            if let Some((bucket, key)) = rest.split_once('/')
                && !bucket.is_empty()
                && !key.is_empty()
            {
                return Ok(Self::S3 {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                });
            }
        } else if let Some(path) = s.strip_prefix("file://")
            && path.starts_with('/')
        {
            return Ok(Self::File(path.into()));
        }
        Err(format!(
            "{s:?} is not an object location; accepted: s3://BUCKET/KEY, file:///ABSOLUTE/PATH"
        ))
    }
}

impl std::fmt::Display for ObjectLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Self::File(path) => write!(f, "file://{}", path.display()),
        }
    }
}

// === impl MaterialSource ===

impl MaterialSource {
    /// The object to read.
    pub fn location(&self) -> Result<ObjectLocation, Error> {
        match self {
            Self::Object(location) => Ok(location.clone()),
            Self::Acm {
                certificate_arn,
                role_arn,
            } => {
                let parts: Vec<&str> = certificate_arn.splitn(6, ':').collect();
                match parts.as_slice() {
                    ["arn", partition, "acm", region, _account, resource]
                        if !partition.is_empty()
                            && !region.is_empty()
                            && resource.starts_with("certificate/") =>
                    {
                        if !role_arn.starts_with("arn:") || !role_arn.contains(":role/") {
                            return Err(Error::Config(format!(
                                "--role-arn {role_arn:?} is not an IAM role ARN; accepted: arn:PARTITION:iam::ACCOUNT:role/NAME"
                            )));
                        }
                        Ok(ObjectLocation::S3 {
                            bucket: format!("{partition}-ec2-enclave-certificate-{region}-prod"),
                            key: format!("{role_arn}/{certificate_arn}"),
                        })
                    }
                    _ => Err(Error::Config(format!(
                        "--acm-certificate-arn {certificate_arn:?} is not an ACM certificate ARN; accepted: arn:PARTITION:acm:REGION:ACCOUNT:certificate/ID"
                    ))),
                }
            }
        }
    }
}

// === impl Host ===

impl Host {
    /// Loads the AWS configuration (region, credentials chain) from the environment.
    pub async fn new(config: HostConfig) -> Result<Self, Error> {
        let material = config
            .material
            .as_ref()
            .map(MaterialSource::location)
            .transpose()?;
        if config.kms_endpoints.is_empty() {
            return Err(Error::Config(
                "no KMS endpoint to tunnel to: set --kms-endpoint or --region".into(),
            ));
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(credentials) = config.credentials {
            loader = loader.credentials_provider(credentials);
        }
        let sdk = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk);
        if let Some(endpoint) = &config.s3_endpoint {
            s3 = s3.endpoint_url(endpoint).force_path_style(true);
        }
        Ok(Self {
            material,
            crl: config.crl,
            jwt_material: config.jwt_material,
            kms_endpoints: config.kms_endpoints,
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            credentials: sdk.credentials_provider(),
        })
    }

    /// Serves enclaves until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: Listener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        let host = Arc::new(self);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => return Ok(()),
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return Ok(());
            };
            let host = host.clone();
            tokio::spawn(async move {
                host.handle(stream, &peer).await;
                drop(slot);
            });
        }
    }

    async fn handle(&self, mut stream: Box<dyn Stream>, peer: &str) {
        let request = match tokio::time::timeout(
            protocol::TIMEOUT,
            protocol::read_request(&mut stream),
        )
        .await
        {
            Ok(request) => request,
            Err(_) => Err("no request in time".to_owned()),
        };
        let (op, payload) = match request {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(%peer, %error, "bad request");
                let _ = protocol::write_answer(&mut stream, Err(&error)).await;
                return;
            }
        };
        if op == Op::KmsTunnel {
            self.tunnel(stream, &payload, peer).await;
            return;
        }
        let answer = match op {
            Op::KeyMaterial => match &self.material {
                Some(material) => self.object(material).await,
                None => Err("this host serves no key material (started without --material): only credentials and the KMS tunnel".to_owned()),
            },
            Op::Crl => self.optional(self.crl.as_ref()).await,
            Op::JwtKeyMaterial => self.optional(self.jwt_material.as_ref()).await,
            Op::Credentials => self.credentials().await,
            Op::KmsTunnel => unreachable!("handled above"),
        };
        match &answer {
            Ok(bytes) => tracing::info!(%peer, what = op.what(), bytes = bytes.len(), "served"),
            Err(error) => tracing::warn!(%peer, what = op.what(), %error, "could not serve"),
        }
        let answer = answer.as_deref().map_err(String::as_str);
        if let Err(error) = protocol::write_answer(&mut stream, answer).await {
            tracing::warn!(%peer, %error, "writing the answer failed");
        }
    }

    async fn object(&self, location: &ObjectLocation) -> Result<Vec<u8>, String> {
        read_object(&self.s3, location).await
    }

    /// An object the host may not have: empty when it has none.
    async fn optional(&self, location: Option<&ObjectLocation>) -> Result<Vec<u8>, String> {
        match location {
            Some(location) => self.object(location).await,
            None => Ok(Vec::new()),
        }
    }

    async fn credentials(&self) -> Result<Vec<u8>, String> {
        let provider = self
            .credentials
            .as_ref()
            .ok_or("the host has no AWS credentials provider configured")?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| format!("the host's AWS credentials: {e}"))?;
        let expiration = credentials
            .expiry()
            .map(|t| humantime::format_rfc3339_seconds(t).to_string());
        let json = serde_json::json!({
            "AccessKeyId": credentials.access_key_id(),
            "SecretAccessKey": credentials.secret_access_key(),
            "SessionToken": credentials.session_token(),
            "Expiration": expiration,
        });
        Ok(json.to_string().into_bytes())
    }

    async fn tunnel(&self, mut stream: Box<dyn Stream>, target: &[u8], peer: &str) {
        let target = String::from_utf8_lossy(target).into_owned();
        if !self.kms_endpoints.contains(&target) {
            let error = format!(
                "tunnel to {:?} refused; the host tunnels only to {}",
                protocol::sanitize(target.as_bytes()),
                self.kms_endpoints.join(", ")
            );
            tracing::warn!(%peer, %error, "tunnel refused");
            let _ = protocol::write_answer(&mut stream, Err(&error)).await;
            return;
        }
        let upstream =
            match tokio::time::timeout(protocol::TIMEOUT, tokio::net::TcpStream::connect(&target))
                .await
            {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(error)) => {
                    let error = format!("connecting to {target}: {error}");
                    tracing::warn!(%peer, %error, "tunnel failed");
                    let _ = protocol::write_answer(&mut stream, Err(&error)).await;
                    return;
                }
                Err(_) => {
                    let error = format!("connecting to {target}: timed out");
                    let _ = protocol::write_answer(&mut stream, Err(&error)).await;
                    return;
                }
            };
        if protocol::write_answer(&mut stream, Ok(&[])).await.is_err() {
            return;
        }
        tracing::info!(%peer, %target, "tunnel open");
        let mut upstream = upstream;
        let copied = tokio::time::timeout(
            TUNNEL_LIFETIME,
            tokio::io::copy_bidirectional(&mut stream, &mut upstream),
        )
        .await;
        let _ = stream.shutdown().await;
        match copied {
            Ok(Ok((up, down))) => tracing::info!(%peer, %target, up, down, "tunnel closed"),
            Ok(Err(error)) => tracing::info!(%peer, %target, %error, "tunnel closed"),
            Err(_) => tracing::warn!(%peer, %target, "tunnel closed after its lifetime"),
        }
    }
}

/// Reads an object (S3 or a file), refusing anything over 16 MiB.
pub(crate) async fn read_object(
    s3: &aws_sdk_s3::Client,
    location: &ObjectLocation,
) -> Result<Vec<u8>, String> {
    let too_large = || format!("{location}: larger than {MAX_OBJECT} bytes");
    let bytes = match location {
        ObjectLocation::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| format!("{location}: {e}"))?,
        ObjectLocation::S3 { bucket, key } => {
            let object = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| {
                    format!("{location}: {}", aws_sdk_s3::error::DisplayErrorContext(&e))
                })?;
            if object
                .content_length()
                .is_some_and(|len| len > MAX_OBJECT as i64)
            {
                return Err(too_large());
            }
            object
                .body
                .collect()
                .await
                .map_err(|e| format!("{location}: reading the body: {e}"))?
                .into_bytes()
                .to_vec()
        }
    };
    if bytes.len() > MAX_OBJECT {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_host_object_locations_parse() {
        assert_eq!(
            "s3://bucket/a/b.json".parse::<ObjectLocation>().unwrap(),
            ObjectLocation::S3 {
                bucket: "bucket".into(),
                key: "a/b.json".into()
            }
        );
        assert_eq!(
            "file:///etc/m.json".parse::<ObjectLocation>().unwrap(),
            ObjectLocation::File("/etc/m.json".into())
        );
        for bad in ["s3://bucket", "s3:///key", "file://rel", "https://x/y", ""] {
            let error = bad.parse::<ObjectLocation>().unwrap_err();
            assert!(error.contains("accepted: s3://BUCKET/KEY"), "{error}");
        }
    }

    #[test]
    fn kms_host_reads_the_bucket_and_key_acm_writes() {
        let certificate_arn =
            "arn:aws:acm:eu-west-1:123456789012:certificate/0b1e6a16-7c4f-4d8e-9d3b-1e2f3a4b5c6d";
        let role_arn = "arn:aws:iam::123456789012:role/enclave";
        let source = MaterialSource::Acm {
            certificate_arn: certificate_arn.into(),
            role_arn: role_arn.into(),
        };
        assert_eq!(
            source.location().unwrap(),
            ObjectLocation::S3 {
                bucket: "aws-ec2-enclave-certificate-eu-west-1-prod".into(),
                key: format!("{role_arn}/{certificate_arn}"),
            }
        );
        let bad = MaterialSource::Acm {
            certificate_arn: "arn:aws:s3:::bucket".into(),
            role_arn: role_arn.into(),
        };
        assert!(
            bad.location()
                .unwrap_err()
                .to_string()
                .contains("not an ACM certificate ARN")
        );
    }
}
