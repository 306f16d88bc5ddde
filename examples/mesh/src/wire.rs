//! What travels inside the TLS stream: length-prefixed JSON frames (u32 big-endian length,
//! at most [`MAX_FRAME`] bytes), a [`Request`] then a [`Response`], as many times as the
//! client wants on one connection.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::Error;

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 64 * 1024;

/// A prompt for the model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// The prompt.
    pub prompt: String,
}

/// The model's answer, and who answered whom.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response {
    /// The answer: an HMAC-SHA256 of the prompt under the model key (hex), which only a
    /// holder of the key can produce.
    pub answer: String,
    /// The server's own SPIFFE ID (from its current SVID).
    pub served_by: String,
    /// The client's SPIFFE ID as the server authenticated it in the handshake.
    pub client: String,
    /// The client certificate's serial (hex), as the server saw it.
    pub client_serial: String,
}

/// Writes one frame.
pub async fn write<T: Serialize>(
    io: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> Result<(), Error> {
    let body = serde_json::to_vec(message).map_err(|e| Error::Protocol(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(Error::Protocol(format!(
            "a frame of {} bytes is over the limit of {MAX_FRAME}",
            body.len()
        )));
    }
    let len = u32::try_from(body.len()).map_err(|e| Error::Protocol(e.to_string()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    io.write_all(&frame).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one frame; `None` when the peer closed the connection between frames.
pub async fn read<T: for<'de> Deserialize<'de>>(
    io: &mut (impl AsyncRead + Unpin),
) -> Result<Option<T>, Error> {
    let mut len = [0u8; 4];
    match io.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(Error::Protocol(format!(
            "a frame of {len} bytes announced; the limit is {MAX_FRAME}"
        )));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| Error::Protocol(format!("a frame is not the expected JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_or_garbage_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let request = Request {
            prompt: "hello".into(),
        };
        write(&mut a, &request).await.unwrap();
        assert_eq!(read::<Request>(&mut b).await.unwrap(), Some(request));

        let huge = Request {
            prompt: "x".repeat(MAX_FRAME),
        };
        assert!(matches!(
            write(&mut a, &huge).await,
            Err(Error::Protocol(_))
        ));

        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let error = read::<Request>(&mut b).await.unwrap_err().to_string();
        assert!(error.contains("limit"), "{error}");

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{{{").await.unwrap();
        let error = read::<Request>(&mut b).await.unwrap_err().to_string();
        assert!(error.contains("not the expected JSON"), "{error}");

        drop(a);
        assert_eq!(read::<Request>(&mut b).await.unwrap(), None, "clean EOF");
    }
}
