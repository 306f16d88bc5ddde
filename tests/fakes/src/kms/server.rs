//! The fake KMS's HTTP side: the AWS JSON 1.1 protocol of `TrentService` (`POST /`,
//! `X-Amz-Target: TrentService.<Operation>`, `Content-Type: application/x-amz-json-1.1`,
//! errors as HTTP 400 with `{"__type": "...Exception", "message": "..."}`), for
//! `Encrypt` and `Decrypt` (with or without a `Recipient`).
//!
//! Key policies are reduced to what the enclave flow depends on: the
//! `kms:RecipientAttestation:ImageSha384` and `kms:RecipientAttestation:PCR0..PCR8`
//! conditions, checked on an attestation document verified against a pinned root (the
//! fake attestor's in tests). A key with such conditions refuses `Decrypt` without a
//! `Recipient`, as a real key policy that requires attestation does. The request
//! signature (SigV4) is only checked for presence: the fake has no IAM.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use enclaveid_attestor::{Policy, Verifier, VerifyAt, hex};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

/// The conditions of a key's policy that concern attestation.
#[derive(Clone, Debug, Default)]
pub struct KeyPolicy {
    /// `kms:RecipientAttestation:ImageSha384`: accepted enclave image digests (PCR0).
    pub image_sha384: Vec<Vec<u8>>,
    /// `kms:RecipientAttestation:PCRn`: accepted values per PCR.
    pub pcrs: BTreeMap<u8, Vec<Vec<u8>>>,
}

impl KeyPolicy {
    fn requires_attestation(&self) -> bool {
        !self.image_sha384.is_empty() || !self.pcrs.is_empty()
    }
}

struct Key {
    material: [u8; 32],
    policy: KeyPolicy,
}

/// A fake KMS: keys, their policies, and the root attestation documents must chain to.
#[derive(Clone)]
pub struct FakeKms {
    keys: Arc<Mutex<HashMap<String, Key>>>,
    verifier: Verifier,
    region: String,
}

impl FakeKms {
    /// A fake KMS whose attestation documents must chain to `root_der`.
    pub fn new(root_der: &[u8]) -> Self {
        Self {
            keys: Arc::new(Mutex::new(HashMap::new())),
            verifier: Verifier::with_root_der(root_der),
            region: "us-east-1".into(),
        }
    }

    /// Creates a key with `policy`; returns its ARN.
    pub fn create_key(&self, policy: KeyPolicy) -> String {
        let mut material = [0u8; 32];
        aws_lc_rs::rand::fill(&mut material).expect("random key material");
        let id = hex(&material[..16]);
        let arn = format!("arn:aws:kms:{}:111122223333:key/{id}", self.region);
        self.keys
            .lock()
            .expect("keys lock")
            .insert(arn.clone(), Key { material, policy });
        arn
    }

    /// What an operator's `Encrypt` of `plaintext` under `key_id` returns: the
    /// `CiphertextBlob`.
    pub fn encrypt_to_blob(&self, key_id: &str, plaintext: &[u8]) -> Vec<u8> {
        let output = self
            .encrypt(&json!({"KeyId": key_id, "Plaintext": BASE64.encode(plaintext)}))
            .expect("Encrypt under a key of this fake");
        BASE64
            .decode(output["CiphertextBlob"].as_str().expect("CiphertextBlob"))
            .expect("base64")
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let kms = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let kms = kms.clone();
                    async move { Ok::<_, std::convert::Infallible>(kms.handle(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Binds 127.0.0.1 on a free port and serves in the background.
    pub async fn spawn(self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(self.serve(listener));
        addr
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let target = request
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let signed = request.headers().contains_key("authorization");
        let json_type = request
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/x-amz-json-1.1"));
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return error("SerializationException", "could not read the request body"),
        };
        if !signed {
            return error(
                "MissingAuthenticationTokenException",
                "Request is missing Authentication Token",
            );
        }
        if !json_type {
            return error(
                "SerializationException",
                "Content-Type must be application/x-amz-json-1.1",
            );
        }
        let Ok(input) = serde_json::from_slice::<Value>(&body) else {
            return error("SerializationException", "the request body is not JSON");
        };
        let result = match target.as_str() {
            "TrentService.Encrypt" => self.encrypt(&input),
            "TrentService.Decrypt" => self.decrypt(&input),
            other => Err((
                "UnknownOperationException",
                format!("operation {other:?} is not supported by the fake"),
            )),
        };
        match result {
            Ok(output) => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/x-amz-json-1.1")
                .body(Full::new(Bytes::from(output.to_string())))
                .expect("a valid response"),
            Err((kind, message)) => error(kind, &message),
        }
    }

    fn encrypt(&self, input: &Value) -> Result<Value, (&'static str, String)> {
        let key_id = input["KeyId"]
            .as_str()
            .ok_or(("ValidationException", "KeyId is required".into()))?;
        let plaintext = base64_field(input, "Plaintext")?;
        let context = canonical_context(input);
        let keys = self.keys.lock().expect("keys lock");
        let (arn, key) = keys.get_key_value(key_id).ok_or((
            "NotFoundException",
            format!("Key '{key_id}' does not exist"),
        ))?;
        let mut nonce = [0u8; 12];
        aws_lc_rs::rand::fill(&mut nonce).expect("random nonce");
        let sealing =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key.material).expect("AES key"));
        let mut sealed = plaintext;
        sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(arn, &context)),
                &mut sealed,
            )
            .expect("sealing");
        // Blob: ARN length, ARN, nonce, sealed plaintext. Opaque to callers, as KMS's.
        let mut blob = vec![u8::try_from(arn.len()).expect("short ARN")];
        blob.extend_from_slice(arn.as_bytes());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(json!({
            "CiphertextBlob": BASE64.encode(blob),
            "KeyId": arn,
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }))
    }

    fn decrypt(&self, input: &Value) -> Result<Value, (&'static str, String)> {
        let blob = base64_field(input, "CiphertextBlob")?;
        let invalid = || ("InvalidCiphertextException", String::new());
        let (&arn_len, rest) = blob.split_first().ok_or_else(invalid)?;
        let arn_len = usize::from(arn_len);
        if rest.len() < arn_len + 12 + 16 {
            return Err(invalid());
        }
        let arn = std::str::from_utf8(&rest[..arn_len]).map_err(|_| invalid())?;
        if let Some(key_id) = input["KeyId"].as_str()
            && key_id != arn
        {
            return Err((
                "IncorrectKeyException",
                "The key ID in the request does not identify the key that encrypted the ciphertext"
                    .into(),
            ));
        }
        let keys = self.keys.lock().expect("keys lock");
        let key = keys.get(arn).ok_or_else(invalid)?;
        let nonce: [u8; 12] = rest[arn_len..arn_len + 12]
            .try_into()
            .map_err(|_| invalid())?;
        let opening =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key.material).expect("AES key"));
        let mut sealed = rest[arn_len + 12..].to_vec();
        let plaintext = opening
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(arn, &canonical_context(input))),
                &mut sealed,
            )
            .map_err(|_| invalid())?
            .to_vec();

        let recipient = &input["Recipient"];
        if recipient.is_null() {
            if key.policy.requires_attestation() {
                return Err(access_denied(
                    arn,
                    "the key policy requires kms:RecipientAttestation and the request has no Recipient",
                ));
            }
            return Ok(
                json!({"KeyId": arn, "Plaintext": BASE64.encode(plaintext), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
            );
        }
        if recipient["KeyEncryptionAlgorithm"].as_str() != Some("RSAES_OAEP_SHA_256") {
            return Err((
                "ValidationException",
                "Recipient.KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256".into(),
            ));
        }
        let document = base64_field(recipient, "AttestationDocument")?;
        // KMS refuses documents that do not verify, and debug-mode enclaves never match a
        // PCR condition (their PCRs are zero); the document's freshness is bounded by its
        // 3-hour leaf certificate.
        let verified = self
            .verifier
            .verify(
                &document,
                &Policy {
                    allow_debug: true,
                    ..Policy::default()
                },
                VerifyAt::Time(SystemTime::now()),
            )
            .map_err(|e| {
                (
                    "ValidationException",
                    format!("the attestation document is not valid: {e}"),
                )
            })?;
        let policy = Policy {
            pcrs: conditions(&key.policy),
            allow_debug: true,
            ..Policy::default()
        };
        if let Err(refusal) = policy.check(&verified, SystemTime::now()) {
            return Err(access_denied(
                arn,
                &format!("kms:RecipientAttestation condition failed: {refusal}"),
            ));
        }
        let public_key = verified.public_key.as_deref().ok_or((
            "ValidationException",
            "the attestation document has no public_key".to_owned(),
        ))?;
        let answer = super::cms::envelope(&plaintext, public_key)
            .map_err(|e| ("ValidationException", e.to_string()))?;
        Ok(json!({
            "KeyId": arn,
            "CiphertextForRecipient": BASE64.encode(answer),
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }))
    }
}

/// The PCR conditions of a key policy, ImageSha384 being PCR0.
fn conditions(policy: &KeyPolicy) -> BTreeMap<u8, Vec<Vec<u8>>> {
    let mut pcrs = policy.pcrs.clone();
    if !policy.image_sha384.is_empty() {
        pcrs.entry(0)
            .or_default()
            .extend(policy.image_sha384.iter().cloned());
    }
    pcrs
}

fn access_denied(arn: &str, why: &str) -> (&'static str, String) {
    (
        "AccessDeniedException",
        format!("User is not authorized to perform: kms:Decrypt on resource: {arn} because {why}"),
    )
}

fn base64_field(input: &Value, name: &str) -> Result<Vec<u8>, (&'static str, String)> {
    let text = input[name]
        .as_str()
        .ok_or(("ValidationException", format!("{name} is required")))?;
    BASE64
        .decode(text)
        .map_err(|_| ("SerializationException", format!("{name} is not base64")))
}

/// The encryption context as sorted `key=value` lines: it must match between Encrypt and
/// Decrypt, as with KMS.
fn canonical_context(input: &Value) -> String {
    let mut pairs: Vec<String> = input["EncryptionContext"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    pairs.join("\n")
}

fn aad(arn: &str, context: &str) -> Vec<u8> {
    [arn.as_bytes(), b"\n", context.as_bytes()].concat()
}

fn error(kind: &str, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-errortype", kind)
        .body(Full::new(Bytes::from(
            json!({"__type": kind, "message": message}).to_string(),
        )))
        .expect("a valid response")
}
