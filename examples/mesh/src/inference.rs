//! The inference service: an mTLS server that accepts only the gateway's SPIFFE ID and
//! answers prompts with a model key it could open only as the attested inference enclave.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use enclaveid_io::{Listener, Stream};
use spiffe::X509Source;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::Error;
use crate::tls::{CrlFiles, Trust};
use crate::wire::{self, Request, Response};

/// A handshake that has not finished in this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The inference server.
pub struct Inference {
    acceptor: TlsAcceptor,
    trust: Trust,
    crls: CrlFiles,
    model_key: Zeroizing<Vec<u8>>,
    received: Arc<AtomicU64>,
}

impl Inference {
    /// A server with the SVIDs of `source`, accepting the clients in `allow`, checking
    /// their chains against `crls`, answering with `model_key`.
    pub fn new(
        source: X509Source,
        allow: &[String],
        crls: CrlFiles,
        model_key: Zeroizing<Vec<u8>>,
    ) -> Result<Self, Error> {
        let trust = Trust::Spiffe {
            source,
            allow: allow.to_vec(),
            attestation: None,
        };
        Self::with_trust(trust, crls, model_key)
    }

    /// A server that is and accepts what `trust` says, checking clients' chains against
    /// `crls`, answering with `model_key`.
    pub fn with_trust(
        trust: Trust,
        crls: CrlFiles,
        model_key: Zeroizing<Vec<u8>>,
    ) -> Result<Self, Error> {
        Ok(Self {
            acceptor: TlsAcceptor::from(trust.server_config()?),
            trust,
            crls,
            model_key,
            received: Arc::default(),
        })
    }

    /// The count of requests the application has received, live.
    pub fn received(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, listener: Listener, shutdown: CancellationToken) {
        let this = Arc::new(self);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let this = this.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    result = this.connection(stream) => if let Err(error) = result {
                        tracing::info!(%peer, %error, "connection refused or failed");
                    },
                    () = stop.cancelled() => {}
                }
            });
        }
    }

    async fn connection(&self, stream: Box<dyn Stream>) -> Result<(), Error> {
        let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream))
            .await
            .map_err(|_| Error::Tls("no handshake in time".into()))?
            .map_err(|e| Error::Tls(e.to_string()))?;
        let (_, conn) = tls.get_ref();
        let chain = conn.peer_certificates().unwrap_or_default().to_vec();
        let checked = self
            .trust
            .peer(&chain)
            .and_then(|peer| self.crls.check(&chain, &self.trust).map(|()| peer));
        let (client, client_serial) = match checked {
            Ok(peer) => peer,
            Err(error) => {
                // The handshake is over, so no alert can say why: close cleanly
                // (close_notify) before reading a byte of the request.
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                return Err(error);
            }
        };
        let served_by = self.trust.own_id()?;
        let peer = Peer {
            served_by: &served_by,
            client: &client,
            client_serial: &client_serial,
        };
        answer_requests(&mut tls, &self.model_key, &peer, &self.received).await
    }
}

/// The model: the answer to `prompt` is its HMAC-SHA256 under the model key, in hex.
pub fn answer(model_key: &[u8], prompt: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, model_key);
    enclaveid_attestor::hex(aws_lc_rs::hmac::sign(&key, prompt.as_bytes()).as_ref())
}

/// Who talks on a connection, for the responses.
pub struct Peer<'a> {
    /// The server's SPIFFE ID.
    pub served_by: &'a str,
    /// The client's SPIFFE ID.
    pub client: &'a str,
    /// The client certificate's serial.
    pub client_serial: &'a str,
}

/// Answers requests on `io` until the client closes it.
pub async fn answer_requests(
    io: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    model_key: &[u8],
    peer: &Peer<'_>,
    received: &AtomicU64,
) -> Result<(), Error> {
    while let Some(request) = wire::read::<Request>(io).await? {
        received.fetch_add(1, Ordering::Relaxed);
        let response = Response {
            answer: answer(model_key, &request.prompt),
            served_by: peer.served_by.to_owned(),
            client: peer.client.to_owned(),
            client_serial: peer.client_serial.to_owned(),
        };
        wire::write(io, &response).await?;
    }
    Ok(())
}

/// The same service without TLS or identities: the floor the benchmark compares with.
pub async fn serve_plain(
    listener: Listener,
    model_key: Zeroizing<Vec<u8>>,
    shutdown: CancellationToken,
) {
    let model_key = Arc::new(model_key);
    loop {
        let (mut stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = shutdown.cancelled() => return,
        };
        let key = model_key.clone();
        tokio::spawn(async move {
            let peer = Peer {
                served_by: "",
                client: "",
                client_serial: "",
            };
            let _ = answer_requests(&mut stream, &key, &peer, &AtomicU64::new(0)).await;
        });
    }
}
