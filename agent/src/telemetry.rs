//! Telemetry out of the enclave: a production enclave has no console, so the agent sends
//! its log events (JSON, level-filtered), its metrics and its health to `enclaveid host`
//! over the host channel (frames of [`enclaveid_checks::telemetry`]), and serves the same
//! metrics inside the enclave on a Unix socket for workloads.
//!
//! Nothing here ever waits for the host: log events go into a bounded queue with
//! `try_send`; what does not fit is dropped and counted
//! (`enclaveid_telemetry_dropped_total`), and a host that stops reading has its
//! connection closed after a write deadline. The Workload API never notices.
//!
//! What is sent is what the agent logs: no key material, no token is ever a field of an
//! event (the agent's logging rule), so none can leave this way.
//!
//! The counters are process-wide (one agent per process, as `enclaveid run` runs it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use enclaveid_checks::telemetry::{
    self, FrameKind, Health, Hello, Sample, SampleKind, encode_frame,
};
use enclaveid_io::{Address, Stream};
use enclaveid_workload_api::{ApiMetrics, Snapshot};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, watch};
use tracing::field::{Field, Visit};

use crate::config::TelemetryConfig;

/// Log events waiting for the host; past this, new ones are dropped and counted.
const QUEUE: usize = 1024;
/// A write to the host that takes longer drops the connection (a stalled host).
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How long to wait before dialling the host again.
const RECONNECT: Duration = Duration::from_secs(2);

/// The agent's own counters, process-wide.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per entry: SVIDs issued, and how many of those replaced an SVID (rotations).
    svids: Mutex<BTreeMap<String, (u64, u64)>>,
    syncs_ok: AtomicU64,
    syncs_failed: AtomicU64,
    /// Unix seconds of the last successful sync, 0 for never.
    last_sync: AtomicU64,
    /// Unix seconds when the material in service expires, 0 for none.
    material_not_after: AtomicU64,
    /// Microseconds of the last sync's attestation and KMS call.
    attestation_us: AtomicU64,
    kms_us: AtomicU64,
    dropped_logs: AtomicU64,
    dropped_frames: AtomicU64,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's counters.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Metrics {
    /// An SVID was issued for `entry`; `rotation` when it replaced one.
    pub(crate) fn svid_issued(&self, entry: &str, rotation: bool) {
        let mut svids = self
            .svids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let counts = svids.entry(entry.to_owned()).or_default();
        counts.0 += 1;
        counts.1 += u64::from(rotation);
    }

    /// A sync of the key material succeeded.
    pub(crate) fn sync_succeeded(
        &self,
        material_not_after: SystemTime,
        attestation: Duration,
        kms: Duration,
    ) {
        self.syncs_ok.fetch_add(1, Ordering::Relaxed);
        self.last_sync
            .store(unix_seconds(SystemTime::now()), Ordering::Relaxed);
        self.material_not_after
            .store(unix_seconds(material_not_after), Ordering::Relaxed);
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.attestation_us
            .store(us(attestation), Ordering::Relaxed);
        self.kms_us.store(us(kms), Ordering::Relaxed);
    }

    /// A sync failed; `withdrawn` when no material is in service any more.
    pub(crate) fn sync_failed(&self, withdrawn: bool) {
        self.syncs_failed.fetch_add(1, Ordering::Relaxed);
        if withdrawn {
            self.material_not_after.store(0, Ordering::Relaxed);
        }
    }

    /// Every metric now: the counters, the snapshot's SVIDs, the Workload API's calls.
    pub fn samples(&self, snapshot: &Snapshot, api: &ApiMetrics, now: SystemTime) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut push = |name: &str, help: &str, kind, labels: &[(&str, String)], value: f64| {
            out.push(Sample {
                name: name.to_owned(),
                help: help.to_owned(),
                kind,
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
                value,
            });
        };
        {
            let svids = self
                .svids
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (entry, (issued, rotations)) in svids.iter() {
                let labels = [("entry", entry.clone())];
                push(
                    "enclaveid_svids_issued",
                    "X.509-SVIDs issued",
                    SampleKind::Counter,
                    &labels,
                    *issued as f64,
                );
                push(
                    "enclaveid_svid_rotations",
                    "X.509-SVIDs issued to replace a current one",
                    SampleKind::Counter,
                    &labels,
                    *rotations as f64,
                );
            }
        }
        for identity in &snapshot.identities {
            let left = identity.svid.as_ref().map_or(0.0, |svid| {
                svid.not_after()
                    .duration_since(now)
                    .map_or(0.0, |d| d.as_secs_f64())
            });
            push(
                "enclaveid_svid_expiry_seconds",
                "Seconds until the entry's current X.509-SVID expires (0: none issued)",
                SampleKind::Gauge,
                &[("entry", identity.spiffe_id.to_string())],
                left,
            );
        }
        for (rpc, code, n) in api.calls() {
            push(
                "enclaveid_workload_api_requests",
                "Workload API calls by RPC and the gRPC status they got (a stream's: when it opened)",
                SampleKind::Counter,
                &[("rpc", rpc.to_owned()), ("code", format!("{code:?}"))],
                n as f64,
            );
        }
        push(
            "enclaveid_workload_api_open_streams",
            "Workload API streams open now",
            SampleKind::Gauge,
            &[],
            api.open_streams() as f64,
        );
        for (result, n) in [("ok", &self.syncs_ok), ("failed", &self.syncs_failed)] {
            push(
                "enclaveid_upstream_syncs",
                "Key material syncs with the host and KMS, by result",
                SampleKind::Counter,
                &[("result", result.to_owned())],
                n.load(Ordering::Relaxed) as f64,
            );
        }
        let last = self.last_sync.load(Ordering::Relaxed);
        push(
            "enclaveid_upstream_last_success_timestamp_seconds",
            "Unix time of the last successful key material sync (0: never)",
            SampleKind::Gauge,
            &[],
            last as f64,
        );
        let not_after = self.material_not_after.load(Ordering::Relaxed);
        let left = not_after.saturating_sub(unix_seconds(now));
        push(
            "enclaveid_upstream_material_expiry_seconds",
            "Seconds until the key material in service expires (0: none in service)",
            SampleKind::Gauge,
            &[],
            left as f64,
        );
        let seconds = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64 / 1e6;
        push(
            "enclaveid_attestation_duration_seconds",
            "The last sync's attestation (recipient key and document)",
            SampleKind::Gauge,
            &[],
            seconds(&self.attestation_us),
        );
        push(
            "enclaveid_kms_duration_seconds",
            "The last sync's KMS Decrypt, tunnel included",
            SampleKind::Gauge,
            &[],
            seconds(&self.kms_us),
        );
        for (kind, n) in [("log", &self.dropped_logs), ("frame", &self.dropped_frames)] {
            push(
                "enclaveid_telemetry_dropped",
                "Telemetry dropped because the host was gone or slow",
                SampleKind::Counter,
                &[("kind", kind.to_owned())],
                n.load(Ordering::Relaxed) as f64,
            );
        }
        out
    }
}

/// Where log events go once telemetry is on.
struct Sink {
    events: mpsc::Sender<Vec<u8>>,
    level: tracing::Level,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// A `tracing` layer that sends the agent's log events to the host, once telemetry is
/// started; before that, and in processes that never start it, it does nothing. Install
/// it beside the usual output (`enclaveid run` does).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let Some(sink) = SINK.get() else { return };
        let meta = event.metadata();
        if *meta.level() > sink.level {
            return;
        }
        let mut fields = JsonFields(serde_json::Map::new());
        event.record(&mut fields);
        let mut object = fields.0;
        object.insert("level".into(), meta.level().as_str().into());
        object.insert("target".into(), meta.target().into());
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        object.insert("time".into(), at.into());
        let Ok(json) = serde_json::to_vec(&object) else {
            return;
        };
        if sink
            .events
            .try_send(encode_frame(FrameKind::Log, &json))
            .is_err()
        {
            METRICS.dropped_logs.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// What the sender needs from the agent.
pub(crate) struct Sources {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub problems: watch::Receiver<Option<String>>,
    pub api: Arc<ApiMetrics>,
}

/// The agent's health, as the host's `/readyz` shows it.
pub(crate) fn health(snapshot: &Snapshot, problem: Option<&str>) -> Health {
    let mut reasons: Vec<String> = problem.map(str::to_owned).into_iter().collect();
    for identity in &snapshot.identities {
        if identity.svid.is_none() {
            reasons.push(format!("no X.509-SVID issued for {}", identity.spiffe_id));
        }
    }
    Health {
        ready: reasons.is_empty(),
        reasons,
    }
}

/// The telemetry sender, when `[telemetry]` names a host.
pub(crate) struct Sender {
    host: Address,
    interval: Duration,
    hello: Hello,
    events: mpsc::Receiver<Vec<u8>>,
    sources: Sources,
}

impl Sender {
    /// Turns log forwarding on (for the process) and prepares the sender; `None` without
    /// a host.
    pub(crate) fn new(config: &TelemetryConfig, hello: Hello, sources: Sources) -> Option<Self> {
        let host = config.host.clone()?;
        let (tx, events) = mpsc::channel(QUEUE);
        if SINK
            .set(Sink {
                events: tx,
                level: config.level,
            })
            .is_err()
        {
            tracing::warn!(
                "telemetry already runs in this process; logs go to the first agent's host"
            );
        }
        Some(Self {
            host,
            interval: config.interval,
            hello,
            events,
            sources,
        })
    }

    /// Sends until `stop` resolves, reconnecting when the host goes away.
    pub(crate) async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let client = crate::host_client::HostClient::new(self.host.clone());
        loop {
            let connected = tokio::select! {
                () = &mut stop => return,
                connected = client.telemetry() => connected,
            };
            match connected {
                Ok(stream) => {
                    let ended = tokio::select! {
                        () = &mut stop => return,
                        ended = self.session(stream) => ended,
                    };
                    tracing::debug!(error = %ended, "telemetry connection to the host ended");
                }
                Err(error) => {
                    tracing::debug!(error = %enclaveid_checks::Chain(&error), "telemetry: the host cannot be reached");
                }
            }
            // Whatever queued meanwhile is dropped, not replayed late: count it.
            while self.events.try_recv().is_ok() {
                METRICS.dropped_logs.fetch_add(1, Ordering::Relaxed);
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(RECONNECT) => {}
            }
        }
    }

    async fn session(&mut self, mut stream: Box<dyn Stream>) -> std::io::Error {
        let hello = serde_json::to_vec(&self.hello).unwrap_or_default();
        if let Err(error) = send(&mut stream, &encode_frame(FrameKind::Hello, &hello)).await {
            return error;
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_health = None;
        loop {
            let frame = tokio::select! {
                event = self.events.recv() => match event {
                    Some(frame) => frame,
                    None => return std::io::Error::other("the agent stopped"),
                },
                _ = tick.tick() => {
                    if let Err(error) = self.send_state(&mut stream, &mut last_health, true).await {
                        return error;
                    }
                    continue;
                }
                _ = self.sources.problems.changed() => {
                    if let Err(error) = self.send_state(&mut stream, &mut last_health, false).await {
                        return error;
                    }
                    continue;
                }
            };
            if let Err(error) = send(&mut stream, &frame).await {
                METRICS.dropped_logs.fetch_add(1, Ordering::Relaxed);
                return error;
            }
        }
    }

    /// Health (when it changed, or always) and, on a tick, metrics.
    async fn send_state(
        &mut self,
        stream: &mut Box<dyn Stream>,
        last_health: &mut Option<Health>,
        tick: bool,
    ) -> std::io::Result<()> {
        let snapshot = self.sources.snapshots.borrow().clone();
        let problem = self.sources.problems.borrow().clone();
        let health = health(&snapshot, problem.as_deref());
        if tick || last_health.as_ref() != Some(&health) {
            let json = serde_json::to_vec(&health).unwrap_or_default();
            send(stream, &encode_frame(FrameKind::Health, &json)).await?;
            *last_health = Some(health);
        }
        if tick {
            let samples = METRICS.samples(&snapshot, &self.sources.api, SystemTime::now());
            let json = serde_json::to_vec(&samples).unwrap_or_default();
            if json.len() > telemetry::MAX_FRAME {
                METRICS.dropped_frames.fetch_add(1, Ordering::Relaxed);
            } else {
                send(stream, &encode_frame(FrameKind::Metrics, &json)).await?;
            }
        }
        Ok(())
    }
}

async fn send(stream: &mut Box<dyn Stream>, frame: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_DEADLINE, async {
        stream.write_all(frame).await?;
        stream.flush().await
    })
    .await
    {
        Ok(written) => written,
        Err(_) => {
            METRICS.dropped_frames.fetch_add(1, Ordering::Relaxed);
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the host did not read telemetry in time",
            ))
        }
    }
}

/// Serves the metrics as Prometheus text over HTTP on a Unix socket in the enclave.
pub(crate) async fn serve_local(
    path: std::path::PathBuf,
    sources: Sources,
    stop: impl std::future::Future<Output = ()>,
) {
    use enclaveid_io::AddressExt as _;
    let listener = match Address::Unix(path.clone()).bind().await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "cannot serve metrics on telemetry.metrics_socket");
            return;
        }
    };
    tracing::info!(path = %path.display(), "serving metrics (Prometheus text over HTTP)");
    let sources = Arc::new(sources);
    let respond = move |_: &str| enclaveid_io::http::Reply {
        status: 200,
        content_type: enclaveid_io::http::OPENMETRICS,
        body: exposition(&sources),
    };
    enclaveid_io::http::serve(listener, respond, stop).await;
    let _ = std::fs::remove_file(&path);
}

fn exposition(sources: &Sources) -> String {
    let snapshot = sources.snapshots.borrow().clone();
    let mut exposition = telemetry::Exposition::default();
    exposition.add(
        Vec::new(),
        METRICS.samples(&snapshot, &sources.api, SystemTime::now()),
    );
    exposition.text()
}
