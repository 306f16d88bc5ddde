//! The agent plugin: `spire.plugin.agent.nodeattestor.v1.NodeAttestor`.
//!
//! ```hcl
//! NodeAttestor "aws_nitro" {
//!   plugin_cmd  = "/opt/spire/plugins/enclaveid-nitro-attestor"
//!   plugin_args = ["agent"]
//!   plugin_data {
//!     attestor = "nsm"   # "fake" for development, with the fake_* settings
//!   }
//! }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use enclaveid_attestor::{Attestor, FakeAttestor, FakeConfig, FakeRoot};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{Configured, PluginConfig, from_hcl, pcr_index, pcr_value, read};
use crate::proto::agent_nodeattestor::node_attestor_server::NodeAttestor;
use crate::proto::agent_nodeattestor::{
    Challenge, PayloadOrChallengeResponse, payload_or_challenge_response,
};
use crate::{Error, protocol};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    attestor: Option<String>,
    fake_root_cert_path: Option<PathBuf>,
    fake_root_key_path: Option<PathBuf>,
    fake_module_id: Option<String>,
    #[serde(default)]
    fake_pcrs: BTreeMap<String, String>,
    fake_debug: Option<bool>,
    fake_replay_response_path: Option<PathBuf>,
}

/// How the agent plugin answers challenges.
enum Answer {
    /// With a fresh document from this attestor.
    Attest(Box<dyn Attestor>),
    /// With these bytes, whatever the challenge: a captured response replayed, as a
    /// hostile parent would (fake attestor only; for testing the server's refusal).
    Replay(Vec<u8>),
}

/// The agent plugin's configuration.
pub struct AgentConfig {
    trust_domain: String,
    answer: Answer,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl PluginConfig for AgentConfig {
    fn parse(hcl: &str, trust_domain: &str) -> Result<Self, Error> {
        let raw: RawConfig = from_hcl(hcl)?;
        let kind = raw.attestor.as_deref().unwrap_or("nsm");
        let fake_settings = raw.fake_root_cert_path.is_some()
            || raw.fake_root_key_path.is_some()
            || raw.fake_module_id.is_some()
            || !raw.fake_pcrs.is_empty()
            || raw.fake_debug.is_some()
            || raw.fake_replay_response_path.is_some();
        let answer = match kind {
            "nsm" if fake_settings => {
                return Err(Error::Config {
                    key: "attestor".into(),
                    value: kind.into(),
                    accepted: "the fake_* settings go with attestor = \"fake\" only".into(),
                });
            }
            "nsm" => Answer::Attest(nsm()?),
            "fake" => match raw.fake_replay_response_path {
                Some(path) => Answer::Replay(read("fake_replay_response_path", &path)?),
                None => Answer::Attest(Box::new(fake(raw)?)),
            },
            other => {
                return Err(Error::Config {
                    key: "attestor".into(),
                    value: other.into(),
                    accepted: "\"nsm\" (in a Nitro Enclave) or \"fake\" (development and tests)"
                        .into(),
                });
            }
        };
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            answer,
        })
    }
}

#[cfg(feature = "nsm")]
fn nsm() -> Result<Box<dyn Attestor>, Error> {
    Ok(Box::new(enclaveid_attestor::NsmAttestor::open()?))
}

#[cfg(not(feature = "nsm"))]
fn nsm() -> Result<Box<dyn Attestor>, Error> {
    Err(Error::Config {
        key: "attestor".into(),
        value: "nsm".into(),
        accepted: "\"fake\": this build has no NSM support (build with --features nsm)".into(),
    })
}

fn fake(raw: RawConfig) -> Result<FakeAttestor, Error> {
    let (Some(cert), Some(key)) = (&raw.fake_root_cert_path, &raw.fake_root_key_path) else {
        return Err(Error::Config {
            key: "fake_root_cert_path".into(),
            value: String::new(),
            accepted: "attestor = \"fake\" needs fake_root_cert_path and fake_root_key_path: the server pins that root (its root_cert_path)".into(),
        });
    };
    let text = |key: &'static str, path: &PathBuf| {
        String::from_utf8(read(key, path)?).map_err(|_| Error::Config {
            key: key.into(),
            value: path.display().to_string(),
            accepted: "a PEM file".into(),
        })
    };
    let mut config = FakeConfig {
        debug: raw.fake_debug.unwrap_or(false),
        root: Some(FakeRoot {
            cert_pem: text("fake_root_cert_path", cert)?,
            key_pem: text("fake_root_key_path", key)?,
        }),
        ..FakeConfig::default()
    };
    if let Some(module_id) = raw.fake_module_id {
        config.module_id = module_id;
    }
    for (name, value) in &raw.fake_pcrs {
        let index = pcr_index("fake_pcrs", name)?;
        config
            .pcrs
            .insert(index, pcr_value(&format!("fake_pcrs.{name}"), value)?);
    }
    Ok(FakeAttestor::new(config)?)
}

impl AgentConfig {
    /// The answer to `challenge`.
    pub fn respond(&self, challenge: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.answer {
            Answer::Attest(attestor) => Ok(protocol::respond(
                attestor.as_ref(),
                &self.trust_domain,
                challenge,
            )?),
            Answer::Replay(bytes) => {
                tracing::warn!("replaying a stored challenge response (fake_replay_response_path)");
                Ok(bytes.clone())
            }
        }
    }
}

/// The `NodeAttestor` service of the agent plugin.
pub struct AgentPlugin {
    config: Configured<AgentConfig>,
}

impl AgentPlugin {
    /// A plugin reading its configuration from `config`.
    pub fn new(config: Configured<AgentConfig>) -> Self {
        Self { config }
    }
}

type Item = Result<PayloadOrChallengeResponse, Status>;

fn message(data: payload_or_challenge_response::Data) -> Item {
    Ok(PayloadOrChallengeResponse { data: Some(data) })
}

#[tonic::async_trait]
impl NodeAttestor for AgentPlugin {
    type AidAttestationStream = ReceiverStream<Item>;

    async fn aid_attestation(
        &self,
        request: Request<Streaming<Challenge>>,
    ) -> Result<Response<Self::AidAttestationStream>, Status> {
        let config = self.config.get()?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        tx.try_send(message(payload_or_challenge_response::Data::Payload(
            protocol::payload(),
        )))
        .map_err(|_| Status::internal("the payload could not be queued"))?;
        tokio::spawn(async move {
            loop {
                let challenge = match inbound.message().await {
                    Ok(Some(challenge)) => challenge.challenge,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "attestation stream closed");
                        return;
                    }
                };
                let config = Arc::clone(&config);
                let answer = tokio::task::spawn_blocking(move || config.respond(&challenge))
                    .await
                    .map_err(|e| Error::Serve(e.to_string()))
                    .and_then(|answer| answer);
                let item = match answer {
                    Ok(bytes) => message(payload_or_challenge_response::Data::ChallengeResponse(
                        bytes,
                    )),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot answer the server's challenge");
                        Err(Status::internal(e.to_string()))
                    }
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod nitro_attestor_tests {
    use enclaveid_attestor::{FakeAttestor, FakeConfig};

    use super::AgentConfig;
    use crate::PluginConfig;

    fn error(hcl: &str) -> String {
        AgentConfig::parse(hcl, "example.org")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn configuration_errors_name_the_setting_and_what_is_accepted() {
        assert!(error("attestor = \"tpm\"").contains("\"nsm\" (in a Nitro Enclave) or \"fake\""));
        assert!(
            error("attestor = \"nsm\"\nfake_debug = true").contains("attestor = \"fake\" only")
        );
        assert!(
            error("attestor = \"fake\"")
                .contains("needs fake_root_cert_path and fake_root_key_path")
        );
        assert!(
            error("attestor = \"fake\"\nfake_pcrs = { pcr0 = \"zz\" }")
                .contains("fake_root_cert_path")
        );
        assert!(error("attestors = \"fake\"").contains("unknown field"));
    }

    #[test]
    fn the_fake_attestor_answers_with_the_configured_enclave() {
        let dir = tempfile::tempdir().unwrap();
        let root = FakeAttestor::new(FakeConfig::default()).unwrap().root();
        std::fs::write(dir.path().join("root.pem"), &root.cert_pem).unwrap();
        std::fs::write(dir.path().join("root.key"), &root.key_pem).unwrap();
        let hcl = format!(
            "attestor = \"fake\"\nfake_root_cert_path = \"{0}/root.pem\"\nfake_root_key_path = \"{0}/root.key\"\nfake_module_id = \"i-1-enc2\"\nfake_pcrs = {{ pcr4 = \"{1}\" }}",
            dir.path().display(),
            enclaveid_attestor::hex(&[4; 48])
        );
        let config = AgentConfig::parse(&hcl, "example.org").unwrap();
        let answer = config.respond(&[9; 32]).unwrap();
        let (document, _) = crate::protocol::parse_response(&answer).unwrap();
        let verified = enclaveid_attestor::Verifier::with_root_der(
            &x509_parser::pem::parse_x509_pem(root.cert_pem.as_bytes())
                .unwrap()
                .1
                .contents,
        )
        .verify(
            &document,
            &Default::default(),
            enclaveid_attestor::VerifyAt::DocumentTime,
        )
        .unwrap();
        assert_eq!(verified.module_id, "i-1-enc2");
        assert_eq!(verified.pcrs[&4], vec![4; 48]);
        assert_eq!(verified.nonce.as_deref(), Some(&[9; 32][..]));
        assert_eq!(
            verified.user_data.as_deref(),
            Some(&b"enclaveid-nitro-attestor/1 spiffe://example.org"[..])
        );
    }

    #[cfg(not(feature = "nsm"))]
    #[test]
    fn nsm_without_the_feature_says_how_to_get_it() {
        assert!(error("").contains("--features nsm"));
    }
}
