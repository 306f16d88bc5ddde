//! The Workload API's Unix socket: preparing the path, serving, and a clean shutdown.
//!
//! Contract (as SPIRE's agent): the socket file is mode 0777, since who gets which
//! identity is decided by workload attestation, not by file mode; a missing directory is
//! created 0755; a directory another user could write is refused (another user could
//! swap the socket); a stale socket file is replaced; a socket another agent still
//! answers on is left alone and the agent refuses to start. On SIGTERM/SIGINT the agent stops
//! accepting, ends open streams with `Unavailable` (clients reconnect), lets in-flight
//! unary calls finish for up to [`DRAIN_TIMEOUT`], and removes the socket.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use enclaveid_workload_api::{Limiter, Limits, MAX_HEADER_LIST_SIZE, Snapshot, WorkloadApi};
use tokio::net::UnixListener;
use tokio::sync::watch;
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
    /// The socket's directory is one another user could change.
    #[error(
        "{} (owner uid {owner}, mode {mode:04o}) is not safe for the Workload API socket: another user could replace the socket; accepted: a directory owned by uid {me} or root that only its owner can write, or a root-owned directory with the sticky bit such as /tmp",
        dir.display()
    )]
    UnsafeDirectory {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its mode.
        mode: u32,
        /// This process's effective uid.
        me: u32,
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
    ///
    /// The directory must be one no other user can change: owned by this user or root
    /// and writable by its owner only, or root-owned with the sticky bit (as `/tmp`),
    /// where others cannot remove or rename what this user creates. Otherwise another
    /// user could swap the socket for their own and hand workloads their identities.
    ///
    /// The socket is made in a private directory (0700) beside its final path, given its
    /// mode there, and renamed into place: no mode is ever set through a path another
    /// user could replace with a symbolic link.
    pub(crate) fn bind(path: &Path) -> Result<Self, SocketError> {
        let io = |source| SocketError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| SocketError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        check_directory(dir)?;
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
        let private = tempfile::Builder::new()
            .prefix(".enclaveid-socket-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(dir)
            .map_err(|source| SocketError::Io {
                path: dir.to_owned(),
                source,
            })?;
        let staged = private.path().join("agent.sock");
        let listener = UnixListener::bind(&staged).map_err(io)?;
        // Only this user can write `private`: the path cannot be swapped under us.
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
        std::fs::rename(&staged, path).map_err(io)?;
        drop(private);
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

/// Refuses a socket directory another user could change (see [`BoundSocket::bind`]).
fn check_directory(dir: &Path) -> Result<(), SocketError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir).map_err(|source| SocketError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.mode();
    let others_can_write = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    let trusted_owner = meta.uid() == me || meta.uid() == 0;
    let safe =
        meta.is_dir() && ((trusted_owner && !others_can_write) || (meta.uid() == 0 && sticky));
    if safe {
        Ok(())
    } else {
        Err(SocketError::UnsafeDirectory {
            dir: dir.to_owned(),
            owner: meta.uid(),
            mode: mode & 0o7777,
            me,
        })
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

/// Serves the Workload API, Envoy's SDS and gRPC health on `socket` until `shutdown` resolves. The
/// caller must close `snapshots`' sender at shutdown so that open streams end.
#[allow(
    clippy::too_many_arguments,
    reason = "the agent's parts, handed over once at start"
)]
pub(crate) async fn serve(
    mut socket: BoundSocket,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    problems: watch::Receiver<Option<String>>,
    attestor: UnixAttestor,
    limits: Limits,
    reserved_descriptors: usize,
    api_metrics: Arc<enclaveid_workload_api::ApiMetrics>,
    sds: enclaveid_workload_api::sds::SdsConfig,
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

    let limits = within_descriptor_limit(limits, reserved_descriptors);
    // h2 allows a little more than the service: a caller past its stream limit gets
    // `ResourceExhausted` from the service instead of waiting silently for a slot, and
    // health checks still fit.
    let h2_streams =
        u32::try_from(limits.max_streams_per_connection.saturating_add(16)).unwrap_or(u32::MAX);
    let limiter = Limiter::new(limits);
    let api =
        WorkloadApi::new(snapshots, attestor.clone(), limiter.clone()).with_metrics(api_metrics);
    // Envoy's SDS on the same socket, with the same callers' attestation and limits.
    let sds = api.sds(sds).into_server();
    let api = api.into_server();
    let incoming = enclaveid_workload_api::incoming(listener, attestor, limiter);
    let (drain_tx, mut drain_rx) = watch::channel(false);
    let server = tonic::transport::Server::builder()
        // Every Workload API message is small (an SVID is a few KiB): a small stream
        // window keeps the memory of thousands of idle streams low. The connection window
        // is larger because h2 sizes its budget of small DATA frames buffered at once from
        // it (half of it, one frame costing ~256 bytes): 1 MiB lets a client open its
        // `max_streams_per_connection` streams at once, each with a few-byte request.
        // tonic reads every request as soon as it arrives, so the window is not memory
        // held for long.
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_concurrent_streams(h2_streams)
        .http2_max_header_list_size(u32::try_from(MAX_HEADER_LIST_SIZE).unwrap_or(u32::MAX))
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .add_service(health_service)
        .add_service(api)
        .add_service(sds)
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

/// `limits` with `max_connections` lowered, if need be, so that the Workload API's
/// connections, `reserved` others (the bundle endpoint's) and 64 spare descriptors fit
/// under the file-descriptor limit: accepting then never fails for lack of descriptors,
/// and a caller over the cap is refused by the limiter with a log line. The soft limit
/// is first raised to the hard one, as Go programs (spire-agent) do at start.
fn within_descriptor_limit(mut limits: Limits, reserved: usize) -> Limits {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const SPARE: u64 = 64;
    let Ok((mut soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return limits;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        soft = hard;
    }
    let reserved = u64::try_from(reserved).unwrap_or(u64::MAX);
    let room = soft.saturating_sub(SPARE).saturating_sub(reserved).max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if limits.max_connections > room {
        tracing::warn!(
            configured = limits.max_connections,
            used = room,
            descriptor_limit = soft,
            "limits.max_connections lowered under the file-descriptor limit"
        );
        limits.max_connections = room;
    }
    limits
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

    /// Runs as root in CI (ownership can be handed to other uids); as another user, the
    /// cases that need `chown` are skipped.
    #[tokio::test]
    async fn hostile_socket_directories_another_user_could_change_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = nix::unistd::geteuid().is_root();
        let base = tempfile::tempdir().unwrap();
        let dir = |name: &str, mode: u32, owner: Option<u32>| {
            let dir = base.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            if let Some(uid) = owner {
                std::os::unix::fs::chown(&dir, Some(uid), None).unwrap();
            }
            dir.join("agent.sock")
        };
        let error = BoundSocket::bind(&dir("world", 0o777, None))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("mode 0777") && error.contains("not safe"),
            "{error}"
        );
        let error = BoundSocket::bind(&dir("group", 0o775, None))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not safe"), "{error}");
        BoundSocket::bind(&dir("mine", 0o755, None)).unwrap();
        if root {
            let error = BoundSocket::bind(&dir("theirs", 0o755, Some(65534)))
                .unwrap_err()
                .to_string();
            assert!(error.contains("owner uid 65534"), "{error}");
            // A root-owned sticky directory, as /tmp: others cannot remove what we make.
            let socket = BoundSocket::bind(&dir("sticky", 0o1777, Some(0))).unwrap();
            let mode = std::fs::metadata(socket.path())
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o777);
        }
    }

    #[tokio::test]
    async fn hostile_a_symlink_at_the_socket_path_is_refused_and_its_target_untouched() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "key").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("agent.sock");
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let error = BoundSocket::bind(&path).unwrap_err().to_string();
        assert!(error.contains("not a socket"), "{error}");
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the link's target keeps its mode");
        // Nothing is left behind in the directory but what was there.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
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
