//! Connections to the Workload API socket: accepted with backoff on errors, admitted
//! under the [`Limits`](crate::Limits), noted by the attestor before any call (so that a
//! process replaced by `execve` after it connected is recognised), and closed when idle.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use enclaveid_io::AcceptBackoff;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::{Instant, Sleep};

use crate::authority::LenientAuthority;
use crate::limits::{ConnectionSlot, ConnectionState, Limiter};
use crate::{Caller, WorkloadAttestor};

/// Who is on a connection, as the service sees it with each call: the peer credentials
/// at accept, what the attestor noted then, and what the connection has open.
#[derive(Clone, Debug)]
pub struct Peer<T> {
    /// The socket's peer credentials (`SO_PEERCRED`), taken at accept.
    pub caller: Caller,
    /// What the attestor noted about the caller at accept.
    pub accepted: T,
    pub(crate) state: Arc<ConnectionState>,
}

/// An accepted Workload API connection.
pub struct Connection<T> {
    inner: LenientAuthority<UnixStream>,
    peer: Peer<T>,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    /// Wakes the connection when its uid's pause ends.
    paused: Pin<Box<Sleep>>,
    slot: ConnectionSlot,
}

impl<T> std::fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("caller", &self.peer.caller)
            .finish_non_exhaustive()
    }
}

/// The connections of `listener`, as tonic's `serve_with_incoming` takes them: each
/// admitted under `limiter`'s limits (refused ones are closed at once), noted by
/// `attestor`, and closed when idle. Accept errors (out of file descriptors, for one)
/// pause the loop, doubling up to a second, instead of spinning.
pub fn incoming<A: WorkloadAttestor>(
    listener: UnixListener,
    attestor: A,
    limiter: Arc<Limiter>,
) -> impl Stream<Item = io::Result<Connection<A::Accepted>>> + Send {
    futures_util::stream::unfold(
        (listener, attestor, limiter, AcceptBackoff::default()),
        |(listener, attestor, limiter, mut backoff)| async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => {
                        backoff.succeeded();
                        stream
                    }
                    Err(error) => {
                        let pause = backoff.failed();
                        tracing::warn!(%error, ?pause, "accepting a Workload API connection failed");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                };
                let Ok(credentials) = stream.peer_cred() else {
                    tracing::warn!("a connection without peer credentials; closed");
                    continue;
                };
                let caller = Caller {
                    pid: credentials.pid(),
                    uid: credentials.uid(),
                    gid: credentials.gid(),
                };
                let slot = match limiter.admit_connection(caller.uid) {
                    Ok(slot) => slot,
                    Err(limit) => {
                        crate::limits::log_connection_refused(&limiter, caller.uid, limit);
                        continue;
                    }
                };
                let accepted = attestor.accept(&caller);
                let idle_timeout = limiter.limits().idle_timeout;
                let connection = Connection {
                    inner: LenientAuthority::new(stream),
                    peer: Peer {
                        caller,
                        accepted,
                        state: ConnectionState::new(),
                    },
                    idle_timeout,
                    idle: Box::pin(tokio::time::sleep(idle_timeout)),
                    paused: Box::pin(tokio::time::sleep(Duration::ZERO)),
                    slot,
                };
                return Some((Ok(connection), (listener, attestor, limiter, backoff)));
            }
        },
    )
}

impl<T: Unpin> AsyncRead for Connection<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // A uid calling at over twice its rate is not read until its bucket refills.
        if let Some(until) = this.slot.paused_until() {
            this.paused.as_mut().reset(until);
            if this.paused.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {}
            ready => return ready,
        }
        // Nothing to read: is the connection idle for long enough to close it?
        loop {
            let deadline = this
                .peer
                .state
                .idle_deadline(this.idle_timeout)
                // A call is open: look again a whole timeout from now.
                .unwrap_or_else(|| Instant::now() + this.idle_timeout);
            if deadline <= Instant::now() {
                tracing::debug!(uid = this.peer.caller.uid, pid = ?this.peer.caller.pid, "idle connection closed");
                // End of stream: the server closes the connection.
                return Poll::Ready(Ok(()));
            }
            this.idle.as_mut().reset(deadline);
            if this.idle.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<T: Unpin> AsyncWrite for Connection<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Clone + Send + Sync + 'static> tonic::transport::server::Connected for Connection<T> {
    type ConnectInfo = Peer<T>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}
