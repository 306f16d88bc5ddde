//! One address type for every link between the enclave and its parent instance:
//! `vsock://CID:PORT` in production, `tcp://HOST:PORT` and `unix:///PATH` for tests and
//! for running both sides on one machine.
//!
//! AF_VSOCK cannot be bound outside a VM with a vsock device; everything but the bind and
//! the connect itself is the same code for the three kinds.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};

/// vsock CID of the parent instance, as seen from an enclave.
pub const PARENT_CID: u32 = 3;
/// vsock CID meaning "any", for listening on the parent instance.
pub const ANY_CID: u32 = u32::MAX;

/// Where to listen or connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A Unix stream socket (absolute path).
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
    /// An AF_VSOCK context ID and port.
    Vsock {
        /// Context ID: 3 is the parent instance, `u32::MAX` any.
        cid: u32,
        /// Port.
        port: u32,
    },
}

/// A connected byte stream of any kind.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A bound listener of any kind.
pub enum Listener {
    /// Unix.
    Unix(tokio::net::UnixListener),
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// vsock.
    Vsock(tokio_vsock::VsockListener),
}

const ACCEPTED: &str = "accepted: vsock://CID:PORT (CID a number, \"parent\" for 3 or \"any\"), tcp://HOST:PORT, unix:///ABSOLUTE/PATH";

// === impl Address ===

impl FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("{s:?} is not an address: {why}; {ACCEPTED}");
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(bad("the socket path must be absolute"));
            }
            return Ok(Self::Unix(path));
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no :PORT"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad("expected HOST:PORT with a port of 1 to 65535"));
            }
            return Ok(Self::Tcp(rest.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("vsock://") {
            let (cid, port) = rest.split_once(':').ok_or_else(|| bad("no :PORT"))?;
            let cid = match cid {
                "parent" => PARENT_CID,
                "any" => ANY_CID,
                n => n.parse().map_err(|_| bad("the CID is not a number"))?,
            };
            let port = port.parse().map_err(|_| bad("the port is not a number"))?;
            return Ok(Self::Vsock { cid, port });
        }
        Err(bad("unknown scheme"))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

impl Address {
    /// Connects.
    pub async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Self::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            Self::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            Self::Vsock { cid, port } => Box::new(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
            ),
        })
    }

    /// Binds a listener. A Unix socket path that exists is replaced.
    pub async fn bind(&self) -> std::io::Result<Listener> {
        Ok(match self {
            Self::Unix(path) => {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                Listener::Unix(tokio::net::UnixListener::bind(path)?)
            }
            Self::Tcp(addr) => Listener::Tcp(tokio::net::TcpListener::bind(addr).await?),
            Self::Vsock { cid, port } => Listener::Vsock(tokio_vsock::VsockListener::bind(
                tokio_vsock::VsockAddr::new(*cid, *port),
            )?),
        })
    }
}

// === impl Listener ===

impl Listener {
    /// Accepts a connection, returning it and a printable peer address.
    pub async fn accept(&self) -> std::io::Result<(Box<dyn Stream>, String)> {
        Ok(match self {
            Self::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                (Box::new(stream), "unix".to_owned())
            }
            Self::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                (Box::new(stream), peer.to_string())
            }
            Self::Vsock(listener) => {
                let (stream, peer) = listener.accept().await?;
                (
                    Box::new(stream),
                    format!("vsock://{}:{}", peer.cid(), peer.port()),
                )
            }
        })
    }

    /// The bound address (with the port the OS chose for `tcp://…:0`).
    pub fn local_address(&self) -> std::io::Result<Address> {
        Ok(match self {
            Self::Unix(listener) => Address::Unix(
                listener
                    .local_addr()?
                    .as_pathname()
                    .map(PathBuf::from)
                    .unwrap_or_default(),
            ),
            Self::Tcp(listener) => Address::Tcp(listener.local_addr()?.to_string()),
            Self::Vsock(listener) => {
                let addr = listener.local_addr()?;
                Address::Vsock {
                    cid: addr.cid(),
                    port: addr.port(),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        for (text, address) in [
            ("vsock://3:8000", Address::Vsock { cid: 3, port: 8000 }),
            (
                "vsock://4294967295:1",
                Address::Vsock {
                    cid: ANY_CID,
                    port: 1,
                },
            ),
            ("tcp://127.0.0.1:9", Address::Tcp("127.0.0.1:9".into())),
            ("tcp://[::1]:9", Address::Tcp("[::1]:9".into())),
            ("unix:///run/h.sock", Address::Unix("/run/h.sock".into())),
        ] {
            assert_eq!(text.parse::<Address>().unwrap(), address);
            assert_eq!(address.to_string(), text);
        }
        assert_eq!(
            "vsock://parent:8000".parse::<Address>().unwrap(),
            Address::Vsock {
                cid: PARENT_CID,
                port: 8000
            }
        );
        assert_eq!(
            "vsock://any:8000".parse::<Address>().unwrap(),
            Address::Vsock {
                cid: ANY_CID,
                port: 8000
            }
        );
    }

    #[test]
    fn bad_addresses_say_what_is_accepted() {
        for bad in [
            "vsock://3",
            "vsock://x:1",
            "vsock://3:port",
            "tcp://host",
            "tcp://:80",
            "tcp://h:99999",
            "unix://relative.sock",
            "http://x:1",
            "",
        ] {
            let error = bad.parse::<Address>().unwrap_err();
            assert!(error.contains("accepted: vsock://CID:PORT"), "{error}");
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[tokio::test]
    async fn unix_and_tcp_listeners_accept_what_connect_dials() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        for address in [
            Address::Unix(dir.path().join("t.sock")),
            Address::Tcp("127.0.0.1:0".into()),
        ] {
            let listener = address.bind().await.unwrap();
            let bound = listener.local_address().unwrap();
            let client = tokio::spawn(async move {
                let mut stream = bound.connect().await.unwrap();
                stream.write_all(b"ping").await.unwrap();
            });
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0; 4];
            stream.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            client.await.unwrap();
        }
    }
}
