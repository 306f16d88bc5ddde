//! Telemetry from the enclave to its parent: a production enclave has no console, so the
//! agent sends its log events, metrics and health to `enclaveid host` over the host
//! channel (op 7 of [`crate::wire`]), and the host exposes them to the operator.
//!
//! After the op-7 request is answered, the connection carries frames from the enclave,
//! until either side closes it:
//!
//! ```text
//! frame = kind:u8 len:u32 payload[len]        payload ≤ 64 KiB, JSON
//! ```
//!
//! | kind | payload |
//! | --- | --- |
//! | 1 hello | [`Hello`]: the enclave's PCR0, trust domain and version; first, once |
//! | 2 log | one log event: a JSON object (level, target, message, fields) |
//! | 3 metrics | [`Sample`]s: every metric's current value |
//! | 4 health | [`Health`]: ready or not, and why |
//!
//! The agent never blocks on this channel: what does not fit in its queue is dropped and
//! counted. Metrics travel as samples rather than exposition text so that the host can
//! label them with the enclave they came from; both sides encode them with
//! `prometheus-client` ([`Exposition`]).

use std::collections::BTreeMap;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::{Deserialize, Serialize};

/// The largest frame payload.
pub const MAX_FRAME: usize = 64 * 1024;
/// The length of a frame's head: kind and payload length.
pub const FRAME_HEAD: usize = 5;
/// The most samples one metrics frame may carry.
pub const MAX_SAMPLES: usize = 4096;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// [`Hello`], the first frame.
    Hello = 1,
    /// One log event.
    Log = 2,
    /// A list of [`Sample`]s.
    Metrics = 3,
    /// [`Health`].
    Health = 4,
}

/// Who is talking: what the enclave says about itself. The host cannot check it (only
/// the vsock CID is the kernel's); it labels what the enclave sends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// PCR0 of the enclave's own attestation, hex.
    pub pcr0: String,
    /// The agent's trust domain.
    pub trust_domain: String,
    /// The agent's version.
    pub version: String,
}

/// The agent's health.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Every entry has a current SVID and nothing is degraded.
    pub ready: bool,
    /// Why not, one reason each.
    pub reasons: Vec<String>,
}

/// A metric's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One metric value with its labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The metric's name (`enclaveid_…`; counters without `_total`, which the encoder adds).
    pub name: String,
    /// What it measures.
    pub help: String,
    /// Counter or gauge.
    pub kind: SampleKind,
    /// Label pairs.
    pub labels: Labels,
    /// The value.
    pub value: f64,
}

/// A frame or payload that breaks the protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A kind byte no version defines.
    #[error("unknown telemetry frame kind {0}")]
    Kind(u8),
    /// A frame over [`MAX_FRAME`].
    #[error("telemetry frame of {len} bytes; the limit is {MAX_FRAME}")]
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// A payload that is not the JSON its kind says.
    #[error("telemetry {what} frame is not valid JSON of its kind")]
    Json {
        /// The frame's kind.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Too many samples, or a name a Prometheus scraper would refuse.
    #[error("telemetry metrics refused: {0}")]
    Metrics(&'static str),
}

// === impl FrameKind ===

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        [Self::Hello, Self::Log, Self::Metrics, Self::Health]
            .into_iter()
            .find(|k| *k as u8 == byte)
    }

    fn what(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Log => "log",
            Self::Metrics => "metrics",
            Self::Health => "health",
        }
    }
}

/// A frame. `payload` longer than [`MAX_FRAME`] is the caller's bug; it is cut.
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_FRAME)];
    let mut frame = Vec::with_capacity(FRAME_HEAD + payload.len());
    frame.push(kind as u8);
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A frame's head: its kind and payload length, refused before the payload is read when
/// either is wrong.
pub fn decode_frame_head(head: &[u8; FRAME_HEAD]) -> Result<(FrameKind, usize), TelemetryError> {
    let kind = FrameKind::from_byte(head[0]).ok_or(TelemetryError::Kind(head[0]))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(TelemetryError::TooLarge { len });
    }
    Ok((kind, len))
}

/// A frame's payload, parsed by kind.
pub fn decode<T: for<'de> Deserialize<'de>>(
    kind: FrameKind,
    payload: &[u8],
) -> Result<T, TelemetryError> {
    serde_json::from_slice(payload).map_err(|source| TelemetryError::Json {
        what: kind.what(),
        source,
    })
}

/// Samples from a metrics frame, refused when a name or label would break the exposition.
pub fn decode_samples(payload: &[u8]) -> Result<Vec<Sample>, TelemetryError> {
    let samples: Vec<Sample> = decode(FrameKind::Metrics, payload)?;
    if samples.len() > MAX_SAMPLES {
        return Err(TelemetryError::Metrics(
            "more samples than the limit of 4096",
        ));
    }
    for sample in &samples {
        if !is_name(&sample.name)
            || sample
                .labels
                .iter()
                .any(|(k, _)| !is_name(k) || k.contains(':'))
        {
            return Err(TelemetryError::Metrics(
                "a metric or label name outside [a-zA-Z_:][a-zA-Z0-9_:]*",
            ));
        }
    }
    Ok(samples)
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && name.len() <= 200
}

/// Label pairs, in order.
pub type Labels = Vec<(String, String)>;

/// One metric name's first sample (its help and kind) and every labelled value.
type Family<'a> = (&'a Sample, Vec<(Labels, f64)>);

/// Samples as a `prometheus-client` collector, each group with extra labels in front
/// (the host adds `enclave`). Register it with a `Registry`, or call [`Exposition::text`].
#[derive(Debug, Default)]
pub struct Exposition {
    groups: Vec<(Labels, Vec<Sample>)>,
}

impl Exposition {
    /// Adds `samples`, each with `labels` added.
    pub fn add(&mut self, labels: Labels, samples: Vec<Sample>) {
        self.groups.push((labels, samples));
    }

    /// The OpenMetrics text of everything added.
    pub fn text(self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

impl prometheus_client::collector::Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // One descriptor per name, with every label set under it.
        let mut by_name: BTreeMap<&str, Family<'_>> = BTreeMap::new();
        for (extra, samples) in &self.groups {
            for sample in samples {
                let labels = extra.iter().chain(&sample.labels).cloned().collect();
                by_name
                    .entry(&sample.name)
                    .or_insert_with(|| (sample, Vec::new()))
                    .1
                    .push((labels, sample.value));
            }
        }
        for (name, (first, values)) in by_name {
            let help = first.help.replace('\n', " ");
            let metric_type = match first.kind {
                SampleKind::Counter => ConstCounter::new(0.0f64).metric_type(),
                SampleKind::Gauge => ConstGauge::new(0.0f64).metric_type(),
            };
            let mut family = encoder.encode_descriptor(name, &help, None, metric_type)?;
            match values.as_slice() {
                // One value without labels: no `{}`.
                [(labels, value)] if labels.is_empty() => encode_value(first.kind, *value, family)?,
                _ => {
                    for (labels, value) in &values {
                        encode_value(first.kind, *value, family.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn encode_value(
    kind: SampleKind,
    value: f64,
    into: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match kind {
        SampleKind::Counter => ConstCounter::new(value.max(0.0)).encode(into),
        SampleKind::Gauge => ConstGauge::new(value).encode(into),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, kind: SampleKind, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            help: format!("{name} help"),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            value,
        }
    }

    #[test]
    fn telemetry_frames_round_trip_and_oversized_or_unknown_ones_are_refused() {
        let frame = encode_frame(FrameKind::Health, br#"{"ready":true,"reasons":[]}"#);
        let head: [u8; FRAME_HEAD] = frame[..FRAME_HEAD].try_into().unwrap();
        let (kind, len) = decode_frame_head(&head).unwrap();
        assert_eq!((kind, len), (FrameKind::Health, frame.len() - FRAME_HEAD));
        let health: Health = decode(kind, &frame[FRAME_HEAD..]).unwrap();
        assert!(health.ready);
        assert!(matches!(
            decode_frame_head(&[9, 0, 0, 0, 0]),
            Err(TelemetryError::Kind(9))
        ));
        let error = decode_frame_head(&[2, 0, 1, 0, 1]).unwrap_err().to_string();
        assert!(error.contains("the limit is 65536"), "{error}");
        let error = decode::<Hello>(FrameKind::Hello, b"[1,2]")
            .unwrap_err()
            .to_string();
        assert!(error.contains("hello"), "{error}");
    }

    #[test]
    fn telemetry_samples_with_names_a_scraper_refuses_are_refused() {
        for bad in [
            sample("bad name", SampleKind::Gauge, &[], 1.0),
            sample("ok", SampleKind::Gauge, &[("a:b", "x")], 1.0),
            sample("9lives", SampleKind::Gauge, &[], 1.0),
        ] {
            let json = serde_json::to_vec(&vec![bad]).unwrap();
            assert!(decode_samples(&json).is_err());
        }
    }

    #[test]
    fn telemetry_exposition_labels_each_group_and_groups_by_name() {
        let mut exposition = Exposition::default();
        let samples = |syncs: f64| {
            vec![
                sample(
                    "enclaveid_upstream_syncs",
                    SampleKind::Counter,
                    &[("result", "failed")],
                    syncs,
                ),
                sample("enclaveid_open_streams", SampleKind::Gauge, &[], 2.0),
            ]
        };
        exposition.add(vec![("enclave".into(), "cid:16".into())], samples(3.0));
        exposition.add(vec![("enclave".into(), "cid:17".into())], samples(1.0));
        let text = exposition.text();
        assert_eq!(
            text.matches("# TYPE enclaveid_upstream_syncs counter")
                .count(),
            1,
            "{text}"
        );
        assert!(
            text.contains(
                "enclaveid_upstream_syncs_total{enclave=\"cid:16\",result=\"failed\"} 3.0"
            ),
            "{text}"
        );
        assert!(
            text.contains("enclaveid_open_streams{enclave=\"cid:17\"} 2.0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
