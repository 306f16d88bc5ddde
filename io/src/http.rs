//! A small HTTP/1.1 responder for read-only endpoints (metrics, health): each request's
//! path is answered by a function, a connection lives at most 30 s, failed accepts back off.

use std::time::Duration;

use crate::{AcceptBackoff, Listener};

/// A connection is closed after this long, answered or not.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// What a path is answered with.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `content-type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

/// The OpenMetrics text format's content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Plain text.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// Answers every request on `listener` with `respond(path)` until `shutdown` resolves.
pub async fn serve(
    listener: Listener,
    respond: impl Fn(&str) -> Reply + Clone + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff.succeeded();
                    accepted
                }
                Err(error) => {
                    tracing::warn!(%error, "HTTP endpoint: accept failed");
                    tokio::time::sleep(backoff.failed()).await;
                    continue;
                }
            },
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let reply = respond(request.uri().path());
                    async move {
                        hyper::Response::builder()
                            .status(reply.status)
                            .header("content-type", reply.content_type)
                            .body(http_body_util::Full::new(hyper::body::Bytes::from(
                                reply.body,
                            )))
                    }
                },
            );
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = tokio::time::timeout(
                CONNECTION_LIFETIME,
                hyper::server::conn::http1::Builder::new().serve_connection(io, service),
            )
            .await;
        });
    }
}
