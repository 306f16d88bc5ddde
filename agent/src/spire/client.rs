//! The SPIRE server's API as an agent calls it: gRPC over TLS (ALPN h2), through any
//! [`Address`] (the parent's relay from an enclave). The server is verified as an
//! X.509-SVID of the trust domain whose ID is exactly `spiffe://TD/spire/server`, against
//! the bootstrap bundle or the bundle the server last sent (no hostname check, as
//! spire-agent does). `AttestAgent` and `GetBundle` go without a client certificate;
//! everything else presents the agent SVID.

use std::sync::Arc;
use std::time::SystemTime;

use enclaveid_checks::peer::{self, PeerError, Role};
use enclaveid_io::{Address, AddressExt as _};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use spiffe::{SpiffeId, TrustDomain};
use tonic::transport::{Channel, Endpoint};

use super::proto;

/// Why a call to the SPIRE server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpireError {
    /// The TLS client could not be configured (a bad agent key or certificate).
    #[error("the TLS client for the SPIRE server")]
    Tls(#[source] rustls::Error),
    /// The server refused a call, or could not be reached (`status.code()` says which).
    #[error("{call}: {code:?}: {message}", code = .status.code(), message = .status.message())]
    Call {
        /// The RPC.
        call: &'static str,
        /// The server's answer.
        status: tonic::Status,
    },
    /// The server's answer breaks the protocol.
    #[error("{call}: the server's answer has {what}")]
    Protocol {
        /// The RPC.
        call: &'static str,
        /// What is wrong with it.
        what: &'static str,
    },
    /// A certificate the server sent is unusable.
    #[error("{call}: the server sent an unusable certificate")]
    Certificate {
        /// The RPC.
        call: &'static str,
        /// Why.
        #[source]
        source: PeerError,
    },
    /// The node attestation answer could not be made.
    #[error("the aws_nitro attestation response")]
    Attestation(#[from] enclaveid_attestor::node_protocol::ProtocolError),
    /// A key or CSR could not be made.
    #[error("making a key and CSR")]
    Csr(#[source] rcgen::Error),
}

impl SpireError {
    /// The gRPC status of a refused call.
    pub(crate) fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Call { status, .. } => Some(status),
            _ => None,
        }
    }

    /// Whether the server wants a new node attestation: the agent SVID is expired, unknown,
    /// replaced or must be re-attested (`PermissionDenied`, as spire-agent reads it). An
    /// agent SVID past its notAfter is re-attested without asking.
    pub(crate) fn must_reattest(&self) -> bool {
        self.status()
            .is_some_and(|s| s.code() == tonic::Code::PermissionDenied)
    }
}

/// The agent's SVID and key: the client certificate of every authenticated call.
pub(crate) struct AgentSvid {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: zeroize::Zeroizing<Vec<u8>>,
    pub not_after: SystemTime,
    /// Whether the server lets it re-attest (aws_nitro: yes, and then RenewAgent is
    /// refused); otherwise it is renewed with RenewAgent.
    pub reattestable: bool,
}

/// Verifies the SPIRE server against the current bundle.
#[derive(Debug)]
struct ServerVerifier {
    roots: Vec<CertificateDer<'static>>,
    /// Insecure bootstrap: no chain check, only the server ID (spire-agent's
    /// `insecure_bootstrap`).
    insecure: bool,
    server_id: SpiffeId,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
        let id = if self.insecure {
            peer::spiffe_id_of(end_entity)
        } else {
            let mut chain = vec![end_entity.clone()];
            chain.extend(intermediates.iter().cloned());
            peer::verify_svid(&chain, &self.roots, now, Role::Server)
        }
        .map_err(|e| rustls::Error::General(enclaveid_checks::Chain(&e).to_string()))?;
        if id != self.server_id {
            return Err(rustls::Error::General(format!(
                "the server presented {id}; a SPIRE server of this trust domain is {}",
                self.server_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    crate::peer_tls::signatures_with_provider!();
}

/// The gRPC clients of one connection to the server.
#[derive(Clone)]
pub(crate) struct Client {
    channel: Channel,
}

impl Client {
    /// A client of the server at `address`, verified against `roots` (or, with
    /// `insecure`, by its ID alone), presenting `agent` when given. Connects lazily.
    pub(crate) fn new(
        address: &Address,
        trust_domain: &TrustDomain,
        roots: Vec<CertificateDer<'static>>,
        insecure: bool,
        agent: Option<&AgentSvid>,
    ) -> Result<Self, SpireError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server_id = SpiffeId::new(format!("{}/spire/server", trust_domain.id_string()))
            .map_err(|_| SpireError::Protocol {
                call: "connect",
                what: "no valid server ID for this trust domain",
            })?;
        let verifier = Arc::new(ServerVerifier {
            roots,
            insecure,
            server_id,
            provider: provider.clone(),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(SpireError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match agent {
            Some(agent) => builder
                .with_client_auth_cert(
                    agent.chain.clone(),
                    PrivateKeyDer::Pkcs8(agent.key.to_vec().into()),
                )
                .map_err(SpireError::Tls)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let address = address.clone();
        let connect = tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            let address = address.clone();
            async move {
                let stream = address.connect().await?;
                // The name is not checked (the verifier checks the SPIFFE ID); it is the SNI.
                let name = ServerName::try_from("spire-server").map_err(std::io::Error::other)?;
                let tls = connector.connect(name, stream).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        let channel = Endpoint::from_static("http://spire-server")
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(30))
            .connect_with_connector_lazy(connect);
        Ok(Self { channel })
    }

    fn agent(&self) -> proto::agent::agent_client::AgentClient<Channel> {
        proto::agent::agent_client::AgentClient::new(self.channel.clone())
    }

    fn bundle(&self) -> proto::bundle::bundle_client::BundleClient<Channel> {
        proto::bundle::bundle_client::BundleClient::new(self.channel.clone())
    }

    /// Node attestation: sends `payload` as `data_type` with a CSR for `key`'s public key,
    /// answers each challenge with `respond`, and returns the agent SVID.
    pub(crate) async fn attest(
        &self,
        data_type: &str,
        payload: Vec<u8>,
        csr: Vec<u8>,
        mut respond: impl FnMut(&[u8]) -> Result<Vec<u8>, SpireError>,
    ) -> Result<(proto::types::X509svid, bool), SpireError> {
        use proto::agent::{attest_agent_request as request, attest_agent_response as response};
        const CALL: &str = "AttestAgent";
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let first = proto::agent::AttestAgentRequest {
            step: Some(request::Step::Params(request::Params {
                data: Some(proto::types::AttestationData {
                    r#type: data_type.to_owned(),
                    payload,
                }),
                params: Some(proto::agent::AgentX509svidParams { csr }),
            })),
        };
        let _ = tx.send(first).await;
        let call = |status| SpireError::Call { call: CALL, status };
        let mut answers = self
            .agent()
            .attest_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(call)?
            .into_inner();
        // spire-agent allows as many challenges as the plugin sends; so do we, within
        // reason, so that a hostile server cannot keep the enclave signing documents.
        for _ in 0..8 {
            let Some(answer) = answers.message().await.map_err(call)? else {
                break;
            };
            match answer.step {
                Some(response::Step::Challenge(challenge)) => {
                    let step = request::Step::ChallengeResponse(respond(&challenge)?);
                    if tx
                        .send(proto::agent::AttestAgentRequest { step: Some(step) })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Some(response::Step::Result(result)) => {
                    let svid = result.svid.ok_or(SpireError::Protocol {
                        call: CALL,
                        what: "a result without an SVID",
                    })?;
                    return Ok((svid, result.reattestable));
                }
                None => {
                    return Err(SpireError::Protocol {
                        call: CALL,
                        what: "an empty step",
                    });
                }
            }
        }
        Err(SpireError::Protocol {
            call: CALL,
            what: "no result",
        })
    }

    /// A new agent SVID for the key of `csr` (`RenewAgent`, for agents that cannot
    /// re-attest).
    pub(crate) async fn renew_agent(
        &self,
        csr: Vec<u8>,
    ) -> Result<proto::types::X509svid, SpireError> {
        let call = "RenewAgent";
        self.agent()
            .renew_agent(proto::agent::RenewAgentRequest {
                params: Some(proto::agent::AgentX509svidParams { csr }),
            })
            .await
            .map_err(|status| SpireError::Call { call, status })?
            .into_inner()
            .svid
            .ok_or(SpireError::Protocol {
                call,
                what: "no SVID",
            })
    }

    /// The trust domain's bundle (`Bundle/GetBundle`).
    pub(crate) async fn bundle_of_trust_domain(&self) -> Result<proto::types::Bundle, SpireError> {
        self.bundle()
            .get_bundle(proto::bundle::GetBundleRequest { output_mask: None })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| SpireError::Call {
                call: "GetBundle",
                status,
            })
    }

    /// A federated trust domain's bundle; `None` when the server has none (`NotFound`,
    /// skipped as spire-agent does).
    pub(crate) async fn federated_bundle(
        &self,
        trust_domain: &str,
    ) -> Result<Option<proto::types::Bundle>, SpireError> {
        let request = proto::bundle::GetFederatedBundleRequest {
            trust_domain: trust_domain.to_owned(),
            output_mask: None,
        };
        match self.bundle().get_federated_bundle(request).await {
            Ok(bundle) => Ok(Some(bundle.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(SpireError::Call {
                call: "GetFederatedBundle",
                status,
            }),
        }
    }

    /// The entries authorized for this agent, every field.
    pub(crate) async fn authorized_entries(&self) -> Result<Vec<proto::types::Entry>, SpireError> {
        proto::entry::entry_client::EntryClient::new(self.channel.clone())
            .get_authorized_entries(proto::entry::GetAuthorizedEntriesRequest { output_mask: None })
            .await
            .map(|r| r.into_inner().entries)
            .map_err(|status| SpireError::Call {
                call: "GetAuthorizedEntries",
                status,
            })
    }

    /// X.509-SVIDs for `(entry_id, csr)` pairs, one result per pair, in order.
    pub(crate) async fn new_x509_svids(
        &self,
        params: Vec<proto::svid::NewX509svidParams>,
    ) -> Result<Vec<proto::svid::batch_new_x509svid_response::Result>, SpireError> {
        let asked = params.len();
        let results = proto::svid::svid_client::SvidClient::new(self.channel.clone())
            .batch_new_x509svid(proto::svid::BatchNewX509svidRequest { params })
            .await
            .map(|r| r.into_inner().results)
            .map_err(|status| SpireError::Call {
                call: "BatchNewX509SVID",
                status,
            })?;
        if results.len() != asked {
            return Err(SpireError::Protocol {
                call: "BatchNewX509SVID",
                what: "another number of results than of requests",
            });
        }
        Ok(results)
    }

    /// A JWT-SVID for `entry_id` with `audience`.
    pub(crate) async fn new_jwt_svid(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<proto::types::Jwtsvid, SpireError> {
        let call = "NewJWTSVID";
        proto::svid::svid_client::SvidClient::new(self.channel.clone())
            .new_jwtsvid(proto::svid::NewJwtsvidRequest {
                entry_id: entry_id.to_owned(),
                audience: audience.to_vec(),
            })
            .await
            .map_err(|status| SpireError::Call { call, status })?
            .into_inner()
            .svid
            .ok_or(SpireError::Protocol {
                call,
                what: "no SVID",
            })
    }
}
