//! Reading what the host serves: objects from S3 or files, and AWS credentials.

use enclaveid_checks::location::ObjectLocation;
use enclaveid_checks::wire::Credentials;

use crate::{HostConfig, HostError};

/// The largest object the host fetches (the enclave's own limits are smaller).
pub(crate) const MAX_OBJECT: usize = 16 * 1024 * 1024;

/// Why an object or the credentials could not be had. Its text goes to the enclave.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    /// The file could not be read.
    #[error("{location}")]
    File {
        /// The object.
        location: ObjectLocation,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// S3 refused or failed.
    #[error("{location}: {message}")]
    S3 {
        /// The object.
        location: ObjectLocation,
        /// The SDK's full message (its error context).
        message: String,
    },
    /// Larger than any object the enclave accepts.
    #[error("{location}: larger than {MAX_OBJECT} bytes")]
    TooLarge {
        /// The object.
        location: ObjectLocation,
    },
    /// The credentials provider failed.
    #[error("the host's AWS credentials: {message}")]
    Credentials {
        /// The provider's message.
        message: String,
    },
}

/// Where objects and credentials come from.
pub(crate) struct Store {
    #[cfg(feature = "aws")]
    s3: aws_sdk_s3::Client,
    credentials: CredentialSource,
}

/// Where the credentials handed to the enclave come from.
enum CredentialSource {
    Static(Credentials),
    #[cfg(feature = "aws")]
    Provider(aws_credential_types::provider::SharedCredentialsProvider),
    None,
}

// === impl Store ===

impl Store {
    /// Loads the AWS configuration (region, credentials chain, S3) when built with AWS
    /// support; refuses `s3://` objects and a missing credentials source otherwise.
    pub(crate) async fn new(
        config: &HostConfig,
        objects: &[&ObjectLocation],
    ) -> Result<Self, HostError> {
        let fixed = config
            .credentials
            .as_ref()
            .map(|c| CredentialSource::Static(to_wire(c)));
        #[cfg(feature = "aws")]
        {
            let _ = objects;
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            if let Some(region) = &config.region {
                loader = loader.region(aws_config::Region::new(region.clone()));
            }
            if let Some(credentials) = config.credentials.clone() {
                loader = loader.credentials_provider(credentials);
            }
            let sdk = loader.load().await;
            let mut s3 = aws_sdk_s3::config::Builder::from(&sdk);
            if let Some(endpoint) = &config.s3_endpoint {
                s3 = s3.endpoint_url(endpoint).force_path_style(true);
            }
            let credentials = match (fixed, sdk.credentials_provider()) {
                (Some(fixed), _) => fixed,
                (None, Some(provider)) => CredentialSource::Provider(provider),
                (None, None) => CredentialSource::None,
            };
            Ok(Self {
                s3: aws_sdk_s3::Client::from_conf(s3.build()),
                credentials,
            })
        }
        #[cfg(not(feature = "aws"))]
        {
            if let Some(s3) = objects
                .iter()
                .find(|o| matches!(o, ObjectLocation::S3 { .. }))
            {
                return Err(HostError::NoAws {
                    what: s3.to_string(),
                });
            }
            Ok(Self {
                credentials: fixed.unwrap_or(CredentialSource::None),
            })
        }
    }

    /// Reads an object (S3 or a file), refusing anything over [`MAX_OBJECT`].
    pub(crate) async fn read(&self, location: &ObjectLocation) -> Result<Vec<u8>, ObjectError> {
        let bytes = match location {
            ObjectLocation::File(path) => {
                tokio::fs::read(path)
                    .await
                    .map_err(|source| ObjectError::File {
                        location: location.clone(),
                        source,
                    })?
            }
            ObjectLocation::S3 { bucket, key } => self.read_s3(location, bucket, key).await?,
        };
        if bytes.len() > MAX_OBJECT {
            return Err(ObjectError::TooLarge {
                location: location.clone(),
            });
        }
        Ok(bytes)
    }

    #[cfg(feature = "aws")]
    async fn read_s3(
        &self,
        location: &ObjectLocation,
        bucket: &str,
        key: &str,
    ) -> Result<Vec<u8>, ObjectError> {
        let object = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| ObjectError::S3 {
                location: location.clone(),
                message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            })?;
        if object
            .content_length()
            .is_some_and(|len| len > MAX_OBJECT as i64)
        {
            return Err(ObjectError::TooLarge {
                location: location.clone(),
            });
        }
        Ok(object
            .body
            .collect()
            .await
            .map_err(|e| ObjectError::S3 {
                location: location.clone(),
                message: format!("reading the body: {e}"),
            })?
            .into_bytes()
            .to_vec())
    }

    #[cfg(not(feature = "aws"))]
    async fn read_s3(
        &self,
        location: &ObjectLocation,
        _bucket: &str,
        _key: &str,
    ) -> Result<Vec<u8>, ObjectError> {
        Err(ObjectError::S3 {
            location: location.clone(),
            message: "this host was built without AWS support".into(),
        })
    }

    /// The credentials to hand over, as JSON.
    pub(crate) async fn credentials(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, ObjectError> {
        match &self.credentials {
            CredentialSource::Static(credentials) => Ok(credentials.to_json()),
            #[cfg(feature = "aws")]
            CredentialSource::Provider(provider) => {
                use aws_credential_types::provider::ProvideCredentials as _;
                let credentials =
                    provider
                        .provide_credentials()
                        .await
                        .map_err(|e| ObjectError::Credentials {
                            message: e.to_string(),
                        })?;
                Ok(to_wire(&credentials).to_json())
            }
            CredentialSource::None => Err(ObjectError::Credentials {
                message: "the host has no AWS credentials provider configured".into(),
            }),
        }
    }
}

/// The SDK's credentials as the host protocol carries them.
fn to_wire(credentials: &aws_credential_types::Credentials) -> Credentials {
    Credentials {
        access_key_id: credentials.access_key_id().to_owned(),
        secret_access_key: credentials.secret_access_key().to_owned(),
        session_token: credentials.session_token().map(str::to_owned),
        expiration: credentials
            .expiry()
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
    }
}
