//! The SPIFFE Workload API server of EnclaveID.
//!
//! This crate owns the wire contract that SPIFFE clients (go-spiffe, py-spiffe, the
//! `spiffe` crate) rely on, and Envoy's: the `SpiffeWorkloadAPI` gRPC service, Envoy's
//! Secret Discovery Service on the same socket ([`sds`]), the
//! `workload.spiffe.io: true` security header, the status codes SPIRE returns, and the
//! streaming rule "full current state on every change". It serves whatever the agent
//! publishes in a [`Snapshot`] through a `tokio::sync::watch` channel (one writer, the
//! agent's rotation loop; one cloned reader per open stream) and asks a
//! [`WorkloadAttestor`], implemented by the agent, which selectors a caller has.
//!
//! It leaves to others: where SVIDs come from (minting, upstream CAs, AWS), how a
//! caller is attested (`/proc`, `SO_PEERCRED`), sockets and signals. It imports no
//! AWS crate.
//!
//! ```no_run
//! use std::sync::Arc;
//! use enclaveid_workload_api::{
//!     Caller, Error, Limiter, Limits, Selectors, Snapshot, WorkloadApi, WorkloadAttestor,
//! };
//!
//! #[derive(Clone)]
//! struct EveryoneIsUid0;
//! impl WorkloadAttestor for EveryoneIsUid0 {
//!     type Accepted = ();
//!     fn accept(&self, _caller: &Caller) {}
//!     async fn attest(&self, _caller: Caller, _accepted: &()) -> Result<Selectors, Error> {
//!         Ok(Selectors::from_iter(["unix:uid:0".to_owned()]))
//!     }
//! }
//!
//! # async fn demo() -> std::io::Result<()> {
//! let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
//! let limiter = Limiter::new(Limits::default());
//! let service = WorkloadApi::new(rx, EveryoneIsUid0, limiter.clone()).into_server();
//! let listener = tokio::net::UnixListener::bind("/tmp/agent.sock")?;
//! let incoming = enclaveid_workload_api::incoming(listener, EveryoneIsUid0, limiter);
//! // tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming)
//! # drop((tx, service, incoming)); Ok(()) }
//! ```
//!
//! Status codes (as SPIRE's agent returns them, `spire/pkg/agent/endpoints`):
//!
//! | situation | code | message |
//! | --- | --- | --- |
//! | header `workload.spiffe.io: true` absent or another value | `InvalidArgument` | `security header missing from request` |
//! | the caller could not be attested | `Unavailable` | the reason |
//! | the caller is over a per-uid or per-connection limit ([`Limits`]) | `ResourceExhausted` | which limit |
//! | no entry matches the caller, or its last identity went away | `PermissionDenied` | `no identity issued` |
//! | the agent is shutting down | `Unavailable` | `agent is shutting down` |
//! | `FetchJWTSVID` or `ValidateJWTSVID` without an audience | `InvalidArgument` | `audience must be specified` |
//! | `ValidateJWTSVID` without a token | `InvalidArgument` | `svid must be specified` |
//! | `ValidateJWTSVID` of a bad token | `InvalidArgument` | why ([`jwt::validate`]) |
//! | `FetchJWTSVID` while the agent has no JWT signing key | `Unavailable` | says so |

#![forbid(unsafe_code)]

mod authority;
mod connection;
pub mod jwt;
mod limits;
pub mod sds;

#[doc(hidden)]
pub use authority::read_through;
pub use authority::{LenientAuthority, MAX_HEADER_LIST_SIZE};
pub use connection::{Connection, Peer, incoming};
pub use limits::{Limiter, Limits};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::Stream;
use prost::bytes::Bytes;
use spiffe::SpiffeId;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

/// The generated protobuf messages, client and server of the Workload API.
///
/// Checked in; `tests/proto_bootstrap.rs` regenerates it from `proto/workload.proto`.
#[allow(
    clippy::all,
    clippy::pedantic,
    unreachable_pub,
    rust_2018_idioms,
    clippy::allow_attributes_without_reason,
    reason = "generated code"
)]
pub mod proto {
    include!("proto/workload.rs");
}

use proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

/// The metadata key every Workload API call must carry, with the value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// The message of `PermissionDenied` for a caller with no identity; clients match on it.
pub const NO_IDENTITY_ISSUED: &str = "no identity issued";

/// The message of `InvalidArgument` when the security header is absent or wrong.
pub const SECURITY_HEADER_MISSING: &str = "security header missing from request";

/// Requests are all small (the largest, `ValidateJWTSVID`, carries one token); anything
/// larger is garbage and is refused before it is buffered.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Errors of the Workload API crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller could not be attested: its process went away, `/proc` could not be
    /// read, or the connection carries no peer credentials (a TCP transport).
    #[error("workload attestation failed: {0}")]
    Attestation(Box<dyn std::error::Error + Send + Sync>),
}

// === Snapshot ===

/// Everything the Workload API serves, as one immutable value: the agent publishes a new
/// `Arc<Snapshot>` on every change and each open stream re-reads it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Registered identities, in configuration order: when several match a caller they
    /// are returned in this order and the first is the caller's default SVID.
    pub identities: Vec<Identity>,
    /// X.509 trust bundles keyed by trust-domain ID (`spiffe://example.org`), each the
    /// concatenated DER of its root certificates.
    pub bundles: BTreeMap<String, Bytes>,
    /// JWT bundles keyed by trust-domain ID, each a JWKS document.
    pub jwt_bundles: BTreeMap<String, Bytes>,
    /// Signs JWT-SVIDs; `None` while the agent has no JWT key.
    pub jwt_issuer: Option<Arc<dyn jwt::JwtIssuer>>,
}

/// One registration entry and its current X.509-SVID, if one is issued.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// All of these must be among a caller's selectors for the caller to get this
    /// identity.
    pub selectors: Selectors,
    /// Operator guidance sent with the SVID (`hint`), empty for none.
    pub hint: String,
    /// The current SVID; `None` while none is issued (not minted yet, or expired).
    pub svid: Option<Svid>,
    /// The lifetime of this identity's JWT-SVIDs.
    pub jwt_ttl: std::time::Duration,
    /// Trust-domain IDs (`spiffe://other.org`) whose bundles a caller with this identity
    /// also gets (SPIRE's `federates_with`); empty: only its own trust domain's.
    pub federates_with: Vec<String>,
}

/// An issued X.509-SVID: certificate chain and private key.
#[derive(Clone)]
pub struct Svid {
    cert_chain: Bytes,
    private_key: Bytes,
    not_after: SystemTime,
}

/// A set of selectors, each in its canonical string form (`unix:uid:1000`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectors(BTreeSet<String>);

/// Who is calling, from the socket's peer credentials (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The process ID, when the kernel reported one.
    pub pid: Option<i32>,
    /// The effective user ID.
    pub uid: u32,
    /// The effective (primary) group ID.
    pub gid: u32,
}

/// Finds the selectors of a caller. Implemented by the agent (Unix workload attestation).
pub trait WorkloadAttestor: Send + Sync + 'static {
    /// What is noted about a caller when its connection is accepted, before any of its
    /// calls. The agent notes the process's executable, so that a process that connects
    /// and then `execve`s another binary is not taken for that binary.
    type Accepted: Clone + Send + Sync + Unpin + std::fmt::Debug + 'static;

    /// Notes a freshly accepted caller. It runs in the accept loop: it must be quick.
    fn accept(&self, caller: &Caller) -> Self::Accepted;

    /// The selectors that describe `caller`, whose connection was noted as `accepted`.
    fn attest(
        &self,
        caller: Caller,
        accepted: &Self::Accepted,
    ) -> impl Future<Output = Result<Selectors, Error>> + Send;
}

// === impl Snapshot ===

impl Snapshot {
    /// The issued SVIDs of the identities whose selectors all match `selectors`, in
    /// configuration order. An SVID past its notAfter on this machine's clock is left
    /// out even before the agent withdraws it (the clock may just have stepped).
    fn issued_to<'a>(
        &'a self,
        selectors: &'a Selectors,
    ) -> impl Iterator<Item = (&'a Identity, &'a Svid)> {
        let now = SystemTime::now();
        self.identities
            .iter()
            .filter(|identity| identity.selectors.is_subset(selectors))
            .filter_map(|identity| identity.svid.as_ref().map(|svid| (identity, svid)))
            .filter(move |(_, svid)| svid.not_after > now)
    }

    fn x509_svid_response(&self, selectors: &Selectors) -> Option<proto::X509svidResponse> {
        let svids: Vec<_> = self
            .issued_to(selectors)
            .map(|(identity, svid)| proto::X509svid {
                spiffe_id: identity.spiffe_id.to_string(),
                x509_svid: svid.cert_chain.clone(),
                x509_svid_key: svid.private_key.clone(),
                bundle: self
                    .bundles
                    .get(&identity.spiffe_id.trust_domain().id_string())
                    .cloned()
                    .unwrap_or_default(),
                hint: identity.hint.clone(),
            })
            .collect();
        if svids.is_empty() {
            return None;
        }
        // As SPIRE does: the bundles the caller's identities federate with, other than
        // the trust domains of its SVIDs.
        let federated_bundles = self
            .visible_bundles(&self.bundles, selectors)
            .filter(|(td, _)| !svids.iter().any(|svid| is_member(&svid.spiffe_id, td)))
            .collect();
        Some(proto::X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles,
        })
    }

    fn x509_bundles_response(&self, selectors: &Selectors) -> Option<proto::X509BundlesResponse> {
        // As SPIRE does by default, only a caller with an identity gets bundles.
        self.issued_to(selectors).next()?;
        Some(proto::X509BundlesResponse {
            crl: Vec::new(),
            bundles: self.visible_bundles(&self.bundles, selectors).collect(),
        })
    }

    /// The bundles of `all` a caller with `selectors` may see: those of its identities'
    /// trust domains and of the trust domains they federate with.
    fn visible_bundles<'a>(
        &'a self,
        all: &'a BTreeMap<String, Bytes>,
        selectors: &'a Selectors,
    ) -> impl Iterator<Item = (String, Bytes)> + 'a {
        let mine: Vec<&Identity> = self
            .identities
            .iter()
            .filter(|identity| identity.selectors.is_subset(selectors))
            .collect();
        all.iter()
            .filter(move |(td, _)| {
                mine.iter().any(|identity| {
                    td.strip_prefix("spiffe://") == Some(identity.spiffe_id.trust_domain_name())
                        || identity.federates_with.iter().any(|f| f == *td)
                })
            })
            .map(|(td, b)| (td.clone(), b.clone()))
    }
}

impl Snapshot {
    fn jwt_bundles_response(&self, selectors: &Selectors) -> Option<proto::JwtBundlesResponse> {
        // Like the X.509 bundles: only a caller with an identity gets them.
        self.identities
            .iter()
            .find(|identity| identity.selectors.is_subset(selectors))?;
        Some(proto::JwtBundlesResponse {
            bundles: self.visible_bundles(&self.jwt_bundles, selectors).collect(),
        })
    }
}

/// Whether `spiffe_id` (`spiffe://td/path`) is in the trust domain `td_id` (`spiffe://td`).
fn is_member(spiffe_id: &str, td_id: &str) -> bool {
    spiffe_id
        .strip_prefix(td_id)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

// === impl Svid ===

impl Svid {
    /// An SVID from its DER certificate chain (leaf first, concatenated) and its PKCS#8
    /// DER private key. The key buffer is zeroized when the last response that carries
    /// it is dropped.
    pub fn new(
        cert_chain_der: Vec<u8>,
        private_key_pkcs8_der: Zeroizing<Vec<u8>>,
        not_after: SystemTime,
    ) -> Self {
        Self {
            cert_chain: Bytes::from(cert_chain_der),
            private_key: Bytes::from_owner(ZeroizingOwner(private_key_pkcs8_der)),
            not_after,
        }
    }

    /// The DER certificate chain, leaf first.
    pub fn cert_chain_der(&self) -> &[u8] {
        &self.cert_chain
    }

    /// The PKCS#8 DER private key (for the agent's own use of an SVID, such as its bundle
    /// endpoint's TLS).
    pub fn private_key_der(&self) -> &[u8] {
        &self.private_key
    }

    /// The end of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("cert_chain_len", &self.cert_chain.len())
            .field("private_key", &"[secret key elided]")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Owns a private key for [`Bytes::from_owner`], so the key bytes are shared by reference
/// between responses and zeroized when the last reference goes.
struct ZeroizingOwner(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for proto::X509svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("x509_svid_len", &self.x509_svid.len())
            .field("x509_svid_key", &"[secret key elided]")
            .field("bundle_len", &self.bundle.len())
            .field("hint", &self.hint)
            .finish()
    }
}

// === impl Selectors ===

impl Selectors {
    /// Adds one selector.
    pub fn insert(&mut self, selector: String) {
        self.0.insert(selector);
    }

    /// Whether every selector of `self` is in `other`. An empty set is a subset of
    /// everything, so the agent refuses entries without selectors.
    pub fn is_subset(&self, other: &Selectors) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The selectors, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// How many selectors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<String> for Selectors {
    fn from_iter<T: IntoIterator<Item = String>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

// === WorkloadApi ===

/// The `SpiffeWorkloadAPI` service over a watch of [`Snapshot`]s.
pub struct WorkloadApi<A> {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    attestor: A,
    tokens: TokenCache,
    limiter: Arc<Limiter>,
    metrics: Arc<ApiMetrics>,
}

/// What the service counts, for the agent's metrics: calls by RPC and the status they
/// got (for a stream, the status it was opened or refused with), and streams open now.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    calls: std::sync::Mutex<BTreeMap<(&'static str, i32), u64>>,
    open_streams: std::sync::atomic::AtomicI64,
}

impl ApiMetrics {
    /// Calls so far: (RPC, status code, count).
    pub fn calls(&self) -> Vec<(&'static str, tonic::Code, u64)> {
        let calls = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        calls
            .iter()
            .map(|((rpc, code), n)| (*rpc, tonic::Code::from_i32(*code), *n))
            .collect()
    }

    /// Streams open now.
    pub fn open_streams(&self) -> i64 {
        self.open_streams.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn record<T>(&self, rpc: &'static str, result: &Result<T, Status>) {
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        let mut calls = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *calls.entry((rpc, code as i32)).or_default() += 1;
    }
}

/// Counts a stream as open while it lives.
struct OpenStream(Arc<ApiMetrics>);

impl OpenStream {
    fn new(metrics: &Arc<ApiMetrics>) -> Self {
        metrics
            .open_streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(metrics.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0
            .open_streams
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// JWT-SVIDs already signed, per (SPIFFE ID, audience set, key), reused until half their
/// lifetime has passed. Callers choose audiences (up to the request size), so the cache
/// is bounded in entries and in bytes.
struct TokenCache {
    entries: std::sync::Mutex<TokenEntries>,
    budget: usize,
}

#[derive(Default)]
struct TokenEntries {
    map: std::collections::HashMap<TokenKey, Cached>,
    bytes: usize,
}

type TokenKey = (String, Vec<String>, String);

struct Cached {
    token: String,
    renew_at: SystemTime,
    bytes: usize,
}

/// The most tokens kept, whatever their size; past it (or past the byte budget), what is
/// due is dropped, then everything.
const MAX_CACHED_TOKENS: usize = 4096;
/// What an entry costs beyond its strings: the map's bookkeeping, roughly.
const ENTRY_OVERHEAD: usize = 128;

impl TokenCache {
    fn new(budget: usize) -> Self {
        Self {
            entries: std::sync::Mutex::default(),
            budget,
        }
    }

    async fn token(
        &self,
        issuer: &dyn jwt::JwtIssuer,
        identity: &Identity,
        audience: &[String],
    ) -> Result<String, Status> {
        let now = SystemTime::now();
        let mut audiences = audience.to_vec();
        audiences.sort();
        audiences.dedup();
        let key = (
            identity.spiffe_id.to_string(),
            audiences,
            issuer.kid().to_owned(),
        );
        let cached = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map
            .get(&key)
            .filter(|cached| now < cached.renew_at)
            .map(|cached| cached.token.clone());
        if let Some(token) = cached {
            return Ok(token);
        }
        // Not under the lock: a server may be asked (the `spire` upstream).
        let token = issuer
            .issue(&identity.spiffe_id, audience, identity.jwt_ttl, now)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, spiffe_id = %identity.spiffe_id, "could not sign a JWT-SVID");
                Status::unavailable(format!("could not issue a JWT-SVID: {e}"))
            })?;
        let bytes = ENTRY_OVERHEAD
            + key.0.len()
            + key.1.iter().map(String::len).sum::<usize>()
            + key.2.len()
            + token.len();
        if bytes > self.budget {
            // Larger than the whole budget: served, not kept.
            return Ok(token);
        }
        let mut cache = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.map.len() >= MAX_CACHED_TOKENS || cache.bytes + bytes > self.budget {
            cache.map.retain(|_, cached| now < cached.renew_at);
            cache.bytes = cache.map.values().map(|c| c.bytes).sum();
            if cache.map.len() >= MAX_CACHED_TOKENS || cache.bytes + bytes > self.budget {
                cache.map.clear();
                cache.bytes = 0;
            }
        }
        cache.bytes += bytes;
        if let Some(replaced) = cache.map.insert(
            key,
            Cached {
                token: token.clone(),
                // From the token's own times when it carries them (the `spire` upstream's
                // server chooses the lifetime), else from the identity's.
                renew_at: jwt::renew_time(&token)
                    .unwrap_or_else(|| now.checked_add(identity.jwt_ttl / 2).unwrap_or(now)),
                bytes,
            },
        ) {
            cache.bytes -= replaced.bytes;
        }
        Ok(token)
    }
}

/// The service as tonic serves it: the Workload API behind the security-header check.
pub type WorkloadApiServer<A> = InterceptedService<
    SpiffeWorkloadApiServer<WorkloadApi<A>>,
    fn(Request<()>) -> Result<Request<()>, Status>,
>;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl<A: WorkloadAttestor> WorkloadApi<A> {
    /// A service that serves what is published on `snapshots`, to connections accepted
    /// by [`incoming`] with the same `limiter`. When the sender is dropped (the agent
    /// shuts down) every open stream ends with `Unavailable`.
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        attestor: A,
        limiter: Arc<Limiter>,
    ) -> Self {
        Self {
            snapshots,
            attestor,
            tokens: TokenCache::new(limiter.limits().token_cache_bytes),
            limiter,
            metrics: Arc::default(),
        }
    }

    /// Counts calls and open streams into `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<ApiMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Wraps the service for tonic, with the security-header check in front of every
    /// method and a bound on request size.
    pub fn into_server(self) -> WorkloadApiServer<A> {
        let server =
            SpiffeWorkloadApiServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES);
        InterceptedService::new(server, check_security_header as fn(_) -> _)
    }

    /// Admits a call under the caller's limits and attests the caller from its
    /// connection's peer credentials. The slot counts the call (a stream, while it is
    /// open) against the caller's limits.
    async fn selectors_of<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Selectors, limits::StreamSlot), Status> {
        attest_caller(&self.attestor, &self.limiter, request).await
    }

    /// A stream that sends `build(snapshot)` now and again whenever it changes, until the
    /// caller has no identity left (`PermissionDenied`) or the agent stops.
    fn watch<T>(
        &self,
        (selectors, slot): (Selectors, limits::StreamSlot),
        build: fn(&Snapshot, &Selectors) -> Option<T>,
        caller: &'static str,
    ) -> Result<ResponseStream<T>, Status>
    where
        T: PartialEq + Clone + Send + Sync + 'static,
    {
        let mut snapshots = self.snapshots.clone();
        let first = build(&snapshots.borrow_and_update(), &selectors).ok_or_else(|| {
            tracing::info!(method = caller, "no identity issued to caller");
            Status::permission_denied(NO_IDENTITY_ISSUED)
        })?;
        struct State<T> {
            snapshots: watch::Receiver<Arc<Snapshot>>,
            selectors: Selectors,
            last: Option<T>,
            pending: Option<T>,
            /// Counts the stream against the caller's limits until it ends.
            _slot: limits::StreamSlot,
            _open: OpenStream,
        }
        let state = State {
            snapshots,
            selectors,
            last: None,
            pending: Some(first),
            _slot: slot,
            _open: OpenStream::new(&self.metrics),
        };
        let stream = futures_util::stream::unfold(Some(state), move |state| async move {
            let mut state = state?;
            loop {
                if let Some(next) = state.pending.take()
                    && state.last.as_ref() != Some(&next)
                {
                    state.last = Some(next.clone());
                    return Some((Ok(next), Some(state)));
                }
                if state.snapshots.changed().await.is_err() {
                    return Some((Err(Status::unavailable("agent is shutting down")), None));
                }
                match build(&state.snapshots.borrow_and_update(), &state.selectors) {
                    Some(next) => state.pending = Some(next),
                    None => {
                        tracing::info!(method = caller, "caller's last identity went away");
                        return Some((Err(Status::permission_denied(NO_IDENTITY_ISSUED)), None));
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

/// Admits a call under the caller's limits and attests the caller from its connection's
/// peer credentials: the Workload API's and SDS's callers alike.
async fn attest_caller<A: WorkloadAttestor, T>(
    attestor: &A,
    limiter: &Arc<Limiter>,
    request: &Request<T>,
) -> Result<(Selectors, limits::StreamSlot), Status> {
    let peer = request
        .extensions()
        .get::<Peer<A::Accepted>>()
        .cloned()
        .ok_or_else(|| {
            Status::unavailable(
                "workload attestation failed: the connection has no peer credentials",
            )
        })?;
    let caller = peer.caller;
    limiter.admit_call(caller.uid)?;
    let slot = limiter.open_stream(caller.uid, &peer.state)?;
    match attestor.attest(caller, &peer.accepted).await {
        Ok(selectors) => {
            tracing::debug!(pid = ?caller.pid, uid = caller.uid, selectors = selectors.len(), "attested caller");
            Ok((selectors, slot))
        }
        Err(error) => {
            tracing::warn!(%error, pid = ?caller.pid, uid = caller.uid, "workload attestation failed");
            Err(Status::unavailable(error.to_string()))
        }
    }
}

/// A tonic channel to a Workload API server on the Unix socket at `path`, for clients
/// of this crate's generated `proto::spiffe_workload_api_client` (the CLI's health
/// check, tests and benchmarks). Workloads should use a SPIFFE library instead.
pub async fn connect_unix(
    path: impl Into<std::path::PathBuf>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.into();
    // tonic requires a URI; the connector ignores it and dials the socket.
    tonic::transport::Endpoint::from_static("http://[::]:0")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

fn check_security_header(request: Request<()>) -> Result<Request<()>, Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(value) if value == "true" => Ok(request),
        _ => Err(Status::invalid_argument(SECURITY_HEADER_MISSING)),
    }
}

/// A JSON value as a protobuf `Value` (the claims of `ValidateJWTSVIDResponse`).
fn to_proto_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_proto_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(to_proto_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn to_proto_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, to_proto_value(v)))
            .collect(),
    }
}

#[tonic::async_trait]
impl<A: WorkloadAttestor> SpiffeWorkloadApi for WorkloadApi<A> {
    type FetchX509SVIDStream = ResponseStream<proto::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<proto::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<proto::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<proto::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let result: Result<Response<Self::FetchX509SVIDStream>, Status> = async {
            let admitted = self.selectors_of(&request).await?;
            self.watch(admitted, Snapshot::x509_svid_response, "FetchX509SVID")
                .map(Response::new)
        }
        .await;
        self.metrics.record("FetchX509SVID", &result);
        result
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<proto::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let result: Result<Response<Self::FetchX509BundlesStream>, Status> = async {
            let admitted = self.selectors_of(&request).await?;
            self.watch(
                admitted,
                Snapshot::x509_bundles_response,
                "FetchX509Bundles",
            )
            .map(Response::new)
        }
        .await;
        self.metrics.record("FetchX509Bundles", &result);
        result
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<proto::JwtsvidRequest>,
    ) -> Result<Response<proto::JwtsvidResponse>, Status> {
        let result: Result<Response<proto::JwtsvidResponse>, Status> = async {
            let (selectors, _slot) = self.selectors_of(&request).await?;
            let request = request.into_inner();
            if request.audience.is_empty() {
                return Err(Status::invalid_argument("audience must be specified"));
            }
            let snapshot = self.snapshots.borrow().clone();
            let identities: Vec<&Identity> = snapshot
                .identities
                .iter()
                .filter(|identity| identity.selectors.is_subset(&selectors))
                .filter(|identity| {
                    request.spiffe_id.is_empty() || identity.spiffe_id.to_string() == request.spiffe_id
                })
                .collect();
            if identities.is_empty() {
                tracing::info!(method = "FetchJWTSVID", spiffe_id = %request.spiffe_id, "no identity issued to caller");
                return Err(Status::permission_denied(NO_IDENTITY_ISSUED));
            }
            let issuer = snapshot.jwt_issuer.as_deref().ok_or_else(|| {
                Status::unavailable("no JWT-SVID signing key: none has been released to this agent")
            })?;
            let mut svids = Vec::with_capacity(identities.len());
            for identity in identities {
                svids.push(proto::Jwtsvid {
                    spiffe_id: identity.spiffe_id.to_string(),
                    svid: self.tokens.token(issuer, identity, &request.audience).await?,
                    hint: identity.hint.clone(),
                });
            }
            Ok(Response::new(proto::JwtsvidResponse { svids }))
        }
        .await;
        self.metrics.record("FetchJWTSVID", &result);
        result
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<proto::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let result: Result<Response<Self::FetchJWTBundlesStream>, Status> = async {
            let admitted = self.selectors_of(&request).await?;
            self.watch(admitted, Snapshot::jwt_bundles_response, "FetchJWTBundles")
                .map(Response::new)
        }
        .await;
        self.metrics.record("FetchJWTBundles", &result);
        result
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<proto::ValidateJwtsvidRequest>,
    ) -> Result<Response<proto::ValidateJwtsvidResponse>, Status> {
        let result: Result<Response<proto::ValidateJwtsvidResponse>, Status> = async {
            // Any attested caller may validate; it needs no identity of its own.
            let _slot = self.selectors_of(&request).await?;
            let request = request.into_inner();
            if request.audience.is_empty() {
                return Err(Status::invalid_argument("audience must be specified"));
            }
            if request.svid.is_empty() {
                return Err(Status::invalid_argument("svid must be specified"));
            }
            let bundles = self.snapshots.borrow().jwt_bundles.clone();
            let validated = jwt::validate(
                &request.svid,
                &request.audience,
                &bundles,
                SystemTime::now(),
            )
            .map_err(|invalid| {
                tracing::info!(reason = %invalid, "JWT-SVID refused");
                Status::invalid_argument(invalid.0)
            })?;
            Ok(Response::new(proto::ValidateJwtsvidResponse {
                spiffe_id: validated.spiffe_id.to_string(),
                claims: Some(to_proto_struct(validated.claims)),
            }))
        }
        .await;
        self.metrics.record("ValidateJWTSVID", &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selectors(list: &[&str]) -> Selectors {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn identity(id: &str, sel: &[&str], issued: bool) -> Identity {
        Identity {
            spiffe_id: SpiffeId::new(id).unwrap(),
            selectors: selectors(sel),
            hint: String::new(),
            svid: issued.then(|| {
                Svid::new(
                    id.as_bytes().to_vec(),
                    Zeroizing::new(b"key".to_vec()),
                    SystemTime::now() + std::time::Duration::from_secs(3600),
                )
            }),
            jwt_ttl: std::time::Duration::from_secs(300),
            federates_with: Vec::new(),
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            identities: vec![
                identity("spiffe://example.org/a", &["unix:uid:1"], true),
                Identity {
                    federates_with: vec!["spiffe://other.org".to_owned()],
                    ..identity(
                        "spiffe://example.org/b",
                        &["unix:uid:1", "unix:gid:2"],
                        true,
                    )
                },
                identity("spiffe://example.org/c", &["unix:uid:3"], false),
            ],
            bundles: BTreeMap::from([
                (
                    "spiffe://example.org".to_owned(),
                    Bytes::from_static(b"root"),
                ),
                (
                    "spiffe://other.org".to_owned(),
                    Bytes::from_static(b"other"),
                ),
            ]),
            ..Snapshot::default()
        }
    }

    #[test]
    fn identities_match_when_all_their_selectors_match_and_keep_config_order() {
        let snapshot = snapshot();
        let only_uid = snapshot
            .x509_svid_response(&selectors(&["unix:uid:1", "unix:gid:9"]))
            .unwrap();
        assert_eq!(only_uid.svids.len(), 1);
        assert_eq!(only_uid.svids[0].spiffe_id, "spiffe://example.org/a");
        assert!(
            only_uid.federated_bundles.is_empty(),
            "a federates with nothing"
        );
        let bundles = snapshot
            .x509_bundles_response(&selectors(&["unix:uid:1"]))
            .unwrap();
        assert_eq!(
            bundles.bundles.keys().collect::<Vec<_>>(),
            ["spiffe://example.org"]
        );

        let both = snapshot
            .x509_svid_response(&selectors(&["unix:gid:2", "unix:uid:1"]))
            .unwrap();
        let ids: Vec<_> = both.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
        assert_eq!(ids, ["spiffe://example.org/a", "spiffe://example.org/b"]);
        assert_eq!(both.svids[0].bundle, Bytes::from_static(b"root"));
        assert_eq!(
            both.federated_bundles.keys().collect::<Vec<_>>(),
            ["spiffe://other.org"]
        );
    }

    #[test]
    fn no_identity_without_a_match_or_without_an_issued_svid() {
        let snapshot = snapshot();
        assert!(
            snapshot
                .x509_svid_response(&selectors(&["unix:uid:2"]))
                .is_none()
        );
        assert!(
            snapshot
                .x509_bundles_response(&selectors(&["unix:uid:2"]))
                .is_none()
        );
        // uid 3 matches an entry whose SVID is not issued.
        assert!(
            snapshot
                .x509_svid_response(&selectors(&["unix:uid:3"]))
                .is_none()
        );
        // A caller whose identity federates with other.org also gets its bundle.
        let bundles = snapshot
            .x509_bundles_response(&selectors(&["unix:uid:1", "unix:gid:2"]))
            .unwrap();
        assert_eq!(bundles.bundles.len(), 2);
    }

    #[test]
    fn trust_domain_membership_is_by_whole_name() {
        assert!(is_member("spiffe://example.org/a", "spiffe://example.org"));
        assert!(!is_member(
            "spiffe://example.org.evil/a",
            "spiffe://example.org"
        ));
        assert!(!is_member(
            "spiffe://example.orgx/a",
            "spiffe://example.org"
        ));
    }

    struct NoAttestor;
    impl WorkloadAttestor for NoAttestor {
        type Accepted = ();
        fn accept(&self, _caller: &Caller) {}
        async fn attest(&self, _caller: Caller, _accepted: &()) -> Result<Selectors, Error> {
            Err(Error::Attestation("unused".into()))
        }
    }

    /// `selectors` admitted as a stream of uid 1 on a connection of its own.
    fn admitted(limiter: &Arc<Limiter>, list: &[&str]) -> (Selectors, limits::StreamSlot) {
        std::mem::forget(limiter.admit_connection(1).unwrap());
        let slot = limiter
            .open_stream(1, &limits::ConnectionState::new())
            .unwrap();
        (selectors(list), slot)
    }

    /// The streaming contract: full state on every change, nothing when nothing changed,
    /// PermissionDenied when the caller's last identity goes, Unavailable at shutdown.
    #[tokio::test]
    async fn a_stream_follows_the_snapshot() {
        use futures_util::StreamExt as _;
        let (tx, rx) = watch::channel(Arc::new(snapshot()));
        let limiter = Limiter::new(Limits::default());
        let api = WorkloadApi::new(rx, NoAttestor, limiter.clone());
        let caller = &["unix:uid:1"];
        let mut stream = api
            .watch(
                admitted(&limiter, caller),
                Snapshot::x509_svid_response,
                "test",
            )
            .unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.svids.len(), 1);

        // Republishing the same content sends nothing; a rotated SVID is sent.
        tx.send_replace(Arc::new(snapshot()));
        let mut rotated = snapshot();
        rotated.identities[0].svid = Some(Svid::new(
            b"new".to_vec(),
            Zeroizing::new(b"k2".to_vec()),
            SystemTime::now() + std::time::Duration::from_secs(3600),
        ));
        tx.send_replace(Arc::new(rotated.clone()));
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!(&second.svids[0].x509_svid[..], b"new");

        // An SVID past its notAfter on this machine's clock (the clock stepped before the
        // agent withdrew it) is not sent.
        let mut stale = rotated.clone();
        stale.identities[0].svid = Some(Svid::new(
            b"stale".to_vec(),
            Zeroizing::new(b"k3".to_vec()),
            SystemTime::now() - std::time::Duration::from_secs(1),
        ));
        assert!(stale.x509_svid_response(&selectors(caller)).is_none());

        // The caller's identity expires: PermissionDenied, and the stream ends.
        let mut expired = rotated;
        expired.identities[0].svid = None;
        tx.send_replace(Arc::new(expired));
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), NO_IDENTITY_ISSUED);
        assert!(stream.next().await.is_none());

        // Shutdown: the sender goes away, open streams end with Unavailable.
        let mut other = api.watch(
            admitted(&limiter, caller),
            Snapshot::x509_bundles_response,
            "test",
        );
        assert!(other.is_err(), "no identity now, so no bundles either");
        tx.send_replace(Arc::new(snapshot()));
        other = api.watch(
            admitted(&limiter, caller),
            Snapshot::x509_bundles_response,
            "test",
        );
        let mut bundles = other.unwrap();
        assert!(bundles.next().await.unwrap().is_ok());
        drop(tx);
        let status = bundles.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(bundles.next().await.is_none());
    }

    #[test]
    fn the_security_header_must_be_exactly_true() {
        let with = |value: Option<&'static str>| {
            let mut request = Request::new(());
            if let Some(value) = value {
                request
                    .metadata_mut()
                    .insert(SECURITY_HEADER, value.parse().unwrap());
            }
            check_security_header(request)
        };
        assert!(with(Some("true")).is_ok());
        for bad in [None, Some("false"), Some("TRUE"), Some("1"), Some("")] {
            let status = with(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert_eq!(status.message(), SECURITY_HEADER_MISSING);
        }
    }

    /// Signs nothing: a token as long as a real one carrying these audiences.
    #[derive(Debug, Default)]
    struct CountingIssuer(std::sync::atomic::AtomicUsize);

    impl jwt::JwtIssuer for CountingIssuer {
        fn kid(&self) -> &str {
            "kid"
        }

        fn issue<'a>(
            &'a self,
            _spiffe_id: &'a SpiffeId,
            audience: &'a [String],
            _ttl: std::time::Duration,
            _now: SystemTime,
        ) -> jwt::Issuing<'a> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Base64url of a payload that holds the audiences, plus header and signature.
            let payload: usize = audience.iter().map(|a| a.len() + 3).sum();
            Box::pin(std::future::ready(Ok("t".repeat(payload * 4 / 3 + 200))))
        }
    }

    #[tokio::test]
    async fn hostile_jwt_svids_for_thousands_of_large_audiences_stay_within_the_byte_budget() {
        const BUDGET: usize = 1024 * 1024;
        let cache = TokenCache::new(BUDGET);
        let issuer = CountingIssuer::default();
        let me = identity("spiffe://example.org/me", &[], true);
        // 4,096 distinct 60 KiB audiences: 590 MiB if every token were kept.
        for i in 0..4096 {
            let audience = format!("{i:05}{}", "a".repeat(60 * 1024));
            let token = cache.token(&issuer, &me, &[audience]).await.unwrap();
            assert!(token.len() > 60 * 1024);
            let entries = cache.entries.lock().unwrap();
            let held: usize = entries
                .map
                .iter()
                .map(|(key, cached)| {
                    key.0.len()
                        + key.1.iter().map(String::len).sum::<usize>()
                        + key.2.len()
                        + cached.token.len()
                })
                .sum();
            assert!(held <= BUDGET, "{held} bytes held after {i} audiences");
            assert_eq!(
                entries.bytes,
                entries.map.values().map(|c| c.bytes).sum::<usize>()
            );
        }
        // Small tokens are still reused.
        let calls = issuer.0.load(std::sync::atomic::Ordering::Relaxed);
        let small = ["db".to_owned()];
        let first = cache.token(&issuer, &me, &small).await.unwrap();
        assert_eq!(cache.token(&issuer, &me, &small).await.unwrap(), first);
        assert_eq!(
            issuer.0.load(std::sync::atomic::Ordering::Relaxed),
            calls + 1
        );
    }

    #[test]
    fn spire_upstream_tokens_are_reused_for_half_of_their_own_lifetime() {
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        // 60 s, whatever the identity's jwt_ttl says.
        let claims = jwt::claims(&id, &["a".into()], std::time::Duration::from_secs(60), now);
        let token = jwt::encode(jwt::Alg::Es256, "k", &claims, |_| Ok(vec![0; 64])).unwrap();
        assert_eq!(
            jwt::renew_time(&token),
            Some(now + std::time::Duration::from_secs(30))
        );
        assert_eq!(jwt::renew_time("not.a-token"), None);
        assert_eq!(jwt::renew_time("t"), None);
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let svid = Svid::new(
            vec![1],
            Zeroizing::new(b"SECRETKEY".to_vec()),
            SystemTime::UNIX_EPOCH,
        );
        assert!(!format!("{svid:?}").contains("SECRETKEY"));
        let message = proto::X509svid {
            x509_svid_key: Bytes::from_static(b"SECRETKEY"),
            ..Default::default()
        };
        assert!(!format!("{message:?}").contains("SECRETKEY"));
    }
}
