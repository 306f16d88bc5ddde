//! The server plugin: `spire.plugin.server.nodeattestor.v1.NodeAttestor`.
//!
//! ```hcl
//! NodeAttestor "aws_nitro" {
//!   plugin_cmd  = "/opt/spire/plugins/enclaveid-nitro-attestor"
//!   plugin_args = ["server"]
//!   plugin_data {
//!     # root_cert_path = "/etc/spire/nitro-root.pem"  # default: the AWS Nitro root G1
//!     max_age      = "5m"
//!     allow_debug  = false
//!     allowed_pcrs = { pcr0 = ["<96 hex digits>"] }
//!   }
//! }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use enclaveid_attestor::node_protocol::ProtocolError;
use enclaveid_attestor::{Policy, Verifier, VerifyAt, hex};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{Configured, PluginConfig, from_hcl, pcr_index, pcr_value, read};
use crate::proto::server_nodeattestor::node_attestor_server::NodeAttestor;
use crate::proto::server_nodeattestor::{
    AgentAttributes, AttestRequest, AttestResponse, attest_request, attest_response,
};
use crate::{Error, protocol};

/// The default maximum age of a document.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// The PCRs reported as selectors (`pcr0` … `pcr8`; 5 to 7 are unused by Nitro and
/// reported as NSM gives them).
const SELECTOR_PCRS: std::ops::RangeInclusive<u8> = 0..=8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    root_cert_path: Option<PathBuf>,
    max_age: Option<String>,
    allow_debug: Option<bool>,
    #[serde(default)]
    allowed_pcrs: BTreeMap<String, Vec<String>>,
}

/// The server plugin's configuration.
#[derive(Debug)]
pub struct ServerConfig {
    trust_domain: String,
    verifier: Verifier,
    policy: Policy,
}

impl PluginConfig for ServerConfig {
    fn parse(hcl: &str, trust_domain: &str) -> Result<Self, Error> {
        let raw: RawConfig = from_hcl(hcl)?;
        let verifier = match &raw.root_cert_path {
            None => Verifier::aws(),
            Some(path) => {
                let pem = read("root_cert_path", path)?;
                let der = x509_pem_der(&pem).ok_or_else(|| Error::Config {
                    key: "root_cert_path".into(),
                    value: path.display().to_string(),
                    accepted: "a PEM file holding one CERTIFICATE".into(),
                })?;
                Verifier::with_root_der(&der)
            }
        };
        let max_age = match &raw.max_age {
            None => DEFAULT_MAX_AGE,
            Some(value) => humantime::parse_duration(value)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| Error::Config {
                    key: "max_age".into(),
                    value: value.clone(),
                    accepted: "a positive duration such as \"5m\" or \"90s\"".into(),
                })?,
        };
        let mut pcrs = BTreeMap::new();
        for (name, values) in &raw.allowed_pcrs {
            let index = pcr_index("allowed_pcrs", name)?;
            if values.is_empty() {
                return Err(Error::Config {
                    key: format!("allowed_pcrs.{name}"),
                    value: "[]".into(),
                    accepted: "at least one value (an empty list would refuse every enclave; leave the PCR out to accept any)".into(),
                });
            }
            let values = values
                .iter()
                .map(|v| pcr_value(&format!("allowed_pcrs.{name}"), v))
                .collect::<Result<Vec<_>, _>>()?;
            pcrs.insert(index, values);
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            verifier,
            policy: Policy {
                pcrs,
                allow_debug: raw.allow_debug.unwrap_or(false),
                max_age: Some(max_age),
                ..Policy::default()
            },
        })
    }
}

/// The DER of the one certificate in a PEM file, if it parses as X.509.
fn x509_pem_der(pem: &[u8]) -> Option<Vec<u8>> {
    let blocks = pem::parse_many(pem).ok()?;
    let [block] = blocks.as_slice() else {
        return None;
    };
    let der = block.contents();
    (block.tag() == "CERTIFICATE" && x509_parser::parse_x509_certificate(der).is_ok())
        .then(|| der.to_vec())
}

impl ServerConfig {
    /// Verifies the agent's answer to `challenge` at `now`: the document (chain, signature,
    /// age, debug mode, PCRs, nonce = challenge, user_data), the proof of possession of the
    /// key it binds, and the module ID; returns the agent ID and selectors.
    pub fn verify(
        &self,
        challenge: &[u8],
        response: &[u8],
        now: SystemTime,
    ) -> Result<AgentAttributes, Error> {
        let (document, signature) = protocol::parse_response(response)?;
        let expected_user_data = protocol::user_data(&self.trust_domain);
        let policy = Policy {
            nonce: Some(challenge.to_vec()),
            user_data: Some(expected_user_data.clone()),
            ..self.policy.clone()
        };
        let verified = self
            .verifier
            .verify(&document, &policy, VerifyAt::Time(now))
            .map_err(|e| Error::Refused(explain(e, &expected_user_data)))?;
        let public_key = verified.public_key.as_deref().ok_or_else(|| {
            Error::Refused("the document binds no public_key; the agent plugin puts its proof-of-possession key there".into())
        })?;
        let point = p256_point(public_key).ok_or_else(|| {
            Error::Refused(format!(
                "the document's public_key is not a P-256 SubjectPublicKeyInfo: {}",
                hex(public_key)
            ))
        })?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(&protocol::signed_message(challenge, &document), &signature)
            .map_err(|_| {
                Error::Refused(
                    "the proof-of-possession signature does not verify with the key the document binds: the response was not made by the enclave that asked for the document".into(),
                )
            })?;
        let module_id = &verified.module_id;
        if module_id.is_empty()
            || module_id.len() > 128
            || !module_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Error::Refused(format!(
                "module_id {module_id:?} cannot be an agent ID path segment (accepted: 1 to 128 of A-Z a-z 0-9 - _ .)"
            )));
        }
        let mut selector_values = Vec::new();
        for index in SELECTOR_PCRS {
            if let Some(value) = verified.pcrs.get(&index) {
                selector_values.push(format!("pcr{index}:{}", hex(value)));
            }
        }
        if let Some(pcr0) = verified.pcrs.get(&0) {
            selector_values.push(format!("image_sha384:{}", hex(pcr0)));
        }
        selector_values.push(format!("module_id:{module_id}"));
        Ok(AgentAttributes {
            spiffe_id: format!(
                "spiffe://{}/spire/agent/aws_nitro/{module_id}",
                self.trust_domain
            ),
            selector_values,
            // An enclave has no disk: a restarted spire-agent attests again with a fresh
            // document, under the same agent ID while the enclave lives.
            can_reattest: true,
        })
    }
}

/// The point of a P-256 SubjectPublicKeyInfo (DER), for aws-lc's verifier.
fn p256_point(spki: &[u8]) -> Option<&[u8]> {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING { 0, 04 || X || Y } }
    const PREFIX: [u8; 27] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    (spki.len() == PREFIX.len() + 64 && spki.starts_with(&PREFIX))
        .then(|| &spki[PREFIX.len() - 1..])
}

/// The verifier's refusal, with the reason spelled out for the cases an operator meets.
fn explain(error: enclaveid_attestor::Error, expected_user_data: &[u8]) -> String {
    use enclaveid_attestor::Error as E;
    match error {
        E::Mismatch {
            field: "nonce",
            got,
            expected,
        } => format!(
            "the document's nonce is not this attestation's challenge: a replayed document, or one made for another challenge (nonce {got}, challenge {expected})"
        ),
        E::Mismatch {
            field: "user_data",
            got,
            ..
        } => format!(
            "the document was not made for this attestor and trust domain: user_data {got}, expected {:?}",
            String::from_utf8_lossy(expected_user_data)
        ),
        e @ E::TooOld { .. } => format!("stale document: {e}"),
        e => e.to_string(),
    }
}

/// The `NodeAttestor` service of the server plugin.
pub struct ServerPlugin {
    config: Configured<ServerConfig>,
}

impl ServerPlugin {
    /// A plugin reading its configuration from `config`.
    pub fn new(config: Configured<ServerConfig>) -> Self {
        Self { config }
    }
}

type Outbound = mpsc::Sender<Result<AttestResponse, Status>>;

#[tonic::async_trait]
impl NodeAttestor for ServerPlugin {
    type AttestStream = ReceiverStream<Result<AttestResponse, Status>>;

    async fn attest(
        &self,
        request: Request<Streaming<AttestRequest>>,
    ) -> Result<Response<Self::AttestStream>, Status> {
        let config = self.config.get()?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            if let Err(status) = attest(&config, &mut inbound, &tx).await {
                // SPIRE logs the refusal (at ERROR, with the request's context) and
                // returns it to the agent.
                tracing::debug!(reason = status.message(), "attestation refused");
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[allow(
    clippy::result_large_err,
    reason = "tonic's Status is the service error type"
)]
async fn attest(
    config: &ServerConfig,
    inbound: &mut Streaming<AttestRequest>,
    tx: &Outbound,
) -> Result<(), Status> {
    let payload = match next(inbound).await? {
        attest_request::Request::Payload(payload) => payload,
        attest_request::Request::ChallengeResponse(_) => {
            return Err(Status::invalid_argument(
                "expected the attestation payload first, got a challenge response",
            ));
        }
    };
    protocol::check_payload(&payload).map_err(|e| Status::invalid_argument(e.to_string()))?;

    let mut challenge = vec![0; protocol::CHALLENGE_LEN];
    SystemRandom::new()
        .fill(&mut challenge)
        .map_err(|_| Status::internal("no randomness for the challenge"))?;
    send(tx, attest_response::Response::Challenge(challenge.clone())).await?;

    let response = match next(inbound).await? {
        attest_request::Request::ChallengeResponse(response) => response,
        attest_request::Request::Payload(_) => {
            return Err(Status::invalid_argument(
                "expected the challenge response, got a second payload",
            ));
        }
    };
    let attributes = config
        .verify(&challenge, &response, SystemTime::now())
        .map_err(|e| match e {
            Error::Malformed { .. } | Error::Protocol(ProtocolError::Malformed { .. }) => {
                Status::invalid_argument(e.to_string())
            }
            e => Status::permission_denied(e.to_string()),
        })?;
    tracing::info!(agent_id = %attributes.spiffe_id, "enclave attested");
    send(tx, attest_response::Response::AgentAttributes(attributes)).await
}

#[allow(
    clippy::result_large_err,
    reason = "tonic's Status is the service error type"
)]
async fn next(inbound: &mut Streaming<AttestRequest>) -> Result<attest_request::Request, Status> {
    inbound
        .message()
        .await?
        .and_then(|m| m.request)
        .ok_or_else(|| Status::invalid_argument("the attestation stream ended early"))
}

#[allow(
    clippy::result_large_err,
    reason = "tonic's Status is the service error type"
)]
async fn send(tx: &Outbound, response: attest_response::Response) -> Result<(), Status> {
    tx.send(Ok(AttestResponse {
        response: Some(response),
    }))
    .await
    .map_err(|_| Status::cancelled("SPIRE closed the attestation stream"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod nitro_attestor_tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use enclaveid_attestor::node_protocol::ProtocolError;
    use enclaveid_attestor::{FakeAttestor, FakeConfig, hex};

    use super::ServerConfig;
    use crate::{Error, PluginConfig, protocol};

    const TD: &str = "example.org";
    const CHALLENGE: [u8; 32] = [42; 32];

    struct Setup {
        _dir: tempfile::TempDir,
        enclave: FakeAttestor,
        root_path: String,
    }

    fn setup(config: FakeConfig) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let enclave = FakeAttestor::new(config).unwrap();
        let root_path = dir.path().join("root.pem");
        std::fs::write(&root_path, enclave.root_pem()).unwrap();
        Setup {
            root_path: root_path.display().to_string(),
            _dir: dir,
            enclave,
        }
    }

    fn enclave_with_pcr0(pcr0: u8) -> FakeConfig {
        let mut pcrs = BTreeMap::new();
        pcrs.insert(0, vec![pcr0; 48]);
        FakeConfig {
            pcrs,
            ..FakeConfig::default()
        }
    }

    fn server(setup: &Setup, extra: &str) -> ServerConfig {
        let hcl = format!("root_cert_path = \"{}\"\n{extra}", setup.root_path);
        ServerConfig::parse(&hcl, TD).unwrap()
    }

    fn refusal(result: Result<impl std::fmt::Debug, Error>) -> String {
        match result {
            Err(e @ Error::Refused(_)) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_answer_yields_the_agent_id_and_selectors() {
        let s = setup(enclave_with_pcr0(0x1c));
        let config = server(
            &s,
            &format!("allowed_pcrs = {{ pcr0 = [\"{}\"] }}", hex(&[0x1c; 48])),
        );
        let response = protocol::respond(&s.enclave, TD, &CHALLENGE).unwrap();
        let attributes = config
            .verify(&CHALLENGE, &response, SystemTime::now())
            .unwrap();
        let module_id = FakeConfig::default().module_id;
        assert_eq!(
            attributes.spiffe_id,
            format!("spiffe://{TD}/spire/agent/aws_nitro/{module_id}")
        );
        let pcr0 = hex(&[0x1c; 48]);
        let values = &attributes.selector_values;
        assert_eq!(values[0], format!("pcr0:{pcr0}"));
        assert_eq!(values.len(), 11, "{values:?}");
        assert!(values[8].starts_with("pcr8:"), "{values:?}");
        assert!(values.contains(&format!("image_sha384:{pcr0}")));
        assert!(values.contains(&format!("module_id:{module_id}")));
        assert!(attributes.can_reattest);
    }

    #[test]
    fn an_answer_to_another_challenge_is_refused_as_a_replay() {
        let s = setup(FakeConfig::default());
        let config = server(&s, "");
        let earlier = protocol::respond(&s.enclave, TD, &[7; 32]).unwrap();
        let why = refusal(config.verify(&CHALLENGE, &earlier, SystemTime::now()));
        assert!(
            why.contains("a replayed document, or one made for another challenge"),
            "{why}"
        );
        assert!(why.contains(&hex(&CHALLENGE)), "{why}");
    }

    #[test]
    fn a_stale_document_is_refused_with_its_age() {
        let s = setup(FakeConfig::default());
        let config = server(&s, "max_age = \"2m\"");
        let response = protocol::respond(&s.enclave, TD, &CHALLENGE).unwrap();
        let later = SystemTime::now() + Duration::from_secs(180);
        let why = refusal(config.verify(&CHALLENGE, &response, later));
        assert!(why.contains("stale document"), "{why}");
        assert!(why.contains("the maximum age is 120s"), "{why}");
        // Within the default five minutes it is accepted.
        let lenient = server(&s, "");
        lenient.verify(&CHALLENGE, &response, later).unwrap();
    }

    #[test]
    fn debug_mode_is_refused_unless_allowed() {
        let s = setup(FakeConfig {
            debug: true,
            ..FakeConfig::default()
        });
        let response = protocol::respond(&s.enclave, TD, &CHALLENGE).unwrap();
        let why = refusal(server(&s, "").verify(&CHALLENGE, &response, SystemTime::now()));
        assert!(why.contains("debug mode"), "{why}");
        let allowed = server(&s, "allow_debug = true");
        let attributes = allowed
            .verify(&CHALLENGE, &response, SystemTime::now())
            .unwrap();
        assert_eq!(
            attributes.selector_values[0],
            format!("pcr0:{}", hex(&[0; 48]))
        );
    }

    #[test]
    fn a_pcr_outside_the_allow_list_is_refused() {
        let s = setup(enclave_with_pcr0(0xba));
        let allowed = [hex(&[0x1c; 48]), hex(&[0x2d; 48])];
        let config = server(
            &s,
            &format!(
                "allowed_pcrs = {{ pcr0 = [\"{}\", \"{}\"] }}",
                allowed[0], allowed[1]
            ),
        );
        let response = protocol::respond(&s.enclave, TD, &CHALLENGE).unwrap();
        let why = refusal(config.verify(&CHALLENGE, &response, SystemTime::now()));
        assert!(why.contains("PCR0 mismatch"), "{why}");
        assert!(
            why.contains(&hex(&[0xba; 48])) && why.contains(&allowed[1]),
            "{why}"
        );
    }

    #[test]
    fn a_document_under_another_root_is_refused() {
        let s = setup(FakeConfig::default());
        let response = protocol::respond(&s.enclave, TD, &CHALLENGE).unwrap();
        // The default pins the AWS Nitro root.
        let aws = ServerConfig::parse("", TD).unwrap();
        let why = refusal(aws.verify(&CHALLENGE, &response, SystemTime::now()));
        assert!(why.contains("untrusted root"), "{why}");
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let s = setup(FakeConfig::default());
        let mine = protocol::respond(&s.enclave, TD, &CHALLENGE).unwrap();
        let theirs = protocol::respond(&s.enclave, TD, &CHALLENGE).unwrap();
        let (document, _) = protocol::parse_response(&mine).unwrap();
        let (_, signature) = protocol::parse_response(&theirs).unwrap();
        let spliced = protocol::encode_response(&document, &signature);
        let why = refusal(server(&s, "").verify(&CHALLENGE, &spliced, SystemTime::now()));
        assert!(
            why.contains("proof-of-possession signature does not verify"),
            "{why}"
        );
    }

    #[test]
    fn a_document_for_another_trust_domain_is_refused() {
        let s = setup(FakeConfig::default());
        let response = protocol::respond(&s.enclave, "other.example", &CHALLENGE).unwrap();
        let why = refusal(server(&s, "").verify(&CHALLENGE, &response, SystemTime::now()));
        assert!(
            why.contains("not made for this attestor and trust domain"),
            "{why}"
        );
        assert!(why.contains("spiffe://example.org"), "{why}");
    }

    #[test]
    fn a_tampered_document_is_refused() {
        let s = setup(FakeConfig::default());
        let response = protocol::respond(&s.enclave, TD, &CHALLENGE).unwrap();
        let (mut document, signature) = protocol::parse_response(&response).unwrap();
        // The last byte belongs to the COSE signature.
        *document.last_mut().unwrap() ^= 1;
        let tampered = protocol::encode_response(&document, &signature);
        let why = refusal(server(&s, "").verify(&CHALLENGE, &tampered, SystemTime::now()));
        assert!(why.contains("signature does not verify"), "{why}");
    }

    #[test]
    fn malformed_answers_are_named_as_such() {
        let s = setup(FakeConfig::default());
        let config = server(&s, "");
        for garbage in [
            &b"not json"[..],
            br#"{"document": "!!", "signature": ""}"#,
            b"{}",
        ] {
            let result = config.verify(&CHALLENGE, garbage, SystemTime::now());
            assert!(
                matches!(
                    result,
                    Err(Error::Protocol(ProtocolError::Malformed {
                        what: "challenge response",
                        ..
                    }))
                ),
                "{result:?}"
            );
        }
        let huge = vec![b' '; protocol::MAX_RESPONSE_BYTES + 1];
        let why = config
            .verify(&CHALLENGE, &huge, SystemTime::now())
            .unwrap_err();
        assert!(why.to_string().contains("more than the"), "{why}");
    }

    #[test]
    fn a_module_id_unfit_for_an_agent_id_is_refused() {
        let s = setup(FakeConfig {
            module_id: "i-0/../../server".into(),
            ..FakeConfig::default()
        });
        let response = protocol::respond(&s.enclave, TD, &CHALLENGE).unwrap();
        let why = refusal(server(&s, "").verify(&CHALLENGE, &response, SystemTime::now()));
        assert!(why.contains("cannot be an agent ID path segment"), "{why}");
    }

    /// A real AWS-signed document (`../shared/fixtures/nitro/`), wrapped as an answer.
    fn captured_aws_answer(name: &str) -> (Vec<u8>, SystemTime) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/nitro")
            .join(name);
        let document = std::fs::read(&path).unwrap();
        let made_at = enclaveid_attestor::Verifier::aws()
            .verify(
                &document,
                &enclaveid_attestor::Policy {
                    allow_debug: true,
                    ..Default::default()
                },
                enclaveid_attestor::VerifyAt::DocumentTime,
            )
            .unwrap()
            .timestamp;
        (protocol::encode_response(&document, &[0; 70]), made_at)
    }

    #[test]
    fn captured_aws_documents_are_refused_by_the_default_configuration() {
        let aws = ServerConfig::parse("", TD).unwrap();
        // A production document replayed a minute after it was made: the built-in root
        // is AWS's (no "untrusted root"), the chain and signature hold, the nonce does not.
        let (answer, made_at) = captured_aws_answer("2025-01-06-nitro-attest-fixture.cose");
        let why = refusal(aws.verify(&CHALLENGE, &answer, made_at + Duration::from_secs(60)));
        assert!(
            why.contains("a replayed document, or one made for another challenge"),
            "{why}"
        );
        // The same, today: its certificates expired long ago.
        let why = refusal(aws.verify(&CHALLENGE, &answer, SystemTime::now()));
        assert!(why.contains("expired"), "{why}");
        // A real debug-mode document, at its own time.
        let (answer, made_at) = captured_aws_answer("2022-10-12-evervault-beta-debug.cose");
        let why = refusal(aws.verify(&CHALLENGE, &answer, made_at + Duration::from_secs(60)));
        assert!(why.contains("debug mode"), "{why}");
    }

    #[test]
    fn the_payload_must_name_this_protocol() {
        protocol::check_payload(&protocol::payload()).unwrap();
        let why = protocol::check_payload(br#"{"protocol": "other/9"}"#).unwrap_err();
        assert!(why.to_string().contains("\"other/9\""), "{why}");
        // The signature-only public plugin sends a bare document: named, not guessed at.
        let why = protocol::check_payload(&[0x84, 0x44]).unwrap_err();
        assert!(
            why.to_string()
                .contains("enclaveid-nitro-attestor agent plugin"),
            "{why}"
        );
    }

    #[test]
    fn configuration_errors_name_the_setting_and_what_is_accepted() {
        let cases = [
            ("max_age = \"soon\"", "max_age", "a positive duration"),
            ("max_age = \"0s\"", "max_age", "a positive duration"),
            (
                "allowed_pcrs = { pcr16 = [\"00\"] }",
                "allowed_pcrs.pcr16",
                "pcr0 to pcr15",
            ),
            (
                "allowed_pcrs = { pcr0 = [\"abcd\"] }",
                "allowed_pcrs.pcr0",
                "96 hex digits",
            ),
            (
                "allowed_pcrs = { pcr0 = [] }",
                "allowed_pcrs.pcr0",
                "at least one value",
            ),
            (
                "root_cert_path = \"/nonexistent/root.pem\"",
                "root_cert_path",
                "cannot be read",
            ),
            (
                "root_cert_path = \"Cargo.toml\"",
                "root_cert_path",
                "one CERTIFICATE",
            ),
            ("allow_debugging = true", "unknown field", "allow_debug"),
            ("max_age = ", "does not parse", ""),
        ];
        for (hcl, key, accepted) in cases {
            let e = ServerConfig::parse(hcl, TD).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(accepted), "{hcl}: {e}");
        }
    }

    #[test]
    fn allowed_pcrs_parse_as_a_map_or_a_block() {
        let pcr = hex(&[0x1c; 48]);
        for hcl in [
            format!("allowed_pcrs = {{ pcr0 = [\"{pcr}\"] }}"),
            format!("allowed_pcrs {{\n  pcr0 = [\"{pcr}\"]\n  pcr8 = [\"{pcr}\"]\n}}"),
        ] {
            let config = ServerConfig::parse(&hcl, TD).unwrap();
            assert_eq!(config.policy.pcrs[&0], vec![vec![0x1c; 48]], "{hcl}");
        }
        let defaults = ServerConfig::parse("", TD).unwrap();
        assert_eq!(defaults.policy.max_age, Some(super::DEFAULT_MAX_AGE));
        assert!(!defaults.policy.allow_debug && defaults.policy.pcrs.is_empty());
    }
}
