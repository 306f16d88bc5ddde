//! KMS `Decrypt` with a `Recipient`, called from inside the enclave through the host's
//! tunnel.
//!
//! The AWS SDK cannot dial through the host's tunnel (and the enclave links no AWS SDK),
//! so the call is one HTTP/1.1 request signed with SigV4 (`aws-sigv4`), over TLS from
//! inside the enclave to KMS (`https://`; the host relays ciphertext only). `http://`
//! endpoints are for test servers.

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use enclaveid_checks::wire::{self, Credentials};
use enclaveid_io::Stream;
use http_body_util::BodyExt as _;
use serde::Deserialize;

use crate::config::KmsEndpoint;

/// The largest KMS answer read.
const MAX_KMS_ANSWER: usize = 256 * 1024;

/// A boxed cause from a library whose error types differ per call (SigV4, hyper bodies).
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why KMS did not release the key. Every message names the endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The request could not be built or signed.
    #[error("KMS Decrypt at {endpoint}: preparing the signed request")]
    Request {
        /// The endpoint.
        endpoint: KmsEndpoint,
        /// Why.
        #[source]
        source: Cause,
    },
    /// TLS to KMS failed (through the tunnel).
    #[error("KMS Decrypt at {endpoint}: TLS")]
    Tls {
        /// The endpoint.
        endpoint: KmsEndpoint,
        /// Why.
        #[source]
        source: Cause,
    },
    /// HTTP failed.
    #[error("KMS Decrypt at {endpoint}: HTTP")]
    Http {
        /// The endpoint.
        endpoint: KmsEndpoint,
        /// Why.
        #[source]
        source: Cause,
    },
    /// The answer is not KMS's JSON.
    #[error("KMS Decrypt at {endpoint}: HTTP {status} with a body that is not KMS JSON: {body}")]
    NotJson {
        /// The endpoint.
        endpoint: KmsEndpoint,
        /// The HTTP status.
        status: http::StatusCode,
        /// The start of the body, sanitized.
        body: String,
        /// The JSON parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// KMS refused: the key policy's conditions not met, a bad ciphertext, throttling.
    #[error(
        "KMS Decrypt at {endpoint}: HTTP {status}: {code}: {message}{}",
        measurements.as_deref().map(|m| format!("; this enclave's measurements, to compare with the key policy's kms:RecipientAttestation conditions: {m}")).unwrap_or_default()
    )]
    Refused {
        /// The endpoint.
        endpoint: KmsEndpoint,
        /// The HTTP status.
        status: http::StatusCode,
        /// AWS's error code (`AccessDeniedException`, …), sanitized.
        code: String,
        /// Its message, sanitized.
        message: String,
        /// On `AccessDeniedException`: this enclave's PCRs, since KMS does not say which
        /// condition failed.
        measurements: Option<String>,
    },
    /// A success without the ciphertext.
    #[error("KMS Decrypt at {endpoint}: the answer has no CiphertextForRecipient")]
    NoCiphertext {
        /// The endpoint.
        endpoint: KmsEndpoint,
    },
    /// The ciphertext is not base64.
    #[error("KMS Decrypt at {endpoint}: CiphertextForRecipient is not base64")]
    NotBase64 {
        /// The endpoint.
        endpoint: KmsEndpoint,
        /// Why.
        #[source]
        source: base64::DecodeError,
    },
}

impl KmsError {
    /// Whether KMS refused the call because a condition of the key policy failed.
    pub fn is_access_denied(&self) -> bool {
        matches!(self, Self::Refused { code, .. } if code == "AccessDeniedException")
    }
}

/// The JSON body of a `Decrypt` call with a `Recipient`: only the ciphertext and the
/// recipient, as ACM for Nitro Enclaves calls it (the key is named in the blob).
pub(crate) fn decrypt_request_body(ciphertext_blob: &[u8], attestation_document: &[u8]) -> Vec<u8> {
    serde_json::json!({
        "CiphertextBlob": BASE64.encode(ciphertext_blob),
        "Recipient": {
            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            "AttestationDocument": BASE64.encode(attestation_document),
        },
    })
    .to_string()
    .into_bytes()
}

/// Calls KMS `Decrypt` with a `Recipient` over `stream` and returns the
/// `CiphertextForRecipient` (CMS, still encrypted to the enclave's key).
pub(crate) async fn decrypt_for_recipient(
    stream: Box<dyn Stream>,
    endpoint: &KmsEndpoint,
    region: &str,
    credentials: &Credentials,
    body: Vec<u8>,
) -> Result<Vec<u8>, KmsError> {
    let request_error = |source: Cause| KmsError::Request {
        endpoint: endpoint.clone(),
        source,
    };
    let mut request = http::Request::builder()
        .method("POST")
        .uri(endpoint.url())
        .header("host", endpoint.host_header())
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "TrentService.Decrypt")
        .body(body)
        .map_err(|e| request_error(e.into()))?;
    sign(&mut request, region, credentials).map_err(request_error)?;
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(
        parts,
        http_body_util::Full::new(prost::bytes::Bytes::from(body)),
    );

    let response = if endpoint.tls {
        let tls = tls_connect(stream, &endpoint.host)
            .await
            .map_err(|source| KmsError::Tls {
                endpoint: endpoint.clone(),
                source,
            })?;
        send(tls, request).await
    } else {
        send(stream, request).await
    }
    .map_err(|source| KmsError::Http {
        endpoint: endpoint.clone(),
        source,
    })?;
    let (status, body) = response;
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "CiphertextForRecipient")]
        ciphertext_for_recipient: Option<String>,
        #[serde(rename = "__type")]
        code: Option<String>,
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(&body).map_err(|source| KmsError::NotJson {
        endpoint: endpoint.clone(),
        status,
        body: wire::sanitize(&body[..body.len().min(200)]),
        source,
    })?;
    if !status.is_success() {
        let code = answer.code.unwrap_or_default();
        // `__type` may carry a namespace prefix (`com.amazonaws.kms#…`).
        let code = code.rsplit('#').next().unwrap_or_default();
        return Err(KmsError::Refused {
            endpoint: endpoint.clone(),
            status,
            code: wire::sanitize(code.as_bytes()),
            message: wire::sanitize(answer.message.unwrap_or_default().as_bytes()),
            measurements: None,
        });
    }
    let cms = answer
        .ciphertext_for_recipient
        .ok_or_else(|| KmsError::NoCiphertext {
            endpoint: endpoint.clone(),
        })?;
    BASE64.decode(cms).map_err(|source| KmsError::NotBase64 {
        endpoint: endpoint.clone(),
        source,
    })
}

fn sign(
    request: &mut http::Request<Vec<u8>>,
    region: &str,
    credentials: &Credentials,
) -> Result<(), Cause> {
    let credentials = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        credentials.session_token.clone(),
        None,
        "enclaveid-host",
    );
    enclaveid_checks::sigv4::sign(request, "kms", region, credentials, SystemTime::now())?;
    Ok(())
}

async fn tls_connect(
    stream: Box<dyn Stream>,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<Box<dyn Stream>>, Cause> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await?)
}

async fn send(
    stream: impl Stream,
    request: http::Request<http_body_util::Full<prost::bytes::Bytes>>,
) -> Result<(http::StatusCode, Vec<u8>), Cause> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_KMS_ANSWER)
        .collect()
        .await?
        .to_bytes()
        .to_vec();
    connection.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decrypt_body_names_only_the_blob_and_the_recipient() {
        let body: serde_json::Value =
            serde_json::from_slice(&decrypt_request_body(b"blob", b"doc")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "CiphertextBlob": "YmxvYg==",
                "Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": "ZG9j"},
            })
        );
    }

    #[test]
    fn requests_are_signed_with_sigv4_for_kms() {
        let credentials = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("token".into()),
            expiration: None,
        };
        let mut request = http::Request::builder()
            .method("POST")
            .uri("https://kms.eu-west-1.amazonaws.com/")
            .header("host", "kms.eu-west-1.amazonaws.com")
            .header("x-amz-target", "TrentService.Decrypt")
            .body(b"{}".to_vec())
            .unwrap();
        sign(&mut request, "eu-west-1", &credentials).unwrap();
        let auth = request.headers()["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/eu-west-1/kms/aws4_request"), "{auth}");
        assert!(
            auth.contains("x-amz-target"),
            "the target is signed: {auth}"
        );
        assert_eq!(request.headers()["x-amz-security-token"], "token");
        assert!(
            !format!("{credentials:?}").contains("wJalr"),
            "the secret is not printed"
        );
    }

    #[test]
    fn an_access_denied_names_this_enclaves_measurements() {
        let error = KmsError::Refused {
            endpoint: KmsEndpoint::for_region("eu-west-1"),
            status: http::StatusCode::BAD_REQUEST,
            code: "AccessDeniedException".into(),
            message: "denied".into(),
            measurements: Some("ImageSha384 (PCR0) = ab".into()),
        };
        assert!(error.is_access_denied());
        let text = error.to_string();
        assert!(
            text.contains("AccessDeniedException: denied; this enclave's measurements")
                && text.contains("ImageSha384 (PCR0) = ab"),
            "{text}"
        );
    }
}
