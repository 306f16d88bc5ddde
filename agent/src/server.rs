//! The Workload API's Unix socket: preparing the path, serving, and a clean shutdown.
//!
//! Contract (as SPIRE's agent): the socket file is mode 0777, since who gets which
//! identity is decided by workload attestation, not by file mode; a missing directory is
//! created 0755; a stale socket file is replaced; a socket another agent still answers
//! on is left alone and the agent refuses to start. On SIGTERM/SIGINT the agent stops
//! accepting, ends open streams with `Unavailable` (clients reconnect), lets in-flight
//! unary calls finish for up to [`DRAIN_TIMEOUT`], and removes the socket.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use enclaveid_workload_api::{LenientAuthority, Snapshot, WorkloadApi};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnixListenerStream;
use tonic_health::ServingStatus;

use crate::workload_attestor::UnixAttestor;

/// Why the Workload API socket could not be prepared or served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// A file system operation on the socket or its directory failed.
    #[error("{}", path.display())]
    Io {
        /// The socket or its directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another agent answers on the socket.
    #[error(
        "another agent is serving on {}; stop it or choose another socket_path",
        path.display()
    )]
    Busy {
        /// The socket.
        path: PathBuf,
    },
    /// Something other than a socket is at the path.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The socket was already handed to a server.
    #[error("socket already served")]
    AlreadyServed,
    /// The gRPC server failed.
    #[error("serving the Workload API")]
    Serve(#[source] tonic::transport::Error),
}

/// How long in-flight calls may run after a shutdown signal.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound Workload API socket, removed when dropped.
#[derive(Debug)]
pub(crate) struct BoundSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl BoundSocket {
    /// Prepares `path` (directory, stale socket) and binds it, mode 0777.
    pub(crate) fn bind(path: &Path) -> Result<Self, SocketError> {
        let io = |source| SocketError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| SocketError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(SocketError::Busy {
                            path: path.to_owned(),
                        });
                    }
                    Err(_) => {
                        tracing::info!(path = %path.display(), "replacing stale socket");
                        std::fs::remove_file(path).map_err(io)?;
                    }
                }
            }
            Ok(_) => {
                return Err(SocketError::NotASocket {
                    path: path.to_owned(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
        Ok(Self {
            listener: Some(listener),
            path: path.to_owned(),
        })
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        self.listener = None;
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(%error, path = %self.path.display(), "could not remove the socket");
        }
    }
}

/// Serves the Workload API and gRPC health on `socket` until `shutdown` resolves. The
/// caller must close `snapshots`' sender at shutdown so that open streams end.
pub(crate) async fn serve(
    mut socket: BoundSocket,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    problems: watch::Receiver<Option<String>>,
    attestor: UnixAttestor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SocketError> {
    let listener = socket.listener.take().ok_or(SocketError::AlreadyServed)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let (status_tx, status) = watch::channel(String::new());
    tokio::spawn(report_health(
        health,
        snapshots.clone(),
        problems,
        status_tx,
    ));
    let health_service = WithStatus {
        inner: health_service,
        status,
    };

    let api = WorkloadApi::new(snapshots, attestor).into_server();
    let incoming =
        UnixListenerStream::new(listener).map(|accepted| accepted.map(LenientAuthority::new));
    let (drain_tx, mut drain_rx) = watch::channel(false);
    let server = tonic::transport::Server::builder()
        // Every Workload API message is small (an SVID is a few KiB); small windows keep
        // the memory of thousands of idle streams low without slowing anything down.
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .max_concurrent_streams(256)
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .add_service(health_service)
        .add_service(api)
        // Clients that send the socket path as `:authority` (gRPC C-core, grpc-java) are
        // let in; see `LenientAuthority`.
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = drain_tx.send(true);
        });
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        // `map(drop)`: the watch guard must not live across the await below (the future
        // stays `Send`, so the agent can be served from a spawned task).
        _ = async { drain_rx.wait_for(|draining| *draining).await.map(drop) } => {
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(timeout = ?DRAIN_TIMEOUT, "in-flight calls did not finish; closing");
                    Ok(())
                }
            }
        }
    };
    drop(socket);
    result.map_err(SocketError::Serve)
}

/// The response header of `grpc.health.v1.Health` that says why the agent is degraded
/// or not serving (the health protocol itself has no room for a reason).
pub const STATUS_HEADER: &str = "enclaveid-status";

/// Health is SERVING while every registration entry has a current SVID. A problem the
/// upstream reports goes into [`STATUS_HEADER`]: "degraded: …" while SERVING.
async fn report_health(
    health: tonic_health::server::HealthReporter,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut problems: watch::Receiver<Option<String>>,
    status: watch::Sender<String>,
) {
    // A closed channel still holds its last value; only its changes stop. (The `dev`
    // upstream never reports: its sender is gone from the start.)
    let mut upstream_open = true;
    loop {
        let serving = {
            let snapshot = snapshots.borrow_and_update();
            snapshot.identities.iter().all(|i| i.svid.is_some()) && !snapshot.bundles.is_empty()
        };
        let problem = problems.borrow_and_update().clone();
        let text = match (&problem, serving) {
            (None, true) => String::new(),
            (None, false) => "not serving: not every entry has a current X.509-SVID".into(),
            (Some(problem), true) => format!("degraded: {problem}"),
            (Some(problem), false) => format!("not serving: {problem}"),
        };
        status.send_replace(header_safe(&text));
        let serving_status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status("", serving_status).await;
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() {
                health.set_service_status("", ServingStatus::NotServing).await;
                return;
            },
            changed = problems.changed(), if upstream_open => upstream_open = changed.is_ok(),
        }
    }
}

/// Printable ASCII, at most 1000 bytes: what an HTTP/2 header value may carry.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(1000)
        .collect()
}

/// A service that adds [`STATUS_HEADER`] to every answer of the one it wraps.
#[derive(Clone)]
struct WithStatus<S> {
    inner: S,
    status: watch::Receiver<String>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for WithStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tonic::codegen::Service<http::Request<B>> for WithStatus<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let status = self.status.borrow().clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            if !status.is_empty()
                && let Ok(value) = http::HeaderValue::from_str(&status)
            {
                response.headers_mut().insert(STATUS_HEADER, value);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_waits_quietly_when_no_upstream_reports() {
        // The `dev` upstream: the problem channel's sender is gone from the start.
        let (snapshot_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let problems = watch::channel(None).1;
        let (status_tx, mut status) = watch::channel(String::from("unset"));
        let (health, _) = tonic_health::server::health_reporter();
        let task = tokio::spawn(report_health(health, snapshots, problems, status_tx));
        status.changed().await.unwrap();
        assert!(status.borrow_and_update().starts_with("not serving"));
        // Nothing changes: the reporter publishes nothing more (it used to spin, sending
        // the same status over and over).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !status.has_changed().unwrap(),
            "status re-sent without a change"
        );
        // A snapshot change is still followed.
        snapshot_tx.send_replace(Arc::new(Snapshot::default()));
        status.changed().await.unwrap();
        task.abort();
    }

    #[tokio::test]
    async fn binding_creates_the_directory_and_a_0777_socket_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/run/agent.sock");
        let socket = BoundSocket::bind(&path).unwrap();
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode & 0o755, 0o755);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777);
        drop(socket);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_a_stale_one_replaced_a_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let live = BoundSocket::bind(&path).unwrap();
        let error = BoundSocket::bind(&path).unwrap_err().to_string();
        assert!(error.contains("another agent is serving"), "{error}");

        // A stale socket: bound by a listener that is gone, file left behind.
        let stale_path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale_path).unwrap());
        assert!(stale_path.exists());
        let replaced = BoundSocket::bind(&stale_path).unwrap();
        assert!(replaced.path().exists());

        let file = dir.path().join("precious.txt");
        std::fs::write(&file, "data").unwrap();
        let error = BoundSocket::bind(&file).unwrap_err().to_string();
        assert!(error.contains("not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
        drop(live);
    }
}
