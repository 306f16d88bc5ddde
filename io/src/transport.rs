//! Sockets by [`Address`].

use std::path::PathBuf;

use enclaveid_checks::address::Address;
use tokio::io::{AsyncRead, AsyncWrite};

/// A connected byte stream of any kind.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A bound listener of any kind.
#[derive(Debug)]
pub enum Listener {
    /// Unix.
    Unix(tokio::net::UnixListener),
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// vsock.
    Vsock(tokio_vsock::VsockListener),
}

/// Connecting to and listening on an [`Address`].
pub trait AddressExt {
    /// Connects.
    fn connect(&self) -> impl Future<Output = std::io::Result<Box<dyn Stream>>> + Send;

    /// Binds a listener. A Unix socket path that exists is replaced.
    fn bind(&self) -> impl Future<Output = std::io::Result<Listener>> + Send;
}

impl AddressExt for Address {
    async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
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

    async fn bind(&self) -> std::io::Result<Listener> {
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

    #[tokio::test]
    async fn a_vsock_address_reaches_the_vsock_socket_calls() {
        // No vsock device here: the bind fails in the kernel, not in our parsing, and the
        // error says so (or, on a VM with vsock, the bind succeeds).
        let address: Address = "vsock://any:49152".parse().unwrap();
        match address.bind().await {
            Ok(listener) => assert!(matches!(listener, Listener::Vsock(_))),
            Err(error) => assert!(error.raw_os_error().is_some(), "{error}"),
        }
    }
}
