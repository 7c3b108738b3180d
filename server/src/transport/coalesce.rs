//! Coalesces a client connection's writes: one socket write for the answers that become ready
//! together.
//!
//! Each HTTP/2 stream's answer is produced by its own task, and the connection task flushes
//! after each one, so a batch of answers completed together (one raft apply answers dozens of
//! puts) cost one write(2) each; etcd's writer goroutine sends a batch per write. Here a flush
//! yields once to the scheduler before writing while other requests of the connection are still
//! being answered, so the answer tasks already woken queue their frames first and the next
//! flush sends them all. A lone request's answer (nothing else in flight) is written at once:
//! the yield would only delay it. Nothing waits on a timer: the yield is one pass of the
//! runtime's queue.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write is issued without waiting for a flush.
const HOLD_AT_MOST: usize = 256 << 10;
/// A buffer that grew past this (a large answer) is released once written, so an idle
/// connection keeps little memory.
const KEEP_CAPACITY: usize = 64 << 10;

/// Requests of one connection whose answer is not ready yet.
#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts `answer` as in flight until it is ready (or dropped).
    pub fn track<F: Future>(&self, answer: F) -> impl Future<Output = F::Output> {
        let guard = InFlightGuard::new(self.0.clone());
        async move {
            let output = answer.await;
            drop(guard);
            output
        }
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Acquire) > 0
    }
}

struct InFlightGuard(Arc<AtomicUsize>);

impl InFlightGuard {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's stream; writes pass straight through unless requests are counted in
/// `in_flight`.
pub struct CoalescedWrites<S> {
    inner: S,
    in_flight: Option<InFlight>,
    pending: Vec<u8>,
    /// Bytes of `pending` already written.
    written: usize,
    /// The current flush has yielded once already.
    yielded: bool,
}

impl<S> CoalescedWrites<S> {
    pub fn new(inner: S, in_flight: Option<InFlight>) -> Self {
        Self {
            inner,
            in_flight,
            pending: Vec::new(),
            written: 0,
            yielded: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> CoalescedWrites<S> {
    /// Writes what is held once it reaches [`HOLD_AT_MOST`], so that a connection nobody
    /// reads holds the writer back instead of growing the buffer.
    fn make_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.len() >= HOLD_AT_MOST {
            self.write_pending(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }

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
        if self.in_flight.is_none() {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        std::task::ready!(self.make_room(cx))?;
        self.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.in_flight.is_none() {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        std::task::ready!(self.make_room(cx))?;
        let mut total = 0;
        for buf in bufs {
            self.pending.extend_from_slice(buf);
            total += buf.len();
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        self.in_flight.is_some() || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        if !self.yielded && self.in_flight.as_ref().is_some_and(InFlight::any) {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(self.write_pending(cx))?;
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.write_pending(cx))?;
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
        let mut writes = CoalescedWrites::new(near, Some(InFlight::default()));
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
    async fn a_flush_waits_one_pass_while_other_answers_are_in_flight() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let in_flight = InFlight::default();
        let mut writes = CoalescedWrites::new(near, Some(in_flight.clone()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let other_answer = InFlightGuard::new(in_flight.0.clone());
        writes.write_all(b"one ").await.expect("write");
        assert!(Pin::new(&mut writes).poll_flush(&mut cx).is_pending());
        writes.write_all(b"two ").await.expect("write");
        assert!(Pin::new(&mut writes).poll_flush(&mut cx).is_ready());
        let mut got = [0u8; 64];
        let n = far.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], b"one two ", "both answers in one write");

        // Nothing else in flight: a lone answer is written by its own flush.
        drop(other_answer);
        writes.write_all(b"three").await.expect("write");
        assert!(Pin::new(&mut writes).poll_flush(&mut cx).is_ready());
        let n = far.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], b"three");
    }

    #[tokio::test]
    async fn tracked_answers_count_until_ready_or_dropped() {
        let in_flight = InFlight::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let answer = in_flight.track(rx);
        let dropped = in_flight.track(std::future::pending::<()>());
        assert_eq!(in_flight.0.load(Ordering::Acquire), 2);
        drop(dropped);
        assert!(in_flight.any());
        tx.send(7).expect("send");
        assert_eq!(answer.await.expect("answer"), 7);
        assert!(!in_flight.any());
    }

    #[tokio::test]
    async fn a_slow_reader_holds_the_writer_back() {
        // The peer reads nothing: the writer must stop accepting bytes once the socket and
        // the held bytes are full, instead of buffering without bound.
        let (near, _far) = tokio::io::duplex(4096);
        let mut writes = CoalescedWrites::new(near, Some(InFlight::default()));
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
