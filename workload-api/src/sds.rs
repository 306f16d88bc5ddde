//! Envoy's Secret Discovery Service v3 (`envoy.service.secret.v3.SecretDiscoveryService`)
//! on the Workload API's socket, as spire-agent v1.13 serves it
//! (`pkg/agent/endpoints/sdsv3/handler.go`), for Envoy and the meshes built on it.
//!
//! Callers are attested exactly as Workload API callers are (same socket, same
//! attestor, same per-uid limits); the `workload.spiffe.io` security header is not
//! required, as spire-agent requires it only on `/SpiffeWorkloadAPI/` methods.
//!
//! Resource names, as spire-agent answers them:
//!
//! | name | secret |
//! | --- | --- |
//! | a SPIFFE ID of the caller's | `tls_certificate`: the chain and the PKCS#8 key, PEM, named by the ID |
//! | `default` ([`SdsConfig::default_svid_name`]) | the caller's first SVID, named `default` |
//! | the trust-domain ID (`spiffe://td`) | `validation_context` of the agent's trust domain |
//! | `ROOTCA` ([`SdsConfig::default_bundle_name`]) | the same, named `ROOTCA` |
//! | `ALL` ([`SdsConfig::default_all_bundles_name`]) | every bundle the caller may see, as one SPIFFE validator |
//! | a federated trust-domain ID | that bundle, when the caller's identities federate with it |
//! | nothing (an empty list) | every bundle the caller may see, then every SVID |
//!
//! A name the caller may not have ends the call with `InvalidArgument` (`workload is not
//! authorized for the requested identities [...]`), as spire-agent does; one bundle name
//! per request is honoured (the agent's own trust domain, `ROOTCA` or `ALL`).
//!
//! A `validation_context` is the SPIFFE certificate validator
//! (`envoy.tls.cert_validator.spiffe`, one trust domain per bundle) unless
//! [`SdsConfig::disable_spiffe_cert_validation`] is set, the node's metadata sets
//! `disable_spiffe_cert_validation`, or the node is an Envoy older than 1.18; then it is
//! `trusted_ca`, and `ALL` is refused (`Internal`), as spire-agent does.
//!
//! `StreamSecrets` answers each request whose resource names changed, and pushes when
//! what it would answer changes (a rotation, a bundle update); each push has a new
//! `version_info` (a counter) and a random nonce. A request that does not carry the last
//! nonce is stale and ignored; a NACK (`error_detail`) is logged and not answered again
//! at the same version. `FetchSecrets` answers once, without version or nonce.
//! `DeltaSecrets` is `Unimplemented`, as in spire-agent.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine as _;
use prost::Message as _;
use prost::bytes::Bytes;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};
use zeroize::Zeroizing;

use crate::{ApiMetrics, Limiter, OpenStream, Selectors, Snapshot, WorkloadAttestor};

/// The generated messages, client and server of the SDS subset (`proto/envoy-sds/`).
/// Checked in; `tests/proto_bootstrap.rs` regenerates it.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    unreachable_pub,
    rust_2018_idioms,
    clippy::allow_attributes_without_reason,
    reason = "generated code"
)]
pub mod proto {
    /// `envoy.*`
    pub mod envoy {
        /// `envoy.config.*`
        pub mod config {
            /// `envoy.config.core.*`
            pub mod core {
                /// `envoy.config.core.v3`
                pub mod v3 {
                    include!("sds/proto/envoy.config.core.v3.rs");
                }
            }
        }
        /// `envoy.extensions.*`
        pub mod extensions {
            /// `envoy.extensions.transport_sockets.*`
            pub mod transport_sockets {
                /// `envoy.extensions.transport_sockets.tls.*`
                pub mod tls {
                    /// `envoy.extensions.transport_sockets.tls.v3`
                    pub mod v3 {
                        include!("sds/proto/envoy.extensions.transport_sockets.tls.v3.rs");
                    }
                }
            }
        }
        /// `envoy.service.*`
        pub mod service {
            /// `envoy.service.discovery.*`
            pub mod discovery {
                /// `envoy.service.discovery.v3`
                pub mod v3 {
                    include!("sds/proto/envoy.service.discovery.v3.rs");
                }
            }
            /// `envoy.service.secret.*`
            pub mod secret {
                /// `envoy.service.secret.v3`
                pub mod v3 {
                    include!("sds/proto/envoy.service.secret.v3.rs");
                }
            }
        }
        /// `envoy.type.*`
        pub mod r#type {
            /// `envoy.type.v3`
            pub mod v3 {
                include!("sds/proto/envoy.r#type.v3.rs");
            }
        }
    }
    /// `google.*`
    pub mod google {
        /// `google.rpc`
        pub mod rpc {
            include!("sds/proto/google.rpc.rs");
        }
    }
}

use proto::envoy::config::core::v3::{DataSource, Node, TypedExtensionConfig, data_source};
use proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use proto::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};

/// The type URL of a `Secret` in an `Any`.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The SPIFFE certificate validator's extension name.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";
const SPIFFE_VALIDATOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";
/// The node metadata key that turns the SPIFFE validator off for one Envoy.
const DISABLE_KEY: &str = "disable_spiffe_cert_validation";
/// The largest request read.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What the SDS server names and how it validates, as spire-agent's `sds` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdsConfig {
    /// The agent's trust-domain ID, `spiffe://td`: the bundle `ROOTCA` names.
    pub trust_domain_id: String,
    /// The name of the caller's first SVID (spire-agent `default_svid_name`).
    pub default_svid_name: String,
    /// The name of the trust domain's bundle (`default_bundle_name`).
    pub default_bundle_name: String,
    /// The name of every bundle together (`default_all_bundles_name`).
    pub default_all_bundles_name: String,
    /// Plain `trusted_ca` instead of the SPIFFE validator (`disable_spiffe_cert_validation`).
    pub disable_spiffe_cert_validation: bool,
}

impl SdsConfig {
    /// spire-agent's defaults for the trust domain `trust_domain_id` (`spiffe://td`).
    pub fn new(trust_domain_id: impl Into<String>) -> Self {
        Self {
            trust_domain_id: trust_domain_id.into(),
            default_svid_name: "default".into(),
            default_bundle_name: "ROOTCA".into(),
            default_all_bundles_name: "ALL".into(),
            disable_spiffe_cert_validation: false,
        }
    }
}

/// The SDS service over the Workload API's snapshots and attestor.
pub struct Sds<A> {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    attestor: A,
    limiter: Arc<Limiter>,
    metrics: Arc<ApiMetrics>,
    config: Arc<SdsConfig>,
}

/// The service as tonic serves it.
pub type SdsServer<A> = SecretDiscoveryServiceServer<Sds<A>>;

impl<A: WorkloadAttestor + Clone> crate::WorkloadApi<A> {
    /// The SDS service over the same snapshots, attestor, limits and metrics.
    pub fn sds(&self, config: SdsConfig) -> Sds<A> {
        Sds {
            snapshots: self.snapshots.clone(),
            attestor: self.attestor.clone(),
            limiter: self.limiter.clone(),
            metrics: self.metrics.clone(),
            config: Arc::new(config),
        }
    }
}

impl<A: WorkloadAttestor> Sds<A> {
    /// Wraps the service for tonic, with a bound on request size.
    pub fn into_server(self) -> SdsServer<A> {
        SecretDiscoveryServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

type ResponseStream<T> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl<A: WorkloadAttestor> SecretDiscoveryService for Sds<A> {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("Method is not implemented"))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let result = async {
            let (selectors, _slot) =
                crate::attest_caller(&self.attestor, &self.limiter, &request).await?;
            let request = request.into_inner();
            let snapshot = self.snapshots.borrow().clone();
            let view = View::new(&snapshot, &selectors, &self.config, request.node.as_ref());
            let resources = view.resources(&request.resource_names)?;
            Ok(Response::new(DiscoveryResponse {
                version_info: String::new(),
                resources,
                type_url: request.type_url,
                nonce: String::new(),
                ..DiscoveryResponse::default()
            }))
        }
        .await;
        self.metrics.record("FetchSecrets", &result);
        result
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let admitted = crate::attest_caller(&self.attestor, &self.limiter, &request).await;
        self.metrics.record("StreamSecrets", &admitted);
        let (selectors, slot) = admitted?;
        let mut state = StreamState {
            requests: request.into_inner(),
            snapshots: self.snapshots.clone(),
            selectors,
            config: self.config.clone(),
            node: None,
            names: None,
            type_url: String::new(),
            sent: None,
            version: 0,
            nonce: None,
            _slot: slot,
            _open: OpenStream::new(&self.metrics),
        };
        state.snapshots.mark_changed();
        let stream = futures_util::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            match state.next().await {
                Ok(Some(response)) => Some((Ok(response), Some(state))),
                Ok(None) => None,
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One `StreamSecrets` call.
struct StreamState {
    requests: Streaming<DiscoveryRequest>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    selectors: Selectors,
    config: Arc<SdsConfig>,
    /// The node of the last request that carried one.
    node: Option<Node>,
    /// The resource names of the last request; `None` before the first.
    names: Option<Vec<String>>,
    type_url: String,
    /// The resources last sent, to push only what changed.
    sent: Option<Vec<prost_types::Any>>,
    version: u64,
    /// The nonce of the last response; requests must carry it.
    nonce: Option<String>,
    _slot: crate::limits::StreamSlot,
    _open: OpenStream,
}

impl StreamState {
    /// The next response: after a request with new names, or a change of what the names
    /// resolve to. `Ok(None)` when the client closed its side.
    async fn next(&mut self) -> Result<Option<DiscoveryResponse>, Status> {
        loop {
            tokio::select! {
                request = self.requests.next() => {
                    let Some(request) = request.transpose()? else {
                        return Ok(None);
                    };
                    if let Some(response) = self.on_request(request)? {
                        return Ok(Some(response));
                    }
                }
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("agent is shutting down"));
                    }
                    self.snapshots.borrow_and_update();
                    if self.names.is_some()
                        && let Some(response) = self.respond(false)?
                    {
                        return Ok(Some(response));
                    }
                }
            }
        }
    }

    fn on_request(
        &mut self,
        request: DiscoveryRequest,
    ) -> Result<Option<DiscoveryResponse>, Status> {
        if let Some(last) = &self.nonce
            && request.response_nonce != *last
        {
            tracing::warn!(
                nonce = %request.response_nonce,
                expected = %last,
                "SDS: received unexpected nonce; ignoring request"
            );
            return Ok(None);
        }
        if let Some(error) = &request.error_detail {
            tracing::warn!(
                code = error.code,
                message = %error.message,
                version = %request.version_info,
                "SDS: Envoy reported errors applying secrets"
            );
        }
        if request.node.is_some() {
            self.node = request.node;
        }
        self.type_url = request.type_url;
        let names: BTreeSet<&String> = request.resource_names.iter().collect();
        let changed = self
            .names
            .as_ref()
            .is_none_or(|last| last.iter().collect::<BTreeSet<_>>() != names);
        if !changed {
            // An ACK, or a NACK of the current version: nothing is resent.
            return Ok(None);
        }
        self.names = Some(request.resource_names);
        self.respond(true)
    }

    /// The response for the current snapshot and names; `None` when nothing changed
    /// since the last one and `always` is false.
    fn respond(&mut self, always: bool) -> Result<Option<DiscoveryResponse>, Status> {
        let snapshot = self.snapshots.borrow().clone();
        let view = View::new(&snapshot, &self.selectors, &self.config, self.node.as_ref());
        let resources = view.resources(self.names.as_deref().unwrap_or_default())?;
        if !always && self.sent.as_ref() == Some(&resources) {
            return Ok(None);
        }
        if self.sent.as_ref() != Some(&resources) {
            self.version += 1;
        }
        self.sent = Some(resources.clone());
        let nonce = nonce();
        self.nonce = Some(nonce.clone());
        Ok(Some(DiscoveryResponse {
            version_info: self.version.to_string(),
            resources,
            type_url: self.type_url.clone(),
            nonce,
            ..DiscoveryResponse::default()
        }))
    }
}

/// Eight hex digits from the system's random source, as spire-agent's nonces.
fn nonce() -> String {
    let mut bytes = [0u8; 4];
    // aws-lc's generator does not fail; a zero nonce would still be a valid nonce.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one caller sees of a snapshot, and how it is turned into secrets.
struct View<'a> {
    snapshot: &'a Snapshot,
    selectors: &'a Selectors,
    config: &'a SdsConfig,
    spiffe_validator: bool,
}

impl<'a> View<'a> {
    fn new(
        snapshot: &'a Snapshot,
        selectors: &'a Selectors,
        config: &'a SdsConfig,
        node: Option<&Node>,
    ) -> Self {
        let disabled = node
            .and_then(|n| n.metadata.as_ref())
            .and_then(|m| m.fields.get(DISABLE_KEY))
            .and_then(|v| parse_bool(v.kind.as_ref()?))
            .unwrap_or(config.disable_spiffe_cert_validation);
        Self {
            snapshot,
            selectors,
            config,
            spiffe_validator: !disabled && supports_spiffe_validator(node),
        }
    }

    /// The secrets `names` resolve to, in spire-agent's order: the trust domain's bundle
    /// (or `ROOTCA` or `ALL`), the federated bundles, the SVIDs.
    fn resources(&self, names: &[String]) -> Result<Vec<prost_types::Any>, Status> {
        let mut wanted: BTreeSet<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| !n.is_empty())
            .collect();
        let all = wanted.is_empty();
        let own = self.config.trust_domain_id.as_str();
        let mut secrets = Vec::new();
        if all || wanted.remove(own) {
            secrets.push(self.bundle(own, own)?);
        } else if wanted.remove(self.config.default_bundle_name.as_str()) {
            secrets.push(self.bundle(&self.config.default_bundle_name, own)?);
        } else if wanted.remove(self.config.default_all_bundles_name.as_str()) {
            secrets.push(self.all_bundles(&self.config.default_all_bundles_name)?);
        }
        for (td, _) in self.federated() {
            if all || wanted.remove(td.as_str()) {
                secrets.push(self.bundle(&td, &td)?);
            }
        }
        for (i, (identity, svid)) in self.snapshot.issued_to(self.selectors).enumerate() {
            let id = identity.spiffe_id.to_string();
            if all || wanted.remove(id.as_str()) {
                secrets.push(tls_certificate(&id, svid));
            }
            if i == 0 && wanted.remove(self.config.default_svid_name.as_str()) {
                secrets.push(tls_certificate(&self.config.default_svid_name, svid));
            }
        }
        if !wanted.is_empty() {
            let names: Vec<String> = wanted.iter().map(|n| format!("{n:?}")).collect();
            return Err(Status::invalid_argument(format!(
                "workload is not authorized for the requested identities [{}]",
                names.join(" ")
            )));
        }
        Ok(secrets.into_iter().map(any).collect())
    }

    /// The federated bundles the caller may see (not the agent's own trust domain's).
    fn federated(&self) -> Vec<(String, Bytes)> {
        self.snapshot
            .visible_bundles(&self.snapshot.bundles, self.selectors)
            .filter(|(td, _)| *td != self.config.trust_domain_id)
            .collect()
    }

    /// The bundle of `td_id` as a validation context named `name`.
    fn bundle(
        &self,
        name: &str,
        td_id: &str,
    ) -> Result<proto::envoy::extensions::transport_sockets::tls::v3::Secret, Status> {
        let der = self.snapshot.bundles.get(td_id).ok_or_else(|| {
            if self.spiffe_validator {
                Status::not_found(format!("no bundle found for trust domain: {td_id:?}"))
            } else {
                Status::internal(format!("unable to find trust bundle for: {td_id:?}"))
            }
        })?;
        let context = if self.spiffe_validator {
            spiffe_validator(&[(td_id, der)])
        } else {
            CertificateValidationContext {
                trusted_ca: Some(inline(pem_certificates(der))),
                custom_validator_config: None,
            }
        };
        Ok(validation_context(name, context))
    }

    /// Every bundle the caller may see as one SPIFFE validator named `name`.
    fn all_bundles(
        &self,
        name: &str,
    ) -> Result<proto::envoy::extensions::transport_sockets::tls::v3::Secret, Status> {
        if !self.spiffe_validator {
            return Err(Status::internal(
                "unable to use \"SPIFFE validator\" on Envoy below 1.17",
            ));
        }
        let own = self.config.trust_domain_id.as_str();
        let own_bundle = self.snapshot.bundles.get(own).ok_or_else(|| {
            Status::not_found(format!("no bundle found for trust domain: {own:?}"))
        })?;
        let federated = self.federated();
        let mut bundles: Vec<(&str, &Bytes)> = std::iter::once((own, own_bundle))
            .chain(federated.iter().map(|(td, b)| (td.as_str(), b)))
            .collect();
        bundles.sort_by(|a, b| a.0.cmp(b.0));
        Ok(validation_context(name, spiffe_validator(&bundles)))
    }
}

/// A `SPIFFECertValidatorConfig` with one trust domain per bundle (by bare name).
fn spiffe_validator(bundles: &[(&str, &Bytes)]) -> CertificateValidationContext {
    let config = SpiffeCertValidatorConfig {
        trust_domains: bundles
            .iter()
            .map(|(td_id, der)| spiffe_cert_validator_config::TrustDomain {
                name: td_id.strip_prefix("spiffe://").unwrap_or(td_id).to_owned(),
                trust_bundle: Some(inline(pem_certificates(der))),
            })
            .collect(),
    };
    CertificateValidationContext {
        trusted_ca: None,
        custom_validator_config: Some(TypedExtensionConfig {
            name: SPIFFE_VALIDATOR.to_owned(),
            typed_config: Some(prost_types::Any {
                type_url: SPIFFE_VALIDATOR_TYPE_URL.to_owned(),
                value: config.encode_to_vec(),
            }),
        }),
    }
}

fn validation_context(
    name: &str,
    context: CertificateValidationContext,
) -> proto::envoy::extensions::transport_sockets::tls::v3::Secret {
    proto::envoy::extensions::transport_sockets::tls::v3::Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(context)),
    }
}

fn tls_certificate(
    name: &str,
    svid: &crate::Svid,
) -> proto::envoy::extensions::transport_sockets::tls::v3::Secret {
    let key = Zeroizing::new(pem_block("PRIVATE KEY", svid.private_key_der()));
    proto::envoy::extensions::transport_sockets::tls::v3::Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(pem_certificates(svid.cert_chain_der()))),
            private_key: Some(inline(Bytes::from_owner(KeyPem(key)))),
        })),
    }
}

impl std::fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("certificate_chain", &self.certificate_chain)
            .field("private_key", &"<elided>")
            .finish()
    }
}

/// A PEM private key whose buffer is zeroized when the last response that carries it is
/// dropped.
struct KeyPem(Zeroizing<String>);

impl AsRef<[u8]> for KeyPem {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn inline(bytes: impl Into<Bytes>) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.into())),
    }
}

fn any(secret: proto::envoy::extensions::transport_sockets::tls::v3::Secret) -> prost_types::Any {
    prost_types::Any {
        type_url: SECRET_TYPE_URL.to_owned(),
        value: secret.encode_to_vec(),
    }
}

/// Whether `node` is an Envoy with the SPIFFE validator (1.18 and later); a node that
/// does not say is taken to have it, as spire-agent does.
fn supports_spiffe_validator(node: Option<&Node>) -> bool {
    use proto::envoy::config::core::v3::node::UserAgentVersionType;
    let Some(Some(UserAgentVersionType::UserAgentBuildVersion(build))) =
        node.map(|n| n.user_agent_version_type.as_ref())
    else {
        return true;
    };
    let Some(version) = &build.version else {
        return true;
    };
    version.major_number > 1 || (version.major_number == 1 && version.minor_number > 17)
}

/// A boolean as Go's `strconv.ParseBool` reads it, from a metadata value.
fn parse_bool(kind: &prost_types::value::Kind) -> Option<bool> {
    match kind {
        prost_types::value::Kind::BoolValue(b) => Some(*b),
        prost_types::value::Kind::StringValue(s) => match s.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The certificates of concatenated DER as PEM `CERTIFICATE` blocks.
fn pem_certificates(der: &[u8]) -> Bytes {
    let mut out = String::new();
    for cert in split_der(der) {
        out.push_str(&pem_block("CERTIFICATE", cert));
    }
    Bytes::from(out)
}

/// One PEM block, lines of 64 characters.
fn pem_block(label: &str, der: &[u8]) -> String {
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// The DER elements of concatenated DER (each a certificate); a malformed tail ends the
/// list (the agent produced these bytes).
fn split_der(mut der: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(len) = der_element_len(der) {
        let (element, rest) = der.split_at(len);
        out.push(element);
        der = rest;
    }
    out
}

/// The length of the DER element at the start of `der`, header included.
fn der_element_len(der: &[u8]) -> Option<usize> {
    let (&first, rest) = der.get(1..).and_then(<[u8]>::split_first)?;
    let (header, body) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (2 + n, len)
    };
    let total = header.checked_add(body)?;
    (total <= der.len()).then_some(total)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use spiffe::SpiffeId;

    use super::*;
    use crate::{Identity, Svid};

    /// A DER element standing for a certificate (the SDS code only splits and encodes).
    fn der(tag: u8) -> Vec<u8> {
        vec![0x30, 0x03, tag, tag, tag]
    }

    fn snapshot() -> Snapshot {
        let identity = |path: &str, federates: &[&str]| Identity {
            spiffe_id: SpiffeId::new(format!("spiffe://example.org/{path}")).unwrap(),
            selectors: Selectors::from_iter(["unix:uid:1".to_owned()]),
            hint: String::new(),
            svid: Some(Svid::new(
                [der(1), der(2)].concat(),
                Zeroizing::new(vec![0x30, 0x01, 0x00]),
                SystemTime::now() + Duration::from_secs(3600),
            )),
            jwt_ttl: Duration::from_secs(300),
            federates_with: federates.iter().map(|s| (*s).to_owned()).collect(),
        };
        Snapshot {
            identities: vec![
                identity("web", &["spiffe://partner.org"]),
                identity("db", &[]),
            ],
            bundles: [
                ("spiffe://example.org".to_owned(), Bytes::from(der(7))),
                ("spiffe://partner.org".to_owned(), Bytes::from(der(8))),
                ("spiffe://stranger.org".to_owned(), Bytes::from(der(9))),
            ]
            .into(),
            ..Snapshot::default()
        }
    }

    fn decoded(
        resources: &[prost_types::Any],
    ) -> Vec<proto::envoy::extensions::transport_sockets::tls::v3::Secret> {
        resources
            .iter()
            .map(|any| {
                assert_eq!(any.type_url, SECRET_TYPE_URL);
                prost::Message::decode(any.value.as_slice()).unwrap()
            })
            .collect()
    }

    fn names(resources: &[prost_types::Any]) -> Vec<String> {
        decoded(resources).into_iter().map(|s| s.name).collect()
    }

    fn metadata(key: &str, value: prost_types::value::Kind) -> Node {
        Node {
            metadata: Some(prost_types::Struct {
                fields: [(key.to_owned(), prost_types::Value { kind: Some(value) })].into(),
            }),
            ..Node::default()
        }
    }

    #[test]
    fn sds_names_resolve_as_spire_agent_resolves_them() {
        let snapshot = snapshot();
        let caller = Selectors::from_iter(["unix:uid:1".to_owned()]);
        let config = SdsConfig::new("spiffe://example.org");
        let view = View::new(&snapshot, &caller, &config, None);
        // Everything: own bundle, the federated bundle its identities federate with (not
        // the stranger's), every SVID.
        assert_eq!(
            names(&view.resources(&[]).unwrap()),
            [
                "spiffe://example.org",
                "spiffe://partner.org",
                "spiffe://example.org/web",
                "spiffe://example.org/db"
            ]
        );
        let asked = |list: &[&str]| {
            view.resources(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(
            names(&asked(&["default", "ROOTCA"]).unwrap()),
            ["ROOTCA", "default"]
        );
        let secrets = decoded(&asked(&["default"]).unwrap());
        let Some(secret::Type::TlsCertificate(certificate)) = &secrets[0].r#type else {
            panic!("not a certificate: {:?}", secrets[0]);
        };
        let chain = match &certificate.certificate_chain.as_ref().unwrap().specifier {
            Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            chain.matches("-----BEGIN CERTIFICATE-----").count(),
            2,
            "{chain}"
        );
        assert!(
            format!("{certificate:?}").contains("<elided>"),
            "the key never reaches Debug"
        );

        // ALL: one SPIFFE validator with every visible trust domain, sorted.
        let all = decoded(&asked(&["ALL"]).unwrap());
        let Some(secret::Type::ValidationContext(context)) = &all[0].r#type else {
            panic!("{:?}", all[0]);
        };
        let typed = context.custom_validator_config.as_ref().unwrap();
        assert_eq!(typed.name, SPIFFE_VALIDATOR);
        let config_msg = SpiffeCertValidatorConfig::decode(
            typed.typed_config.as_ref().unwrap().value.as_slice(),
        )
        .unwrap();
        let tds: Vec<_> = config_msg
            .trust_domains
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(tds, ["example.org", "partner.org"]);

        // What the caller may not have: refused, naming it.
        for list in [
            &["spiffe://stranger.org"][..],
            &["spiffe://example.org/other"],
            &["ROOTCA", "ALL"],
        ] {
            let error = asked(list).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
            assert!(
                error
                    .message()
                    .starts_with("workload is not authorized for the requested identities ["),
                "{error:?}"
            );
        }

        // A caller without an identity: bundles only.
        let nobody = Selectors::default();
        let view = View::new(&snapshot, &nobody, &config, None);
        assert_eq!(
            names(&view.resources(&[]).unwrap()),
            ["spiffe://example.org"]
        );
        assert!(view.resources(&["default".to_owned()]).is_err());
    }

    #[test]
    fn sds_validator_choice_follows_the_node_and_the_config() {
        let snapshot = snapshot();
        let caller = Selectors::from_iter(["unix:uid:1".to_owned()]);
        let mut config = SdsConfig::new("spiffe://example.org");
        let trusted_ca = |view: &View<'_>| {
            let secret = decoded(&view.resources(&["ROOTCA".to_owned()]).unwrap()).remove(0);
            matches!(
                secret.r#type,
                Some(secret::Type::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(_),
                        ..
                    }
                ))
            )
        };
        assert!(!trusted_ca(&View::new(&snapshot, &caller, &config, None)));
        let old = Node {
            user_agent_version_type: Some(
                proto::envoy::config::core::v3::node::UserAgentVersionType::UserAgentBuildVersion(
                    proto::envoy::config::core::v3::BuildVersion {
                        version: Some(proto::envoy::r#type::v3::SemanticVersion {
                            major_number: 1,
                            minor_number: 17,
                            patch: 4,
                        }),
                        metadata: None,
                    },
                ),
            ),
            ..Node::default()
        };
        let view = View::new(&snapshot, &caller, &config, Some(&old));
        assert!(trusted_ca(&view));
        let error = view.resources(&["ALL".to_owned()]).unwrap_err();
        assert_eq!(error.code(), tonic::Code::Internal);
        // The node's metadata overrides the configuration, either way.
        let off = metadata(
            DISABLE_KEY,
            prost_types::value::Kind::StringValue("true".into()),
        );
        assert!(trusted_ca(&View::new(
            &snapshot,
            &caller,
            &config,
            Some(&off)
        )));
        config.disable_spiffe_cert_validation = true;
        assert!(trusted_ca(&View::new(&snapshot, &caller, &config, None)));
        let on = metadata(DISABLE_KEY, prost_types::value::Kind::BoolValue(false));
        assert!(!trusted_ca(&View::new(
            &snapshot,
            &caller,
            &config,
            Some(&on)
        )));
        let junk = metadata(
            DISABLE_KEY,
            prost_types::value::Kind::StringValue("maybe".into()),
        );
        assert!(
            trusted_ca(&View::new(&snapshot, &caller, &config, Some(&junk))),
            "ignored: the configuration stands"
        );
    }

    #[test]
    fn sds_der_is_split_into_pem_blocks_and_a_bad_tail_ends_it() {
        let two = [der(1), der(2)].concat();
        assert_eq!(split_der(&two), [&der(1)[..], &der(2)[..]]);
        assert_eq!(
            split_der(&[der(1), vec![0x30, 0x09, 1]].concat()),
            [&der(1)[..]]
        );
        let long = [vec![0x30, 0x81, 0x80], vec![0u8; 0x80]].concat();
        assert_eq!(split_der(&long), [&long[..]]);
        assert!(split_der(&[0x30]).is_empty());
        let pem = pem_block("CERTIFICATE", &[0u8; 100]);
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE-----\n")
                && pem.ends_with("-----END CERTIFICATE-----\n")
        );
    }
}
