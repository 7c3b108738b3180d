//! Makes HTTP/2 requests whose `:authority` is not a valid URI authority acceptable to h2.
//!
//! etcdctl 3.4 (and other clients on old grpc-go) dials per-endpoint calls such as
//! `endpoint status` through a passthrough target and sends the endpoint as it was written,
//! `:authority: http://127.0.0.1:2379`. grpc-go's server accepts that; h2 resets the stream
//! with PROTOCOL_ERROR ("malformed authority") before any service sees the request, and has
//! no option to relax the check. So every accepted connection reads through [`AuthorityFix`]:
//! when the client speaks HTTP/2, it follows the client-to-server frames, decodes each header
//! block with a decoder that mirrors the client's HPACK table, and when an `:authority` does
//! not parse it rewrites it (drops `scheme://` and any path; drops the field if that is still
//! not an authority) and re-encodes the block.
//!
//! HPACK state: blocks are forwarded byte for byte until the first rewrite, so h2's decoder
//! sees the client's own encoding. A rewritten block would leave h2's dynamic table different
//! from the client's, so the first one starts with a table size update to 0 and from then on
//! every block is re-encoded as literals without indexing: h2's table is empty and stays so.
//! Whatever cannot be followed (a decoding error, a frame sequence h2 will refuse, a header
//! block over [`MAX_HEADER_BLOCK`]) is forwarded unchanged and the filter steps aside for the
//! rest of the connection, so h2 reports the error itself. That is safe after a rewrite too:
//! h2's table then only holds entries the client added since, at the same (newest) indices
//! as in the client's table, so a block h2 decodes means what the client meant, and any other
//! reference fails in h2's decoder rather than decoding to something else.
//!
//! Server-to-client bytes are never touched. A connection that does not start with the
//! HTTP/2 preface (HTTP/1.1: /health, /metrics) is passed through from its first byte.

mod hpack;

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use hpack::Field;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame every HTTP/2 peer must accept (SETTINGS_MAX_FRAME_SIZE's initial value):
/// re-encoded blocks are cut into frames of at most this much payload.
const MAX_OUT_FRAME: usize = 16_384;
/// The largest header block (all its frames) the filter buffers. h2 refuses header lists over
/// 16 KiB decoded (hyper's default) anyway; past this the filter forwards and steps aside.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
const NAME_AUTHORITY: &[u8] = b":authority";
/// How much to ask the inner stream for at once.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Comparing the first bytes with the HTTP/2 client preface; the count matched so far.
    Preface(usize),
    /// Following frames.
    Frames,
    /// Forwarding everything unchanged until the connection ends.
    Passthrough,
}

/// The frames of one header block (HEADERS and its CONTINUATIONs), held until it is complete.
struct Block {
    stream_id: u32,
    end_stream: bool,
    /// The frames as received, forwarded when the block needs no change.
    raw: Vec<Bytes>,
    raw_len: usize,
    /// Where the header block fragment lies in the HEADERS frame.
    first_fragment: Range<usize>,
    /// The fragments of the CONTINUATION frames, concatenated.
    continued: Vec<u8>,
}

/// The client-to-server half of an HTTP/2 connection as a sans-IO filter: bytes in, bytes
/// out (see the module documentation).
pub struct Filter {
    phase: Phase,
    /// Payload bytes of the current (forwarded) frame still to pass.
    skip: usize,
    block: Option<Block>,
    decoder: hpack::Decoder,
    /// Once a block was re-encoded, h2's HPACK table no longer mirrors the client's.
    rewriting: bool,
    /// Blocks rewritten so far.
    rewritten: u64,
}

impl Default for Filter {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `value` is what h2 accepts as `:authority` (the same parser h2 uses).
fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// What to send h2 instead of an `:authority` it would refuse: without a `scheme://` prefix
/// and anything from the first `/`, `?` or `#`; `None` when even that does not parse.
fn repaired_authority(value: &[u8]) -> Option<&[u8]> {
    let without_scheme = value
        .windows(3)
        .position(|w| w == b"://")
        .map_or(value, |at| &value[at + 3..]);
    let end = without_scheme
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(without_scheme.len());
    let candidate = &without_scheme[..end];
    is_valid_authority(candidate).then_some(candidate)
}

impl Filter {
    pub fn new() -> Self {
        Self {
            phase: Phase::Preface(0),
            skip: 0,
            block: None,
            decoder: hpack::Decoder::new(),
            rewriting: false,
            rewritten: 0,
        }
    }

    /// Whether every further byte passes unchanged (the caller may then stop filtering).
    pub fn is_passthrough(&self) -> bool {
        self.phase == Phase::Passthrough
    }

    /// Header blocks re-encoded so far.
    pub fn rewritten_blocks(&self) -> u64 {
        self.rewritten
    }

    /// Moves what can be forwarded from `input` to `out`; what remains in `input` is an
    /// incomplete frame header or header block, waiting for more bytes.
    pub fn process(&mut self, input: &mut BytesMut, out: &mut VecDeque<Bytes>) {
        loop {
            if input.is_empty() {
                return;
            }
            match self.phase {
                Phase::Passthrough => {
                    out.push_back(input.split().freeze());
                    return;
                }
                Phase::Preface(matched) => {
                    let n = (PREFACE.len() - matched).min(input.len());
                    if input[..n] != PREFACE[matched..matched + n] {
                        self.phase = Phase::Passthrough;
                        continue;
                    }
                    out.push_back(input.split_to(n).freeze());
                    self.phase = if matched + n == PREFACE.len() {
                        Phase::Frames
                    } else {
                        Phase::Preface(matched + n)
                    };
                }
                Phase::Frames => {
                    if self.skip > 0 {
                        let n = self.skip.min(input.len());
                        out.push_back(input.split_to(n).freeze());
                        self.skip -= n;
                        continue;
                    }
                    if input.len() < FRAME_HEADER_LEN {
                        return;
                    }
                    let len = (usize::from(input[0]) << 16)
                        | (usize::from(input[1]) << 8)
                        | usize::from(input[2]);
                    let kind = input[3];
                    if kind != FRAME_HEADERS && kind != FRAME_CONTINUATION {
                        if self.block.is_some() {
                            // Only CONTINUATION may follow an unfinished block: h2 will
                            // refuse the connection; let it see exactly what came.
                            self.step_aside(input, out);
                            continue;
                        }
                        out.push_back(input.split_to(FRAME_HEADER_LEN).freeze());
                        self.skip = len;
                        continue;
                    }
                    let buffered = self.block.as_ref().map_or(0, |b| b.raw_len);
                    if buffered + FRAME_HEADER_LEN + len > MAX_HEADER_BLOCK {
                        self.step_aside(input, out);
                        continue;
                    }
                    if input.len() < FRAME_HEADER_LEN + len {
                        input.reserve(FRAME_HEADER_LEN + len - input.len());
                        return;
                    }
                    let frame = input.split_to(FRAME_HEADER_LEN + len).freeze();
                    if !self.header_frame(frame, out) {
                        self.step_aside(input, out);
                    }
                }
            }
        }
    }

    /// The input ended: whatever is held goes to h2 as it came (h2 reports the truncation).
    pub fn finish(&mut self, input: &mut BytesMut, out: &mut VecDeque<Bytes>) {
        if self.block.is_some() || !input.is_empty() {
            self.step_aside(input, out);
        }
    }

    /// Forwards a held block and the rest of the input unchanged, and stops filtering.
    fn step_aside(&mut self, input: &mut BytesMut, out: &mut VecDeque<Bytes>) {
        if let Some(block) = self.block.take() {
            out.extend(block.raw);
        }
        if !input.is_empty() {
            out.push_back(input.split().freeze());
        }
        self.phase = Phase::Passthrough;
    }

    /// Takes a complete HEADERS or CONTINUATION frame. Returns false when the frame cannot be
    /// followed; it is then part of the held block (forwarded by `step_aside`).
    fn header_frame(&mut self, frame: Bytes, out: &mut VecDeque<Bytes>) -> bool {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        if kind == FRAME_HEADERS {
            if self.block.is_some() {
                self.hold(frame);
                return false;
            }
            let Some(range) = headers_fragment(flags, payload) else {
                self.hold(frame);
                return false;
            };
            let first_fragment = FRAME_HEADER_LEN + range.start..FRAME_HEADER_LEN + range.end;
            let mut block = Block::new(stream_id, flags & FLAG_END_STREAM != 0, frame);
            block.first_fragment = first_fragment;
            self.block = Some(block);
        } else {
            let follows = self
                .block
                .as_ref()
                .is_some_and(|b| b.stream_id == stream_id);
            if !follows {
                self.hold(frame);
                return false;
            }
            if let Some(block) = self.block.as_mut() {
                block.continued.extend_from_slice(payload);
                block.raw_len += frame.len();
                block.raw.push(frame);
            }
        }
        if flags & FLAG_END_HEADERS == 0 {
            return true;
        }
        match self.block.take() {
            Some(block) => self.complete(block, out),
            None => true,
        }
    }

    /// Keeps a frame with the held block (creating one), so that `step_aside` forwards it.
    fn hold(&mut self, frame: Bytes) {
        match self.block.as_mut() {
            Some(block) => {
                block.raw_len += frame.len();
                block.raw.push(frame);
            }
            None => self.block = Some(Block::new(0, false, frame)),
        }
    }

    /// Decodes a complete block; forwards it unchanged or re-encoded.
    fn complete(&mut self, block: Block, out: &mut VecDeque<Bytes>) -> bool {
        let joined;
        let fragment: &[u8] = if block.raw.len() == 1 {
            &block.raw[0][block.first_fragment.clone()]
        } else {
            let mut all = block.raw[0][block.first_fragment.clone()].to_vec();
            all.extend_from_slice(&block.continued);
            joined = all;
            &joined
        };
        // A table size update to 0 goes first in the first re-encoded block only: it empties
        // h2's table, which literals without indexing then leave empty.
        let rewriting = self.rewriting;
        let capacity = if rewriting { fragment.len() + 64 } else { 64 };
        let mut encoded = Vec::with_capacity(capacity);
        hpack::encode_table_size_update(&mut encoded, 0);
        let size_update_len = encoded.len();
        // Encoding a field as a literal Huffman-codes it again, and most blocks pass unchanged:
        // until a rewrite only the fields up to the first `:authority` (the pseudo-headers
        // before it) are encoded, in case that one must be repaired.
        let mut needs_rewrite = false;
        let mut authority_seen = false;
        let mut every_field_encoded = true;
        let decoded = self.decoder.decode(fragment, |field| {
            let is_authority = field.name == NAME_AUTHORITY;
            if is_authority && !is_valid_authority(field.value) {
                needs_rewrite = true;
                if let Some(value) = repaired_authority(field.value) {
                    hpack::encode_literal(&mut encoded, Field { value, ..field });
                }
            } else if rewriting || needs_rewrite || !authority_seen {
                hpack::encode_literal(&mut encoded, field);
            } else {
                every_field_encoded = false;
            }
            authority_seen |= is_authority;
        });
        if let Err(e) = decoded {
            tracing::debug!(error = %e, "HTTP/2 header block not decodable; forwarding it to h2");
            self.block = Some(block);
            return false;
        }
        // Before any rewrite h2's table still mirrors the client's, so a block goes as sent when
        // it needs no rewrite, or when it was not encoded whole (a malformed `:authority` after
        // a valid one, which h2 refuses itself).
        if !rewriting && (!needs_rewrite || !every_field_encoded) {
            out.extend(block.raw);
            return true;
        }
        let start = if self.rewriting { size_update_len } else { 0 };
        self.rewriting = true;
        self.rewritten += 1;
        push_frames(out, block.stream_id, block.end_stream, &encoded[start..]);
        true
    }
}

impl Block {
    fn new(stream_id: u32, end_stream: bool, frame: Bytes) -> Self {
        Self {
            stream_id,
            end_stream,
            raw_len: frame.len(),
            raw: vec![frame],
            first_fragment: 0..0,
            continued: Vec::new(),
        }
    }
}

/// Where the header block fragment lies in a HEADERS payload, without the padding and
/// priority fields; `None` when they do not fit (h2 refuses such a frame).
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<Range<usize>> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & FLAG_PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    (start <= end).then_some(start..end)
}

/// A header block as a HEADERS frame and as many CONTINUATION frames as it needs.
fn push_frames(out: &mut VecDeque<Bytes>, stream_id: u32, end_stream: bool, block: &[u8]) {
    let chunks = block.len().div_ceil(MAX_OUT_FRAME).max(1);
    let mut frames = BytesMut::with_capacity(block.len() + chunks * FRAME_HEADER_LEN);
    let mut rest = block;
    let mut first = true;
    loop {
        let n = rest.len().min(MAX_OUT_FRAME);
        let (chunk, tail) = rest.split_at(n);
        let mut flags = 0;
        if first && end_stream {
            flags |= FLAG_END_STREAM;
        }
        if tail.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        let kind = if first {
            FRAME_HEADERS
        } else {
            FRAME_CONTINUATION
        };
        let len = (n as u32).to_be_bytes();
        frames.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
        frames.extend_from_slice(&stream_id.to_be_bytes());
        frames.extend_from_slice(chunk);
        first = false;
        rest = tail;
        if rest.is_empty() {
            break;
        }
    }
    out.push_back(frames.freeze());
}

/// A connection's byte stream with [`Filter`] on what the client sends.
pub struct AuthorityFix<S> {
    inner: S,
    filter: Filter,
    input: BytesMut,
    out: VecDeque<Bytes>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            filter: Filter::new(),
            input: BytesMut::new(),
            out: VecDeque::new(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Frames become several chunks (header, payload): hand over all that fits.
            let mut delivered = false;
            while buf.remaining() > 0 {
                let Some(chunk) = this.out.front_mut() else {
                    break;
                };
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                chunk.advance(n);
                if chunk.is_empty() {
                    this.out.pop_front();
                }
                delivered = true;
            }
            if delivered {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.filter.is_passthrough() && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            this.input.reserve(READ_CHUNK);
            let n = std::task::ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.input
            ))?;
            if n == 0 {
                this.eof = true;
                this.filter.finish(&mut this.input, &mut this.out);
            } else {
                let before = this.filter.rewritten_blocks();
                this.filter.process(&mut this.input, &mut this.out);
                if before == 0 && this.filter.rewritten_blocks() > 0 {
                    tracing::debug!("rewriting the malformed HTTP/2 :authority of a client");
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
