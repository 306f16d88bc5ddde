//! The relay: byte streams between enclaves, and between an enclave and the network, on
//! a parent instance that holds no key. Enclaves have no vsock path to each other; every
//! byte between two of them passes through parents, which is why TLS runs end to end
//! between the enclaves' agents and the relay only moves ciphertext.
//!
//! Two ways in:
//! - a **route** (`LISTEN=DEST`): every connection accepted on `LISTEN` is forwarded to
//!   `DEST`. Outbound from an enclave: `vsock://any:6000=vsock://16:5000` (another
//!   enclave on this instance) or `vsock://any:6000=tcp://parent-b:7000` (another
//!   instance); inbound: `tcp://0.0.0.0:7000=vsock://16:5000`.
//! - **connect** (op 6 of the host protocol): the enclave names the destination; it must
//!   be on the allow-list, or it is refused and logged.
//!
//! Per connection: half-close is passed on (one side's end of stream shuts down the
//! other's writing half, the other direction goes on), an idle timeout, and a cap on the
//! connections a route has open at once (past it, new ones are closed at once and
//! counted). Per route: connections opened, refused and active, and bytes each way.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enclaveid_io::{AcceptBackoff, Address, AddressError, AddressExt as _, Listener, Stream};

/// A fixed route: connections accepted on `listen` go to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Where the relay listens.
    pub listen: Address,
    /// Where it forwards.
    pub to: Address,
}

/// Why a string is not a [`Route`].
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No `=` between the two addresses.
    #[error(
        "{0:?} is not a route: expected LISTEN=DESTINATION, such as vsock://any:6000=vsock://16:5000"
    )]
    Shape(String),
    /// One of the addresses is malformed.
    #[error("route {route:?}")]
    Address {
        /// The route given.
        route: String,
        /// What is wrong with its address.
        #[source]
        source: AddressError,
    },
}

/// The relay's limits.
#[derive(Clone, Copy, Debug)]
pub struct RelayLimits {
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// The connections one route (or one connect destination) has open at once.
    pub max_connections: u64,
    /// How long dialling the destination may take.
    pub connect_timeout: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            max_connections: 1024,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// One route's counters.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Connections forwarded (the destination answered).
    pub opened: AtomicU64,
    /// Connections refused: over the cap, or the destination could not be reached.
    pub refused: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Bytes from the side that connected to the destination.
    pub bytes_out: AtomicU64,
    /// Bytes from the destination back.
    pub bytes_in: AtomicU64,
}

/// The counters of every route, by name (`LISTEN=DEST` for routes, `connect DEST` for
/// destinations enclaves named).
#[derive(Clone, Debug, Default)]
pub struct RelayStats(Arc<Mutex<BTreeMap<String, Arc<RouteStats>>>>);

pub use enclaveid_io::pump::Ended;

/// A relay with its listeners bound.
pub struct Relay {
    routes: Vec<(Listener, Address, Arc<RouteStats>, String)>,
    limits: RelayLimits,
    stats: RelayStats,
}

// === impl Route ===

impl FromStr for Route {
    type Err = RouteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Addresses contain no '=', so the split is unambiguous.
        let (listen, to) = s
            .split_once('=')
            .ok_or_else(|| RouteError::Shape(s.into()))?;
        let address = |a: &str| {
            a.parse::<Address>().map_err(|source| RouteError::Address {
                route: s.into(),
                source,
            })
        };
        Ok(Self {
            listen: address(listen)?,
            to: address(to)?,
        })
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.listen, self.to)
    }
}

// === impl RelayStats ===

impl RelayStats {
    /// The counters of the route named `name`, created on first use.
    pub fn route(&self, name: &str) -> Arc<RouteStats> {
        let mut routes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        routes.entry(name.to_owned()).or_default().clone()
    }

    /// Every route's counters, by name.
    pub fn snapshot(&self) -> Vec<(String, Arc<RouteStats>)> {
        let routes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        routes.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

// === impl Relay ===

impl Relay {
    /// Binds every route's listener; an address that cannot be bound fails the whole
    /// relay (naming the route), so a typo never leaves a route silently missing.
    pub async fn bind(
        routes: &[Route],
        limits: RelayLimits,
        stats: RelayStats,
    ) -> Result<Self, (Route, std::io::Error)> {
        let mut bound = Vec::with_capacity(routes.len());
        for route in routes {
            let listener = route.listen.bind().await.map_err(|e| (route.clone(), e))?;
            let name = route.to_string();
            bound.push((listener, route.to.clone(), stats.route(&name), name));
        }
        Ok(Self {
            routes: bound,
            limits,
            stats,
        })
    }

    /// The bound listen addresses, in route order (with the port the OS chose for
    /// `tcp://…:0`).
    pub fn local_addresses(&self) -> Vec<Address> {
        self.routes
            .iter()
            .filter_map(|(listener, ..)| listener.local_address().ok())
            .collect()
    }

    /// The counters.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Relays until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let limits = self.limits;
        let mut tasks = tokio::task::JoinSet::new();
        for (listener, to, stats, name) in self.routes {
            tasks.spawn(serve_route(listener, to, stats, name, limits));
        }
        shutdown.await;
        tasks.shutdown().await;
    }
}

async fn serve_route(
    listener: Listener,
    to: Address,
    stats: Arc<RouteStats>,
    name: String,
    limits: RelayLimits,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(error) => {
                tracing::warn!(route = %name, %error, "accept failed");
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&stats, limits.max_connections) else {
            tracing::warn!(route = %name, %peer, limit = limits.max_connections, "relay refused a connection: the route has its limit open");
            continue;
        };
        let to = to.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let upstream = match slot.dial(&to, limits.connect_timeout).await {
                Ok(upstream) => upstream,
                Err(error) => {
                    tracing::warn!(route = %name, %peer, %error, "relay could not reach the destination");
                    return;
                }
            };
            tracing::debug!(route = %name, %peer, "relay open");
            let ended = slot.carry(stream, upstream, limits.idle_timeout).await;
            tracing::debug!(route = %name, %peer, ?ended, "relay closed");
        });
    }
}

/// Dials `to` within `timeout`.
async fn dial(to: &Address, timeout: Duration) -> std::io::Result<Box<dyn Stream>> {
    match tokio::time::timeout(timeout, to.connect()).await {
        Ok(connected) => connected,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer in {}", humantime::format_duration(timeout)),
        )),
    }
}

/// One connection of a route, from the cap to the end: counted in `active` while it
/// lives, in `refused` when the cap or the dial turns it away, in `opened` when bytes
/// start to move. Routes and connect requests count through it alike.
pub(crate) struct Slot {
    stats: Arc<RouteStats>,
}

impl Slot {
    /// A slot, or `None` (counted as refused) when the route has `max` open.
    pub(crate) fn take(stats: &Arc<RouteStats>, max: u64) -> Option<Self> {
        let taken = stats
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Self {
            stats: stats.clone(),
        })
    }

    /// Dials the destination within `timeout`; a failure counts as refused.
    pub(crate) async fn dial(
        &self,
        to: &Address,
        timeout: Duration,
    ) -> std::io::Result<Box<dyn Stream>> {
        let dialled = dial(to, timeout).await;
        if dialled.is_err() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        dialled
    }

    /// Counts the connection opened and moves bytes until it ends ([`pump`]).
    pub(crate) async fn carry(
        self,
        a: Box<dyn Stream>,
        b: Box<dyn Stream>,
        idle: Duration,
    ) -> Ended {
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        pump(a, b, idle, &self.stats).await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Moves bytes both ways until both sides have closed, a socket fails, or nothing moved
/// for `idle`. Half-close is passed on.
async fn pump(a: Box<dyn Stream>, b: Box<dyn Stream>, idle: Duration, stats: &RouteStats) -> Ended {
    enclaveid_io::pump::pump(a, b, idle, (&stats.bytes_out, &stats.bytes_in)).await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A destination that reads to the end, then answers with what it read, reversed.
    async fn reverser(address: &Address) -> Address {
        let listener = address.bind().await.unwrap();
        let bound = listener.local_address().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    stream.read_to_end(&mut got).await.unwrap();
                    got.reverse();
                    stream.write_all(&got).await.unwrap();
                    stream.shutdown().await.unwrap();
                });
            }
        });
        bound
    }

    /// Waits (up to 10 s) until `done`: the relay's tasks update its counters after the
    /// streams the test holds have ended.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn start(routes: &[Route], limits: RelayLimits) -> (Vec<Address>, RelayStats) {
        let relay = Relay::bind(routes, limits, RelayStats::default())
            .await
            .unwrap();
        let bound = relay.local_addresses();
        let stats = relay.stats().clone();
        tokio::spawn(relay.serve(std::future::pending()));
        (bound, stats)
    }

    #[tokio::test]
    async fn relay_routes_forward_both_ways_pass_half_close_on_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let destination = reverser(&Address::Unix(dir.path().join("dest.sock"))).await;
        let routes = [
            Route {
                listen: Address::Unix(dir.path().join("relay.sock")),
                to: destination.clone(),
            },
            Route {
                listen: Address::Tcp("127.0.0.1:0".into()),
                to: destination,
            },
        ];
        let (bound, stats) = start(&routes, RelayLimits::default()).await;
        for address in &bound {
            let mut stream = address.connect().await.unwrap();
            stream.write_all(b"hello").await.unwrap();
            // Half-close: the destination sees the end, and still answers.
            stream.shutdown().await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"olleh");
        }
        eventually("both connections ended", || {
            stats
                .snapshot()
                .iter()
                .all(|(_, r)| r.active.load(Ordering::Relaxed) == 0)
        })
        .await;
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.len(), 2);
        for (name, route) in snapshot {
            assert!(name.contains("=unix://"), "{name}");
            assert_eq!(route.opened.load(Ordering::Relaxed), 1, "{name}");
            assert_eq!(route.bytes_out.load(Ordering::Relaxed), 5, "{name}");
            assert_eq!(route.bytes_in.load(Ordering::Relaxed), 5, "{name}");
            assert_eq!(route.active.load(Ordering::Relaxed), 0, "{name}");
            assert_eq!(route.refused.load(Ordering::Relaxed), 0, "{name}");
        }
    }

    #[tokio::test]
    async fn relay_closes_idle_connections_and_refuses_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let destination = reverser(&Address::Unix(dir.path().join("dest.sock"))).await;
        let limits = RelayLimits {
            idle_timeout: Duration::from_millis(300),
            max_connections: 1,
            ..RelayLimits::default()
        };
        let routes = [Route {
            listen: Address::Unix(dir.path().join("relay.sock")),
            to: destination,
        }];
        let (bound, stats) = start(&routes, limits).await;
        let mut first = bound[0].connect().await.unwrap();
        first.write_all(b"x").await.unwrap();
        eventually("the first connection open", || {
            stats.snapshot()[0].1.active.load(Ordering::Relaxed) == 1
        })
        .await;
        // The route has its one connection open: the next is closed at once.
        let mut second = bound[0].connect().await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut buf))
            .await
            .expect("the refused connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // The first one, idle, is closed by the relay (the destination never answers
        // before the end of the stream).
        let n = tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut buf))
            .await
            .expect("the idle connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        let route = &stats.snapshot()[0].1;
        assert_eq!(route.refused.load(Ordering::Relaxed), 1);
        assert_eq!(route.opened.load(Ordering::Relaxed), 1);
        eventually("no connection open", || {
            route.active.load(Ordering::Relaxed) == 0
        })
        .await;
    }

    #[tokio::test]
    async fn relay_counts_an_unreachable_destination_as_refused() {
        let dir = tempfile::tempdir().unwrap();
        let routes = [Route {
            listen: Address::Unix(dir.path().join("relay.sock")),
            to: Address::Unix(dir.path().join("nobody.sock")),
        }];
        let (bound, stats) = start(&routes, RelayLimits::default()).await;
        let mut stream = bound[0].connect().await.unwrap();
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        assert!(buf.is_empty());
        eventually("the connection counted as refused", || {
            stats.snapshot()[0].1.refused.load(Ordering::Relaxed) == 1
        })
        .await;
    }

    #[test]
    fn relay_routes_parse_and_bad_ones_name_what_is_accepted() {
        let route: Route = "vsock://any:6000=vsock://16:5000".parse().unwrap();
        assert_eq!(
            route.to,
            Address::Vsock {
                cid: 16,
                port: 5000
            }
        );
        assert_eq!(route.to_string(), "vsock://4294967295:6000=vsock://16:5000");
        let route: Route = "tcp://0.0.0.0:7000=vsock://16:5000".parse().unwrap();
        assert_eq!(route.listen, Address::Tcp("0.0.0.0:7000".into()));
        let error = "vsock://any:6000".parse::<Route>().unwrap_err().to_string();
        assert!(error.contains("LISTEN=DESTINATION"), "{error}");
        let error = "vsock://any:6000=http://x".parse::<Route>().unwrap_err();
        let text = enclaveid_checks::Chain(&error).to_string();
        assert!(
            text.contains("http://x") && text.contains("tcp://HOST:PORT"),
            "{text}"
        );
    }
}
