//! AWS Signature Version 4 on a request EnclaveID builds by hand, where the AWS SDK cannot
//! go: KMS `Decrypt` from inside the enclave (through the host's tunnel), and the one EC2
//! call of `enclaveid provision acm` (aws-sdk-ec2 is too large to link for it).

use std::time::SystemTime;

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("signing the {service} request with SigV4")]
pub struct SigningError {
    /// The service it was for.
    pub service: &'static str,
    /// aws-sigv4's reason (its error types differ per step).
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Signs `request` for `service` in `region` with `credentials` at `now`: adds
/// `x-amz-date`, `x-amz-security-token` (with a session token) and `authorization`. The
/// request must already carry its `host` header and whole body.
pub fn sign(
    request: &mut http::Request<Vec<u8>>,
    service: &'static str,
    region: &str,
    credentials: aws_credential_types::Credentials,
    now: SystemTime,
) -> Result<(), SigningError> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
    let error = |source: Box<dyn std::error::Error + Send + Sync>| SigningError { service, source };
    let identity = credentials.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| error(e.into()))?
        .into();
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        request.uri().to_string(),
        headers.into_iter(),
        SignableBody::Bytes(request.body()),
    )
    .map_err(|e| error(e.into()))?;
    let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
        .map_err(|e| error(e.into()))?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigv4_signs_with_the_service_region_and_session_token() {
        let mut request = http::Request::builder()
            .method("POST")
            .uri("https://ec2.eu-west-1.amazonaws.com/")
            .header("host", "ec2.eu-west-1.amazonaws.com")
            .body(b"Action=X".to_vec())
            .unwrap();
        let credentials = aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            Some("token".into()),
            None,
            "t",
        );
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        sign(&mut request, "ec2", "eu-west-1", credentials, at).unwrap();
        let header = |name: &str| request.headers()[name].to_str().unwrap().to_owned();
        let authorization = header("authorization");
        assert!(
            authorization.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/eu-west-1/ec2/aws4_request, SignedHeaders="
            ),
            "{authorization}"
        );
        assert!(
            authorization.contains("x-amz-security-token"),
            "{authorization}"
        );
        assert_eq!(header("x-amz-date"), "20231114T221320Z");
        assert_eq!(header("x-amz-security-token"), "token");
    }
}
