//! Coalesces a connection's writes: one socket write for the answers that become ready together.
//!
//! Each HTTP/2 stream's answer is produced by its own task, and the connection task flushed
//! after each one, so a batch of answers completed together cost one write(2) each (about one
//! per put under load; etcd's writer goroutine sends a batch per write). Here a flush yields
//! once to the scheduler before writing, so the stream tasks already woken queue their frames
//! first and the next flush sends them all. Nothing waits on a timer: the yield is one pass of
//! the runtime's queue.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write is issued without waiting for a flush.
const HOLD_AT_MOST: usize = 256 << 10;
/// A buffer that grew past this (a large answer) is released once written, so an idle
/// connection keeps little memory.
const KEEP_CAPACITY: usize = 64 << 10;

pub struct CoalescedWrites<S> {
    inner: S,
    pending: Vec<u8>,
    /// Bytes of `pending` already written.
    written: usize,
    /// The current flush has yielded once already.
    yielded: bool,
}

impl<S> CoalescedWrites<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
            yielded: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> CoalescedWrites<S> {
    /// Writes what is held; `Ready(Ok)` once all of it is written.
    fn write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.pending.capacity() > KEEP_CAPACITY {
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescedWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.len() >= HOLD_AT_MOST {
            match self.write_pending(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.pending.len() >= HOLD_AT_MOST {
            match self.write_pending(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut total = 0;
        for buf in bufs {
            self.pending.extend_from_slice(buf);
            total += buf.len();
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match self.write_pending(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.write_pending(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn held_writes_go_out_on_flush_and_on_shutdown() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut writes = CoalescedWrites::new(near);
        writes.write_all(b"one ").await.expect("write");
        writes.write_all(b"two ").await.expect("write");
        writes.flush().await.expect("flush");
        let mut got = [0u8; 8];
        far.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"one two ");
        writes.write_all(b"three").await.expect("write");
        writes.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.expect("read to end");
        assert_eq!(rest, b"three");
    }

    #[tokio::test]
    async fn a_slow_reader_holds_the_writer_back() {
        // The peer reads nothing: the writer must stop accepting bytes once the socket and
        // the held bytes are full, instead of buffering without bound.
        let (near, _far) = tokio::io::duplex(4096);
        let mut writes = CoalescedWrites::new(near);
        let chunk = vec![7u8; 16 << 10];
        let mut accepted = 0usize;
        let outcome = tokio::time::timeout(std::time::Duration::from_millis(300), async {
            loop {
                writes.write_all(&chunk).await.expect("write");
                accepted += chunk.len();
            }
        })
        .await;
        assert!(outcome.is_err(), "the writer never blocked");
        assert!(
            accepted <= HOLD_AT_MOST + chunk.len() + 4096,
            "{accepted} bytes accepted by a connection nobody reads"
        );
    }
}
