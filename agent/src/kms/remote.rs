//! The enclave's calls out: to `enclaveid host` (key material, credentials, CRL, a
//! tunnel) and, through the tunnel, to KMS `Decrypt` with a `Recipient`.
//!
//! The AWS SDK cannot dial through the host's tunnel, so the KMS call is one HTTP/1.1
//! request signed with SigV4 (`aws-sigv4`), over TLS from inside the enclave to KMS
//! (`https://`; the host relays ciphertext only). `http://` endpoints are for test
//! servers.

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Error;
use crate::host::protocol::{self, AnswerError, Op};
use crate::transport::{Address, Stream};

/// The largest KMS answer read.
const MAX_KMS_ANSWER: usize = 256 * 1024;

/// The enclave's side of the host protocol.
#[derive(Clone, Debug)]
pub struct HostClient {
    address: Address,
}

/// Temporary AWS credentials, as the host hands them over.
#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(rename_all = "PascalCase")]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
}

/// A KMS endpoint: where the HTTP request goes and what TLS checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsEndpoint {
    /// TLS (`https://`), or plain HTTP for test servers.
    pub tls: bool,
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// A KMS error answer.
#[derive(Debug)]
pub struct KmsError {
    /// The AWS error code (`AccessDeniedException`, …).
    pub code: String,
    /// Its message.
    pub message: String,
}

// === impl HostClient ===

impl HostClient {
    /// A client of the host at `address`.
    pub fn new(address: Address) -> Self {
        Self { address }
    }

    async fn request(&self, op: Op, payload: &[u8]) -> Result<(Box<dyn Stream>, Vec<u8>), Error> {
        let failed = |why: String| {
            Error::Host(format!(
                "{} from the host at {}: {why}",
                op.what(),
                self.address
            ))
        };
        let exchange = async {
            let mut stream = self
                .address
                .connect()
                .await
                .map_err(|e| failed(format!("cannot connect: {e}")))?;
            protocol::write_request(&mut stream, op, payload)
                .await
                .map_err(|e| failed(format!("sending the request: {e}")))?;
            match protocol::read_answer(&mut stream, op).await {
                Ok(answer) => Ok((stream, answer)),
                Err(AnswerError::Refused(text)) => Err(failed(format!("the host says: {text}"))),
                Err(AnswerError::Malformed(text)) => {
                    Err(failed(format!("malformed answer: {text}")))
                }
            }
        };
        tokio::time::timeout(protocol::TIMEOUT, exchange)
            .await
            .map_err(|_| failed(format!("no answer within {:?}", protocol::TIMEOUT)))?
    }

    /// The key-material JSON (not yet parsed).
    pub async fn key_material(&self) -> Result<Vec<u8>, Error> {
        Ok(self.request(Op::KeyMaterial, &[]).await?.1)
    }

    /// Credentials for the KMS call.
    pub async fn credentials(&self) -> Result<Credentials, Error> {
        let json = zeroize::Zeroizing::new(self.request(Op::Credentials, &[]).await?.1);
        let credentials: Credentials = serde_json::from_slice(&json).map_err(|e| {
            Error::Host(format!(
                "credentials from the host at {}: not the expected JSON object ({e})",
                self.address
            ))
        })?;
        // They end up in HTTP headers: only what AWS issues (visible ASCII).
        let fine = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
        };
        if !fine(&credentials.access_key_id, 128)
            || !fine(&credentials.secret_access_key, 128)
            || credentials
                .session_token
                .as_deref()
                .is_some_and(|t| !fine(t, 8192))
        {
            return Err(Error::Host(format!(
                "credentials from the host at {}: empty, too long, or not printable ASCII",
                self.address
            )));
        }
        Ok(credentials)
    }

    /// The CRL, `None` when the host has none to offer.
    pub async fn crl(&self) -> Result<Option<Vec<u8>>, Error> {
        self.optional(Op::Crl).await
    }

    /// The JWT signing key's material JSON, `None` when the host has none to offer.
    pub async fn jwt_key_material(&self) -> Result<Option<Vec<u8>>, Error> {
        self.optional(Op::JwtKeyMaterial).await
    }

    async fn optional(&self, op: Op) -> Result<Option<Vec<u8>>, Error> {
        let answer = self.request(op, &[]).await?.1;
        Ok((!answer.is_empty()).then_some(answer))
    }

    /// A byte stream to `target` (`HOST:PORT`) through the host.
    pub async fn tunnel(&self, target: &str) -> Result<Box<dyn Stream>, Error> {
        Ok(self.request(Op::KmsTunnel, target.as_bytes()).await?.0)
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

// === impl KmsEndpoint ===

impl KmsEndpoint {
    /// AWS's endpoint for `region`.
    pub fn for_region(region: &str) -> Self {
        Self {
            tls: true,
            host: format!("kms.{region}.amazonaws.com"),
            port: 443,
        }
    }

    /// Parses `https://HOST[:PORT]` or `http://HOST:PORT`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{why}; accepted: https://HOST[:PORT] (or http://HOST:PORT for a test server)")
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("not an http(s) URL"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("only a scheme, a host and a port"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse().map_err(|_| bad("the port is not a number"))?,
            ),
            None if tls => (rest, 443),
            None => return Err(bad("an http:// endpoint needs a port")),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    /// `HOST:PORT`, the tunnel's target.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The `Host` header: the host, with the port unless it is the scheme's default.
    fn host_header(&self) -> String {
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => self.host.clone(),
            _ => self.authority(),
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.host_header())
    }
}

impl std::fmt::Display for KmsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url().trim_end_matches('/'))
    }
}

impl std::fmt::Display for KmsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The JSON body of a `Decrypt` call with a `Recipient`: only the ciphertext and the
/// recipient, as ACM for Nitro Enclaves calls it (the key is named in the blob).
pub fn decrypt_request_body(ciphertext_blob: &[u8], attestation_document: &[u8]) -> Vec<u8> {
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
pub async fn decrypt_for_recipient(
    stream: Box<dyn Stream>,
    endpoint: &KmsEndpoint,
    region: &str,
    credentials: &Credentials,
    body: Vec<u8>,
) -> Result<Vec<u8>, Error> {
    let kms = |why: String| Error::Kms(format!("KMS Decrypt at {endpoint}: {why}"));
    let mut request = http::Request::builder()
        .method("POST")
        .uri(endpoint.url())
        .header("host", endpoint.host_header())
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "TrentService.Decrypt")
        .body(body)
        .map_err(|e| kms(format!("building the request: {e}")))?;
    sign(&mut request, region, credentials).map_err(|e| kms(format!("signing: {e}")))?;
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(
        parts,
        http_body_util::Full::new(prost::bytes::Bytes::from(body)),
    );

    let response = if endpoint.tls {
        let tls = tls_connect(stream, &endpoint.host)
            .await
            .map_err(|e| kms(format!("TLS: {e}")))?;
        send(tls, request).await
    } else {
        send(stream, request).await
    }
    .map_err(kms)?;
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
    let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
        kms(format!(
            "HTTP {status} with a body that is not KMS JSON ({e}): {}",
            protocol::sanitize(&body[..body.len().min(200)])
        ))
    })?;
    if !status.is_success() {
        let code = answer.code.unwrap_or_default();
        // `__type` may carry a namespace prefix (`com.amazonaws.kms#…`).
        let code = code.rsplit('#').next().unwrap_or_default().to_owned();
        let error = KmsError {
            code: protocol::sanitize(code.as_bytes()),
            message: protocol::sanitize(answer.message.unwrap_or_default().as_bytes()),
        };
        return Err(kms(format!("HTTP {status}: {error}")));
    }
    let cms = answer
        .ciphertext_for_recipient
        .ok_or_else(|| kms("the answer has no CiphertextForRecipient".into()))?;
    BASE64
        .decode(cms)
        .map_err(|e| kms(format!("CiphertextForRecipient is not base64: {e}")))
}

fn sign(
    request: &mut http::Request<Vec<u8>>,
    region: &str,
    credentials: &Credentials,
) -> Result<(), String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        credentials.session_token.clone(),
        None,
        "enclaveid-host",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("kms")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
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
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

async fn tls_connect(
    stream: Box<dyn Stream>,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<Box<dyn Stream>>, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?}: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string())
}

async fn send(
    stream: impl Stream,
    request: http::Request<http_body_util::Full<prost::bytes::Bytes>>,
) -> Result<(http::StatusCode, Vec<u8>), String> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    let connection = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_KMS_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes()
        .to_vec();
    connection.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_endpoints_parse_with_aws_defaults() {
        assert_eq!(
            KmsEndpoint::parse("https://kms.eu-west-1.amazonaws.com").unwrap(),
            KmsEndpoint::for_region("eu-west-1")
        );
        let local = KmsEndpoint::parse("http://127.0.0.1:4000/").unwrap();
        assert_eq!(local.authority(), "127.0.0.1:4000");
        assert_eq!(local.url(), "http://127.0.0.1:4000/");
        assert_eq!(
            KmsEndpoint::for_region("us-east-2").url(),
            "https://kms.us-east-2.amazonaws.com/"
        );
        for bad in [
            "kms.amazonaws.com",
            "http://h",
            "https://h/path",
            "https://:443",
            "https://u@h",
            "https://h:x",
        ] {
            let error = KmsEndpoint::parse(bad).unwrap_err();
            assert!(error.contains("accepted: https://HOST"), "{bad}: {error}");
        }
    }

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
}
