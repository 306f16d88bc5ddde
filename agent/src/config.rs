//! The agent's configuration file (TOML), read and checked once, before any socket is
//! bound. Every error is one line that names the key, the value and what is accepted.
//!
//! ```toml
//! trust_domain = "example.org"
//! socket_path = "/run/enclaveid/agent.sock"   # default
//! svid_ttl = "1h"                             # default; humantime, at least 5s
//! jwt_ttl = "5m"                              # default JWT-SVID lifetime
//! jwt_key_rotation = "24h"                    # dev upstream: JWT signing key lifetime
//! [upstream]
//! kind = "dev"          # or "kms", or "spire"
//! # dev: cert_path / key_path load the dev CA instead of generating one at start;
//! #      bundle_path is the trust bundle when cert_path is not a self-signed root
//! # kms: trust_bundle_path = "/etc/enclaveid/pca-root.pem"  (required)
//! #      region = "eu-west-1"                               (required)
//! #      host = "vsock://3:8090"                            (default)
//! #      kms_endpoint = "https://kms.REGION.amazonaws.com"  (default)
//! #      resync_interval = "10m"                            (default)
//! #      require_crl = true                                 (default)
//! #      crl_max_age = "1h"                                 (default) material is withdrawn
//! #        after this long without a current, verified CRL
//! #      sync_timeout = "1m"                                (default) a sync that takes
//! #        longer (a stalled host or KMS) fails
//! #      crl_export_path = "/run/enclaveid/crl.pem"         (optional) the CRL checked,
//! #        written (0644, atomic) for workloads that check their peers' chains
//! # spire: server_address = "vsock://3:8081"                (required) the SPIRE server,
//! #          through the parent's relay
//! #        trust_bundle_path = "/etc/enclaveid/spire-bundle.pem"  the server's bundle,
//! #          in the image; or insecure_bootstrap = true (refused unless
//! #          `enclaveid run --allow-insecure-bootstrap`)
//! #        sync_interval = "5s"                              (default)
//! #        node_attestor = "aws_nitro"                       (default) the server's plugin name
//! #        no [[entry]]: entries come from the server
//! [attestor]
//! kind = "fake"         # "nsm" inside an enclave (a build with `--features nsm`)
//! # allow_debug = false   accept this enclave's own debug-mode attestation
//! # fake only: debug = false, module_id = "i-…-enc…", pcrs = { 0 = "HEX" },
//! #            root_cert_path / root_key_path: sign with this fake root
//! [limits]             # optional, per caller; see docs/configuration.md
//! # max_connections = 1024, max_connections_per_uid = 256,
//! # max_streams_per_connection = 1024, max_streams_per_uid = 4096,
//! # calls_per_second_per_uid = 200, call_burst_per_uid = 1024, idle_timeout = "5m",
//! # token_cache_bytes = 8388608, max_executable_bytes = 268435456
//! [telemetry]        # optional; logs, metrics and health to the parent's host
//! # host = "vsock://3:8090"        default: upstream.host with kms, none (off) with dev
//! # level = "info"                 the events sent: error, warn, info, debug
//! # interval = "10s"               metrics and health sent this often
//! # metrics_socket = "/run/enclaveid/metrics.sock"   Prometheus over HTTP, in the enclave
//! [[entry]]
//! spiffe_id = "spiffe://example.org/gateway"
//! selectors = ["unix:uid:1000"]   # all must match
//! dns_names = []                  # optional
//! ttl = "30m"                     # optional, overrides svid_ttl
//! jwt_ttl = "1m"                  # optional, overrides jwt_ttl
//! hint = "internal"               # optional
//! attested = false                # optional: carry the enclave's attestation (docs/attested-svids.md)
//! [sds]                          # optional: Envoy's SDS on the socket, spire-agent's keys
//! # default_svid_name = "default", default_bundle_name = "ROOTCA",
//! # default_all_bundles_name = "ALL", disable_spiffe_cert_validation = false
//! [[acm_certificate]]            # optional, any number: an ACM certificate (DNS names)
//! arn = "arn:aws:acm:eu-west-1:111122223333:certificate/…"
//! dns_names = ["inference.example.internal"]   # every one must be in the certificate
//! # trust_bundle_path, host, kms_endpoint, resync_interval, require_crl, crl_max_age,
//! # sync_timeout: default to the kms upstream's (trust_bundle_path required otherwise)
//! [[files]]                      # optional, any number; see docs/files.md
//! spiffe_id = "spiffe://example.org/gateway"   # or acm_certificate = "arn:…"
//! dir = "/run/enclaveid/gateway"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use spiffe::{SpiffeId, TrustDomain};

use crate::selector::Selector;

/// Why a configuration was refused. Every message is one line that names the key, the
/// value and what is accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("{}: cannot be read", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the shape of an agent configuration (unknown key, wrong type).
    #[error("{origin}: {location}{message}")]
    Toml {
        /// The file.
        origin: String,
        /// `line N (`text`): `, when the parser knows where.
        location: String,
        /// What the TOML parser says (for unknown keys: the accepted ones).
        message: String,
    },
    /// A value that is not accepted.
    #[error("{origin}: {key} = {value} is not valid: {reason}")]
    Invalid {
        /// The file.
        origin: String,
        /// The key.
        key: String,
        /// The value, as written.
        value: String,
        /// Why, and what is accepted.
        reason: String,
    },
    /// A key of one upstream kind set for the other.
    #[error("{origin}: upstream.{key} does not apply to upstream.kind = {kind:?}")]
    Misplaced {
        /// The file.
        origin: String,
        /// The key.
        key: &'static str,
        /// The upstream kind.
        kind: String,
    },
    /// Keys that go together, set alone.
    #[error("{origin}: {message}")]
    Incomplete {
        /// The file.
        origin: String,
        /// Which keys, and what to set.
        message: &'static str,
    },
    /// A file the configuration names cannot be read.
    #[error("{key} = {path:?} cannot be read")]
    File {
        /// The key naming it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file the configuration names holds no usable certificate.
    #[error("{key} = {path:?}")]
    Certificates {
        /// The key naming it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: enclaveid_checks::certs::CertificateError,
    },
    /// A key file the configuration names holds no usable key.
    #[error("{key} = {path:?}")]
    Key {
        /// The key naming it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: enclaveid_checks::keys::KeyError,
    },
    /// A key file that is not PEM PKCS#8.
    #[error(
        "{key} = {path:?}: not a PEM `PRIVATE KEY` (PKCS#8); convert with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    NotPkcs8 {
        /// The key naming it.
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The `dev` CA certificate is not a CA.
    #[error(
        "upstream.cert_path = {path:?}: the first certificate is not a CA (basicConstraints cA=true is required)"
    )]
    NotCa {
        /// The certificate file.
        path: PathBuf,
    },
    /// The `dev` CA key is not its certificate's.
    #[error(
        "upstream.key_path = {key_path:?} does not belong to the certificate in upstream.cert_path = {cert_path:?}"
    )]
    KeyMismatch {
        /// The key file.
        key_path: PathBuf,
        /// The certificate file.
        cert_path: PathBuf,
    },
    /// A `dev` CA that is not a root, without a trust bundle.
    #[error(
        "upstream.bundle_path is required: upstream.cert_path = {path:?} is not a self-signed root, so the trust bundle cannot be derived from it"
    )]
    BundleRequired {
        /// The certificate file.
        path: PathBuf,
    },
    /// The `dev` CA certificate cannot sign.
    #[error("upstream.cert_path = {path:?} cannot issue certificates")]
    Issuer {
        /// The certificate file.
        path: PathBuf,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// `--dev` in a build without the fake attestor.
    #[error(
        "development mode needs the fake attestor, which this build leaves out (an enclave image); use `enclaveid run --config` with attestor kind = \"nsm\""
    )]
    NoDevelopmentMode,
    /// `upstream.insecure_bootstrap` without the command-line permission.
    #[error(
        "upstream.insecure_bootstrap = true trusts the first server that claims the SPIRE server's ID; it is for development only and is refused unless `enclaveid run --allow-insecure-bootstrap` is given. In production set upstream.trust_bundle_path to the server's bundle, built into the image"
    )]
    InsecureBootstrap,
}

/// Where the agent listens when `socket_path` is not set.
pub const DEFAULT_SOCKET_PATH: &str = "/run/enclaveid/agent.sock";
/// The JWT-SVID lifetime when neither the entry nor `jwt_ttl` sets one (SPIRE's default).
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// How long the `dev` upstream signs JWT-SVIDs with one key.
pub const DEFAULT_JWT_KEY_ROTATION: Duration = Duration::from_secs(24 * 3600);

/// The X.509-SVID lifetime when neither the entry nor `svid_ttl` sets one.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(3600);
/// The shortest lifetime accepted: rotation happens at half of it.
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// The longest duration any key accepts: a year and a day. Longer lifetimes have no use
/// for SVIDs or keys that rotate, and every instant the agent computes from a configured
/// duration stays far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The trust domain every entry belongs to.
    pub trust_domain: TrustDomain,
    /// The Workload API's Unix socket.
    pub socket_path: PathBuf,
    /// The default X.509-SVID lifetime.
    pub svid_ttl: Duration,
    /// How long the `dev` upstream signs JWT-SVIDs with one key before a new one.
    pub jwt_key_rotation: Duration,
    /// Where the signing CA comes from.
    pub upstream: Upstream,
    /// How the enclave proves itself.
    pub attestor: AttestorConfig,
    /// Registration entries, in file order.
    pub entries: Vec<Entry>,
    /// The SPIFFE bundle endpoint, if the trust domain is federated.
    pub bundle_endpoint: Option<BundleEndpoint>,
    /// SVIDs written to files for programs that do not speak the Workload API
    /// (`[[files]]`).
    pub files: Vec<FileOutput>,
    /// ACM certificates (DNS names) released to this enclave, served only to `[[files]]`
    /// (`[[acm_certificate]]`).
    pub acm_certificates: Vec<AcmCertificate>,
    /// Envoy's SDS names and validation (`[sds]`, as spire-agent's `sds` block).
    pub sds: SdsSettings,
    /// What one caller may take of the Workload API (`[limits]`).
    pub limits: LimitsConfig,
    /// Logs, metrics and health out of the enclave (`[telemetry]`).
    pub telemetry: TelemetryConfig,
    /// Whether `upstream.insecure_bootstrap` may be used (`enclaveid run
    /// --allow-insecure-bootstrap`); never read from the file, so that an image's
    /// configuration alone cannot turn server verification off.
    pub allow_insecure_bootstrap: bool,
}

/// The `[telemetry]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The host to send to; `None`: nothing leaves the enclave.
    pub host: Option<enclaveid_io::Address>,
    /// The most verbose level sent (`error`, `warn`, `info`, `debug`).
    pub level: tracing::Level,
    /// How often metrics and health are sent.
    pub interval: Duration,
    /// A Unix socket serving the same metrics (Prometheus text over HTTP) inside the
    /// enclave, for workloads.
    pub metrics_socket: Option<PathBuf>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            host: None,
            level: tracing::Level::INFO,
            interval: Duration::from_secs(10),
            metrics_socket: None,
        }
    }
}

/// The `[limits]` table: per-caller limits of the Workload API, and of what attesting a
/// caller may cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Connections, streams, call rate, idle timeout and cache budget.
    pub api: enclaveid_workload_api::Limits,
    /// The largest executable hashed for `unix:sha256` selectors.
    pub max_executable_bytes: u64,
}

/// The largest executable hashed for a `unix:sha256` selector by default.
pub const DEFAULT_MAX_EXECUTABLE_BYTES: u64 = 256 * 1024 * 1024;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            api: enclaveid_workload_api::Limits::default(),
            max_executable_bytes: DEFAULT_MAX_EXECUTABLE_BYTES,
        }
    }
}

/// A SPIFFE bundle endpoint (SPIFFE Trust Domain and Bundle, §5): the trust domain's
/// bundle over HTTPS for other trust domains to federate with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleEndpoint {
    /// Where to listen (`tcp://HOST:PORT`; `vsock://` behind a proxy on the parent).
    pub listen: enclaveid_io::Address,
    /// How the endpoint authenticates itself.
    pub profile: EndpointProfile,
    /// `spiffe_refresh_hint`: how often federated servers should poll.
    pub refresh_hint: Duration,
    /// The most connections open at once; more are closed as they come.
    pub max_connections: usize,
}

/// The most bundle-endpoint connections open at once by default.
pub const DEFAULT_BUNDLE_ENDPOINT_CONNECTIONS: usize = 128;

/// The endpoint's authentication profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointProfile {
    /// `https_spiffe`: served with the X.509-SVID of this SPIFFE ID, which an entry must
    /// name (its selectors decide which workloads also get it).
    HttpsSpiffe(SpiffeId),
    /// `https_web`: served with a Web PKI certificate and key from files (PEM).
    HttpsWeb {
        /// The certificate chain.
        cert_path: PathBuf,
        /// Its key (PKCS#8).
        key_path: PathBuf,
    },
}

/// The default address of `enclaveid host`, seen from the enclave.
pub const DEFAULT_HOST: &str = "vsock://3:8090";
/// How often the `kms` upstream re-fetches its material by default.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(600);
/// How long material stays in service without a current, verified CRL by default.
pub const DEFAULT_CRL_MAX_AGE: Duration = Duration::from_secs(3600);
/// How long one sync may take by default.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The source of the CA that signs SVIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upstream {
    /// An embedded development CA: generated at start, or loaded from files.
    Dev(Option<CaFiles>),
    /// Private CA material released by KMS to this attested enclave.
    Kms(KmsConfig),
    /// A SPIRE server: the agent attests to it and serves the entries it authorizes.
    Spire(SpireConfig),
}

/// The `spire` upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpireConfig {
    /// The SPIRE server's gRPC endpoint (`bind_port`), through the parent's relay.
    pub server_address: enclaveid_io::Address,
    /// The server's trust bundle (PEM), built into the image so that PCR0 covers it;
    /// `None` with `insecure_bootstrap`.
    pub trust_bundle_path: Option<PathBuf>,
    /// Trust the first server that presents `spiffe://TD/spire/server` (development).
    pub insecure_bootstrap: bool,
    /// How often entries, bundles and SVIDs are synced.
    pub sync_interval: Duration,
    /// The node attestor's name in the server's configuration.
    pub node_attestor: String,
}

/// The default `upstream.sync_interval` of the `spire` upstream (spire-agent's).
pub const DEFAULT_SPIRE_SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// The `kms` upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsConfig {
    /// Where `enclaveid host` listens.
    pub host: enclaveid_io::Address,
    /// The Private CA root(s), PEM, built into the enclave image.
    pub trust_bundle_path: PathBuf,
    /// The AWS region (SigV4 scope and default endpoint).
    pub region: String,
    /// The KMS endpoint; reached through the host's tunnel.
    pub kms_endpoint: KmsEndpoint,
    /// How often the material is re-fetched.
    pub resync_interval: Duration,
    /// Refuse material when the host offers no CRL.
    pub require_crl: bool,
    /// With `require_crl`: how long material stays in service without a current,
    /// verified CRL (the host withholding CRLs cannot keep revoked material served).
    pub crl_max_age: Duration,
    /// A sync that does not finish in this long fails (the host or KMS stalled).
    pub sync_timeout: Duration,
    /// Where to write the CRL each sync checked (PEM), for workloads to check peers with.
    pub crl_export_path: Option<PathBuf>,
}

/// A KMS endpoint: where the enclave's HTTP request goes (through the host's tunnel) and
/// what TLS checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsEndpoint {
    /// TLS (`https://`), or plain HTTP for test servers.
    pub tls: bool,
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// Why a KMS endpoint URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; accepted: https://HOST[:PORT] (or http://HOST:PORT for a test server)")]
pub struct KmsEndpointError {
    /// What is wrong with it.
    pub reason: &'static str,
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
    pub fn parse(url: &str) -> Result<Self, KmsEndpointError> {
        let bad = |reason| KmsEndpointError { reason };
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
    pub fn host_header(&self) -> String {
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => self.host.clone(),
            _ => self.authority(),
        }
    }

    /// The URL of the endpoint's root.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.host_header())
    }
}

impl std::fmt::Display for KmsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url().trim_end_matches('/'))
    }
}

/// A CA loaded from PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFiles {
    /// The CA certificate, optionally followed by the intermediates above it.
    pub cert_path: PathBuf,
    /// Its PKCS#8 private key.
    pub key_path: PathBuf,
    /// The trust bundle (root certificates); needed when `cert_path` is not a root.
    pub bundle_path: Option<PathBuf>,
}

/// The enclave attestor and what the agent accepts of its own attestation document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestorConfig {
    /// Which attestor.
    pub kind: AttestorKind,
    /// Accept this enclave's document in debug mode (PCR0 all zeros).
    pub allow_debug: bool,
}

/// The enclave attestor.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttestorKind {
    /// No hardware: documents in the AWS format signed under a root generated at start.
    /// Proves nothing; for development and tests.
    Fake(enclaveid_attestor::FakeConfig),
    /// The Nitro Secure Module (`/dev/nsm`), verified against the AWS Nitro root.
    Nsm,
}

/// A registration entry: who gets which SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// All must match the caller.
    pub selectors: Vec<Selector>,
    /// DNS SANs added to the X.509-SVID.
    pub dns_names: Vec<String>,
    /// The X.509-SVID lifetime.
    pub ttl: Duration,
    /// The JWT-SVID lifetime.
    pub jwt_ttl: Duration,
    /// Sent to the workload as the SVID's `hint`.
    pub hint: String,
    /// Each X.509-SVID carries a fresh attestation document of this enclave, bound to
    /// its key and serial (`enclaveid_attestor::svid`).
    pub attested: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: String,
    socket_path: Option<PathBuf>,
    svid_ttl: Option<String>,
    jwt_ttl: Option<String>,
    jwt_key_rotation: Option<String>,
    upstream: RawUpstream,
    attestor: RawAttestor,
    #[serde(default, rename = "entry")]
    entries: Vec<RawEntry>,
    bundle_endpoint: Option<RawBundleEndpoint>,
    limits: Option<RawLimits>,
    telemetry: Option<RawTelemetry>,
    #[serde(default)]
    files: Vec<RawFiles>,
    #[serde(default)]
    acm_certificate: Vec<RawAcmCertificate>,
    sds: Option<RawSds>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSds {
    default_svid_name: Option<String>,
    default_bundle_name: Option<String>,
    default_all_bundles_name: Option<String>,
    disable_spiffe_cert_validation: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcmCertificate {
    arn: String,
    #[serde(default)]
    dns_names: Vec<String>,
    trust_bundle_path: Option<PathBuf>,
    host: Option<String>,
    kms_endpoint: Option<String>,
    resync_interval: Option<String>,
    require_crl: Option<bool>,
    crl_max_age: Option<String>,
    sync_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    spiffe_id: Option<String>,
    acm_certificate: Option<String>,
    dir: PathBuf,
    svid_file_name: Option<String>,
    svid_key_file_name: Option<String>,
    svid_bundle_file_name: Option<String>,
    #[serde(default)]
    jwt_audiences: Vec<String>,
    cert_mode: Option<String>,
    key_mode: Option<String>,
    owner: Option<String>,
    cmd: Option<PathBuf>,
    #[serde(default)]
    cmd_args: Vec<String>,
    pid_file: Option<PathBuf>,
    renew_signal: Option<String>,
}

/// One `[[acm_certificate]]`: a certificate for DNS names that ACM for Nitro Enclaves
/// delivers (issued by the Private CA, its key released by KMS to this enclave), checked
/// and kept current for `[[files]]`. Never an X.509-SVID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmCertificate {
    /// The ACM certificate ARN; the host serves its object (`--acm-certificate-arn`).
    pub arn: String,
    /// DNS names the certificate must be valid for, every one.
    pub dns_names: Vec<String>,
    /// The Private CA root (PEM) it must chain to.
    pub trust_bundle_path: PathBuf,
    /// The parent's `enclaveid host`.
    pub host: enclaveid_io::Address,
    /// The AWS region (the ARN's).
    pub region: String,
    /// KMS.
    pub kms_endpoint: KmsEndpoint,
    /// How often the object is fetched again (ACM renews in place).
    pub resync_interval: Duration,
    /// Whether the issuer's CRL must be served and checked.
    pub require_crl: bool,
    /// How long the certificate stays in service without a current, verified CRL.
    pub crl_max_age: Duration,
    /// A fetch, release and check that takes longer fails.
    pub sync_timeout: Duration,
}

/// The `[sds]` table: what Envoy's SDS names and how it validates, with spire-agent's
/// keys and defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdsSettings {
    /// The caller's first SVID (`default`).
    pub default_svid_name: String,
    /// The trust domain's bundle (`ROOTCA`).
    pub default_bundle_name: String,
    /// Every bundle the caller may see (`ALL`).
    pub default_all_bundles_name: String,
    /// `trusted_ca` instead of the SPIFFE certificate validator.
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsSettings {
    fn default() -> Self {
        let defaults = enclaveid_workload_api::sds::SdsConfig::new("");
        Self {
            default_svid_name: defaults.default_svid_name,
            default_bundle_name: defaults.default_bundle_name,
            default_all_bundles_name: defaults.default_all_bundles_name,
            disable_spiffe_cert_validation: defaults.disable_spiffe_cert_validation,
        }
    }
}

impl SdsSettings {
    /// The SDS server's configuration for `trust_domain`.
    pub fn for_trust_domain(
        &self,
        trust_domain: &TrustDomain,
    ) -> enclaveid_workload_api::sds::SdsConfig {
        enclaveid_workload_api::sds::SdsConfig {
            trust_domain_id: trust_domain.id_string(),
            default_svid_name: self.default_svid_name.clone(),
            default_bundle_name: self.default_bundle_name.clone(),
            default_all_bundles_name: self.default_all_bundles_name.clone(),
            disable_spiffe_cert_validation: self.disable_spiffe_cert_validation,
        }
    }
}

/// What a `[[files]]` block writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSource {
    /// An identity's X.509-SVID, its bundle and JWT-SVIDs (`spiffe_id`).
    Svid(SpiffeId),
    /// An `[[acm_certificate]]`'s certificate, key and Private CA root, by ARN
    /// (`acm_certificate`).
    Acm(String),
}

impl std::fmt::Display for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Svid(id) => id.fmt(f),
            Self::Acm(arn) => arn.fmt(f),
        }
    }
}

/// One `[[files]]` block: an identity's SVID, key, bundle and JWT-SVIDs (or an ACM
/// certificate) written to a directory on every change, for programs that read files
/// (nginx, a Python server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOutput {
    /// What is written.
    pub source: FileSource,
    /// The directory; the files are reached through `DIR/NAME` (symlinks into the current
    /// generation, `DIR/current/`).
    pub dir: PathBuf,
    /// The certificate chain, PEM (default `svid.pem`).
    pub svid_file_name: String,
    /// The private key, PKCS#8 PEM (default `svid_key.pem`).
    pub svid_key_file_name: String,
    /// The trust bundle, PEM (default `svid_bundle.pem`).
    pub svid_bundle_file_name: String,
    /// One JWT-SVID file per audience, `jwt_<AUDIENCE>.token` (characters other than
    /// letters, digits, `.`, `-` and `_` become `_`).
    pub jwt_audiences: Vec<String>,
    /// Mode of the certificate and bundle files (default 0644).
    pub cert_mode: u32,
    /// Mode of the key (default 0600).
    pub key_mode: u32,
    /// Owner `(uid, gid)` of what is written; `None`: the agent's.
    pub owner: Option<(u32, u32)>,
    /// Run after each write (`cmd` and `cmd_args`).
    pub cmd: Option<(PathBuf, Vec<String>)>,
    /// Signal the process whose PID is in this file after each write.
    pub signal: Option<(PathBuf, nix::sys::signal::Signal)>,
}

/// The default file names, as spiffe-helper's examples name them.
pub const DEFAULT_SVID_FILE: &str = "svid.pem";
/// See [`DEFAULT_SVID_FILE`].
pub const DEFAULT_SVID_KEY_FILE: &str = "svid_key.pem";
/// See [`DEFAULT_SVID_FILE`].
pub const DEFAULT_SVID_BUNDLE_FILE: &str = "svid_bundle.pem";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    host: Option<String>,
    level: Option<String>,
    interval: Option<String>,
    metrics_socket: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<u64>,
    max_connections_per_uid: Option<u64>,
    max_streams_per_connection: Option<u64>,
    max_streams_per_uid: Option<u64>,
    calls_per_second_per_uid: Option<u64>,
    call_burst_per_uid: Option<u64>,
    idle_timeout: Option<String>,
    token_cache_bytes: Option<u64>,
    max_executable_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBundleEndpoint {
    listen: String,
    spiffe_id: Option<String>,
    cert_path: Option<PathBuf>,
    key_path: Option<PathBuf>,
    refresh_hint: Option<String>,
    max_connections: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    kind: String,
    cert_path: Option<PathBuf>,
    key_path: Option<PathBuf>,
    bundle_path: Option<PathBuf>,
    host: Option<String>,
    trust_bundle_path: Option<PathBuf>,
    region: Option<String>,
    kms_endpoint: Option<String>,
    resync_interval: Option<String>,
    require_crl: Option<bool>,
    crl_export_path: Option<PathBuf>,
    crl_max_age: Option<String>,
    sync_timeout: Option<String>,
    server_address: Option<String>,
    insecure_bootstrap: Option<bool>,
    sync_interval: Option<String>,
    node_attestor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttestor {
    kind: String,
    #[serde(default)]
    allow_debug: bool,
    #[serde(default)]
    debug: Option<bool>,
    module_id: Option<String>,
    #[serde(default)]
    pcrs: BTreeMap<String, String>,
    root_cert_path: Option<PathBuf>,
    root_key_path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    spiffe_id: String,
    selectors: Vec<String>,
    #[serde(default)]
    dns_names: Vec<String>,
    ttl: Option<String>,
    jwt_ttl: Option<String>,
    #[serde(default)]
    hint: String,
    #[serde(default)]
    attested: bool,
}

// === impl Config ===

impl Config {
    /// Parses and checks a configuration file's text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, origin, &e))?;
        let invalid = |key: &str, value: &dyn std::fmt::Debug, why: &dyn std::fmt::Display| {
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key: key.to_owned(),
                value: format!("{value:?}"),
                reason: why.to_string(),
            }
        };

        let trust_domain = TrustDomain::new(&raw.trust_domain).map_err(|e| {
            invalid(
                "trust_domain",
                &raw.trust_domain,
                &format!("{e}; accepted: a name of lower-case letters, digits, '.', '-' and '_', such as \"example.org\""),
            )
        })?;
        let svid_ttl = match &raw.svid_ttl {
            Some(value) => parse_ttl(value).map_err(|why| invalid("svid_ttl", value, &why))?,
            None => DEFAULT_SVID_TTL,
        };
        let jwt_ttl = match &raw.jwt_ttl {
            Some(value) => parse_ttl(value).map_err(|why| invalid("jwt_ttl", value, &why))?,
            None => DEFAULT_JWT_TTL,
        };
        let jwt_key_rotation = match &raw.jwt_key_rotation {
            Some(value) => {
                parse_ttl(value).map_err(|why| invalid("jwt_key_rotation", value, &why))?
            }
            None => DEFAULT_JWT_KEY_ROTATION,
        };
        let up = &raw.upstream;
        // Each key and the upstream kinds it applies to.
        let keys = [
            ("host", up.host.is_some(), &["kms"][..]),
            (
                "trust_bundle_path",
                up.trust_bundle_path.is_some(),
                &["kms", "spire"][..],
            ),
            ("region", up.region.is_some(), &["kms"][..]),
            ("kms_endpoint", up.kms_endpoint.is_some(), &["kms"][..]),
            (
                "resync_interval",
                up.resync_interval.is_some(),
                &["kms"][..],
            ),
            ("require_crl", up.require_crl.is_some(), &["kms"][..]),
            ("crl_max_age", up.crl_max_age.is_some(), &["kms"][..]),
            ("sync_timeout", up.sync_timeout.is_some(), &["kms"][..]),
            (
                "crl_export_path",
                up.crl_export_path.is_some(),
                &["kms"][..],
            ),
            ("cert_path", up.cert_path.is_some(), &["dev"][..]),
            ("key_path", up.key_path.is_some(), &["dev"][..]),
            ("bundle_path", up.bundle_path.is_some(), &["dev"][..]),
            (
                "server_address",
                up.server_address.is_some(),
                &["spire"][..],
            ),
            (
                "insecure_bootstrap",
                up.insecure_bootstrap.is_some(),
                &["spire"][..],
            ),
            ("sync_interval", up.sync_interval.is_some(), &["spire"][..]),
            ("node_attestor", up.node_attestor.is_some(), &["spire"][..]),
        ];
        let known = ["dev", "kms", "spire"].contains(&up.kind.as_str());
        let misplaced = keys
            .iter()
            .find(|(_, set, kinds)| known && *set && !kinds.contains(&up.kind.as_str()));
        if let Some((key, _, _)) = misplaced {
            return Err(ConfigError::Misplaced {
                origin: origin.to_owned(),
                key,
                kind: up.kind.clone(),
            });
        }
        let upstream = match raw.upstream.kind.as_str() {
            "kms" => Upstream::Kms(parse_kms(raw.upstream, &invalid)?),
            "spire" => {
                if !raw.entries.is_empty() {
                    return Err(invalid(
                        "entry",
                        &raw.entries.len(),
                        &"with upstream.kind = \"spire\" the entries come from the SPIRE server (spire-server entry create); remove the [[entry]] tables",
                    ));
                }
                Upstream::Spire(parse_spire(raw.upstream, &invalid)?)
            }
            "dev" => Upstream::Dev(match (raw.upstream.cert_path, raw.upstream.key_path) {
                (None, None) if raw.upstream.bundle_path.is_none() => None,
                (Some(cert_path), Some(key_path)) => Some(CaFiles {
                    cert_path,
                    key_path,
                    bundle_path: raw.upstream.bundle_path,
                }),
                _ => {
                    return Err(ConfigError::Incomplete {
                        origin: origin.to_owned(),
                        message: "upstream.cert_path and upstream.key_path go together (bundle_path needs them too): set both to load a CA, or neither to generate one",
                    });
                }
            }),
            other => {
                return Err(invalid(
                    "upstream.kind",
                    &other,
                    &"accepted: \"dev\", \"kms\", \"spire\"",
                ));
            }
        };
        let attestor = parse_attestor(raw.attestor, &invalid)?;
        let mut entries = Vec::with_capacity(raw.entries.len());
        for (i, entry) in raw.entries.into_iter().enumerate() {
            let key = |field: &str| format!("entry[{i}].{field}");
            let spiffe_id = SpiffeId::new(&entry.spiffe_id)
                .map_err(|e| invalid(&key("spiffe_id"), &entry.spiffe_id, &e))?;
            if !spiffe_id.is_member_of(&trust_domain) {
                return Err(invalid(
                    &key("spiffe_id"),
                    &entry.spiffe_id,
                    &format!(
                        "it is outside the trust domain; accepted: spiffe://{trust_domain}/PATH"
                    ),
                ));
            }
            if spiffe_id.path().is_empty() {
                return Err(invalid(
                    &key("spiffe_id"),
                    &entry.spiffe_id,
                    &format!("a workload ID needs a path; accepted: spiffe://{trust_domain}/PATH"),
                ));
            }
            if entry.selectors.is_empty() {
                return Err(invalid(
                    &key("selectors"),
                    &entry.selectors,
                    &"an entry needs at least one selector, or every caller would get it",
                ));
            }
            let selectors = entry
                .selectors
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    s.parse::<Selector>()
                        .map_err(|e| invalid(&format!("entry[{i}].selectors[{j}]"), s, &e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if selectors.iter().all(Selector::is_node_selector) {
                return Err(invalid(
                    &key("selectors"),
                    &entry.selectors,
                    &"nitro: selectors describe the enclave, not the caller; add at least one unix: selector",
                ));
            }
            for (j, name) in entry.dns_names.iter().enumerate() {
                if rustls_pki_types::DnsName::try_from(name.as_str()).is_err()
                    || name.parse::<std::net::IpAddr>().is_ok()
                {
                    return Err(invalid(
                        &format!("entry[{i}].dns_names[{j}]"),
                        name,
                        &"accepted: a DNS name such as \"gateway.internal\"",
                    ));
                }
            }
            let ttl = match &entry.ttl {
                Some(value) => parse_ttl(value).map_err(|why| invalid(&key("ttl"), value, &why))?,
                None => svid_ttl,
            };
            let entry_jwt_ttl = match &entry.jwt_ttl {
                Some(value) => {
                    parse_ttl(value).map_err(|why| invalid(&key("jwt_ttl"), value, &why))?
                }
                None => jwt_ttl,
            };
            entries.push(Entry {
                spiffe_id,
                selectors,
                dns_names: entry.dns_names,
                ttl,
                jwt_ttl: entry_jwt_ttl,
                hint: entry.hint,
                attested: entry.attested,
            });
        }

        let acm_certificates: Vec<AcmCertificate> = std::mem::take(&mut raw.acm_certificate)
            .into_iter()
            .enumerate()
            .map(|(i, a)| parse_acm_certificate(i, a, &upstream, &invalid))
            .collect::<Result<_, _>>()?;
        for (i, a) in acm_certificates.iter().enumerate() {
            if acm_certificates[..i].iter().any(|b| b.arn == a.arn) {
                return Err(invalid(
                    &format!("acm_certificate[{i}].arn"),
                    &a.arn,
                    &"an ARN may appear in one [[acm_certificate]] only",
                ));
            }
        }
        let known = FileSources {
            trust_domain: &trust_domain,
            entries: &entries,
            acm: &acm_certificates,
            upstream: &upstream,
        };
        let files = std::mem::take(&mut raw.files)
            .into_iter()
            .enumerate()
            .map(|(i, f)| parse_files(i, f, &known, &invalid))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            trust_domain,
            socket_path: raw
                .socket_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH)),
            svid_ttl,
            jwt_key_rotation,
            attestor,
            bundle_endpoint: raw
                .bundle_endpoint
                .map(|b| parse_bundle_endpoint(b, &entries, &invalid))
                .transpose()?,
            limits: raw
                .limits
                .map(|l| parse_limits(l, &invalid))
                .transpose()?
                .unwrap_or_default(),
            telemetry: parse_telemetry(raw.telemetry, &upstream, &invalid)?,
            files,
            acm_certificates,
            sds: raw
                .sds
                .map(|s| parse_sds(s, &invalid))
                .transpose()?
                .unwrap_or_default(),
            upstream,
            entries,
            allow_insecure_bootstrap: false,
        })
    }

    /// The `--dev` configuration: trust domain `enclaveid.dev`, a generated CA, and one
    /// entry `spiffe://enclaveid.dev/uid/UID` for the given user.
    pub fn dev(uid: u32, socket_path: PathBuf) -> Result<Self, ConfigError> {
        if !cfg!(feature = "fake") {
            return Err(ConfigError::NoDevelopmentMode);
        }
        let invalid = |key: &str, value: String, e: spiffe::SpiffeIdError| ConfigError::Invalid {
            origin: "--dev".to_owned(),
            key: key.to_owned(),
            value,
            reason: e.to_string(),
        };
        let trust_domain = TrustDomain::new("enclaveid.dev")
            .map_err(|e| invalid("trust_domain", "enclaveid.dev".into(), e))?;
        let id = format!("spiffe://enclaveid.dev/uid/{uid}");
        let spiffe_id = SpiffeId::new(&id).map_err(|e| invalid("spiffe_id", id, e))?;
        Ok(Self {
            trust_domain,
            socket_path,
            svid_ttl: DEFAULT_SVID_TTL,
            jwt_key_rotation: DEFAULT_JWT_KEY_ROTATION,
            bundle_endpoint: None,
            limits: LimitsConfig::default(),
            telemetry: TelemetryConfig::default(),
            allow_insecure_bootstrap: false,
            files: Vec::new(),
            acm_certificates: Vec::new(),
            sds: SdsSettings::default(),
            upstream: Upstream::Dev(None),
            attestor: AttestorConfig {
                kind: AttestorKind::Fake(enclaveid_attestor::FakeConfig::default()),
                allow_debug: false,
            },
            entries: vec![Entry {
                spiffe_id,
                selectors: vec![Selector::Uid(uid)],
                dns_names: Vec::new(),
                ttl: DEFAULT_SVID_TTL,
                jwt_ttl: DEFAULT_JWT_TTL,
                hint: String::new(),
                attested: false,
            }],
        })
    }
}

type Invalid<'a> = dyn Fn(&str, &dyn std::fmt::Debug, &dyn std::fmt::Display) -> ConfigError + 'a;

/// What a `[[files]]` block may name.
struct FileSources<'a> {
    trust_domain: &'a TrustDomain,
    entries: &'a [Entry],
    acm: &'a [AcmCertificate],
    upstream: &'a Upstream,
}

fn parse_files(
    i: usize,
    raw: RawFiles,
    known: &FileSources<'_>,
    invalid: &Invalid<'_>,
) -> Result<FileOutput, ConfigError> {
    let key = |field: &str| format!("files[{i}].{field}");
    let source = match (&raw.spiffe_id, &raw.acm_certificate) {
        (Some(id), None) => {
            let spiffe_id = SpiffeId::new(id).map_err(|e| invalid(&key("spiffe_id"), id, &e))?;
            // With the spire upstream, entries come later from the server.
            let listed = matches!(known.upstream, Upstream::Spire(_))
                || known.entries.iter().any(|e| e.spiffe_id == spiffe_id);
            if !spiffe_id.is_member_of(known.trust_domain) || !listed {
                return Err(invalid(
                    &key("spiffe_id"),
                    id,
                    &"accepted: the SPIFFE ID of an [[entry]] of this file",
                ));
            }
            FileSource::Svid(spiffe_id)
        }
        (None, Some(arn)) => {
            if !known.acm.iter().any(|a| a.arn == *arn) {
                return Err(invalid(
                    &key("acm_certificate"),
                    arn,
                    &"accepted: the arn of an [[acm_certificate]] of this file",
                ));
            }
            if !raw.jwt_audiences.is_empty() {
                return Err(invalid(
                    &key("jwt_audiences"),
                    &raw.jwt_audiences,
                    &"an ACM certificate is not a SPIFFE identity and has no JWT-SVIDs; remove jwt_audiences from this block",
                ));
            }
            FileSource::Acm(arn.clone())
        }
        (Some(_), Some(arn)) => {
            return Err(invalid(
                &key("acm_certificate"),
                arn,
                &"a [[files]] block writes one thing: spiffe_id or acm_certificate, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                &key("spiffe_id"),
                &"",
                &"required: spiffe_id (an [[entry]]'s SPIFFE ID) or acm_certificate (an [[acm_certificate]]'s arn)",
            ));
        }
    };
    if !raw.dir.is_absolute() {
        return Err(invalid(
            &key("dir"),
            &raw.dir.display(),
            &"accepted: an absolute path",
        ));
    }
    let name = |field: &str, value: Option<String>, default: &str| {
        let value = value.unwrap_or_else(|| default.to_owned());
        let plain = !value.is_empty()
            && value != "."
            && value != ".."
            && value != "current"
            && !value.starts_with(".enclaveid")
            && !value.contains('/');
        if plain {
            Ok(value)
        } else {
            Err(invalid(
                &key(field),
                &value,
                &"accepted: a plain file name (no '/', not \"current\" or \".enclaveid*\")",
            ))
        }
    };
    let svid_file_name = name("svid_file_name", raw.svid_file_name, DEFAULT_SVID_FILE)?;
    let svid_key_file_name = name(
        "svid_key_file_name",
        raw.svid_key_file_name,
        DEFAULT_SVID_KEY_FILE,
    )?;
    let svid_bundle_file_name = name(
        "svid_bundle_file_name",
        raw.svid_bundle_file_name,
        DEFAULT_SVID_BUNDLE_FILE,
    )?;
    if svid_file_name == svid_key_file_name
        || svid_file_name == svid_bundle_file_name
        || svid_key_file_name == svid_bundle_file_name
    {
        return Err(invalid(
            &key("svid_key_file_name"),
            &svid_key_file_name,
            &"the three file names must differ",
        ));
    }
    for (j, audience) in raw.jwt_audiences.iter().enumerate() {
        if audience.is_empty() || audience.len() > 255 {
            return Err(invalid(
                &format!("files[{i}].jwt_audiences[{j}]"),
                audience,
                &"accepted: a non-empty audience of at most 255 bytes",
            ));
        }
    }
    let mode = |field: &str, value: &Option<String>, default: u32| match value {
        None => Ok(default),
        Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                invalid(
                    &key(field),
                    text,
                    &"accepted: an octal mode such as \"0640\"",
                )
            }),
    };
    let cert_mode = mode("cert_mode", &raw.cert_mode, 0o644)?;
    let key_mode = mode("key_mode", &raw.key_mode, 0o600)?;
    if key_mode & 0o007 != 0 {
        return Err(invalid(
            &key("key_mode"),
            &format!("{key_mode:04o}"),
            &"a private key must not be readable or writable by others; accepted: 0600, 0640, 0400, 0440",
        ));
    }
    let owner = match &raw.owner {
        None => None,
        Some(text) => Some(
            text.split_once(':')
                .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                .ok_or_else(|| invalid(&key("owner"), text, &"accepted: \"UID:GID\", numeric"))?,
        ),
    };
    let signal = match (raw.pid_file, &raw.renew_signal) {
        (None, None) => None,
        (Some(pid_file), Some(name)) => {
            let signal = name
                .parse::<nix::sys::signal::Signal>()
                .ok()
                .or_else(|| format!("SIG{name}").parse().ok())
                .ok_or_else(|| {
                    invalid(
                        &key("renew_signal"),
                        name,
                        &"accepted: a signal name such as \"SIGHUP\" or \"HUP\"",
                    )
                })?;
            Some((pid_file, signal))
        }
        (pid_file, renew_signal) => {
            return Err(invalid(
                &key(if pid_file.is_some() {
                    "renew_signal"
                } else {
                    "pid_file"
                }),
                &renew_signal.as_deref().unwrap_or(""),
                &"pid_file and renew_signal go together: set both to signal a process after each write",
            ));
        }
    };
    Ok(FileOutput {
        source,
        dir: raw.dir,
        svid_file_name,
        svid_key_file_name,
        svid_bundle_file_name,
        jwt_audiences: raw.jwt_audiences,
        cert_mode,
        key_mode,
        owner,
        cmd: raw.cmd.map(|cmd| (cmd, raw.cmd_args)),
        signal,
    })
}

fn parse_spire(raw: RawUpstream, invalid: &Invalid<'_>) -> Result<SpireConfig, ConfigError> {
    let address = raw.server_address.ok_or_else(|| {
        invalid(
            "upstream.server_address",
            &"",
            &"required for kind = \"spire\": the SPIRE server's address, such as \"vsock://3:8081\" (the parent's relay) or \"tcp://10.0.0.5:8081\"",
        )
    })?;
    let server_address = address
        .parse()
        .map_err(|e| invalid("upstream.server_address", &address, &e))?;
    let insecure_bootstrap = raw.insecure_bootstrap.unwrap_or(false);
    match (&raw.trust_bundle_path, insecure_bootstrap) {
        (Some(path), true) => {
            return Err(invalid(
                "upstream.insecure_bootstrap",
                &true,
                &format!(
                    "trust_bundle_path = {:?} is set too; choose one (the bundle file, for production)",
                    path.display()
                ),
            ));
        }
        (None, false) => {
            return Err(invalid(
                "upstream.trust_bundle_path",
                &"",
                &"required for kind = \"spire\": the SPIRE server's trust bundle (PEM), in the image (or insecure_bootstrap = true, for development)",
            ));
        }
        _ => {}
    }
    let node_attestor = raw.node_attestor.unwrap_or_else(|| "aws_nitro".to_owned());
    if node_attestor.is_empty() || node_attestor.contains(char::is_whitespace) {
        return Err(invalid(
            "upstream.node_attestor",
            &node_attestor,
            &"accepted: the NodeAttestor plugin's name in the server's configuration, such as \"aws_nitro\"",
        ));
    }
    Ok(SpireConfig {
        server_address,
        trust_bundle_path: raw.trust_bundle_path,
        insecure_bootstrap,
        sync_interval: match &raw.sync_interval {
            Some(value) => humantime::parse_duration(value)
                .ok()
                .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(d))
                .ok_or_else(|| {
                    invalid(
                        "upstream.sync_interval",
                        value,
                        &"accepted: a duration from 1s to 1h, such as \"5s\"",
                    )
                })?,
            None => DEFAULT_SPIRE_SYNC_INTERVAL,
        },
        node_attestor,
    })
}

fn parse_kms(raw: RawUpstream, invalid: &Invalid<'_>) -> Result<KmsConfig, ConfigError> {
    let region = raw.region.ok_or_else(|| {
        invalid(
            "upstream.region",
            &"",
            &"required for kind = \"kms\"; accepted: an AWS region such as \"eu-west-1\"",
        )
    })?;
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            "upstream.region",
            &region,
            &"accepted: an AWS region such as \"eu-west-1\"",
        ));
    }
    let trust_bundle_path = raw.trust_bundle_path.ok_or_else(|| {
        invalid(
            "upstream.trust_bundle_path",
            &"",
            &"required for kind = \"kms\": the Private CA root (PEM) the material must chain to",
        )
    })?;
    let host = match &raw.host {
        Some(host) => host
            .parse()
            .map_err(|e| invalid("upstream.host", host, &e))?,
        None => DEFAULT_HOST
            .parse()
            .map_err(|e| invalid("upstream.host", &DEFAULT_HOST, &e))?,
    };
    let kms_endpoint = match &raw.kms_endpoint {
        Some(url) => {
            KmsEndpoint::parse(url).map_err(|e| invalid("upstream.kms_endpoint", url, &e))?
        }
        None => KmsEndpoint::for_region(&region),
    };
    let resync_interval = match &raw.resync_interval {
        Some(value) => {
            parse_ttl(value).map_err(|why| invalid("upstream.resync_interval", value, &why))?
        }
        None => DEFAULT_RESYNC_INTERVAL,
    };
    Ok(KmsConfig {
        host,
        trust_bundle_path,
        region,
        kms_endpoint,
        resync_interval,
        require_crl: raw.require_crl.unwrap_or(true),
        crl_max_age: match &raw.crl_max_age {
            Some(value) => {
                parse_ttl(value).map_err(|why| invalid("upstream.crl_max_age", value, &why))?
            }
            None => DEFAULT_CRL_MAX_AGE,
        },
        sync_timeout: match &raw.sync_timeout {
            Some(value) => {
                parse_ttl(value).map_err(|why| invalid("upstream.sync_timeout", value, &why))?
            }
            None => DEFAULT_SYNC_TIMEOUT,
        },
        crl_export_path: match raw.crl_export_path {
            Some(path) if !path.is_absolute() => {
                return Err(invalid(
                    "upstream.crl_export_path",
                    &path.display(),
                    &"accepted: an absolute path",
                ));
            }
            path => path,
        },
    })
}

fn parse_sds(raw: RawSds, invalid: &Invalid<'_>) -> Result<SdsSettings, ConfigError> {
    let defaults = SdsSettings::default();
    let name = |key: &str, value: Option<String>, default: String| match value {
        Some(name) if name.is_empty() || name.len() > 255 => Err(invalid(
            &format!("sds.{key}"),
            &name,
            &"accepted: a resource name of 1 to 255 bytes",
        )),
        Some(name) => Ok(name),
        None => Ok(default),
    };
    Ok(SdsSettings {
        default_svid_name: name(
            "default_svid_name",
            raw.default_svid_name,
            defaults.default_svid_name,
        )?,
        default_bundle_name: name(
            "default_bundle_name",
            raw.default_bundle_name,
            defaults.default_bundle_name,
        )?,
        default_all_bundles_name: name(
            "default_all_bundles_name",
            raw.default_all_bundles_name,
            defaults.default_all_bundles_name,
        )?,
        disable_spiffe_cert_validation: raw
            .disable_spiffe_cert_validation
            .unwrap_or(defaults.disable_spiffe_cert_validation),
    })
}

fn parse_acm_certificate(
    i: usize,
    raw: RawAcmCertificate,
    upstream: &Upstream,
    invalid: &Invalid<'_>,
) -> Result<AcmCertificate, ConfigError> {
    let key = |field: &str| format!("acm_certificate[{i}].{field}");
    let kms = match upstream {
        Upstream::Kms(kms) => Some(kms),
        _ => None,
    };
    let (_, region) = enclaveid_checks::location::acm_certificate_region(&raw.arn)
        .map_err(|e| invalid(&key("arn"), &raw.arn, &e))?;
    let region = region.to_owned();
    if raw.dns_names.is_empty() {
        return Err(invalid(
            &key("dns_names"),
            &raw.dns_names,
            &"required: the DNS names the certificate must be valid for, such as [\"inference.example.internal\"]",
        ));
    }
    for (j, name) in raw.dns_names.iter().enumerate() {
        if rustls_pki_types::DnsName::try_from(name.as_str()).is_err() || name.starts_with("*.") {
            return Err(invalid(
                &format!("acm_certificate[{i}].dns_names[{j}]"),
                name,
                &"accepted: a DNS name such as \"inference.example.internal\" (a name, not a wildcard: a wildcard certificate covers it)",
            ));
        }
    }
    let trust_bundle_path = raw
        .trust_bundle_path
        .or_else(|| kms.map(|k| k.trust_bundle_path.clone()))
        .ok_or_else(|| {
            invalid(
                &key("trust_bundle_path"),
                &"",
                &"required unless upstream.kind = \"kms\" (whose trust_bundle_path is the default): the Private CA root (PEM) the certificate must chain to",
            )
        })?;
    let host = match (&raw.host, kms) {
        (Some(host), _) => host.parse().map_err(|e| invalid(&key("host"), host, &e))?,
        (None, Some(kms)) => kms.host.clone(),
        (None, None) => DEFAULT_HOST
            .parse()
            .map_err(|e| invalid(&key("host"), &DEFAULT_HOST, &e))?,
    };
    let kms_endpoint = match (&raw.kms_endpoint, kms) {
        (Some(url), _) => {
            KmsEndpoint::parse(url).map_err(|e| invalid(&key("kms_endpoint"), url, &e))?
        }
        (None, Some(kms)) if kms.region == region => kms.kms_endpoint.clone(),
        (None, _) => KmsEndpoint::for_region(&region),
    };
    let duration = |field: &str, value: &Option<String>, default: Duration| match value {
        Some(value) => parse_ttl(value).map_err(|why| invalid(&key(field), value, &why)),
        None => Ok(default),
    };
    Ok(AcmCertificate {
        resync_interval: duration(
            "resync_interval",
            &raw.resync_interval,
            kms.map_or(DEFAULT_RESYNC_INTERVAL, |k| k.resync_interval),
        )?,
        require_crl: raw.require_crl.unwrap_or(kms.is_none_or(|k| k.require_crl)),
        crl_max_age: duration(
            "crl_max_age",
            &raw.crl_max_age,
            kms.map_or(DEFAULT_CRL_MAX_AGE, |k| k.crl_max_age),
        )?,
        sync_timeout: duration(
            "sync_timeout",
            &raw.sync_timeout,
            kms.map_or(DEFAULT_SYNC_TIMEOUT, |k| k.sync_timeout),
        )?,
        arn: raw.arn,
        dns_names: raw.dns_names,
        trust_bundle_path,
        host,
        region,
        kms_endpoint,
    })
}

fn parse_telemetry(
    raw: Option<RawTelemetry>,
    upstream: &Upstream,
    invalid: &impl Fn(&str, &dyn std::fmt::Debug, &dyn std::fmt::Display) -> ConfigError,
) -> Result<TelemetryConfig, ConfigError> {
    let default_host = match upstream {
        Upstream::Kms(kms) => Some(kms.host.clone()),
        Upstream::Dev(_) | Upstream::Spire(_) => None,
    };
    let Some(raw) = raw else {
        return Ok(TelemetryConfig {
            host: default_host,
            ..TelemetryConfig::default()
        });
    };
    let host = match &raw.host {
        Some(host) => Some(
            host.parse::<enclaveid_io::Address>()
                .map_err(|e| invalid("telemetry.host", host, &e))?,
        ),
        None => default_host,
    };
    let level = match raw.level.as_deref() {
        None => tracing::Level::INFO,
        Some("error") => tracing::Level::ERROR,
        Some("warn") => tracing::Level::WARN,
        Some("info") => tracing::Level::INFO,
        Some("debug") => tracing::Level::DEBUG,
        Some(other) => {
            return Err(invalid(
                "telemetry.level",
                &other,
                &"accepted: error, warn, info, debug",
            ));
        }
    };
    let interval = match &raw.interval {
        Some(value) => {
            parse_ttl(value).map_err(|why| invalid("telemetry.interval", value, &why))?
        }
        None => TelemetryConfig::default().interval,
    };
    if let Some(path) = &raw.metrics_socket
        && !path.is_absolute()
    {
        return Err(invalid(
            "telemetry.metrics_socket",
            path,
            &"the socket path must be absolute",
        ));
    }
    Ok(TelemetryConfig {
        host,
        level,
        interval,
        metrics_socket: raw.metrics_socket,
    })
}

fn parse_bundle_endpoint(
    raw: RawBundleEndpoint,
    entries: &[Entry],
    invalid: &Invalid<'_>,
) -> Result<BundleEndpoint, ConfigError> {
    let listen = raw
        .listen
        .parse()
        .map_err(|e| invalid("bundle_endpoint.listen", &raw.listen, &e))?;
    let profile = match (raw.spiffe_id, raw.cert_path, raw.key_path) {
        (Some(id), None, None) => {
            let spiffe_id = SpiffeId::new(&id).map_err(|e| {
                invalid(
                    "bundle_endpoint.spiffe_id",
                    &id,
                    &format!("{e}; accepted: a SPIFFE ID"),
                )
            })?;
            if !entries.iter().any(|e| e.spiffe_id == spiffe_id) {
                return Err(invalid(
                    "bundle_endpoint.spiffe_id",
                    &id,
                    &"no [[entry]] has this SPIFFE ID; add one so that the agent mints the endpoint's X.509-SVID",
                ));
            }
            EndpointProfile::HttpsSpiffe(spiffe_id)
        }
        (None, Some(cert_path), Some(key_path)) => EndpointProfile::HttpsWeb {
            cert_path,
            key_path,
        },
        _ => {
            return Err(invalid(
                "bundle_endpoint",
                &"",
                &"accepted: spiffe_id (profile https_spiffe) or cert_path with key_path (profile https_web)",
            ));
        }
    };
    let refresh_hint = match &raw.refresh_hint {
        Some(value) => {
            parse_ttl(value).map_err(|why| invalid("bundle_endpoint.refresh_hint", value, &why))?
        }
        None => Duration::from_secs(300),
    };
    let max_connections = match raw.max_connections {
        None => DEFAULT_BUNDLE_ENDPOINT_CONNECTIONS,
        Some(n @ 1..=65_536) => usize::try_from(n).unwrap_or(usize::MAX),
        Some(n) => {
            return Err(invalid(
                "bundle_endpoint.max_connections",
                &n,
                &"accepted: 1 to 65536",
            ));
        }
    };
    Ok(BundleEndpoint {
        listen,
        profile,
        refresh_hint,
        max_connections,
    })
}

fn parse_limits(raw: RawLimits, invalid: &Invalid<'_>) -> Result<LimitsConfig, ConfigError> {
    let mut limits = LimitsConfig::default();
    // Every count is at least 1 (0 would refuse every caller) and fits the type it ends
    // up in; the upper bounds keep a typo from disabling a limit.
    let count = |key: &str, value: Option<u64>, default: u64, max: u64| match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(invalid(
            &format!("limits.{key}"),
            &n,
            &format!("accepted: 1 to {max}"),
        )),
    };
    let api = &mut limits.api;
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let to_u32 = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    api.max_connections = to_usize(count(
        "max_connections",
        raw.max_connections,
        api.max_connections as u64,
        1 << 20,
    )?);
    api.max_connections_per_uid = to_usize(count(
        "max_connections_per_uid",
        raw.max_connections_per_uid,
        api.max_connections_per_uid as u64,
        1 << 20,
    )?);
    api.max_streams_per_connection = to_usize(count(
        "max_streams_per_connection",
        raw.max_streams_per_connection,
        api.max_streams_per_connection as u64,
        1 << 20,
    )?);
    api.max_streams_per_uid = to_usize(count(
        "max_streams_per_uid",
        raw.max_streams_per_uid,
        api.max_streams_per_uid as u64,
        1 << 24,
    )?);
    api.calls_per_second_per_uid = to_u32(count(
        "calls_per_second_per_uid",
        raw.calls_per_second_per_uid,
        u64::from(api.calls_per_second_per_uid),
        1 << 20,
    )?);
    api.call_burst_per_uid = to_u32(count(
        "call_burst_per_uid",
        raw.call_burst_per_uid,
        u64::from(api.call_burst_per_uid),
        1 << 20,
    )?);
    api.token_cache_bytes = to_usize(count(
        "token_cache_bytes",
        raw.token_cache_bytes,
        api.token_cache_bytes as u64,
        1 << 32,
    )?);
    if let Some(value) = &raw.idle_timeout {
        api.idle_timeout =
            parse_ttl(value).map_err(|why| invalid("limits.idle_timeout", value, &why))?;
    }
    limits.max_executable_bytes = count(
        "max_executable_bytes",
        raw.max_executable_bytes,
        limits.max_executable_bytes,
        1 << 40,
    )?;
    Ok(limits)
}

fn parse_attestor(raw: RawAttestor, invalid: &Invalid<'_>) -> Result<AttestorConfig, ConfigError> {
    let kind = match raw.kind.as_str() {
        "fake" if !cfg!(feature = "fake") => {
            return Err(invalid(
                "attestor.kind",
                &raw.kind,
                &"this enclaveid was built without the fake attestor (an enclave image); accepted: \"nsm\"",
            ));
        }
        "fake" => {
            let mut fake = enclaveid_attestor::FakeConfig {
                debug: raw.debug.unwrap_or(false),
                ..enclaveid_attestor::FakeConfig::default()
            };
            if let Some(module_id) = raw.module_id {
                fake.module_id = module_id;
            }
            match (&raw.root_cert_path, &raw.root_key_path) {
                (None, None) => {}
                (Some(cert), Some(key)) => {
                    let read = |name: &str, path: &PathBuf| {
                        std::fs::read_to_string(path).map_err(|e| {
                            invalid(
                                &format!("attestor.{name}"),
                                path,
                                &format!("cannot be read: {e}"),
                            )
                        })
                    };
                    fake.root = Some(enclaveid_attestor::FakeRoot {
                        cert_pem: read("root_cert_path", cert)?,
                        key_pem: read("root_key_path", key)?,
                    });
                }
                _ => {
                    return Err(invalid(
                        "attestor.root_cert_path",
                        &raw.root_cert_path,
                        &"root_cert_path and root_key_path go together",
                    ));
                }
            }
            for (index, value) in &raw.pcrs {
                let key = format!("attestor.pcrs.{index}");
                let i = index
                    .parse::<u8>()
                    .ok()
                    .filter(|i| *i < 16)
                    .ok_or_else(|| invalid(&key, value, &"PCR indices are 0 to 15"))?;
                let bytes = enclaveid_attestor::parse_pcr(value).ok_or_else(|| {
                    invalid(&key, value, &"accepted: 96 hex digits (a SHA-384 PCR)")
                })?;
                fake.pcrs.insert(i, bytes);
            }
            AttestorKind::Fake(fake)
        }
        "nsm"
            if raw.debug.is_some()
                || raw.module_id.is_some()
                || !raw.pcrs.is_empty()
                || raw.root_cert_path.is_some()
                || raw.root_key_path.is_some() =>
        {
            return Err(invalid(
                "attestor.kind",
                &raw.kind,
                &"debug, module_id, pcrs and the root paths describe the fake attestor; NSM reports the real ones",
            ));
        }
        "nsm" if cfg!(feature = "nsm") => AttestorKind::Nsm,
        "nsm" => {
            return Err(invalid(
                "attestor.kind",
                &raw.kind,
                &"this enclaveid was built without NSM support; build it with `--features nsm` for an enclave",
            ));
        }
        other => {
            return Err(invalid(
                "attestor.kind",
                &other,
                &"accepted: \"fake\", \"nsm\"",
            ));
        }
    };
    Ok(AttestorConfig {
        kind,
        allow_debug: raw.allow_debug,
    })
}

fn parse_ttl(value: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(value)
        .map_err(|e| format!("{e}; accepted: a duration such as \"30m\", \"1h\" or \"90s\""))?;
    if ttl < MIN_TTL {
        return Err(format!(
            "it is shorter than the minimum of {}",
            humantime::format_duration(MIN_TTL)
        ));
    }
    if ttl > MAX_DURATION {
        let days = MAX_DURATION.as_secs() / 86_400;
        return Err(format!(
            "it is longer than the maximum of {days} days; accepted: {} to {days}d",
            humantime::format_duration(MIN_TTL),
        ));
    }
    Ok(ttl)
}

/// The bytes of a file the configuration names under `key`: an unreadable one is the
/// operator's input, a configuration error.
pub(crate) fn read_file(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::File {
        key,
        path: path.to_owned(),
        source,
    })
}

/// The certificates (PEM) of a file the configuration names under `key`.
pub(crate) fn read_certs(
    key: &'static str,
    path: &std::path::Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ConfigError> {
    enclaveid_checks::certs::parse_pem(&read_file(key, path)?, key).map_err(|source| {
        ConfigError::Certificates {
            key,
            path: path.to_owned(),
            source,
        }
    })
}

/// One line from a TOML error: the file, the line and its text, and what was wrong
/// (serde's message names the accepted keys or type).
fn toml_error(text: &str, origin: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim().replace('\n', " ");
    let location = match error.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_no = text[..start].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or_default().trim();
            format!("line {line_no} (`{line}`): ")
        }
        None => String::new(),
    };
    ConfigError::Toml {
        origin: origin.to_owned(),
        location,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_the_deploy_image_config_parses_and_sends_to_the_upstream_host() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/enclave/agent.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let text = if cfg!(feature = "nsm") {
            text
        } else {
            // A build without NSM says so; the rest is checked with the fake attestor.
            let error = Config::from_toml(&text, path).unwrap_err().to_string();
            assert!(error.contains("--features nsm"), "{error}");
            text.replace("kind = \"nsm\"", "kind = \"fake\"")
        };
        let config = Config::from_toml(&text, path).unwrap();
        let Upstream::Kms(kms) = &config.upstream else {
            panic!("the image's upstream is kms");
        };
        assert_eq!(config.telemetry.host.as_ref(), Some(&kms.host));
        assert_eq!(
            config.telemetry.metrics_socket.as_deref(),
            Some(std::path::Path::new("/run/enclaveid/metrics.sock"))
        );
    }

    #[test]
    fn telemetry_settings_are_checked_and_dev_sends_nothing_by_default() {
        let base = "trust_domain = \"example.org\"\n[upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n";
        let config = Config::from_toml(base, "t").unwrap();
        assert_eq!(config.telemetry, TelemetryConfig::default());
        for (table, key) in [
            ("level = \"trace\"", "telemetry.level"),
            ("interval = \"1s\"", "telemetry.interval"),
            ("host = \"http://x\"", "telemetry.host"),
            ("metrics_socket = \"m.sock\"", "telemetry.metrics_socket"),
            ("colour = \"red\"", "colour"),
        ] {
            let text = format!("{base}[telemetry]\n{table}\n");
            let error = Config::from_toml(&text, "t").unwrap_err().to_string();
            assert!(error.contains(key), "{table}: {error}");
        }
    }

    const GOOD: &str = r#"
trust_domain = "example.org"
socket_path = "/tmp/agent.sock"
svid_ttl = "1h"
[upstream]
kind = "dev"
[attestor]
kind = "fake"
[[entry]]
spiffe_id = "spiffe://example.org/gateway"
selectors = ["unix:uid:1000", "unix:gid:1000"]
dns_names = ["gateway.internal"]
ttl = "30m"
hint = "internal"
[[entry]]
spiffe_id = "spiffe://example.org/inference"
selectors = ["unix:uid:1001"]
attested = true
"#;

    #[test]
    fn a_full_config_parses_with_defaults_filled_in() {
        let config = Config::from_toml(GOOD, "agent.toml").unwrap();
        assert_eq!(config.trust_domain.to_string(), "example.org");
        assert_eq!(config.entries.len(), 2);
        assert_eq!(config.entries[0].ttl, Duration::from_secs(1800));
        assert_eq!(config.entries[0].hint, "internal");
        assert!(
            !config.entries[0].attested,
            "attested is off unless asked for"
        );
        assert!(config.entries[1].attested);
        assert_eq!(config.entries[1].ttl, Duration::from_secs(3600));
        assert_eq!(config.entries[1].selectors, vec![Selector::Uid(1001)]);
        assert_eq!(config.upstream, Upstream::Dev(None));

        let minimal = "trust_domain = \"example.org\"\n[upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n";
        let config = Config::from_toml(minimal, "agent.toml").unwrap();
        assert_eq!(config.socket_path, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert_eq!(config.svid_ttl, DEFAULT_SVID_TTL);
    }

    /// Each bad input is refused with one line naming the key, the value and what is
    /// accepted.
    #[test]
    fn bad_configs_are_refused_with_one_line_naming_key_value_and_accepted() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "trust_domain = \"example.org\"",
                "trust_domain = \"Not A Domain!\"",
                &["trust_domain", "Not A Domain!", "accepted"],
            ),
            (
                "svid_ttl = \"1h\"",
                "svid_ttl = \"2s\"",
                &["svid_ttl", "\"2s\"", "minimum of 5s"],
            ),
            (
                "svid_ttl = \"1h\"",
                "svid_ttl = \"soon\"",
                &["svid_ttl", "soon", "accepted: a duration"],
            ),
            (
                "svid_ttl = \"1h\"",
                "svid_ttl = 5",
                &["svid_ttl = 5", "expected a string"],
            ),
            (
                "ttl = \"30m\"",
                "ttl = \"1s\"",
                &["entry[0].ttl", "\"1s\"", "minimum"],
            ),
            (
                "svid_ttl = \"1h\"",
                "svid_ttl = \"300000000000y\"",
                &["svid_ttl", "300000000000y", "maximum of 366 days"],
            ),
            (
                "ttl = \"30m\"",
                "ttl = \"30m\"\njwt_ttl = \"300000000000y\"",
                &["entry[0].jwt_ttl", "maximum of 366 days"],
            ),
            (
                "\"spiffe://example.org/gateway\"",
                "\"spiffe://other.org/gateway\"",
                &[
                    "entry[0].spiffe_id",
                    "spiffe://other.org/gateway",
                    "outside the trust domain",
                ],
            ),
            (
                "\"spiffe://example.org/gateway\"",
                "\"spiffe://example.org\"",
                &["entry[0].spiffe_id", "needs a path"],
            ),
            (
                "\"spiffe://example.org/gateway\"",
                "\"http://example.org/gateway\"",
                &["entry[0].spiffe_id", "http://example.org/gateway"],
            ),
            (
                "[\"unix:uid:1000\", \"unix:gid:1000\"]",
                "[\"unix:uid:1000\", \"k8s:ns:x\"]",
                &["entry[0].selectors[1]", "k8s:ns:x", "accepted: unix:uid:N"],
            ),
            (
                "[\"unix:uid:1001\"]",
                "[]",
                &["entry[1].selectors", "at least one selector"],
            ),
            (
                "kind = \"dev\"",
                "kind = \"acme\"",
                &["upstream.kind", "acme", "accepted: \"dev\""],
            ),
            (
                "kind = \"fake\"",
                "kind = \"tpm\"",
                &["attestor.kind", "tpm", "accepted: \"fake\""],
            ),
            (
                "kind = \"fake\"",
                "kind = \"fake\"\npcrs = { 0 = \"abc\" }",
                &["attestor.pcrs.0", "\"abc\"", "96 hex digits"],
            ),
            (
                "kind = \"fake\"",
                "kind = \"fake\"\npcrs = { 16 = \"abc\" }",
                &["attestor.pcrs.16", "0 to 15"],
            ),
            (
                "[\"unix:uid:1001\"]",
                "[\"nitro:module_id:i-1\"]",
                &["entry[1].selectors", "add at least one unix: selector"],
            ),
            (
                "hint = \"internal\"",
                "hint = \"internal\"\ncolour = \"blue\"",
                &["colour", "unknown field", "expected one of"],
            ),
            (
                "attested = true",
                "attested = \"yes\"",
                &["attested", "invalid type", "a boolean"],
            ),
            (
                "[\"gateway.internal\"]",
                "[\"not a name\"]",
                &[
                    "entry[0].dns_names[0]",
                    "not a name",
                    "accepted: a DNS name",
                ],
            ),
            (
                "trust_domain = \"example.org\"",
                "trust_domain = \"example.org",
                &["agent.toml: line 2"],
            ),
            (
                "kind = \"dev\"",
                "kind = \"kms\"\ntrust_bundle_path = \"/r.pem\"",
                &["upstream.region", "required for kind = \"kms\""],
            ),
            (
                "kind = \"dev\"",
                "kind = \"kms\"\nregion = \"eu-west-1\"",
                &["upstream.trust_bundle_path", "Private CA root"],
            ),
            (
                "kind = \"dev\"",
                "kind = \"kms\"\nregion = \"EU West\"\ntrust_bundle_path = \"/r.pem\"",
                &["upstream.region", "EU West", "accepted: an AWS region"],
            ),
            (
                "kind = \"dev\"",
                "kind = \"kms\"\nregion = \"eu-west-1\"\ntrust_bundle_path = \"/r.pem\"\ncrl_export_path = \"crl.pem\"",
                &[
                    "upstream.crl_export_path",
                    "crl.pem",
                    "accepted: an absolute path",
                ],
            ),
            (
                "kind = \"dev\"",
                "kind = \"dev\"\ncrl_export_path = \"/run/crl.pem\"",
                &["crl_export_path"],
            ),
            (
                "kind = \"dev\"",
                "kind = \"kms\"\nregion = \"eu-west-1\"\ntrust_bundle_path = \"/r.pem\"\nhost = \"vsock://3\"",
                &["upstream.host", "vsock://3", "accepted: vsock://CID:PORT"],
            ),
            (
                "kind = \"dev\"",
                "kind = \"kms\"\nregion = \"eu-west-1\"\ntrust_bundle_path = \"/r.pem\"\nkms_endpoint = \"kms.eu-west-1.amazonaws.com\"",
                &["upstream.kms_endpoint", "accepted: https://HOST"],
            ),
            (
                "kind = \"dev\"",
                "kind = \"kms\"\nregion = \"eu-west-1\"\ntrust_bundle_path = \"/r.pem\"\nresync_interval = \"1s\"",
                &["upstream.resync_interval", "minimum of 5s"],
            ),
            (
                "kind = \"dev\"",
                "kind = \"kms\"\nregion = \"eu-west-1\"\ntrust_bundle_path = \"/r.pem\"\ncert_path = \"/c.pem\"",
                &["upstream.cert_path does not apply to upstream.kind = \"kms\""],
            ),
            (
                "kind = \"dev\"",
                "kind = \"dev\"\nregion = \"eu-west-1\"",
                &["upstream.region does not apply to upstream.kind = \"dev\""],
            ),
            (
                "kind = \"fake\"",
                "kind = \"fake\"\nroot_cert_path = \"/r.pem\"",
                &["attestor.root_cert_path", "go together"],
            ),
        ];
        for (from, to, wants) in cases {
            assert!(GOOD.contains(from), "case does not apply: {from}");
            let text = GOOD.replacen(from, to, 1);
            let error = Config::from_toml(&text, "agent.toml")
                .unwrap_err()
                .to_string();
            assert!(!error.contains('\n'), "not one line: {error}");
            assert!(error.starts_with("agent.toml"), "{error}");
            for want in *wants {
                assert!(error.contains(want), "{to}: missing {want:?} in {error}");
            }
        }
    }

    #[test]
    fn file_output_blocks_are_checked_key_by_key() {
        let block = |extra: &str| {
            format!(
                "{GOOD}[[files]]\nspiffe_id = \"spiffe://example.org/gateway\"\ndir = \"/run/out\"\n{extra}\n"
            )
        };
        let config = Config::from_toml(&block(""), "agent.toml").unwrap();
        let files = &config.files[0];
        assert_eq!(files.svid_file_name, "svid.pem");
        assert_eq!(files.svid_key_file_name, "svid_key.pem");
        assert_eq!(files.svid_bundle_file_name, "svid_bundle.pem");
        assert_eq!((files.cert_mode, files.key_mode), (0o644, 0o600));
        let signalled = Config::from_toml(
            &block("pid_file = \"/run/nginx.pid\"\nrenew_signal = \"HUP\"\nowner = \"0:33\"\nkey_mode = \"0640\""),
            "agent.toml",
        )
        .unwrap();
        let files = &signalled.files[0];
        assert_eq!(
            files.signal.as_ref().unwrap().1,
            nix::sys::signal::Signal::SIGHUP
        );
        assert_eq!((files.owner, files.key_mode), (Some((0, 33)), 0o640));

        for (extra, wants) in [
            ("dir = \"rel\"", &["files[0].dir", "absolute"][..]),
            (
                "svid_file_name = \"a/b\"",
                &["files[0].svid_file_name", "plain file name"],
            ),
            ("svid_key_file_name = \"svid.pem\"", &["must differ"]),
            ("key_mode = \"0644\"", &["files[0].key_mode", "others"]),
            ("cert_mode = \"9\"", &["files[0].cert_mode", "octal"]),
            ("owner = \"www-data\"", &["files[0].owner", "UID:GID"]),
            (
                "renew_signal = \"HUP\"",
                &["files[0].pid_file", "go together"],
            ),
            (
                "pid_file = \"/p\"\nrenew_signal = \"NOPE\"",
                &["files[0].renew_signal", "NOPE"],
            ),
            ("jwt_audiences = [\"\"]", &["files[0].jwt_audiences[0]"]),
        ] {
            let text = block(extra).replace("dir = \"/run/out\"\ndir", "dir");
            let error = Config::from_toml(&text, "agent.toml")
                .unwrap_err()
                .to_string();
            assert!(!error.contains('\n'), "not one line: {error}");
            for want in wants {
                assert!(error.contains(want), "{extra}: missing {want:?} in {error}");
            }
        }
        let unknown = block("").replace("gateway\"\ndir", "nobody\"\ndir");
        let error = Config::from_toml(&unknown, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("[[entry]]"), "{error}");
    }

    #[test]
    fn acm_route_certificates_and_their_files_blocks_are_checked() {
        const ARN: &str = "arn:aws:acm:eu-west-1:111122223333:certificate/0b1e6a16-7c4f";
        let text = |acm: &str, files: &str| {
            format!(
                "{GOOD}[[acm_certificate]]\narn = \"{ARN}\"\n{acm}\n[[files]]\nacm_certificate = \"{ARN}\"\ndir = \"/run/nginx-tls\"\n{files}\n"
            )
        };
        let base =
            "dns_names = [\"inference.ephemeral-ml.internal\"]\ntrust_bundle_path = \"/pca.pem\"";
        let config = Config::from_toml(&text(base, ""), "agent.toml").unwrap();
        let acm = &config.acm_certificates[0];
        assert_eq!(acm.region, "eu-west-1", "the ARN's region");
        assert_eq!(
            acm.kms_endpoint.url(),
            "https://kms.eu-west-1.amazonaws.com/"
        );
        assert_eq!(acm.host.to_string(), DEFAULT_HOST);
        assert!(acm.require_crl);
        assert_eq!(config.files[0].source, FileSource::Acm(ARN.into()));

        // With the kms upstream, its root, host and CRL settings are the defaults.
        let kms = text("dns_names = [\"a.internal\"]", "").replace(
            "kind = \"dev\"",
            "kind = \"kms\"\nregion = \"eu-west-1\"\ntrust_bundle_path = \"/root.pem\"\nhost = \"tcp://127.0.0.1:8090\"\nrequire_crl = false",
        );
        let config = Config::from_toml(&kms, "agent.toml").unwrap();
        let acm = &config.acm_certificates[0];
        assert_eq!(acm.trust_bundle_path, PathBuf::from("/root.pem"));
        assert_eq!(acm.host.to_string(), "tcp://127.0.0.1:8090");
        assert!(!acm.require_crl);

        for (acm, files, wants) in [
            (
                "trust_bundle_path = \"/p.pem\"",
                "",
                &["acm_certificate[0].dns_names", "required"][..],
            ),
            (
                "dns_names = [\"a.internal\"]",
                "",
                &["acm_certificate[0].trust_bundle_path", "required unless"],
            ),
            (
                "dns_names = [\"*.internal\"]\ntrust_bundle_path = \"/p.pem\"",
                "",
                &["acm_certificate[0].dns_names[0]", "*.internal"],
            ),
            (
                "dns_names = [\"bad name\"]\ntrust_bundle_path = \"/p.pem\"",
                "",
                &["acm_certificate[0].dns_names[0]", "bad name"],
            ),
            (
                base,
                "jwt_audiences = [\"x\"]",
                &["files[0].jwt_audiences", "not a SPIFFE identity"],
            ),
            (
                base,
                "spiffe_id = \"spiffe://example.org/gateway\"",
                &["files[0].acm_certificate", "not both"],
            ),
        ] {
            let error = Config::from_toml(&text(acm, files), "agent.toml")
                .unwrap_err()
                .to_string();
            assert!(!error.contains('\n'), "not one line: {error}");
            for want in wants {
                assert!(
                    error.contains(want),
                    "{acm} / {files}: missing {want:?} in {error}"
                );
            }
        }
        let bad_arn = text(base, "").replacen(
            &format!("arn = \"{ARN}\""),
            "arn = \"arn:aws:acm:eu-west-1:1:key/x\"",
            1,
        );
        let error = Config::from_toml(&bad_arn, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("acm_certificate[0].arn")
                && error.contains("accepted: arn:PARTITION:acm:"),
            "{error}"
        );
        let unknown = format!("{GOOD}[[files]]\nacm_certificate = \"{ARN}\"\ndir = \"/run/x\"\n");
        let error = Config::from_toml(&unknown, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("[[acm_certificate]]"), "{error}");
    }

    #[test]
    fn sds_settings_take_spire_agents_keys_and_defaults() {
        let config = Config::from_toml(GOOD, "agent.toml").unwrap();
        assert_eq!(config.sds, SdsSettings::default());
        assert_eq!(config.sds.default_bundle_name, "ROOTCA");
        let text = format!(
            "{GOOD}[sds]\ndefault_svid_name = \"svid\"\ndisable_spiffe_cert_validation = true\n"
        );
        let config = Config::from_toml(&text, "agent.toml").unwrap();
        let sds = config.sds.for_trust_domain(&config.trust_domain);
        assert_eq!(sds.default_svid_name, "svid");
        assert_eq!(sds.trust_domain_id, "spiffe://example.org");
        assert!(sds.disable_spiffe_cert_validation);
        for (bad, wants) in [
            ("default_bundle_name = \"\"", "sds.default_bundle_name"),
            ("unknown = 1", "unknown"),
        ] {
            let error = Config::from_toml(&format!("{GOOD}[sds]\n{bad}\n"), "agent.toml")
                .unwrap_err()
                .to_string();
            assert!(error.contains(wants), "{bad}: {error}");
        }
    }

    #[test]
    fn spire_upstream_the_deploy_example_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/enclave/agent-spire.toml"
        );
        let text = std::fs::read_to_string(path)
            .unwrap()
            .replace("kind = \"nsm\"", "kind = \"fake\"");
        let config = Config::from_toml(&text, path).unwrap();
        let Upstream::Spire(spire) = &config.upstream else {
            panic!("the example's upstream is spire");
        };
        assert_eq!(spire.server_address.to_string(), "vsock://3:8081");
        assert!(config.entries.is_empty());
        assert!(config.telemetry.host.is_some());
    }

    #[test]
    fn spire_upstream_config_is_checked_key_by_key() {
        let base = "trust_domain = \"example.org\"\n[attestor]\nkind = \"fake\"\n[upstream]\nkind = \"spire\"\n";
        let good =
            format!("{base}server_address = \"vsock://3:8081\"\ntrust_bundle_path = \"/b.pem\"\n");
        let config = Config::from_toml(&good, "agent.toml").unwrap();
        let Upstream::Spire(spire) = &config.upstream else {
            panic!("not spire: {:?}", config.upstream);
        };
        assert_eq!(spire.server_address.to_string(), "vsock://3:8081");
        assert_eq!(spire.sync_interval, DEFAULT_SPIRE_SYNC_INTERVAL);
        assert_eq!(spire.node_attestor, "aws_nitro");
        assert!(!spire.insecure_bootstrap);
        assert!(!config.allow_insecure_bootstrap, "never from the file");

        let cases: &[(String, &[&str])] = &[
            (base.to_owned(), &["upstream.server_address", "required"]),
            (
                format!("{base}server_address = \"vsock://3\"\ntrust_bundle_path = \"/b\""),
                &["upstream.server_address", "vsock://CID:PORT"],
            ),
            (
                format!("{base}server_address = \"tcp://127.0.0.1:1\""),
                &["upstream.trust_bundle_path", "insecure_bootstrap"],
            ),
            (
                format!("{good}insecure_bootstrap = true"),
                &["upstream.insecure_bootstrap", "choose one"],
            ),
            (
                format!("{good}sync_interval = \"0s\""),
                &["upstream.sync_interval", "1s to 1h"],
            ),
            (
                format!("{good}node_attestor = \"\""),
                &["upstream.node_attestor"],
            ),
            (
                format!("{good}region = \"eu-west-1\""),
                &["upstream.region does not apply to upstream.kind = \"spire\""],
            ),
            (
                format!(
                    "{good}[[entry]]\nspiffe_id = \"spiffe://example.org/w\"\nselectors = [\"unix:uid:1\"]\n"
                ),
                &["entry", "come from the SPIRE server"],
            ),
        ];
        for (text, wants) in cases {
            let error = Config::from_toml(text, "agent.toml")
                .unwrap_err()
                .to_string();
            assert!(!error.contains('\n'), "not one line: {error}");
            for want in *wants {
                assert!(error.contains(want), "{text}: missing {want:?} in {error}");
            }
        }
    }

    #[test]
    fn a_kms_upstream_gets_aws_defaults() {
        let text = GOOD.replacen(
            "kind = \"dev\"",
            "kind = \"kms\"\nregion = \"eu-west-1\"\ntrust_bundle_path = \"/etc/enclaveid/pca-root.pem\"",
            1,
        );
        let config = Config::from_toml(&text, "agent.toml").unwrap();
        let Upstream::Kms(kms) = config.upstream else {
            panic!("not kms");
        };
        assert_eq!(kms.host.to_string(), "vsock://3:8090");
        assert_eq!(
            kms.kms_endpoint.to_string(),
            "https://kms.eu-west-1.amazonaws.com"
        );
        assert_eq!(kms.resync_interval, Duration::from_secs(600));
        assert!(kms.require_crl, "revocation is checked unless turned off");
        assert_eq!(kms.crl_max_age, Duration::from_secs(3600));
        assert_eq!(kms.sync_timeout, Duration::from_secs(60));
    }

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
            let error = KmsEndpoint::parse(bad).unwrap_err().to_string();
            assert!(error.contains("accepted: https://HOST"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_dev_config_has_one_entry_for_the_user() {
        let config = Config::dev(1000, PathBuf::from("/tmp/x.sock")).unwrap();
        assert_eq!(
            config.entries[0].spiffe_id.to_string(),
            "spiffe://enclaveid.dev/uid/1000"
        );
        assert_eq!(config.entries[0].selectors, vec![Selector::Uid(1000)]);
    }

    #[test]
    fn bundle_endpoints_name_their_profile_and_need_an_entry_for_https_spiffe() {
        let base = "trust_domain = \"example.org\"\n[upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n\
                    [[entry]]\nspiffe_id = \"spiffe://example.org/bundle\"\nselectors = [\"unix:uid:1\"]\n[bundle_endpoint]\n";
        let config = Config::from_toml(
            &format!(
                "{base}listen = \"tcp://0.0.0.0:8443\"\nspiffe_id = \"spiffe://example.org/bundle\""
            ),
            "agent.toml",
        )
        .unwrap();
        let endpoint = config.bundle_endpoint.unwrap();
        assert_eq!(endpoint.refresh_hint, Duration::from_secs(300));
        assert!(matches!(endpoint.profile, EndpointProfile::HttpsSpiffe(_)));
        for (extra, expected) in [
            (
                "listen = \"tcp://0.0.0.0:8443\"\nspiffe_id = \"spiffe://example.org/other\"",
                "no [[entry]] has this SPIFFE ID",
            ),
            (
                "listen = \"tcp://0.0.0.0:8443\"",
                "accepted: spiffe_id (profile https_spiffe) or cert_path with key_path",
            ),
            (
                "listen = \"tcp://0.0.0.0:8443\"\ncert_path = \"/c.pem\"",
                "accepted: spiffe_id",
            ),
            (
                "listen = \"0.0.0.0:8443\"\nspiffe_id = \"spiffe://example.org/bundle\"",
                "bundle_endpoint.listen",
            ),
        ] {
            let error = Config::from_toml(&format!("{base}{extra}"), "agent.toml")
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{expected:?} not in {error}");
        }
    }
}
