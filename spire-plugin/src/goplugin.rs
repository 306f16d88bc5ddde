//! The plugin side of HashiCorp go-plugin (protocol 1, gRPC), as SPIRE's catalog uses it.
//!
//! - SPIRE starts the binary with `<Type>=<Type>` in its environment (the magic cookie;
//!   `NodeAttestor=NodeAttestor` here) and `PLUGIN_PROTOCOL_VERSIONS`, which must offer 1.
//! - The plugin listens on a fresh Unix socket (in `PLUGIN_UNIX_SOCKET_DIR`, else the
//!   temporary directory; mode 0600) and prints one handshake line on stdout:
//!   `1|1|unix|<path>|grpc|` (core version, app version, network, address, protocol, no
//!   AutoMTLS certificate). Nothing else goes to stdout; logs go to stderr, where
//!   go-plugin picks up the `[LEVEL]` prefix.
//! - On that socket: `grpc.health.v1.Health` (service `plugin` SERVING),
//!   `plugin.GRPCBroker` (SPIRE offers its host services through it; this plugin uses
//!   none, so it reads the offers and holds the stream open), `plugin.GRPCController`
//!   (Shutdown), `plugin.GRPCStdio` (held open; nothing is forwarded), the SPIRE SDK's
//!   `spire.service.private.init.v1.Init`, and the plugin's own services.
//! - It stops on Shutdown, SIGTERM, or when its parent process is gone; SIGINT is
//!   ignored, as go-plugin plugins do (the host handles Ctrl-C and stops its plugins).

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use crate::Error;
use crate::proto::goplugin::grpc_broker_server::{GrpcBroker, GrpcBrokerServer};
use crate::proto::goplugin::grpc_controller_server::{GrpcController, GrpcControllerServer};
use crate::proto::goplugin::grpc_stdio_server::{GrpcStdio, GrpcStdioServer};
use crate::proto::goplugin::{ConnInfo, Empty, StdioData};
use crate::proto::init::init_server::{Init, InitServer};
use crate::proto::init::{DeinitRequest, DeinitResponse, InitRequest, InitResponse};

/// go-plugin's core protocol version.
const CORE_PROTOCOL_VERSION: u32 = 1;
/// The application protocol version SPIRE's catalog asks for.
const APP_PROTOCOL_VERSION: &str = "1";
/// How long in-flight calls may finish once the plugin is asked to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Checks that SPIRE (or another go-plugin host) started this process for plugin type
/// `cookie`, and that it speaks protocol 1.
pub fn check_host(cookie: &str) -> Result<(), Error> {
    if std::env::var(cookie).ok().as_deref() != Some(cookie) {
        return Err(Error::NotAPluginHost);
    }
    if let Ok(versions) = std::env::var("PLUGIN_PROTOCOL_VERSIONS")
        && !versions
            .split(',')
            .any(|v| v.trim() == APP_PROTOCOL_VERSION)
    {
        return Err(Error::Handshake(format!(
            "the host offers protocol versions {versions:?}; this plugin speaks {APP_PROTOCOL_VERSION}"
        )));
    }
    Ok(())
}

/// Serves `routes` (the plugin's services, named `services` for the SDK's Init) until
/// the host stops the plugin. Call [`check_host`] first.
pub async fn serve(services: Vec<String>, routes: Routes) -> Result<(), Error> {
    let dir = std::env::var_os("PLUGIN_UNIX_SOCKET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| Error::Serve("no randomness for the socket name".into()))?;
    let path = dir.join(format!(
        "plugin-enclaveid-{}-{}",
        std::process::id(),
        enclaveid_attestor::hex(&suffix)
    ));
    let listener = UnixListener::bind(&path)
        .map_err(|e| Error::Serve(format!("cannot listen on {}: {e}", path.display())))?;
    let _remove = RemoveOnDrop(path.clone());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Serve(format!("cannot restrict {}: {e}", path.display())))?;

    let (stop, stopped) = watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;
    let routes = routes
        .add_service(health_service)
        .add_service(GrpcBrokerServer::new(Broker {
            stopped: stopped.clone(),
        }))
        .add_service(GrpcControllerServer::new(Controller { stop: stop.clone() }))
        .add_service(GrpcStdioServer::new(Stdio {
            stopped: stopped.clone(),
        }))
        .add_service(InitServer::new(InitService { services }));

    watch_signals_and_parent(stop)?;

    let line = format!(
        "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{}|grpc|",
        path.display()
    );
    // go-plugin appends a multiplexing flag only when the host asks; this plugin does not
    // multiplex broker connections.
    let line = if std::env::var_os("PLUGIN_MULTIPLEX_GRPC").is_some() {
        format!("{line}|false")
    } else {
        line
    };
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::Serve(format!("cannot write the handshake line: {e}")))?;
    }

    let mut until = stopped.clone();
    let server = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            let _ = until.wait_for(|s| *s).await;
        });
    // Graceful, but bounded: a host that keeps its connection open does not keep the
    // plugin alive (go-plugin kills a plugin that takes longer than two seconds anyway).
    let mut grace = stopped;
    tokio::select! {
        served = server => served.map_err(|e| Error::Serve(e.to_string()))?,
        () = async move {
            let _ = grace.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::debug!("connections still open after the grace period"),
    }
    tracing::debug!("plugin stopped");
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn watch_signals_and_parent(stop: watch::Sender<bool>) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let signal_error = |e: std::io::Error| Error::Serve(format!("cannot handle signals: {e}"));
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let parent = std::os::unix::process::parent_id();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = terminate.recv() => {
                    tracing::debug!("SIGTERM: stopping");
                    break;
                }
                _ = interrupt.recv() => tracing::debug!("SIGINT ignored: the host stops its plugins"),
                _ = tick.tick() => if std::os::unix::process::parent_id() != parent {
                    tracing::info!("the host process is gone: stopping");
                    break;
                },
            }
        }
        let _ = stop.send(true);
    });
    Ok(())
}

/// A response stream that sends nothing and ends when the plugin stops (or the host
/// drops it).
fn held_open<T: Send + 'static>(
    mut stopped: watch::Receiver<bool>,
) -> ReceiverStream<Result<T, Status>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => {}
            () = tx.closed() => {}
        }
    });
    ReceiverStream::new(rx)
}

struct Broker {
    stopped: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl GrpcBroker for Broker {
    type StartStreamStream = ReceiverStream<Result<ConnInfo, Status>>;

    async fn start_stream(
        &self,
        request: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        let mut offers = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(offer)) = offers.message().await {
                tracing::debug!(
                    service_id = offer.service_id,
                    "the host offers a broker connection; this plugin uses no host services"
                );
            }
        });
        Ok(Response::new(held_open(self.stopped.clone())))
    }
}

struct Controller {
    stop: watch::Sender<bool>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::debug!("the host asks the plugin to stop");
        let _ = self.stop.send(true);
        Ok(Response::new(Empty {}))
    }
}

struct Stdio {
    stopped: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = ReceiverStream<Result<StdioData, Status>>;

    async fn stream_stdio(
        &self,
        _: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(held_open(self.stopped.clone())))
    }
}

struct InitService {
    services: Vec<String>,
}

#[tonic::async_trait]
impl Init for InitService {
    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        tracing::debug!(
            host_services = ?request.get_ref().host_service_names,
            "initialised; no host service is needed"
        );
        Ok(Response::new(InitResponse {
            plugin_service_names: self.services.clone(),
        }))
    }

    async fn deinit(&self, _: Request<DeinitRequest>) -> Result<Response<DeinitResponse>, Status> {
        Ok(Response::new(DeinitResponse {}))
    }
}
