//! The gateway: an mTLS client that talks only to the inference service's SPIFFE ID,
//! over a small pool of connections that are replaced after a while, so rotated SVIDs
//! (ours and the server's) come into use without dropping a request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use enclaveid_io::{Address, AddressExt as _, Stream};
use spiffe::X509Source;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Error;
use crate::tls::{CrlFiles, Trust};
use crate::wire::{self, Request, Response};

/// A pooled connection is not reused once it is older than this.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(2);
/// How many times a request is tried on a new connection whose handshake failed.
const HANDSHAKE_ATTEMPTS: u32 = 3;

/// The gateway's client.
pub struct Gateway {
    connector: TlsConnector,
    trust: Trust,
    target: Address,
    crls: CrlFiles,
    max_age: Duration,
    pool: Mutex<Vec<Connection>>,
    retries: AtomicU64,
}

/// One connection to the inference service, with the identity it proved.
pub struct Connection {
    tls: TlsStream<Box<dyn Stream>>,
    /// The server's identity from its certificate (verified in the handshake): its
    /// SPIFFE ID, or `dns:NAME`.
    pub peer_id: String,
    /// The server certificate's serial, hex.
    pub peer_serial: String,
    opened: Instant,
}

/// An answer and how it came.
#[derive(Clone, Debug)]
pub struct Reply {
    /// What the server said.
    pub response: Response,
    /// The server's SPIFFE ID (or `dns:NAME`) as the handshake proved it.
    pub peer_id: String,
    /// The server certificate's serial.
    pub peer_serial: String,
    /// Whether this request opened (and handshook) a new connection.
    pub new_connection: bool,
}

impl Gateway {
    /// A client with the SVIDs of `source`, for servers in `allow` at `target`.
    pub fn new(
        source: X509Source,
        allow: &[String],
        target: Address,
        crls: CrlFiles,
    ) -> Result<Self, Error> {
        let trust = Trust::Spiffe {
            source,
            allow: allow.to_vec(),
            attestation: None,
        };
        Self::with_trust(trust, target, crls)
    }

    /// A client that is and accepts what `trust` says, for the server at `target`.
    pub fn with_trust(trust: Trust, target: Address, crls: CrlFiles) -> Result<Self, Error> {
        Ok(Self {
            connector: TlsConnector::from(trust.client_config()?),
            trust,
            target,
            crls,
            max_age: DEFAULT_MAX_AGE,
            pool: Mutex::new(Vec::new()),
            retries: AtomicU64::new(0),
        })
    }

    /// Replaces pooled connections older than `max_age` (default [`DEFAULT_MAX_AGE`]).
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Opens a connection: connect, handshake (the server's SPIFFE ID authorised), CRL
    /// check of the server's chain.
    pub async fn connect(&self) -> Result<Connection, Error> {
        let stream = self.target.connect().await.map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", self.target),
            ))
        })?;
        let name = self.trust.server_name()?;
        let tls = self
            .connector
            .connect(name, stream)
            .await
            .map_err(|e| Error::Tls(e.to_string()))?;
        let (_, conn) = tls.get_ref();
        let chain = conn.peer_certificates().unwrap_or_default().to_vec();
        let (peer_id, peer_serial) = self.trust.peer(&chain)?;
        self.crls.check(&chain, &self.trust)?;
        Ok(Connection {
            tls,
            peer_id,
            peer_serial,
            opened: Instant::now(),
        })
    }

    /// Sends `prompt` on a pooled connection (a new one when none is free and young).
    pub async fn send(&self, prompt: &str) -> Result<Reply, Error> {
        let pooled = {
            let mut pool = self.pool.lock().await;
            pool.retain(|c| c.opened.elapsed() < self.max_age);
            pool.pop()
        };
        let (conn, reply) = match pooled {
            Some(mut conn) => {
                let response = conn.request(prompt).await?;
                let reply = conn.reply(response, false);
                (conn, reply)
            }
            None => self.request_on_new_connection(prompt).await?,
        };
        if conn.opened.elapsed() < self.max_age {
            self.pool.lock().await.push(conn);
        }
        Ok(reply)
    }

    /// Sends `prompt` on a new connection, closed afterwards.
    pub async fn send_once(&self, prompt: &str) -> Result<Reply, Error> {
        Ok(self.request_on_new_connection(prompt).await?.1)
    }

    /// How many requests were retried on a new connection after a failed handshake.
    pub fn handshake_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// A request on a new connection, tried again (up to [`HANDSHAKE_ATTEMPTS`] times)
    /// when the handshake is refused: the server has not read the request then, so a
    /// retry cannot run it twice. `spiffe-rustls` 0.11 refuses handshakes for the moment
    /// between an SVID update reaching the `X509Source` and its TLS material being
    /// rebuilt; under load, some handshakes land there at every rotation.
    async fn request_on_new_connection(&self, prompt: &str) -> Result<(Connection, Reply), Error> {
        let mut attempt = 1;
        loop {
            let outcome = async {
                let mut conn = self.connect().await?;
                let response = conn.request(prompt).await?;
                Ok::<_, Error>((conn, response))
            }
            .await;
            match outcome {
                Ok((conn, response)) => {
                    let reply = conn.reply(response, true);
                    return Ok((conn, reply));
                }
                Err(error) if attempt < HANDSHAKE_ATTEMPTS && handshake_refused(&error) => {
                    tracing::debug!(%error, attempt, "handshake refused; retrying on a new connection");
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// A TLS handshake error or alert, as opposed to a failure after the server read the
/// request.
fn handshake_refused(error: &Error) -> bool {
    match error {
        Error::Tls(_) => true,
        Error::Io(e) => e.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

impl Connection {
    fn reply(&self, response: Response, new_connection: bool) -> Reply {
        Reply {
            response,
            peer_id: self.peer_id.clone(),
            peer_serial: self.peer_serial.clone(),
            new_connection,
        }
    }

    /// One request and its response.
    pub async fn request(&mut self, prompt: &str) -> Result<Response, Error> {
        let request = Request {
            prompt: prompt.to_owned(),
        };
        let exchange = async {
            wire::write(&mut self.tls, &request).await?;
            wire::read::<Response>(&mut self.tls).await
        };
        let closed = |how: &dyn std::fmt::Display| {
            Error::Protocol(format!(
                "the server closed the connection without answering ({how}): it refused our certificate after the handshake, or is stopping"
            ))
        };
        match exchange.await {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(closed(&"end of stream")),
            Err(Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                Err(closed(&e))
            }
            Err(other) => Err(other),
        }
    }
}
