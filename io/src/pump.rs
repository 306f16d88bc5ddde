//! Moving bytes both ways between two streams: the parent's relay and the enclave's TLS
//! proxy both carry connections this way. Half-close is passed on (one side's end of
//! stream shuts down the other's writing half while the other direction goes on), bytes
//! are counted each way, and a connection with no byte either way for the idle timeout
//! ends.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The copy buffer of each direction.
const BUFFER: usize = 64 * 1024;

/// How a carried connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed.
    Closed,
    /// No byte for the idle timeout.
    Idle,
    /// A socket error.
    Failed(String),
}

/// Moves bytes both ways until both sides have closed, a stream fails, or nothing moved
/// for `idle`. What is read from `a` is added to `counted.0`, from `b` to `counted.1`.
pub async fn pump<A, B>(a: A, b: B, idle: Duration, counted: (&AtomicU64, &AtomicU64)) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut a = Counted {
        inner: a,
        read: counted.0,
        last: &last,
        start,
    };
    let mut b = Counted {
        inner: b,
        read: counted.1,
        last: &last,
        start,
    };
    // 64 KiB a direction: four TLS records a write, and a quarter of the system calls
    // tokio's 8 KiB default makes for bulk transfers.
    let copied = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUFFER, BUFFER);
    tokio::pin!(copied);
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let since = last.load(Ordering::Relaxed);
        let deadline = start + Duration::from_millis(since.saturating_add(idle_ms));
        tokio::select! {
            copied = &mut copied => return match copied {
                Ok(_) => Ended::Closed,
                Err(error) => Ended::Failed(error.to_string()),
            },
            () = tokio::time::sleep_until(deadline.into()) => {
                if last.load(Ordering::Relaxed) == since {
                    return Ended::Idle;
                }
            }
        }
    }
}

/// A stream that counts the bytes read from it and notes when the last moved.
struct Counted<'a, S> {
    inner: S,
    read: &'a AtomicU64,
    last: &'a AtomicU64,
    start: Instant,
}

impl<S> Counted<'_, S> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
