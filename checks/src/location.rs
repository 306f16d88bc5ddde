//! Where a key-material object (or a CRL) lives: `s3://BUCKET/KEY`, `file:///PATH`, or the
//! object ACM for Nitro Enclaves writes for a certificate associated with an IAM role.
//! `enclaveid provision` writes there and `enclaveid host` reads from there.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

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
    /// `file:///PATH` on the machine that reads or writes it.
    File(PathBuf),
}

/// Why a location or an ARN was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    /// Neither `s3://BUCKET/KEY` nor `file:///ABSOLUTE/PATH`.
    #[error("{0:?} is not an object location; accepted: s3://BUCKET/KEY, file:///ABSOLUTE/PATH")]
    Location(String),
    /// Not an ACM certificate ARN.
    #[error(
        "{0:?} is not an ACM certificate ARN; accepted: arn:PARTITION:acm:REGION:ACCOUNT:certificate/ID"
    )]
    AcmCertificateArn(String),
    /// Not an IAM role ARN.
    #[error(
        "--role-arn {0:?} is not an IAM role ARN; accepted: arn:PARTITION:iam::ACCOUNT:role/NAME"
    )]
    RoleArn(String),
}

// === impl ObjectLocation ===

impl ObjectLocation {
    /// The object ACM for Nitro Enclaves writes for `certificate_arn` associated with
    /// `role_arn`: `s3://{partition}-ec2-enclave-certificate-{region}-prod/{role_arn}/{certificate_arn}`.
    pub fn acm(certificate_arn: &str, role_arn: &str) -> Result<Self, LocationError> {
        let (partition, region) = acm_certificate_region(certificate_arn)?;
        Self::acm_in(
            &format!("{partition}-ec2-enclave-certificate-{region}-prod"),
            certificate_arn,
            role_arn,
        )
    }

    /// The same object in `bucket`, as `AssociateEnclaveCertificateIamRole` names it
    /// (`CertificateS3BucketName`), for when it differs from the usual name.
    pub fn acm_in(
        bucket: &str,
        certificate_arn: &str,
        role_arn: &str,
    ) -> Result<Self, LocationError> {
        acm_certificate_region(certificate_arn)?;
        if !role_arn.starts_with("arn:") || !role_arn.contains(":role/") {
            return Err(LocationError::RoleArn(role_arn.to_owned()));
        }
        Ok(Self::S3 {
            bucket: bucket.to_owned(),
            key: format!("{role_arn}/{certificate_arn}"),
        })
    }
}

/// The partition and region of an ACM certificate ARN
/// (`arn:PARTITION:acm:REGION:ACCOUNT:certificate/ID`).
pub fn acm_certificate_region(certificate_arn: &str) -> Result<(&str, &str), LocationError> {
    let refused = || LocationError::AcmCertificateArn(certificate_arn.to_owned());
    let parts: Vec<&str> = certificate_arn.splitn(6, ':').collect();
    let ["arn", partition, "acm", region, account, resource] = parts.as_slice() else {
        return Err(refused());
    };
    let id = resource.strip_prefix("certificate/").ok_or_else(refused)?;
    let plain =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !plain(partition) || !plain(region) || !plain(account) || !plain(id) {
        return Err(refused());
    }
    Ok((partition, region))
}

impl FromStr for ObjectLocation {
    type Err = LocationError;

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
        Err(LocationError::Location(s.to_owned()))
    }
}

impl fmt::Display for ObjectLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Self::File(path) => write!(f, "file://{}", path.display()),
        }
    }
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
            let error = bad.parse::<ObjectLocation>().unwrap_err().to_string();
            assert!(error.contains("accepted: s3://BUCKET/KEY"), "{error}");
        }
    }

    #[test]
    fn kms_host_reads_the_bucket_and_key_acm_writes() {
        let certificate_arn =
            "arn:aws:acm:eu-west-1:123456789012:certificate/0b1e6a16-7c4f-4d8e-9d3b-1e2f3a4b5c6d";
        let role_arn = "arn:aws:iam::123456789012:role/enclave";
        assert_eq!(
            ObjectLocation::acm(certificate_arn, role_arn).unwrap(),
            ObjectLocation::S3 {
                bucket: "aws-ec2-enclave-certificate-eu-west-1-prod".into(),
                key: format!("{role_arn}/{certificate_arn}"),
            }
        );
        let error = ObjectLocation::acm("arn:aws:s3:::bucket", role_arn).unwrap_err();
        assert!(error.to_string().contains("not an ACM certificate ARN"));
        let error = ObjectLocation::acm(certificate_arn, "arn:aws:iam::1:user/x").unwrap_err();
        assert!(error.to_string().contains("not an IAM role ARN"));
        // The association may name another bucket; its key is the same.
        assert_eq!(
            ObjectLocation::acm_in(
                "aws-ec2-enclave-certificate-eu-west-1",
                certificate_arn,
                role_arn
            )
            .unwrap()
            .to_string(),
            format!("s3://aws-ec2-enclave-certificate-eu-west-1/{role_arn}/{certificate_arn}")
        );
    }

    #[test]
    fn acm_route_certificate_arns_give_their_partition_and_region() {
        assert_eq!(
            acm_certificate_region("arn:aws-cn:acm:cn-north-1:123456789012:certificate/abc-1")
                .unwrap(),
            ("aws-cn", "cn-north-1")
        );
        for bad in [
            "arn:aws:acm:eu-west-1:123456789012:certificate/",
            "arn:aws:acm::123456789012:certificate/abc",
            "arn:aws:acm:eu-west-1:123456789012:certificate/a/../b",
            "arn:aws:acm:eu-west-1:123456789012:key/abc",
            "arn:aws:kms:eu-west-1:123456789012:certificate/abc",
        ] {
            let error = acm_certificate_region(bad).unwrap_err().to_string();
            assert!(
                error.contains("accepted: arn:PARTITION:acm:REGION:ACCOUNT:certificate/ID"),
                "{bad}: {error}"
            );
        }
    }
}
