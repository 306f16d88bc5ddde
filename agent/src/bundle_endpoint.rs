//! The SPIFFE bundle endpoint (SPIFFE Trust Domain and Bundle specification, §4 and §5):
//! the trust domain's bundle as a JWKS document over HTTPS, for other trust domains (a
//! SPIRE server's `federates_with`) to federate with.
//!
//! The document carries every X.509 root as an `x509-svid` key (`x5c` plus the public key
//! parameters), every JWT signing key as a `jwt-svid` key, `spiffe_sequence` (raised on
//! every change) and `spiffe_refresh_hint`. Profiles: `https_spiffe` (the endpoint presents
//! the X.509-SVID the agent mints for an entry) and `https_web` (a certificate from files).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use enclaveid_workload_api::Snapshot;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use spiffe::{SpiffeId, TrustDomain};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use x509_parser::public_key::PublicKey;

use enclaveid_checks::certs::{self, CertificateError};
use enclaveid_io::AddressExt as _;

use crate::Error;
use crate::config::{BundleEndpoint, ConfigError, EndpointProfile};

/// How long a client has for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers, from its first byte (or from the
/// previous response on a kept-alive connection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection stays open, whatever it does: the document is a few KiB, and
/// federated servers poll every `refresh_hint` on a new connection anyway.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// The largest request head (request line and headers) read.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How often connections refused over the cap are logged.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(60);

/// Why the bundle endpoint could not build its document or serve it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleEndpointError {
    /// A certificate of the bundle or of the endpoint's SVID does not parse.
    #[error("the bundle endpoint")]
    Certificate(#[source] CertificateError),
    /// A bundle certificate's public key does not parse.
    #[error("a bundle certificate's key does not parse")]
    PublicKey(#[source] x509_parser::error::X509Error),
    /// A bundle certificate's EC curve has no JWK name.
    #[error("a bundle certificate's EC curve {oid:?} has no JWK name")]
    Curve {
        /// The curve's OID.
        oid: Option<String>,
    },
    /// A bundle certificate's EC point is compressed or malformed.
    #[error("a bundle certificate's EC point is not uncompressed")]
    Point,
    /// A bundle certificate's key is neither EC nor RSA.
    #[error("a bundle certificate's key is neither EC nor RSA")]
    KeyType,
    /// The JWT bundle is not a JWKS.
    #[error("the JWT bundle is not a JWKS document")]
    JwtBundle(#[source] serde_json::Error),
    /// rustls refused the configuration or the key.
    #[error("the bundle endpoint's TLS configuration")]
    Tls(#[source] rustls::Error),
    /// The listen address cannot be bound.
    #[error("bundle_endpoint.listen = {listen}")]
    Listen {
        /// The address.
        listen: enclaveid_io::Address,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The bundle document of `trust_domain` (ID form) from the snapshot's bundles.
pub fn document(
    snapshot: &Snapshot,
    trust_domain: &str,
    sequence: u64,
    refresh_hint: Duration,
) -> Result<Vec<u8>, BundleEndpointError> {
    Ok(render(
        keys(snapshot, trust_domain)?,
        sequence,
        refresh_hint,
    ))
}

fn render(keys: Vec<Value>, sequence: u64, refresh_hint: Duration) -> Vec<u8> {
    json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint.as_secs(),
    })
    .to_string()
    .into_bytes()
}

/// The JWKs of the trust domain: X.509 roots, then JWT signing keys.
fn keys(snapshot: &Snapshot, trust_domain: &str) -> Result<Vec<Value>, BundleEndpointError> {
    let mut keys = Vec::new();
    let roots = snapshot
        .bundles
        .get(trust_domain)
        .map(|b| &b[..])
        .unwrap_or_default();
    for der in certs::split_der(roots, "a bundle").map_err(BundleEndpointError::Certificate)? {
        let cert = certs::parse(&der, "a bundle", 0).map_err(BundleEndpointError::Certificate)?;
        let mut jwk = public_jwk(&cert)?;
        jwk["use"] = "x509-svid".into();
        jwk["x5c"] = json!([STANDARD.encode(&der)]);
        keys.push(jwk);
    }
    if let Some(jwks) = snapshot.jwt_bundles.get(trust_domain) {
        let document: Value =
            serde_json::from_slice(jwks).map_err(BundleEndpointError::JwtBundle)?;
        keys.extend(document["keys"].as_array().cloned().unwrap_or_default());
    }
    Ok(keys)
}

/// The public key of a certificate as a JWK (`kty` and its parameters).
fn public_jwk(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<Value, BundleEndpointError> {
    let spki = cert.public_key();
    let parsed = spki.parsed().map_err(BundleEndpointError::PublicKey)?;
    match parsed {
        PublicKey::EC(point) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            let (crv, size) = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => ("P-256", 32),
                Some("1.3.132.0.34") => ("P-384", 48),
                Some("1.3.132.0.35") => ("P-521", 66),
                other => {
                    return Err(BundleEndpointError::Curve {
                        oid: other.map(str::to_owned),
                    });
                }
            };
            let data = point.data();
            if data.len() != 1 + 2 * size || data[0] != 4 {
                return Err(BundleEndpointError::Point);
            }
            Ok(json!({
                "kty": "EC",
                "crv": crv,
                "x": URL_SAFE_NO_PAD.encode(&data[1..=size]),
                "y": URL_SAFE_NO_PAD.encode(&data[1 + size..]),
            }))
        }
        PublicKey::RSA(rsa) => Ok(json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(strip_zeros(rsa.modulus)),
            "e": URL_SAFE_NO_PAD.encode(strip_zeros(rsa.exponent)),
        })),
        _ => Err(BundleEndpointError::KeyType),
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Presents the current X.509-SVID of one identity (profile `https_spiffe`).
#[derive(Debug)]
struct SvidResolver {
    spiffe_id: SpiffeId,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.snapshots.borrow().clone();
        let identity = snapshot
            .identities
            .iter()
            .find(|i| i.spiffe_id == self.spiffe_id)?;
        let svid = identity.svid.as_ref()?;
        certs::split_der(svid.cert_chain_der(), "the endpoint's SVID")
            .map_err(BundleEndpointError::Certificate)
            .and_then(|chain| certified_key(chain, svid.private_key_der()))
            .map_err(|error| tracing::error!(error = %enclaveid_checks::Chain(&error), "bundle endpoint: the SVID is unusable"))
            .ok()
            .map(Arc::new)
    }
}

/// Presents one certificate (profile `https_web`).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The endpoint's certificate and key. The key is borrowed, not copied: aws-lc-rs parses
/// it into its own key object, which it zeroizes when freed.
fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    pkcs8: &[u8],
) -> Result<CertifiedKey, BundleEndpointError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(BundleEndpointError::Tls)?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Connections refused over the cap, logged at most once a minute.
#[derive(Debug, Default)]
struct RefusedLog {
    last: Option<Instant>,
    since: u64,
}

impl RefusedLog {
    fn note(&mut self, peer: &str, cap: usize) {
        self.since += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|last| now.duration_since(last) >= REFUSED_LOG_EVERY)
        {
            tracing::warn!(
                %peer,
                refused = self.since,
                limit = cap,
                "bundle endpoint: bundle_endpoint.max_connections reached; connections closed at once (logged once a minute)"
            );
            self.last = Some(now);
            self.since = 0;
        }
    }
}

/// The bundle endpoint, ready to serve.
pub(crate) struct Server {
    config: BundleEndpoint,
    trust_domain: String,
    tls: Arc<rustls::ServerConfig>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    sequence: Mutex<(Vec<Value>, u64)>,
}

impl Server {
    /// Prepares the endpoint: an `https_web` certificate and key are read now.
    pub(crate) fn new(
        config: BundleEndpoint,
        trust_domain: &TrustDomain,
        snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(BundleEndpointError::Tls)?
            .with_no_client_auth();
        let mut tls = match &config.profile {
            EndpointProfile::HttpsSpiffe(spiffe_id) => {
                builder.with_cert_resolver(Arc::new(SvidResolver {
                    spiffe_id: spiffe_id.clone(),
                    snapshots: snapshots.clone(),
                }))
            }
            EndpointProfile::HttpsWeb {
                cert_path,
                key_path,
            } => {
                let chain = crate::config::read_certs("bundle_endpoint.cert_path", cert_path)?;
                let key_pem = zeroize::Zeroizing::new(crate::config::read_file(
                    "bundle_endpoint.key_path",
                    key_path,
                )?);
                let key = enclaveid_checks::secret_pem::decode(&key_pem)
                    .filter(|p| p.label == "PRIVATE KEY")
                    .ok_or_else(|| ConfigError::NotPkcs8 {
                        key: "bundle_endpoint.key_path",
                        path: key_path.clone(),
                    })?;
                let certified = certified_key(chain, &key.der)?;
                builder.with_cert_resolver(Arc::new(Fixed(Arc::new(certified))))
            }
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            trust_domain: trust_domain.id_string(),
            config,
            tls: Arc::new(tls),
            snapshots,
            sequence: Mutex::new((Vec::new(), 0)),
        })
    }

    /// The most connections the endpoint holds open at once.
    pub(crate) fn max_connections(&self) -> usize {
        self.config.max_connections
    }

    /// The current document; `spiffe_sequence` rises whenever the keys change.
    pub(crate) fn current(&self) -> Result<Vec<u8>, BundleEndpointError> {
        let snapshot = self.snapshots.borrow().clone();
        let keys = keys(&snapshot, &self.trust_domain)?;
        let mut state = self
            .sequence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.0 != keys || state.1 == 0 {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            *state = (keys.clone(), now.max(state.1 + 1));
        }
        Ok(render(keys, state.1, self.config.refresh_hint))
    }

    /// Serves until `shutdown` resolves.
    pub(crate) async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), BundleEndpointError> {
        let listener =
            self.config
                .listen
                .bind()
                .await
                .map_err(|source| BundleEndpointError::Listen {
                    listen: self.config.listen.clone(),
                    source,
                })?;
        tracing::info!(listen = %self.config.listen, max_connections = self.config.max_connections, "serving the SPIFFE bundle endpoint");
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        let this = Arc::new(self);
        let mut backoff = enclaveid_io::AcceptBackoff::default();
        let mut refused = RefusedLog::default();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => {
                        backoff.succeeded();
                        accepted
                    }
                    Err(error) => {
                        let pause = backoff.failed();
                        tracing::warn!(%error, ?pause, "bundle endpoint: accept failed");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(()),
            };
            // Past the cap, a connection is closed at once: its descriptor is not held,
            // so the endpoint's clients cannot take the Workload API's descriptors.
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                refused.note(&peer, this.config.max_connections);
                continue;
            };
            let (acceptor, this) = (acceptor.clone(), this.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let served = tokio::time::timeout(
                    CONNECTION_LIFETIME,
                    this.clone().connection(acceptor, stream, peer.clone()),
                );
                if served.await.is_err() {
                    tracing::debug!(%peer, "bundle endpoint: connection closed at its time limit");
                }
            });
        }
    }

    /// One connection: the TLS handshake and then HTTP/1.1 requests, each under a
    /// deadline so that a client sending nothing (or a byte at a time) is let go.
    async fn connection(
        self: Arc<Self>,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: Box<dyn enclaveid_io::Stream>,
        peer: String,
    ) {
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "bundle endpoint: handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "bundle endpoint: no handshake in time");
                return;
            }
        };
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let this = self.clone();
            let peer = peer.clone();
            async move {
                let response = this.answer(&request);
                tracing::info!(%peer, status = response.status().as_u16(), "bundle endpoint: request answered");
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_header_size(MAX_HEADER_BYTES)
            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
            .await;
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, content_type: &str, body: Vec<u8>| {
            Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default()
        };
        if request.method() != Method::GET {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"GET only\n".to_vec(),
            );
        }
        match self.current() {
            Ok(document) => reply(StatusCode::OK, "application/json", document),
            Err(error) => {
                tracing::error!(error = %enclaveid_checks::Chain(&error), "bundle endpoint: no document");
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    b"no bundle\n".to_vec(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_carries_roots_and_jwt_keys_in_the_spiffe_bundle_format() {
        let td = TrustDomain::new("example.org").unwrap();
        let authority = crate::authority::Authority::generate_dev(&td).unwrap();
        let jwt =
            crate::jwt::JwtKeys::new(&td, Duration::from_secs(3600), Duration::from_secs(300))
                .unwrap();
        let root = authority.bundle_der();
        let snapshot = Snapshot {
            bundles: [(td.id_string(), root.clone().into())].into(),
            jwt_bundles: jwt.bundles(),
            ..Snapshot::default()
        };
        let document: Value = serde_json::from_slice(
            &document(&snapshot, &td.id_string(), 7, Duration::from_secs(300)).unwrap(),
        )
        .unwrap();
        assert_eq!(document["spiffe_sequence"], 7);
        assert_eq!(document["spiffe_refresh_hint"], 300);
        let keys = document["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        let x509 = &keys[0];
        assert_eq!(x509["use"], "x509-svid");
        assert_eq!(x509["kty"], "EC");
        assert_eq!(x509["crv"], "P-256");
        assert_eq!(x509["x5c"][0], STANDARD.encode(&root));
        // The JWK's point is the certificate's key.
        let (_, cert) = x509_parser::parse_x509_certificate(&root).unwrap();
        let point = cert.public_key().subject_public_key.data.to_vec();
        let x = URL_SAFE_NO_PAD.decode(x509["x"].as_str().unwrap()).unwrap();
        let y = URL_SAFE_NO_PAD.decode(x509["y"].as_str().unwrap()).unwrap();
        assert_eq!([&[4u8][..], &x, &y].concat(), point);
        assert_eq!(keys[1]["use"], "jwt-svid");
        assert!(keys[1]["kid"].is_string());
    }

    #[test]
    fn the_sequence_rises_only_when_the_keys_change() {
        let td = TrustDomain::new("example.org").unwrap();
        let authority = crate::authority::Authority::generate_dev(&td).unwrap();
        let (tx, rx) = watch::channel(Arc::new(Snapshot {
            bundles: [(td.id_string(), authority.bundle_der().into())].into(),
            ..Snapshot::default()
        }));
        let config = BundleEndpoint {
            listen: "tcp://127.0.0.1:0".parse().unwrap(),
            profile: EndpointProfile::HttpsSpiffe(SpiffeId::new("spiffe://example.org/b").unwrap()),
            refresh_hint: Duration::from_secs(60),
            max_connections: 4,
        };
        let server = Server::new(config, &td, rx).unwrap();
        let sequence = |server: &Server| {
            let document: Value = serde_json::from_slice(&server.current().unwrap()).unwrap();
            document["spiffe_sequence"].as_u64().unwrap()
        };
        let first = sequence(&server);
        assert!(first > 0);
        assert_eq!(sequence(&server), first, "same keys, same sequence");
        let other = crate::authority::Authority::generate_dev(&td).unwrap();
        tx.send_replace(Arc::new(Snapshot {
            bundles: [(td.id_string(), other.bundle_der().into())].into(),
            ..Snapshot::default()
        }));
        assert!(sequence(&server) > first, "new keys, higher sequence");
    }
}
