//! What the enclaves on this instance report (op 7 of the host protocol), shown to the
//! operator: their log events as JSON lines on the host's stdout, tagged with the
//! enclave; their metrics and the host's own on Prometheus `/metrics`; their health on
//! `/readyz` (and `/healthz` for the host process itself).
//!
//! An enclave is named by its vsock CID when it connects over vsock (the kernel's word),
//! otherwise by the PCR0 it reports (its own word: the host cannot check it).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enclaveid_checks::telemetry::{
    self, Exposition, FRAME_HEAD, FrameKind, Health, Hello, Sample, SampleKind,
};
use enclaveid_io::{Listener, Stream};
use tokio::io::AsyncReadExt as _;

use crate::relay::RelayStats;

/// A connection that sends nothing for this long is closed (the agent sends its health
/// and metrics every `telemetry.interval`, 10 s by default).
const SILENCE: Duration = Duration::from_secs(120);
/// Telemetry connections open at once (a parent runs a few enclaves, each with one).
const MAX_CONNECTIONS: usize = 64;

/// What the enclaves reported, and the host's own counters.
#[derive(Debug)]
pub struct Telemetry {
    enclaves: Mutex<BTreeMap<String, Enclave>>,
    relay: RelayStats,
    frames: AtomicU64,
    refused: AtomicU64,
    connections: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, Default)]
struct Enclave {
    hello: Hello,
    health: Option<Health>,
    samples: Vec<Sample>,
    connected: bool,
}

impl Telemetry {
    /// Telemetry that also shows the relay's counters.
    pub fn new(relay: RelayStats) -> Arc<Self> {
        Arc::new(Self {
            enclaves: Mutex::default(),
            relay,
            frames: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    fn enclaves(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Enclave>> {
        self.enclaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads an enclave's frames until it closes the connection, breaks the protocol, or
    /// stays silent too long.
    pub(crate) async fn receive(&self, mut stream: Box<dyn Stream>, peer: &str) {
        let Ok(_slot) = self.connections.clone().try_acquire_owned() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "telemetry connection refused: too many open");
            return;
        };
        let mut name = peer_name(peer);
        let mut registered = false;
        loop {
            let frame = match tokio::time::timeout(SILENCE, read_frame(&mut stream)).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => break,
                Ok(Err(error)) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, error = %enclaveid_checks::Chain(&error), "telemetry connection refused");
                    break;
                }
                Err(_) => {
                    tracing::warn!(%peer, "telemetry connection silent too long; closed");
                    break;
                }
            };
            self.frames.fetch_add(1, Ordering::Relaxed);
            let (kind, payload) = frame;
            match kind {
                FrameKind::Hello => {
                    let Ok(hello) = telemetry::decode::<Hello>(kind, &payload) else {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    if name.is_none() {
                        name = Some(format!("pcr0:{}", short(&hello.pcr0)));
                    }
                    let key = name.clone().unwrap_or_default();
                    tracing::info!(enclave = %key, pcr0 = %hello.pcr0, trust_domain = %hello.trust_domain, version = %hello.version, "enclave telemetry connected");
                    let mut enclaves = self.enclaves();
                    let enclave = enclaves.entry(key).or_default();
                    enclave.hello = hello;
                    enclave.connected = true;
                    registered = true;
                }
                _ if !registered => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "telemetry before hello; closed");
                    break;
                }
                FrameKind::Log => self.log(name.as_deref().unwrap_or(""), &payload),
                FrameKind::Metrics => match telemetry::decode_samples(&payload) {
                    Ok(samples) => {
                        if let Some(enclave) =
                            self.enclaves().get_mut(name.as_deref().unwrap_or(""))
                        {
                            enclave.samples = samples;
                        }
                    }
                    Err(error) => {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, %error, "telemetry metrics refused");
                    }
                },
                FrameKind::Health => match telemetry::decode::<Health>(kind, &payload) {
                    Ok(health) => {
                        if let Some(enclave) =
                            self.enclaves().get_mut(name.as_deref().unwrap_or(""))
                        {
                            enclave.health = Some(health);
                        }
                    }
                    Err(error) => {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, %error, "telemetry health refused");
                    }
                },
            }
        }
        if registered && let Some(enclave) = self.enclaves().get_mut(name.as_deref().unwrap_or(""))
        {
            enclave.connected = false;
            tracing::warn!(
                enclave = name.as_deref().unwrap_or(""),
                "enclave telemetry disconnected"
            );
        }
    }

    /// Writes one of the enclave's log events to stdout as a JSON line, tagged.
    fn log(&self, name: &str, payload: &[u8]) {
        let Ok(serde_json::Value::Object(mut event)) = serde_json::from_slice(payload) else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let pcr0 = self
            .enclaves()
            .get(name)
            .map(|e| e.hello.pcr0.clone())
            .unwrap_or_default();
        event.insert("enclave".into(), name.into());
        event.insert("pcr0".into(), pcr0.into());
        let Ok(mut line) = serde_json::to_vec(&event) else {
            return;
        };
        line.push(b'\n');
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&line).and_then(|()| out.flush());
    }

    /// The Prometheus text: every enclave's metrics labelled `enclave`, and the host's.
    pub fn metrics_text(&self) -> String {
        let mut exposition = Exposition::default();
        let mut own = Vec::new();
        let gauge = |name: &str, help: &str, labels: Vec<(String, String)>, value: f64| Sample {
            name: name.into(),
            help: help.into(),
            kind: SampleKind::Gauge,
            labels,
            value,
        };
        let counter = |name: &str, help: &str, labels: Vec<(String, String)>, value: f64| Sample {
            kind: SampleKind::Counter,
            ..gauge(name, help, labels, value)
        };
        {
            let enclaves = self.enclaves();
            for (name, enclave) in enclaves.iter() {
                let labels = vec![("enclave".to_owned(), name.clone())];
                own.push(gauge(
                    "enclaveid_host_enclave_connected",
                    "Whether the enclave's telemetry connection is open",
                    labels.clone(),
                    f64::from(u8::from(enclave.connected)),
                ));
                own.push(gauge(
                    "enclaveid_host_enclave_ready",
                    "Whether the enclave last reported itself ready",
                    labels.clone(),
                    f64::from(u8::from(enclave.health.as_ref().is_some_and(|h| h.ready))),
                ));
                exposition.add(labels, enclave.samples.clone());
            }
        }
        own.push(counter(
            "enclaveid_host_telemetry_frames",
            "Telemetry frames received from enclaves",
            Vec::new(),
            self.frames.load(Ordering::Relaxed) as f64,
        ));
        own.push(counter(
            "enclaveid_host_telemetry_refused",
            "Telemetry frames or connections refused (malformed)",
            Vec::new(),
            self.refused.load(Ordering::Relaxed) as f64,
        ));
        for (route, stats) in self.relay.snapshot() {
            use SampleKind::{Counter, Gauge};
            let route_label = ("route".to_owned(), route);
            for (name, help, kind, extra, value) in [
                (
                    "enclaveid_relay_connections",
                    "Relayed connections by route and result",
                    Counter,
                    Some(("result", "opened")),
                    &stats.opened,
                ),
                (
                    "enclaveid_relay_connections",
                    "Relayed connections by route and result",
                    Counter,
                    Some(("result", "refused")),
                    &stats.refused,
                ),
                (
                    "enclaveid_relay_bytes",
                    "Bytes relayed by route and direction",
                    Counter,
                    Some(("direction", "out")),
                    &stats.bytes_out,
                ),
                (
                    "enclaveid_relay_bytes",
                    "Bytes relayed by route and direction",
                    Counter,
                    Some(("direction", "in")),
                    &stats.bytes_in,
                ),
                (
                    "enclaveid_relay_active_connections",
                    "Relayed connections open now",
                    Gauge,
                    None,
                    &stats.active,
                ),
            ] {
                let mut labels = vec![route_label.clone()];
                labels.extend(extra.map(|(k, v)| (k.to_owned(), v.to_owned())));
                own.push(Sample {
                    kind,
                    ..gauge(name, help, labels, value.load(Ordering::Relaxed) as f64)
                });
            }
        }
        exposition.add(Vec::new(), own);
        exposition.text()
    }

    /// Whether every enclave that reported is connected and ready (and at least one
    /// has), with one line per enclave.
    pub fn readiness(&self) -> (bool, String) {
        let enclaves = self.enclaves();
        if enclaves.is_empty() {
            return (false, "not ready: no enclave has connected\n".to_owned());
        }
        let mut ready = true;
        let mut body = String::new();
        for (name, enclave) in enclaves.iter() {
            let pcr0 = short(&enclave.hello.pcr0);
            let line = match (&enclave.health, enclave.connected) {
                (_, false) => {
                    ready = false;
                    format!("{name} (PCR0 {pcr0}…): not ready: disconnected")
                }
                (None, true) => {
                    ready = false;
                    format!("{name} (PCR0 {pcr0}…): not ready: no health reported yet")
                }
                (Some(health), true) if health.ready => format!("{name} (PCR0 {pcr0}…): ready"),
                (Some(health), true) => {
                    ready = false;
                    format!(
                        "{name} (PCR0 {pcr0}…): not ready: {}",
                        health.reasons.join("; ")
                    )
                }
            };
            body.push_str(&line);
            body.push('\n');
        }
        (ready, body)
    }
}

/// The enclave's name from the kernel, when it connected over vsock.
fn peer_name(peer: &str) -> Option<String> {
    let rest = peer.strip_prefix("vsock://")?;
    let (cid, _) = rest.split_once(':')?;
    Some(format!("cid:{cid}"))
}

fn short(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

/// The next frame, `None` at a clean end of stream.
async fn read_frame(
    stream: &mut Box<dyn Stream>,
) -> Result<Option<(FrameKind, Vec<u8>)>, TelemetryReadError> {
    let mut head = [0u8; FRAME_HEAD];
    match stream.read_exact(&mut head).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(TelemetryReadError::Io(error)),
    }
    let (kind, len) = telemetry::decode_frame_head(&head)?;
    let mut payload = vec![0; len];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(TelemetryReadError::Io)?;
    Ok(Some((kind, payload)))
}

/// Why a telemetry connection was dropped.
#[derive(Debug, thiserror::Error)]
enum TelemetryReadError {
    #[error("reading telemetry")]
    Io(#[source] std::io::Error),
    #[error(transparent)]
    Frame(#[from] telemetry::TelemetryError),
}

/// Serves `/metrics`, `/healthz` and `/readyz` over HTTP/1.1 until `shutdown` resolves.
pub async fn serve_http(
    listener: Listener,
    telemetry: Arc<Telemetry>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use enclaveid_io::http::{OPENMETRICS, Reply, TEXT};
    let respond = move |path: &str| match path {
        "/metrics" => Reply {
            status: 200,
            content_type: OPENMETRICS,
            body: telemetry.metrics_text(),
        },
        "/healthz" => Reply {
            status: 200,
            content_type: TEXT,
            body: "ok\n".to_owned(),
        },
        "/readyz" => {
            let (ready, body) = telemetry.readiness();
            Reply {
                status: if ready { 200 } else { 503 },
                content_type: TEXT,
                body,
            }
        }
        other => Reply {
            status: 404,
            content_type: TEXT,
            body: format!("{other:?} not found; served: /metrics, /healthz, /readyz\n"),
        },
    };
    enclaveid_io::http::serve(listener, respond, shutdown).await;
}

#[cfg(test)]
mod tests {
    use enclaveid_checks::telemetry::encode_frame;
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[tokio::test]
    async fn telemetry_from_an_enclave_shows_in_metrics_and_readiness() {
        let relay = RelayStats::default();
        let route = relay.route("vsock://any:6000=vsock://16:5000");
        route.bytes_in.fetch_add(5, Ordering::Relaxed);
        route.active.fetch_add(1, Ordering::Relaxed);
        let telemetry = Telemetry::new(relay);
        let (mut enclave, host) = tokio::io::duplex(64 * 1024);
        let receiving = {
            let telemetry = telemetry.clone();
            tokio::spawn(async move { telemetry.receive(Box::new(host), "vsock://16:1234").await })
        };
        let (ready, body) = telemetry.readiness();
        assert!(!ready && body.contains("no enclave"), "{body}");
        let hello = Hello {
            pcr0: "ab".repeat(48),
            trust_domain: "example.org".into(),
            version: "0".into(),
        };
        let health = Health {
            ready: false,
            reasons: vec!["no valid key material: AccessDeniedException".into()],
        };
        let samples = vec![Sample {
            name: "enclaveid_upstream_syncs".into(),
            help: "syncs".into(),
            kind: SampleKind::Counter,
            labels: vec![("result".into(), "failed".into())],
            value: 2.0,
        }];
        for (kind, json) in [
            (FrameKind::Hello, serde_json::to_vec(&hello).unwrap()),
            (FrameKind::Health, serde_json::to_vec(&health).unwrap()),
            (FrameKind::Metrics, serde_json::to_vec(&samples).unwrap()),
        ] {
            enclave.write_all(&encode_frame(kind, &json)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (ready, body) = telemetry.readiness();
        assert!(!ready, "{body}");
        assert!(
            body.contains("cid:16 (PCR0 abababababababab…): not ready: no valid key material"),
            "{body}"
        );
        let text = telemetry.metrics_text();
        assert!(
            text.contains(
                "enclaveid_upstream_syncs_total{enclave=\"cid:16\",result=\"failed\"} 2.0"
            ),
            "{text}"
        );
        assert!(
            text.contains("enclaveid_relay_bytes_total{route=\"vsock://any:6000=vsock://16:5000\",direction=\"in\"} 5.0"),
            "{text}"
        );
        assert!(
            text.contains(
                "enclaveid_relay_active_connections{route=\"vsock://any:6000=vsock://16:5000\"} 1.0"
            ),
            "{text}"
        );
        assert!(
            text.contains("enclaveid_host_enclave_connected{enclave=\"cid:16\"} 1"),
            "{text}"
        );
        // A frame that breaks the protocol closes the connection and is counted.
        enclave.write_all(&[9, 0, 0, 0, 0]).await.unwrap();
        receiving.await.unwrap();
        let (_, body) = telemetry.readiness();
        assert!(body.contains("disconnected"), "{body}");
        let text = telemetry.metrics_text();
        assert!(
            text.contains("enclaveid_host_telemetry_refused_total 1.0"),
            "{text}"
        );
    }
}
