//! Per-caller limits: what one local user (uid) can take of the Workload API, so that a
//! noisy or hostile uid cannot starve the others.
//!
//! | limit | when it is hit |
//! | --- | --- |
//! | connections in all, and per uid | the connection is closed as soon as it is accepted |
//! | streams per connection, and per uid | the call fails with `ResourceExhausted` (never a silent wait) |
//! | calls per second per uid (a token bucket) | the call fails with `ResourceExhausted` |
//! | idle time of a connection without an open call | the connection is closed |
//! | bytes of JWT-SVIDs kept for reuse | the cache drops what is due, then everything |
//!
//! Every refusal is logged, at most once a minute per uid and limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

/// How often one uid's refusals of one kind are logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What one caller may take. Every limit is on by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections in all (the agent also keeps this under its file-descriptor
    /// limit).
    pub max_connections: usize,
    /// Open connections of one uid.
    pub max_connections_per_uid: usize,
    /// Open streams (and calls in progress) on one connection.
    pub max_streams_per_connection: usize,
    /// Open streams (and calls in progress) of one uid, over all its connections.
    pub max_streams_per_uid: usize,
    /// Calls a uid may start per second, sustained.
    pub calls_per_second_per_uid: u32,
    /// Calls a uid may start at once, after a quiet period: by default as many as one
    /// connection may have open, so that a client opening a stream per identity or
    /// audience at start is served whole.
    pub call_burst_per_uid: u32,
    /// A connection with no call open for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes of JWT-SVIDs kept for reuse (tokens and their keys).
    pub token_cache_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_uid: 256,
            max_streams_per_connection: 1024,
            max_streams_per_uid: 4096,
            calls_per_second_per_uid: 200,
            call_burst_per_uid: 1024,
            idle_timeout: Duration::from_secs(300),
            token_cache_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Counts what each uid holds, and refuses past the [`Limits`]. Shared by the accept
/// loop ([`crate::incoming`]) and the service.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    connections: AtomicUsize,
    uids: std::sync::Mutex<HashMap<u32, PerUid>>,
    /// The origin of [`Pause`] times.
    epoch: Instant,
}

#[derive(Debug)]
struct PerUid {
    connections: usize,
    streams: usize,
    tokens: f64,
    /// Refusals left: a uid past its rate is answered `ResourceExhausted` at up to the
    /// same rate again; past that, its connections are not read until its bucket
    /// refills (see [`Pause`]).
    refusal_tokens: f64,
    refilled: Instant,
    pause: Arc<Pause>,
    logged: HashMap<&'static str, Instant>,
}

/// Until when a uid's connections are not read: milliseconds after the limiter's epoch,
/// shared by the uid's connections without a lock. A flood then waits in the caller's
/// own socket buffers instead of costing the agent a refusal per call: the agent spends
/// at most twice a uid's call rate on it, whatever it sends.
#[derive(Debug, Default)]
pub(crate) struct Pause(AtomicU64);

/// Held while a connection is open.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    limiter: Arc<Limiter>,
    uid: u32,
    pause: Arc<Pause>,
}

/// Held while a stream (or a unary call) is open.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    limiter: Arc<Limiter>,
    uid: u32,
    connection: Arc<ConnectionState>,
}

/// What a connection has open, for its stream limit and its idle timeout.
#[derive(Debug)]
pub(crate) struct ConnectionState {
    open: AtomicUsize,
    /// When `open` last changed, as milliseconds since `epoch`.
    changed_ms: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

// === impl Limiter ===

impl Limiter {
    /// A limiter enforcing `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            connections: AtomicUsize::new(0),
            uids: std::sync::Mutex::default(),
            epoch: Instant::now(),
        })
    }

    /// When the connections of a uid whose pause is `pause` may be read again, if that
    /// is later than now.
    pub(crate) fn paused_until(&self, pause: &Pause) -> Option<Instant> {
        let until = self.epoch + Duration::from_millis(pause.0.load(Ordering::Relaxed));
        (until > Instant::now()).then_some(until)
    }

    /// The limits enforced.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn uids(&self) -> std::sync::MutexGuard<'_, HashMap<u32, PerUid>> {
        self.uids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a new connection of `uid`, or says which limit refuses it.
    pub(crate) fn admit_connection(
        self: &Arc<Self>,
        uid: u32,
    ) -> Result<ConnectionSlot, &'static str> {
        let mut uids = self.uids();
        if self.connections.load(Ordering::Relaxed) >= self.limits.max_connections {
            return Err("limits.max_connections");
        }
        let now = Instant::now();
        // Forget uids with nothing open whose bucket has refilled: the map stays as small
        // as the set of active users, and leaving does not reset a bucket early.
        if uids.len() > 64 {
            let full = f64::from(self.limits.call_burst_per_uid);
            let rate = f64::from(self.limits.calls_per_second_per_uid.max(1));
            uids.retain(|_, u| {
                u.connections > 0
                    || u.streams > 0
                    || u.tokens + now.duration_since(u.refilled).as_secs_f64() * rate < full
            });
        }
        let entry = uids.entry(uid).or_insert_with(|| PerUid {
            connections: 0,
            streams: 0,
            tokens: f64::from(self.limits.call_burst_per_uid),
            refusal_tokens: f64::from(self.limits.calls_per_second_per_uid),
            refilled: now,
            pause: Arc::default(),
            logged: HashMap::new(),
        });
        if entry.connections >= self.limits.max_connections_per_uid {
            return Err("limits.max_connections_per_uid");
        }
        entry.connections += 1;
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionSlot {
            limiter: self.clone(),
            uid,
            pause: entry.pause.clone(),
        })
    }

    /// Takes one call from `uid`'s bucket.
    pub(crate) fn admit_call(&self, uid: u32) -> Result<(), Status> {
        let mut uids = self.uids();
        let Some(entry) = uids.get_mut(&uid) else {
            return Ok(());
        };
        let now = Instant::now();
        let rate = f64::from(self.limits.calls_per_second_per_uid);
        let burst = f64::from(self.limits.call_burst_per_uid.max(1));
        let elapsed = now.duration_since(entry.refilled).as_secs_f64();
        entry.tokens = (entry.tokens + elapsed * rate).min(burst);
        entry.refusal_tokens = (entry.refusal_tokens + elapsed * rate).min(rate.max(1.0));
        entry.refilled = now;
        if entry.tokens < 1.0 {
            if entry.refusal_tokens >= 1.0 {
                entry.refusal_tokens -= 1.0;
            } else {
                // Past twice its rate: stop reading this uid's connections until its
                // next call would be admitted.
                let wait = Duration::from_secs_f64((1.0 - entry.tokens) / rate.max(1.0));
                let until = now.saturating_duration_since(self.epoch) + wait;
                let until_ms = u64::try_from(until.as_millis()).unwrap_or(u64::MAX);
                entry
                    .pause
                    .0
                    .fetch_max(until_ms.saturating_add(1), Ordering::Relaxed);
            }
            let message = format!(
                "uid {uid} exceeds {} calls per second (limits.calls_per_second_per_uid); retry with backoff",
                self.limits.calls_per_second_per_uid
            );
            log_refusal(entry, uid, "limits.calls_per_second_per_uid", now);
            return Err(Status::resource_exhausted(message));
        }
        entry.tokens -= 1.0;
        Ok(())
    }

    /// Opens a stream (or a unary call) of `uid` on `connection`.
    pub(crate) fn open_stream(
        self: &Arc<Self>,
        uid: u32,
        connection: &Arc<ConnectionState>,
    ) -> Result<StreamSlot, Status> {
        let mut uids = self.uids();
        let now = Instant::now();
        let Some(entry) = uids.get_mut(&uid) else {
            return Err(Status::internal("the connection was not admitted"));
        };
        let on_connection = connection.open.load(Ordering::Relaxed);
        let refused = if on_connection >= self.limits.max_streams_per_connection {
            Some((
                "limits.max_streams_per_connection",
                format!(
                    "this connection has {on_connection} streams open, the limit (limits.max_streams_per_connection); open another connection or close streams"
                ),
            ))
        } else if entry.streams >= self.limits.max_streams_per_uid {
            Some((
                "limits.max_streams_per_uid",
                format!(
                    "uid {uid} has {} streams open, the limit (limits.max_streams_per_uid)",
                    entry.streams
                ),
            ))
        } else {
            None
        };
        if let Some((limit, message)) = refused {
            log_refusal(entry, uid, limit, now);
            return Err(Status::resource_exhausted(message));
        }
        entry.streams += 1;
        connection.change(1);
        Ok(StreamSlot {
            limiter: self.clone(),
            uid,
            connection: connection.clone(),
        })
    }
}

fn log_refusal(entry: &mut PerUid, uid: u32, limit: &'static str, now: Instant) {
    let due = entry
        .logged
        .get(limit)
        .is_none_or(|last| now.duration_since(*last) >= LOG_EVERY);
    if due {
        entry.logged.insert(limit, now);
        tracing::warn!(
            uid,
            limit,
            "a caller hit a limit; refused (logged once a minute)"
        );
    }
}

/// Logs a connection refused at accept, at most once a minute per uid.
pub(crate) fn log_connection_refused(limiter: &Limiter, uid: u32, limit: &'static str) {
    let now = Instant::now();
    let mut uids = limiter.uids();
    match uids.get_mut(&uid) {
        Some(entry) => log_refusal(entry, uid, limit, now),
        None => tracing::warn!(
            uid,
            limit,
            "a connection was refused: the agent is at its limit"
        ),
    }
}

impl ConnectionSlot {
    /// Until when this connection is not to be read (its uid is past twice its rate).
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        self.limiter.paused_until(&self.pause)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut uids = self.limiter.uids();
        if let Some(entry) = uids.get_mut(&self.uid) {
            entry.connections = entry.connections.saturating_sub(1);
        }
        self.limiter.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut uids = self.limiter.uids();
        if let Some(entry) = uids.get_mut(&self.uid) {
            entry.streams = entry.streams.saturating_sub(1);
        }
        drop(uids);
        self.connection.change(-1);
    }
}

// === impl ConnectionState ===

impl ConnectionState {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            changed_ms: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn change(&self, by: isize) {
        if by >= 0 {
            self.open.fetch_add(by.unsigned_abs(), Ordering::Relaxed);
        } else {
            self.open.fetch_sub(by.unsigned_abs(), Ordering::Relaxed);
        }
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.changed_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection will have been idle for `timeout`, if nothing changes; `None`
    /// while a call is open.
    pub(crate) fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let changed = Duration::from_millis(self.changed_ms.load(Ordering::Relaxed));
        self.epoch
            .checked_add(changed)
            .and_then(|at| at.checked_add(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(change: impl FnOnce(&mut Limits)) -> Arc<Limiter> {
        let mut limits = Limits::default();
        change(&mut limits);
        Limiter::new(limits)
    }

    #[test]
    fn hostile_connections_are_capped_per_uid_and_in_all() {
        let limiter = limiter(|l| {
            l.max_connections = 3;
            l.max_connections_per_uid = 2;
        });
        let a = limiter.admit_connection(1000).unwrap();
        let _b = limiter.admit_connection(1000).unwrap();
        assert_eq!(
            limiter.admit_connection(1000).unwrap_err(),
            "limits.max_connections_per_uid"
        );
        let _c = limiter.admit_connection(0).unwrap();
        assert_eq!(
            limiter.admit_connection(0).unwrap_err(),
            "limits.max_connections"
        );
        drop(a);
        limiter.admit_connection(0).unwrap();
    }

    #[test]
    fn hostile_streams_are_capped_per_connection_and_per_uid_with_an_error() {
        let limiter = limiter(|l| {
            l.max_streams_per_connection = 2;
            l.max_streams_per_uid = 3;
        });
        let _slot = limiter.admit_connection(7).unwrap();
        let first = ConnectionState::new();
        let second = ConnectionState::new();
        let _one = limiter.open_stream(7, &first).unwrap();
        let two = limiter.open_stream(7, &first).unwrap();
        let status = limiter.open_stream(7, &first).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("max_streams_per_connection"),
            "{status:?}"
        );
        let _three = limiter.open_stream(7, &second).unwrap();
        let status = limiter.open_stream(7, &second).unwrap_err();
        assert!(
            status.message().contains("max_streams_per_uid"),
            "{status:?}"
        );
        drop(two);
        limiter.open_stream(7, &second).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn hostile_calls_are_rate_limited_per_uid() {
        let limiter = limiter(|l| {
            l.calls_per_second_per_uid = 10;
            l.call_burst_per_uid = 5;
        });
        let _noisy = limiter.admit_connection(1000).unwrap();
        let _quiet = limiter.admit_connection(0).unwrap();
        for _ in 0..5 {
            limiter.admit_call(1000).unwrap();
        }
        let status = limiter.admit_call(1000).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        // Another uid is not affected.
        limiter.admit_call(0).unwrap();
        // The bucket refills at the rate.
        tokio::time::advance(Duration::from_millis(250)).await;
        limiter.admit_call(1000).unwrap();
        limiter.admit_call(1000).unwrap();
        assert!(limiter.admit_call(1000).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn hostile_a_flood_past_twice_the_rate_is_not_read_until_the_bucket_refills() {
        let limiter = limiter(|l| {
            l.calls_per_second_per_uid = 10;
            l.call_burst_per_uid = 10;
        });
        let noisy = limiter.admit_connection(1000).unwrap();
        let quiet = limiter.admit_connection(0).unwrap();
        // The burst is served, then as many calls again are refused with an error...
        for _ in 0..10 {
            limiter.admit_call(1000).unwrap();
        }
        for _ in 0..10 {
            assert!(limiter.admit_call(1000).is_err());
            assert!(noisy.paused_until().is_none(), "refused, not paused yet");
        }
        // ...and past that the uid's connections are not read until a call would be
        // admitted (1/10 s at 10 calls per second).
        assert!(limiter.admit_call(1000).is_err());
        let until = noisy.paused_until().expect("paused");
        assert!(
            until <= Instant::now() + Duration::from_millis(101),
            "{until:?}"
        );
        assert!(quiet.paused_until().is_none(), "another uid is not paused");
        tokio::time::advance(Duration::from_millis(101)).await;
        assert!(noisy.paused_until().is_none());
        limiter.admit_call(1000).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_open_calls() {
        let limiter = limiter(|_| {});
        let _slot = limiter.admit_connection(1).unwrap();
        let connection = ConnectionState::new();
        let timeout = Duration::from_secs(10);
        let first = connection.idle_deadline(timeout).unwrap();
        let stream = limiter.open_stream(1, &connection).unwrap();
        assert_eq!(connection.idle_deadline(timeout), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(stream);
        let after = connection.idle_deadline(timeout).unwrap();
        assert!(
            after > first + Duration::from_secs(29),
            "idle counts from the last close"
        );
    }
}
