//! `enclaveid proxy`: mTLS in front of a service that speaks plain TCP, or behind a
//! client that can only dial plaintext, with the SVID and bundles of the Workload API
//! (as ghostunnel does; MarbleRun calls it "transparent TLS").
//!
//! - `proxy server`: terminates mTLS from allowed SPIFFE IDs and forwards plaintext to
//!   the target (such as an inference server on `tcp://127.0.0.1:8000`), optionally
//!   opening each forwarded connection with a PROXY protocol v2 header that carries the
//!   client's SPIFFE ID.
//! - `proxy client`: accepts plaintext locally and originates mTLS to the target,
//!   accepting only the expected SPIFFE IDs.
//!
//! Each handshake takes the current SVID and bundles (rotation never drops an
//! established connection, and no handshake is refused around it); the peer is verified
//! in the handshake, CRL files included. Half-close is passed on; handshakes and idle
//! connections time out; past the connection limit, new connections are closed at once.

mod proxy_v2;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use enclaveid_io::pump::{Ended, pump};
use enclaveid_io::{AcceptBackoff, Address, AddressExt as _, Stream};
use spiffe::{SpiffeId, TrustDomain, X509Source};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;

use enclaveid_agent::peer_tls::{self, Allowed, Attestation, PeerPolicy};

use crate::UsageError;

#[derive(Subcommand)]
pub(crate) enum ProxyCommand {
    /// Terminate mTLS from allowed SPIFFE IDs and forward plaintext to --target.
    Server(ServerArgs),
    /// Accept plaintext on --listen and originate mTLS to --target, to an expected ID.
    Client(ClientArgs),
}

#[derive(Args)]
pub(crate) struct ServerArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// A SPIFFE ID allowed to connect; repeatable.
    #[arg(
        long = "allow",
        value_name = "ID",
        required_unless_present = "allow_trust_domain"
    )]
    allow: Vec<String>,
    /// Allow any SPIFFE ID of this trust domain instead.
    #[arg(long, value_name = "TD", conflicts_with = "allow")]
    allow_trust_domain: Option<String>,
    /// Open each forwarded connection with a PROXY protocol v2 header carrying the
    /// client's address and SPIFFE ID (TLV 0xE0).
    #[arg(long)]
    proxy_protocol: bool,
}

#[derive(Args)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The SPIFFE ID the server must present; repeatable (any of them).
    #[arg(
        long = "expect",
        value_name = "ID",
        required_unless_present = "expect_trust_domain"
    )]
    expect: Vec<String>,
    /// Accept any SPIFFE ID of this trust domain instead.
    #[arg(long, value_name = "TD", conflicts_with = "expect")]
    expect_trust_domain: Option<String>,
}

#[derive(Args)]
struct CommonArgs {
    /// Where to listen: tcp://HOST:PORT, unix:///PATH or vsock://any:PORT.
    #[arg(long, value_name = "ADDRESS")]
    listen: String,
    /// Where to forward: tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT.
    #[arg(long, value_name = "ADDRESS")]
    target: String,
    /// The Workload API socket: a path or a unix:// URI. Default: $SPIFFE_ENDPOINT_SOCKET,
    /// else /run/enclaveid/agent.sock or the `run --dev` socket, whichever exists.
    #[arg(long, value_name = "SOCKET")]
    socket: Option<String>,
    /// A CRL file (PEM or DER) peers' chains are checked against, re-read at every
    /// handshake (such as the agent's upstream.crl_export_path); repeatable.
    #[arg(long = "crl", value_name = "FILE")]
    crls: Vec<PathBuf>,
    /// A handshake (and the connection to the target) that takes longer is dropped.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    handshake_timeout: humantime::Duration,
    /// A connection with no byte either way for this long is closed.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    idle_timeout: humantime::Duration,
    /// Connections open at once; past it new ones are closed at once.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
    /// The peer's SVID must carry a bound attestation document of an enclave whose PCR0
    /// is this (96 hex digits); repeatable (any of them). Checked in the handshake; see
    /// docs/attested-svids.md.
    #[arg(long = "require-pcr0", value_name = "HEX")]
    require_pcr0: Vec<String>,
    /// With --require-pcr0: documents chain to this root (PEM) instead of the AWS Nitro
    /// Enclaves root G1: the fake attestor's, in development and tests only.
    #[arg(long, value_name = "PEM", requires = "require_pcr0")]
    attestation_root: Option<PathBuf>,
}

/// Which side of TLS this proxy is.
enum Side {
    /// TLS in, plaintext out.
    Server {
        acceptor: tokio_rustls::TlsAcceptor,
        proxy_protocol: bool,
    },
    /// Plaintext in, TLS out.
    Client {
        connector: tokio_rustls::TlsConnector,
        server_name: rustls::pki_types::ServerName<'static>,
    },
}

/// What one proxy carries, for its log.
#[derive(Default)]
struct Counters {
    in_bytes: AtomicU64,
    out_bytes: AtomicU64,
    refused: AtomicU64,
}

struct Proxy {
    side: Side,
    /// The address connections arrive at, when it is TCP (the PROXY header's destination).
    local: Option<std::net::SocketAddr>,
    target: Address,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    counters: Counters,
}

pub(crate) async fn run(
    command: ProxyCommand,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let (common, allowed, server) = match &command {
        ProxyCommand::Server(args) => (
            &args.common,
            allowed(
                "--allow",
                &args.allow,
                "--allow-trust-domain",
                args.allow_trust_domain.as_deref(),
            )?,
            Some(args.proxy_protocol),
        ),
        ProxyCommand::Client(args) => (
            &args.common,
            allowed(
                "--expect",
                &args.expect,
                "--expect-trust-domain",
                args.expect_trust_domain.as_deref(),
            )?,
            None,
        ),
    };
    let listen: Address = common
        .listen
        .parse()
        .map_err(|e| UsageError(format!("--listen {e}")))?;
    let target: Address = common
        .target
        .parse()
        .map_err(|e| UsageError(format!("--target {e}")))?;
    if common.max_connections == 0 {
        return Err(UsageError("--max-connections 0: at least 1 is needed".into()).into());
    }
    let attestation =
        Attestation::from_flags(&common.require_pcr0, common.attestation_root.as_deref())
            .map_err(|e| UsageError(e.to_string()))?;
    let endpoint = crate::endpoint(&crate::EndpointArgs {
        socket: common.socket.clone(),
    })?;
    let source = crate::within(Duration::from_secs(30), &endpoint, async {
        X509Source::builder().endpoint(&endpoint).build().await
    })
    .await?
    .with_context(|| format!("the Workload API at {endpoint}"))?;
    let policy = PeerPolicy {
        allowed: allowed.clone(),
        crls: common.crls.clone(),
        attestation,
        resumption: false,
    };
    let side = match server {
        Some(proxy_protocol) => Side::Server {
            acceptor: tokio_rustls::TlsAcceptor::from(peer_tls::server_config(&source, policy)?),
            proxy_protocol,
        },
        None => Side::Client {
            connector: tokio_rustls::TlsConnector::from(peer_tls::client_config(&source, policy)?),
            // Peers are authenticated by SPIFFE ID, not by name; SNI names the trust
            // domain.
            server_name: server_name(&allowed)?,
        },
    };
    let listener = listen
        .bind()
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_address().unwrap_or(listen);
    tracing::info!(
        listen = %bound,
        target = %target,
        mode = if server.is_some() { "server" } else { "client" },
        allowed = %allowed,
        require_pcr0 = ?common.require_pcr0,
        "enclaveid proxy serving"
    );
    let local = match &bound {
        Address::Tcp(addr) => addr.parse().ok(),
        _ => None,
    };
    let proxy = Arc::new(Proxy {
        side,
        local,
        target,
        handshake_timeout: common.handshake_timeout.into(),
        idle_timeout: common.idle_timeout.into(),
        counters: Counters::default(),
    });
    let slots = Arc::new(Semaphore::new(common.max_connections));
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff.succeeded();
                    accepted
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(backoff.failed()).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            proxy.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, max = common.max_connections, "connection limit reached; closed");
            drop(stream);
            continue;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            match proxy.carry(stream, &peer).await {
                Ok(ended) => tracing::debug!(%peer, ?ended, "connection ended"),
                Err(error) => tracing::info!(%peer, error = %error, "connection refused or failed"),
            }
            drop(slot);
        });
    }
    tracing::info!(
        bytes_in = proxy.counters.in_bytes.load(Ordering::Relaxed),
        bytes_out = proxy.counters.out_bytes.load(Ordering::Relaxed),
        refused = proxy.counters.refused.load(Ordering::Relaxed),
        "enclaveid proxy stopped"
    );
    Ok(ExitCode::SUCCESS)
}

impl Proxy {
    /// One connection: the handshake (TLS in or out), the target, then bytes both ways.
    async fn carry(&self, stream: Box<dyn Stream>, peer: &str) -> anyhow::Result<Ended> {
        let deadline = self.handshake_timeout;
        let counted = (&self.counters.in_bytes, &self.counters.out_bytes);
        match &self.side {
            Side::Server {
                acceptor,
                proxy_protocol,
            } => {
                let tls = tokio::time::timeout(deadline, acceptor.accept(stream))
                    .await
                    .context("no TLS handshake in time")?
                    .context("TLS handshake")?;
                let (_, connection) = tls.get_ref();
                let id = connection
                    .peer_certificates()
                    .and_then(<[_]>::first)
                    .map(enclaveid_checks::peer::spiffe_id_of)
                    .transpose()?
                    .context("the peer presented no certificate")?;
                let version = connection
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                let mut target = self.dial(deadline).await?;
                if *proxy_protocol {
                    let header =
                        proxy_v2::header(peer.parse().ok(), self.local, &id.to_string(), &version);
                    target
                        .write_all(&header)
                        .await
                        .context("the PROXY header")?;
                }
                tracing::debug!(%peer, spiffe_id = %id, "accepted");
                Ok(pump(tls, target, self.idle_timeout, counted).await)
            }
            Side::Client {
                connector,
                server_name,
            } => {
                let target = self.dial(deadline).await?;
                let tls =
                    tokio::time::timeout(deadline, connector.connect(server_name.clone(), target))
                        .await
                        .context("no TLS handshake in time")?
                        .context("TLS handshake with the target")?;
                Ok(pump(stream, tls, self.idle_timeout, counted).await)
            }
        }
    }

    async fn dial(&self, deadline: Duration) -> anyhow::Result<Box<dyn Stream>> {
        tokio::time::timeout(deadline, self.target.connect())
            .await
            .with_context(|| format!("{}: no connection in time", self.target))?
            .with_context(|| format!("{}", self.target))
    }
}

/// The allow-list from `ids` or `trust_domain` (clap requires exactly one).
fn allowed(
    ids_flag: &str,
    ids: &[String],
    td_flag: &str,
    trust_domain: Option<&str>,
) -> anyhow::Result<Allowed> {
    if let Some(td) = trust_domain {
        let td = TrustDomain::new(td).map_err(|e| {
            UsageError(format!(
                "{td_flag} {td:?}: {e}; accepted: a trust domain such as example.org"
            ))
        })?;
        return Ok(Allowed::TrustDomain(td));
    }
    let ids = ids
        .iter()
        .map(|id| {
            SpiffeId::new(id).map_err(|e| {
                UsageError(format!(
                    "{ids_flag} {id:?}: {e}; accepted: a SPIFFE ID such as spiffe://example.org/web"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Allowed::Ids(ids))
}

/// SNI for `proxy client`: the trust domain of the expected peer.
fn server_name(allowed: &Allowed) -> anyhow::Result<rustls::pki_types::ServerName<'static>> {
    let td = match allowed {
        Allowed::TrustDomain(td) => td.to_string(),
        Allowed::Ids(ids) => ids
            .first()
            .map(|id| id.trust_domain().to_string())
            .context("no expected ID")?,
    };
    Ok(rustls::pki_types::ServerName::try_from(td)?)
}
