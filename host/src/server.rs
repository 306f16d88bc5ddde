//! The host's server: one request per connection, a bounded number at once, a deadline
//! on every request, and tunnels only to the allow-listed KMS endpoints.

use std::sync::Arc;
use std::time::Duration;

use enclaveid_checks::location::ObjectLocation;
use enclaveid_checks::wire::{self, Op, WireError};
use enclaveid_io::{Address, Listener, Stream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::objects::{ObjectError, Store};
use crate::relay::{RelayLimits, RelayStats, Slot};
use crate::{HostConfig, HostError};

/// How many enclave connections are served at once.
const MAX_CONNECTIONS: usize = 64;
/// A KMS tunnel is closed after this long, used or not.
const TUNNEL_LIFETIME: Duration = Duration::from_secs(120);

/// A ready host: objects located, AWS configuration loaded.
pub struct Host {
    material: Option<ObjectLocation>,
    crl: Option<ObjectLocation>,
    jwt_material: Option<ObjectLocation>,
    /// ACM certificate ARN → the object ACM writes for it.
    acm: Vec<(String, ObjectLocation)>,
    kms_endpoints: Vec<String>,
    store: Store,
    relay_allow: Vec<Address>,
    relay_limits: RelayLimits,
    relay_stats: RelayStats,
    telemetry: Arc<crate::Telemetry>,
}

/// Why a request was not answered with its payload. Its text goes to the enclave.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("no request in time")]
    Timeout,
    #[error("reading the request")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Frame(#[from] WireError),
    #[error(
        "this host serves no key material (started without --material): only credentials and the KMS tunnel"
    )]
    NoMaterial,
    #[error(
        "this host does not serve the ACM certificate {arn:?} (not one of its --acm-certificate-arn: {served})"
    )]
    NoAcmCertificate { arn: String, served: String },
    #[error(transparent)]
    Object(#[from] ObjectError),
}

// === impl Host ===

impl Host {
    /// Locates the objects and loads the AWS configuration (region, credentials chain)
    /// from the environment.
    pub async fn new(config: HostConfig) -> Result<Self, HostError> {
        let material = config.material.clone();
        if config.kms_endpoints.is_empty() {
            return Err(HostError::NoKmsEndpoint);
        }
        let acm = config
            .acm
            .iter()
            .map(|source| Ok((source.certificate_arn().to_owned(), source.location()?)))
            .collect::<Result<Vec<_>, HostError>>()?;
        let objects: Vec<&ObjectLocation> = material
            .iter()
            .chain(&config.crl)
            .chain(&config.jwt_material)
            .chain(acm.iter().map(|(_, location)| location))
            .collect();
        let store = Store::new(&config, &objects).await?;
        Ok(Self {
            material,
            crl: config.crl,
            jwt_material: config.jwt_material,
            acm,
            kms_endpoints: config.kms_endpoints,
            store,
            relay_allow: config.relay_allow,
            relay_limits: config.relay_limits,
            telemetry: config
                .telemetry
                .unwrap_or_else(|| crate::Telemetry::new(config.relay_stats.clone())),
            relay_stats: config.relay_stats,
        })
    }

    /// Serves enclaves until `shutdown` resolves.
    pub async fn serve(self, listener: Listener, shutdown: impl std::future::Future<Output = ()>) {
        let host = Arc::new(self);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let host = host.clone();
            tokio::spawn(async move { host.handle(stream, &peer, slot).await });
        }
    }

    /// Serves one request. `slot` counts it among the requests served at once; long-lived
    /// streams (relayed connections, telemetry) give it back and count under their own
    /// limits.
    async fn handle(
        &self,
        mut stream: Box<dyn Stream>,
        peer: &str,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let request = match tokio::time::timeout(wire::TIMEOUT, read_request(&mut stream)).await {
            Ok(request) => request,
            Err(_) => Err(Refusal::Timeout),
        };
        let (op, payload) = match request {
            Ok(request) => request,
            Err(error) => {
                let error = enclaveid_checks::Chain(&error).to_string();
                tracing::warn!(%peer, %error, "bad request");
                let _ = write_answer(&mut stream, Err(&error)).await;
                return;
            }
        };
        let answer = match op {
            Op::KmsTunnel => return self.tunnel(stream, &payload, peer).await,
            Op::Connect => {
                drop(slot);
                return self.connect(stream, &payload, peer).await;
            }
            Op::Telemetry => {
                drop(slot);
                if write_answer(&mut stream, Ok(&[])).await.is_ok() {
                    self.telemetry.receive(stream, peer).await;
                }
                return;
            }
            Op::KeyMaterial => match &self.material {
                Some(material) => self.store.read(material).await.map_err(Refusal::from),
                None => Err(Refusal::NoMaterial),
            },
            Op::Crl => self.optional(self.crl.as_ref()).await,
            Op::JwtKeyMaterial => self.optional(self.jwt_material.as_ref()).await,
            Op::AcmCertificate => {
                match self.acm.iter().find(|(arn, _)| arn.as_bytes() == payload) {
                    Some((_, location)) => self.store.read(location).await.map_err(Refusal::from),
                    None => Err(Refusal::NoAcmCertificate {
                        arn: wire::sanitize(&payload),
                        served: if self.acm.is_empty() {
                            "it has none".to_owned()
                        } else {
                            self.acm
                                .iter()
                                .map(|(arn, _)| arn.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                    }),
                }
            }
            Op::Credentials => self
                .store
                .credentials()
                .await
                .map(|json| json.to_vec())
                .map_err(Refusal::from),
        };
        let answer = answer.map_err(|error| enclaveid_checks::Chain(&error).to_string());
        match &answer {
            Ok(bytes) => tracing::info!(%peer, what = op.what(), bytes = bytes.len(), "served"),
            Err(error) => tracing::warn!(%peer, what = op.what(), %error, "could not serve"),
        }
        let answer = answer.as_deref().map_err(String::as_str);
        if let Err(error) = write_answer(&mut stream, answer).await {
            tracing::warn!(%peer, %error, "writing the answer failed");
        }
    }

    /// An object the host may not have: empty when it has none.
    async fn optional(&self, location: Option<&ObjectLocation>) -> Result<Vec<u8>, Refusal> {
        match location {
            Some(location) => Ok(self.store.read(location).await?),
            None => Ok(Vec::new()),
        }
    }

    /// What the enclaves report (logs, metrics, health), for the HTTP endpoints.
    pub fn telemetry(&self) -> Arc<crate::Telemetry> {
        self.telemetry.clone()
    }

    /// The counters of relayed connections (connect requests; routes share them).
    pub fn relay_stats(&self) -> &RelayStats {
        &self.relay_stats
    }

    /// A connect request: a stream to an allow-listed destination.
    async fn connect(&self, mut stream: Box<dyn Stream>, target: &[u8], peer: &str) {
        let allowed = std::str::from_utf8(target)
            .ok()
            .and_then(|t| t.parse::<Address>().ok())
            .filter(|t| self.relay_allow.contains(t));
        let Some(target) = allowed else {
            // One counter for every refused name: a hostile enclave must not grow the map.
            self.relay_stats
                .route("connect (not allowed)")
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let allowed: Vec<String> = self.relay_allow.iter().map(Address::to_string).collect();
            let error = format!(
                "connect to {:?} refused: not on the relay allow-list ({})",
                wire::sanitize(target),
                if allowed.is_empty() {
                    "empty: start the host with --relay-allow".to_owned()
                } else {
                    allowed.join(", ")
                }
            );
            tracing::warn!(%peer, %error, "relay refused");
            let _ = write_answer(&mut stream, Err(&error)).await;
            return;
        };
        let name = format!("connect {target}");
        let stats = self.relay_stats.route(&name);
        let Some(slot) = Slot::take(&stats, self.relay_limits.max_connections) else {
            let error = format!(
                "connect to {target} refused: {} connections to it are open, the limit",
                self.relay_limits.max_connections
            );
            tracing::warn!(%peer, %error, "relay refused");
            let _ = write_answer(&mut stream, Err(&error)).await;
            return;
        };
        let upstream = match slot.dial(&target, self.relay_limits.connect_timeout).await {
            Ok(upstream) => upstream,
            Err(error) => {
                let error = format!("connecting to {target}: {error}");
                tracing::warn!(%peer, %error, "relay could not reach the destination");
                let _ = write_answer(&mut stream, Err(&error)).await;
                return;
            }
        };
        if write_answer(&mut stream, Ok(&[])).await.is_err() {
            return;
        }
        let ended = slot
            .carry(stream, upstream, self.relay_limits.idle_timeout)
            .await;
        tracing::debug!(%peer, route = %name, ?ended, "relay closed");
    }

    async fn tunnel(&self, mut stream: Box<dyn Stream>, target: &[u8], peer: &str) {
        let target = String::from_utf8_lossy(target).into_owned();
        if !self.kms_endpoints.contains(&target) {
            let error = format!(
                "tunnel to {:?} refused; the host tunnels only to {}",
                wire::sanitize(target.as_bytes()),
                self.kms_endpoints.join(", ")
            );
            tracing::warn!(%peer, %error, "tunnel refused");
            let _ = write_answer(&mut stream, Err(&error)).await;
            return;
        }
        let upstream = match tokio::time::timeout(
            wire::TIMEOUT,
            tokio::net::TcpStream::connect(&target),
        )
        .await
        {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                let error = format!("connecting to {target}: {error}");
                tracing::warn!(%peer, %error, "tunnel failed");
                let _ = write_answer(&mut stream, Err(&error)).await;
                return;
            }
            Err(_) => {
                let error = format!("connecting to {target}: timed out");
                let _ = write_answer(&mut stream, Err(&error)).await;
                return;
            }
        };
        if write_answer(&mut stream, Ok(&[])).await.is_err() {
            return;
        }
        tracing::info!(%peer, %target, "tunnel open");
        let mut upstream = upstream;
        let copied = tokio::time::timeout(
            TUNNEL_LIFETIME,
            tokio::io::copy_bidirectional(&mut stream, &mut upstream),
        )
        .await;
        let _ = stream.shutdown().await;
        match copied {
            Ok(Ok((up, down))) => tracing::info!(%peer, %target, up, down, "tunnel closed"),
            Ok(Err(error)) => tracing::info!(%peer, %target, %error, "tunnel closed"),
            Err(_) => tracing::warn!(%peer, %target, "tunnel closed after its lifetime"),
        }
    }
}

/// Reads a request: the head, then (when the head is acceptable) the payload.
async fn read_request(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<(Op, Vec<u8>), Refusal> {
    let mut head = [0u8; wire::REQUEST_HEAD];
    stream.read_exact(&mut head).await.map_err(Refusal::Read)?;
    let (op, len) = wire::decode_request_head(&head)?;
    let mut payload = vec![0; len];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(Refusal::Read)?;
    Ok((op, payload))
}

async fn write_answer(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    answer: Result<&[u8], &str>,
) -> std::io::Result<()> {
    stream.write_all(&wire::encode_answer(answer)).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use enclaveid_io::{Address, AddressExt as _};

    use super::*;

    async fn ask(address: &Address, op: Op, payload: &[u8]) -> Vec<u8> {
        let mut stream = address.connect().await.unwrap();
        stream
            .write_all(&wire::encode_request(op, payload))
            .await
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn kms_host_serves_files_and_static_credentials_and_refuses_other_tunnels() {
        let dir = tempfile::tempdir().unwrap();
        let material = dir.path().join("material.json");
        std::fs::write(&material, b"{\"k\": 1}").unwrap();
        let host = Host::new(HostConfig {
            material: Some(ObjectLocation::File(material.clone())),
            kms_endpoints: vec!["127.0.0.1:9".into()],
            credentials: Some(aws_credential_types::Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            )),
            ..HostConfig::default()
        })
        .await
        .unwrap();
        let address = Address::Unix(dir.path().join("host.sock"));
        let listener = address.bind().await.unwrap();
        let stop = tokio::sync::Notify::new();
        let served = host.serve(listener, stop.notified());
        let asked = async {
            let answer = ask(&address, Op::KeyMaterial, &[]).await;
            assert_eq!(&answer[wire::ANSWER_HEAD..], b"{\"k\": 1}");
            let answer = ask(&address, Op::Credentials, &[]).await;
            let credentials = wire::Credentials::from_json(&answer[wire::ANSWER_HEAD..]).unwrap();
            assert_eq!(credentials.access_key_id, "AKIDEXAMPLE");
            let answer = ask(&address, Op::Crl, &[]).await;
            assert_eq!(answer, wire::encode_answer(Ok(&[])), "no CRL: empty");
            let answer = ask(&address, Op::KmsTunnel, b"evil.example:443").await;
            assert_eq!(answer[0], 1, "refused");
            let text = String::from_utf8_lossy(&answer[wire::ANSWER_HEAD..]).into_owned();
            assert!(text.contains("tunnels only to 127.0.0.1:9"), "{text}");
            let arn = "arn:aws:acm:eu-west-1:123456789012:certificate/abc";
            let answer = ask(&address, Op::AcmCertificate, arn.as_bytes()).await;
            assert_eq!(answer[0], 1, "refused");
            let text = String::from_utf8_lossy(&answer[wire::ANSWER_HEAD..]).into_owned();
            assert!(
                text.contains(&format!("does not serve the ACM certificate {arn:?}"))
                    && text.contains("it has none"),
                "{text}"
            );
            stop.notify_one();
        };
        tokio::join!(served, asked);
    }

    #[tokio::test]
    async fn kms_host_needs_aws_support_for_s3_only_when_built_without_it() {
        let config = HostConfig {
            material: Some("s3://b/k".parse().unwrap()),
            kms_endpoints: vec!["kms.eu-west-1.amazonaws.com:443".into()],
            region: Some("eu-west-1".into()),
            ..HostConfig::default()
        };
        let started = Host::new(config).await;
        assert_eq!(started.is_ok(), cfg!(feature = "aws"));
        let none = Host::new(HostConfig::default()).await;
        assert!(matches!(none, Err(HostError::NoKmsEndpoint)));
    }

    #[tokio::test]
    async fn relay_connect_reaches_allow_listed_destinations_only() {
        let dir = tempfile::tempdir().unwrap();
        // The destination: another enclave, answering "pong" to whatever it reads first.
        let destination = Address::Unix(dir.path().join("enclave.sock"));
        let listener = destination.bind().await.unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0; 4];
                if stream.read_exact(&mut buf).await.is_ok() {
                    let _ = stream.write_all(b"pong").await;
                }
            }
        });
        let host = Host::new(HostConfig {
            kms_endpoints: vec!["127.0.0.1:9".into()],
            credentials: Some(aws_credential_types::Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            )),
            relay_allow: vec![destination.clone()],
            ..HostConfig::default()
        })
        .await
        .unwrap();
        let stats = host.relay_stats().clone();
        let address = Address::Unix(dir.path().join("host.sock"));
        let listener = address.bind().await.unwrap();
        tokio::spawn(host.serve(listener, std::future::pending()));

        for refused in [
            "vsock://16:5000",
            "tcp://169.254.169.254:80",
            "\x1b[2Jgarbage",
        ] {
            let answer = ask(&address, Op::Connect, refused.as_bytes()).await;
            assert_eq!(answer[0], 1, "{refused} refused");
            let text = String::from_utf8_lossy(&answer[wire::ANSWER_HEAD..]).into_owned();
            assert!(text.contains("not on the relay allow-list"), "{text}");
            assert!(text.contains(&destination.to_string()), "{text}");
            assert!(!text.contains('\x1b'), "{text}");
        }
        let mut stream = address.connect().await.unwrap();
        let target = destination.to_string();
        stream
            .write_all(&wire::encode_request(Op::Connect, target.as_bytes()))
            .await
            .unwrap();
        let mut head = [0; wire::ANSWER_HEAD];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(head, [0, 0, 0, 0, 0], "connected");
        stream.write_all(b"ping").await.unwrap();
        let mut pong = [0; 4];
        stream.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"pong");
        drop(stream);
        let names: Vec<String> = stats.snapshot().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "connect (not allowed)".to_owned(),
                format!("connect {target}")
            ]
        );
        let refused = &stats.snapshot()[0].1;
        assert_eq!(
            refused.refused.load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }
}
