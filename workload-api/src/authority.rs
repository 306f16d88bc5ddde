//! Lets gRPC clients that put the socket path in `:authority` talk to this server.
//!
//! Over a Unix socket there is no host, and clients disagree on what to send as the
//! HTTP/2 `:authority`: grpc-go sends `localhost`, but gRPC C-core (py-spiffe, Ruby,
//! PHP, C++) sends the percent-encoded socket path (`tmp%2Fagent.sock`) and grpc-java
//! (java-spiffe) the raw path (`/tmp/agent.sock`). `h2`, under tonic, refuses both as
//! malformed (RST_STREAM PROTOCOL_ERROR, <https://github.com/hyperium/h2/pull/487>),
//! which would lock those SPIFFE clients out of the Workload API.
//!
//! [`LenientAuthority`] sits between the socket and `h2` and rewrites, in the
//! client-to-server byte stream, every request header block: it decodes the HPACK block
//! (with the connection's dynamic table, as the client encoded it), replaces an
//! `:authority` that is not a valid URI authority with `localhost`, and re-encodes the
//! block as literals without indexing, so that `h2`'s decoder never needs a dynamic
//! table entry it did not see. Every other frame passes through unchanged. The server
//! uses no `:authority` for anything, so nothing is lost.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use prost::bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload translated: the HTTP/2 default `SETTINGS_MAX_FRAME_SIZE`,
/// which this server does not raise. A larger frame is passed on for `h2` to refuse.
const MAX_FRAME: usize = 16_384;
/// Header blocks (HEADERS plus CONTINUATION) larger than this close the connection.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The decoded header list of one block, counted as HTTP/2 counts it (name, value and 32
/// octets per field, RFC 9113 §6.5.2), is bounded too: a small block of indexed references
/// to a large dynamic-table entry would otherwise decode to hundreds of MiB (an HPACK
/// bomb). The server advertises the same bound to clients
/// ([`MAX_HEADER_LIST_SIZE`]).
pub const MAX_HEADER_LIST_SIZE: usize = 64 * 1024;
/// The dynamic table size this server allows (`SETTINGS_HEADER_TABLE_SIZE`, never raised
/// from the HTTP/2 default): a client's table size update above it is a protocol error.
const MAX_TABLE_SIZE: usize = 4096;
/// CONTINUATION frames per header block, counted as `h2` counts them (enough frames for
/// the largest block, plus a quarter, at least 5): zero-length CONTINUATION frames add
/// nothing to a block's size and would otherwise be taken without end.
const MAX_CONTINUATION_FRAMES: usize = {
    let frames = MAX_HEADER_BLOCK / MAX_FRAME;
    let padded = frames + frames / 4;
    if padded > 5 { padded } else { 5 }
};

/// A stream whose client-to-server HTTP/2 header blocks get a valid `:authority`.
pub struct LenientAuthority<S> {
    inner: S,
    /// Raw bytes from the client not yet translated. Both buffers are released whenever
    /// they empty: most connections are idle streams, and a few KiB held by each of a
    /// thousand of them would show in the agent's memory.
    raw: BytesMut,
    /// Translated bytes for the server.
    ready: BytesMut,
    state: State,
    decoder: loona_hpack::Decoder<'static>,
    /// A header block being collected.
    block: Option<Block>,
    /// Payload bytes of a frame passed through in place that are still to come.
    skip: usize,
    /// Header blocks are being re-encoded (the first one's authority was invalid).
    translating: bool,
    eof: bool,
}

/// A header block being collected from HEADERS and CONTINUATION frames.
struct Block {
    stream_id: u32,
    end_stream: bool,
    fragments: Vec<u8>,
    /// CONTINUATION frames without END_HEADERS so far.
    continuations: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the connection preface.
    Preface,
    /// Translating frames.
    Frames,
    /// Not HTTP/2 as expected: bytes pass through and `h2` decides.
    PassThrough,
}

impl<S> LenientAuthority<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            state: State::Preface,
            decoder: new_decoder(),
            block: None,
            skip: 0,
            translating: false,
            eof: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Walks frames read straight into the caller's buffer (`bytes`, which starts where
    /// the last read ended). Returns where to start holding bytes back: the first header
    /// block, or a frame header cut short by the read. Everything before stays in place:
    /// most traffic (DATA, WINDOW_UPDATE, PING) is never copied.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut pos = 0;
        while pos < bytes.len() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() - pos);
                pos += n;
                self.skip -= n;
                continue;
            }
            if bytes.len() - pos < FRAME_HEADER {
                return Some(pos);
            }
            let len = usize::from(bytes[pos]) << 16
                | usize::from(bytes[pos + 1]) << 8
                | usize::from(bytes[pos + 2]);
            let kind = bytes[pos + 3];
            if kind == HEADERS || kind == CONTINUATION || len > MAX_FRAME {
                return Some(pos);
            }
            self.skip = len;
            pos += FRAME_HEADER;
        }
        None
    }

    /// Moves what can be translated from `raw` to `ready`.
    fn translate(&mut self) -> io::Result<()> {
        loop {
            match self.state {
                State::PassThrough => {
                    let all = self.raw.split();
                    self.ready.extend_from_slice(&all);
                    return Ok(());
                }
                State::Preface => {
                    let n = self.raw.len().min(PREFACE.len());
                    if self.raw[..n] != PREFACE[..n] {
                        self.state = State::PassThrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    let preface = self.raw.split_to(PREFACE.len());
                    self.ready.extend_from_slice(&preface);
                    self.state = State::Frames;
                }
                State::Frames => {
                    if self.raw.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let len = usize::from(self.raw[0]) << 16
                        | usize::from(self.raw[1]) << 8
                        | usize::from(self.raw[2]);
                    let kind = self.raw[3];
                    if len > MAX_FRAME {
                        self.state = State::PassThrough;
                        continue;
                    }
                    if self.raw.len() < FRAME_HEADER + len {
                        return Ok(());
                    }
                    let frame = self.raw.split_to(FRAME_HEADER + len);
                    match (kind, &self.block) {
                        (HEADERS, None) => self.headers(&frame)?,
                        (CONTINUATION, Some(_)) => self.continuation(&frame)?,
                        // A frame inside a header block is a protocol error `h2` reports;
                        // pass everything on from here.
                        (_, Some(_)) | (CONTINUATION, None) => {
                            self.ready.extend_from_slice(&frame);
                            self.state = State::PassThrough;
                        }
                        _ => self.ready.extend_from_slice(&frame),
                    }
                }
            }
        }
    }

    fn headers(&mut self, frame: &[u8]) -> io::Result<()> {
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut payload = &frame[FRAME_HEADER..];
        let mut pad = 0;
        if flags & PADDED != 0 {
            let (&n, rest) = payload
                .split_first()
                .ok_or_else(|| invalid("HEADERS frame too short"))?;
            pad = usize::from(n);
            payload = rest;
        }
        if flags & PRIORITY != 0 {
            payload = payload
                .get(5..)
                .ok_or_else(|| invalid("HEADERS frame too short"))?;
        }
        let fragment = payload
            .get(
                ..payload
                    .len()
                    .checked_sub(pad)
                    .ok_or_else(|| invalid("HEADERS padding too long"))?,
            )
            .unwrap_or_default();
        self.block = Some(Block {
            stream_id,
            end_stream: flags & END_STREAM != 0,
            fragments: fragment.to_vec(),
            continuations: 0,
        });
        if flags & END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(())
    }

    fn continuation(&mut self, frame: &[u8]) -> io::Result<()> {
        let flags = frame[4];
        if let Some(block) = &mut self.block {
            block.fragments.extend_from_slice(&frame[FRAME_HEADER..]);
            if block.fragments.len() > MAX_HEADER_BLOCK {
                return Err(invalid("header block too large"));
            }
            if flags & END_HEADERS == 0 {
                block.continuations += 1;
                if block.continuations > MAX_CONTINUATION_FRAMES {
                    return Err(invalid("too many CONTINUATION frames in one header block"));
                }
            }
        }
        if flags & END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(())
    }

    fn finish_block(&mut self) -> io::Result<()> {
        let Some(Block {
            stream_id,
            end_stream,
            fragments: block,
            ..
        }) = self.block.take()
        else {
            return Ok(());
        };
        // Decoded fields are counted before they are kept: past the bound nothing more
        // is stored, and the connection is closed once the block is read.
        let mut headers = Vec::new();
        let mut list_size = 0usize;
        self.decoder
            .decode_with_cb(&block, |name, value| {
                list_size = list_size
                    .saturating_add(name.len())
                    .saturating_add(value.len())
                    .saturating_add(32);
                if list_size <= MAX_HEADER_LIST_SIZE {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| invalid(&format!("undecodable header block: {e}")))?;
        if list_size > MAX_HEADER_LIST_SIZE {
            return Err(invalid("decoded header list too large"));
        }
        // A client keeps one authority per connection. If its first request's is valid
        // (grpc-go, tonic: `localhost`), its blocks go on untouched from here on, with no
        // decoding; the tables of client and server never diverge.
        let authority_valid = headers
            .iter()
            .find(|(name, _)| name == b":authority")
            .is_none_or(|(_, value)| http::uri::Authority::try_from(value.as_slice()).is_ok());
        if authority_valid && !self.translating {
            self.emit_block(stream_id, end_stream, &block);
            // `translate` passes on the rest of `raw` in this state; the decoder's table
            // is no longer needed.
            self.state = State::PassThrough;
            self.decoder = new_decoder();
            return Ok(());
        }
        self.translating = true;
        let mut encoded = Vec::with_capacity(block.len() + 64);
        for (name, value) in &headers {
            let value: &[u8] = if name == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                b"localhost"
            } else {
                value
            };
            // Literal header field without indexing, new name (RFC 7541, 6.2.2).
            encoded.push(0x00);
            encode_string(name, &mut encoded);
            encode_string(value, &mut encoded);
        }
        self.emit_block(stream_id, end_stream, &encoded);
        Ok(())
    }

    /// Frames a header block: HEADERS, then CONTINUATION frames for what does not fit.
    fn emit_block(&mut self, stream_id: u32, end_stream: bool, encoded: &[u8]) {
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        loop {
            let chunk = chunks.next().unwrap_or_default();
            let last = chunks.peek().is_none();
            let (kind, mut flags) = if first {
                (HEADERS, 0)
            } else {
                (CONTINUATION, 0)
            };
            if first && end_stream {
                flags |= END_STREAM;
            }
            if last {
                flags |= END_HEADERS;
            }
            let len = chunk.len();
            self.ready.extend_from_slice(&[
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                kind,
                flags,
            ]);
            self.ready.extend_from_slice(&stream_id.to_be_bytes());
            self.ready.extend_from_slice(chunk);
            first = false;
            if last {
                return;
            }
        }
    }
}

/// An HPACK decoder bounded as this server's settings say.
fn new_decoder() -> loona_hpack::Decoder<'static> {
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(MAX_TABLE_SIZE);
    decoder
}

/// An HPACK string literal, not Huffman-coded (RFC 7541, 5.2).
fn encode_string(bytes: &[u8], out: &mut Vec<u8>) {
    encode_integer(bytes.len(), 7, 0x00, out);
    out.extend_from_slice(bytes);
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541, 5.1).
fn encode_integer(mut value: usize, prefix: u8, high_bits: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(high_bits | value as u8);
        return;
    }
    out.push(high_bits | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// What the server reads through the shim when a client's bytes arrive as `chunks`, one
/// read each, until the end of the stream; or the error that ends the connection. No
/// I/O and no runtime: for the fuzz target (`fuzz/fuzz_targets/authority.rs`), which
/// also checks that how the bytes are cut into reads does not change the outcome.
#[doc(hidden)]
pub fn read_through(chunks: &[&[u8]]) -> io::Result<Vec<u8>> {
    /// A client whose reads return `chunks` in order (each cut to the reader's buffer).
    struct Chunks<'a> {
        chunks: std::slice::Iter<'a, &'a [u8]>,
        current: &'a [u8],
    }
    impl AsyncRead for Chunks<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            while self.current.is_empty() {
                match self.chunks.next() {
                    Some(next) => self.current = next,
                    None => return Poll::Ready(Ok(())),
                }
            }
            let n = self.current.len().min(buf.remaining());
            buf.put_slice(&self.current[..n]);
            self.current = &self.current[n..];
            Poll::Ready(Ok(()))
        }
    }
    let mut shim = LenientAuthority::new(Chunks {
        chunks: chunks.iter(),
        current: &[],
    });
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut shim).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => return Ok(out),
            Poll::Ready(Ok(())) => out.extend_from_slice(read.filled()),
            Poll::Ready(Err(error)) => return Err(error),
            Poll::Pending => return Err(invalid("the shim waited on a reader that never waits")),
        }
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

impl<S: AsyncRead + Unpin> AsyncRead for LenientAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                if this.ready.is_empty() {
                    this.ready = BytesMut::new();
                }
                if this.raw.is_empty() {
                    this.raw = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What could not be translated (a partial frame) goes on as it is.
                if !this.raw.is_empty() {
                    let rest = this.raw.split();
                    this.ready.extend_from_slice(&rest);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            if this.raw.is_empty() && this.state != State::Preface {
                // At a frame boundary with nothing held: read in place.
                let start = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let end = buf.filled().len();
                if end == start {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                if this.state == State::PassThrough {
                    return Poll::Ready(Ok(()));
                }
                let Some(at) = this.scan(&buf.filled()[start..end]) else {
                    return Poll::Ready(Ok(()));
                };
                let held = start + at;
                this.raw.extend_from_slice(&buf.filled()[held..end]);
                buf.set_filled(held);
                this.translate()?;
                if held > start {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; 8 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
            } else {
                this.raw.extend_from_slice(read.filled());
                this.translate()?;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LenientAuthority<S> {
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for LenientAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_encode_as_rfc7541_says() {
        // RFC 7541, C.1.1 and C.1.2.
        let mut out = Vec::new();
        encode_integer(10, 5, 0, &mut out);
        assert_eq!(out, [0x0a]);
        out.clear();
        encode_integer(1337, 5, 0, &mut out);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
    }

    fn translate_all(input: &[u8]) -> Vec<u8> {
        let mut stream = LenientAuthority::new(());
        stream.raw.extend_from_slice(input);
        stream.translate().unwrap();
        stream.ready.to_vec()
    }

    fn headers_frame(block: &[u8], flags: u8) -> Vec<u8> {
        let len = block.len();
        let mut frame = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            HEADERS,
            flags,
            0,
            0,
            0,
            1,
        ];
        frame.extend_from_slice(block);
        frame
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let mut encoder = loona_hpack::Encoder::new();
        let request = [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", b"tmp%2Fagent.sock"),
            (b"workload.spiffe.io", b"true"),
        ];
        let block = encoder.encode(request.iter().copied());
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&headers_frame(&block, END_HEADERS));
        // A second request on the same connection, using the client's dynamic table.
        let second = encoder.encode([
            (&b":authority"[..], &b"/tmp/agent.sock"[..]),
            (b"workload.spiffe.io", b"true"),
        ]);
        input.extend_from_slice(&headers_frame(&second, END_HEADERS | END_STREAM));
        let settings = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
        input.extend_from_slice(&settings);

        let output = translate_all(&input);
        assert!(output.starts_with(PREFACE));
        let mut decoder = loona_hpack::Decoder::new();
        let mut rest = &output[PREFACE.len()..];
        let mut blocks = Vec::new();
        while rest.len() >= FRAME_HEADER {
            let len = usize::from(rest[2]) | usize::from(rest[1]) << 8;
            if rest[3] == HEADERS {
                blocks.push((
                    rest[4],
                    decoder
                        .decode(&rest[FRAME_HEADER..FRAME_HEADER + len])
                        .unwrap(),
                ));
            } else {
                assert_eq!(
                    &rest[..FRAME_HEADER + len],
                    settings,
                    "other frames pass unchanged"
                );
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        assert_eq!(blocks.len(), 2);
        let (flags, first) = &blocks[0];
        assert_eq!(*flags, END_HEADERS);
        assert!(first.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
        assert!(first.contains(&(
            b":path".to_vec(),
            b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec()
        )));
        assert!(first.contains(&(b"workload.spiffe.io".to_vec(), b"true".to_vec())));
        let (flags, second) = &blocks[1];
        assert_eq!(*flags, END_HEADERS | END_STREAM);
        assert_eq!(second[0], (b":authority".to_vec(), b"localhost".to_vec()));
    }

    fn translate_result(input: &[u8]) -> io::Result<Vec<u8>> {
        let mut stream = LenientAuthority::new(());
        stream.raw.extend_from_slice(input);
        stream.translate()?;
        Ok(stream.ready.to_vec())
    }

    /// One 64 KiB block of indexed references to a 4 KiB dynamic-table entry would decode
    /// to hundreds of MiB; the decoded list is counted and refused past its bound.
    #[test]
    fn hostile_hpack_bomb_is_refused_without_decoding_it_into_memory() {
        let mut block = Vec::new();
        // Literal with incremental indexing, new name (0x40): a 4000-byte value into the
        // dynamic table (index 62), then as many one-byte references to it as fit.
        block.push(0x40);
        encode_string(b"x-bomb", &mut block);
        encode_string(&[b'a'; 4000], &mut block);
        while block.len() < MAX_HEADER_BLOCK - 2 {
            block.push(0x80 | 62);
        }
        let mut input = PREFACE.to_vec();
        // The block in HEADERS plus CONTINUATION frames of the largest size.
        let mut chunks = block.chunks(MAX_FRAME).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let mut frame = headers_frame(
                chunk,
                if chunks.peek().is_none() {
                    END_HEADERS
                } else {
                    0
                },
            );
            if !first {
                frame[3] = CONTINUATION;
            }
            first = false;
            input.extend_from_slice(&frame);
        }
        let error = translate_result(&input).unwrap_err();
        assert!(
            error.to_string().contains("decoded header list too large"),
            "{error}"
        );
    }

    #[test]
    fn hostile_dynamic_table_size_update_over_the_settings_is_refused() {
        // A dynamic table size update (0x20 prefix, 5 bits) to 1 MiB, then a header.
        let mut block = Vec::new();
        encode_integer(1 << 20, 5, 0x20, &mut block);
        block.push(0x82); // :method GET
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&headers_frame(&block, END_HEADERS));
        let error = translate_result(&input).unwrap_err();
        assert!(
            error.to_string().contains("undecodable header block"),
            "{error}"
        );
    }

    #[test]
    fn hostile_empty_continuation_frames_are_counted_as_h2_counts_them() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encoder.encode([(&b":authority"[..], &b"a%2Fb.sock"[..])]);
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&headers_frame(&block, 0));
        let mut empty = headers_frame(&[], 0);
        empty[3] = CONTINUATION;
        for _ in 0..=MAX_CONTINUATION_FRAMES {
            input.extend_from_slice(&empty);
        }
        let error = translate_result(&input).unwrap_err();
        assert!(
            error.to_string().contains("too many CONTINUATION frames"),
            "{error}"
        );
        // A few empty ones, then the end of the block, are accepted.
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&headers_frame(&block, 0));
        for _ in 0..MAX_CONTINUATION_FRAMES {
            input.extend_from_slice(&empty);
        }
        let mut last = headers_frame(&[], END_HEADERS);
        last[3] = CONTINUATION;
        input.extend_from_slice(&last);
        translate_result(&input).unwrap();
    }

    /// Through `poll_read`, with the input cut into pieces of every size: the same
    /// bytes come out as from a single translation.
    #[tokio::test]
    async fn reading_in_pieces_gives_the_same_bytes() {
        use tokio::io::AsyncReadExt as _;
        let mut encoder = loona_hpack::Encoder::new();
        let block = encoder.encode([
            (&b":path"[..], &b"/SpiffeWorkloadAPI/FetchX509SVID"[..]),
            (b":authority", b"a%2Fb.sock"),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        input.extend_from_slice(&headers_frame(&block, END_HEADERS));
        input.extend_from_slice(&[0, 0, 5, 0x0, 0x1, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
        input.extend_from_slice(&[0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        let expected = translate_all(&input);
        assert_ne!(expected, input, "the authority was rewritten");
        for piece in 1..=input.len() {
            let mut builder = tokio_test_io(&input, piece);
            let mut stream = LenientAuthority::new(&mut builder);
            let mut output = Vec::new();
            stream.read_to_end(&mut output).await.unwrap();
            assert_eq!(output, expected, "pieces of {piece}");
        }
    }

    /// A reader that hands out `input` `piece` bytes at a time.
    fn tokio_test_io(input: &[u8], piece: usize) -> impl AsyncRead + Unpin {
        struct Pieces(Vec<u8>, usize);
        impl AsyncRead for Pieces {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let n = self.1.min(self.0.len()).min(buf.remaining());
                let chunk: Vec<u8> = self.0.drain(..n).collect();
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
        }
        Pieces(input.to_vec(), piece)
    }

    #[test]
    fn a_valid_authority_and_non_http2_bytes_are_left_alone() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encoder.encode([(&b":authority"[..], &b"localhost:80"[..])]);
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&headers_frame(&block, END_HEADERS));
        let second = encoder.encode([(&b":authority"[..], &b"localhost:80"[..])]);
        input.extend_from_slice(&headers_frame(&second, END_HEADERS));
        assert_eq!(
            translate_all(&input),
            input,
            "a valid authority leaves the connection untouched"
        );

        let garbage = b"GET / HTTP/1.1\r\n\r\n\x00\xff";
        assert_eq!(translate_all(garbage), garbage);
    }
}
