//! The client's byte stream as hyper reads it: an idle timeout, a request
//! head timeout, and a look at raw request heads for the framing tricks
//! hyper's parser resolves silently.
//!
//! The head timeout is kept here rather than by hyper, which arms a fresh
//! timer for every request (an allocation, a clock read and a timer-wheel
//! insertion and removal, about a twentieth of a proxied request's
//! instructions). As in nginx, a head is timed from its first byte (or from
//! the accept, for a connection's first request) and the wait between
//! requests is the idle timeout's; the clock is read only when a head does
//! not arrive in one read, which is rare.
//!
//! Every byte read is also fed to the [`HeadScan`], which flags the
//! connection when a head has framing that a front door must refuse.

use crate::deadline::{LazyDeadline, Silence};
use crate::head_scan::HeadScan;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What the scanner found, read by the request service, and where the
/// connection's requests are, told by the service.
#[derive(Debug, Default)]
pub struct ConnFlags {
    framing_conflict: AtomicBool,
    /// Request heads hyper handed to the service.
    heads: AtomicU64,
    /// Responses finished (written or abandoned).
    answered: AtomicU64,
    /// The last write to the client could not be taken: the client reads
    /// slower than answers come (see [`crate::linger`]).
    write_blocked: AtomicBool,
    /// An HTTP/2 request came in: the connection is HTTP/2.
    http2: AtomicBool,
}

impl ConnFlags {
    /// Whether a head on this connection had duplicate `Content-Length` or
    /// both `Content-Length` and `Transfer-Encoding`.
    pub fn framing_conflict(&self) -> bool {
        self.framing_conflict.load(Relaxed)
    }

    /// A complete head reached the service; returns how many have.
    pub fn head_read(&self) -> u64 {
        self.heads.fetch_add(1, Relaxed) + 1
    }

    /// Whether the client's socket took the last write only in part or not
    /// at all (it is not reading, or reading slowly).
    pub fn write_blocked(&self) -> bool {
        self.write_blocked.load(Relaxed)
    }

    /// A response is over: what the client sends next is a new head. Not
    /// called for a 101, after which the connection carries a tunnel.
    pub fn answered(&self) {
        self.answered.fetch_add(1, Relaxed);
    }

    /// Marks the connection as HTTP/2 (told by the service, per request).
    pub fn saw_http2(&self) {
        self.http2.store(true, Relaxed);
    }

    pub fn is_http2(&self) -> bool {
        self.http2.load(Relaxed)
    }

    /// The count of answers so far when every request read was answered
    /// (the connection waits for the next one), else `None`. Read by
    /// [`retire`](crate::retire), never on the request path.
    pub fn between_requests(&self) -> Option<u64> {
        let answered = self.answered.load(Relaxed);
        (self.heads.load(Relaxed) == answered).then_some(answered)
    }
}

/// An I/O stream closed after `idle` without a byte read or written, or when
/// a request head takes longer than the head timeout.
pub struct WireIo<I> {
    inner: I,
    scan: HeadScan,
    flags: Arc<ConnFlags>,
    idle: Silence,
    head: HeadClock,
}

/// Times the request head being read, if one is.
struct HeadClock {
    limit: Duration,
    /// The head being read: the count of heads before it, and its deadline
    /// once the clock has been read (at its first wait).
    current: Option<(u64, Option<Instant>)>,
    timer: LazyDeadline,
}

impl<I> WireIo<I> {
    pub fn new(inner: I, idle: Duration, head: Duration) -> (Self, Arc<ConnFlags>) {
        let flags = Arc::new(ConnFlags::default());
        let io = WireIo {
            inner,
            scan: HeadScan::default(),
            flags: Arc::clone(&flags),
            idle: Silence::new(idle),
            // The first head is timed from the accept.
            head: HeadClock {
                limit: head,
                current: Some((0, None)),
                timer: LazyDeadline::default(),
            },
        };
        (io, flags)
    }

    /// Bytes arrived: when every request so far is answered, they start a
    /// head.
    fn note_read(&mut self) {
        let heads = self.flags.heads.load(Relaxed);
        if matches!(self.head.current, Some((before, _)) if before == heads) {
            return;
        }
        let between = heads == self.flags.answered.load(Relaxed);
        self.head.current = between.then_some((heads, None));
    }

    /// Bytes left, or could not: the idle clock, and whether the client
    /// keeps up (read only when its connection waits; stored only when it
    /// changes, so a client that keeps up costs a load per write).
    fn note_write(&mut self, r: &Poll<io::Result<usize>>) {
        let blocked = match r {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.idle.moved();
                false
            }
            Poll::Pending => true,
            _ => return,
        };
        if self.flags.write_blocked.load(Relaxed) != blocked {
            self.flags.write_blocked.store(blocked, Relaxed);
        }
    }

    /// Polled only while a read is pending (see [`Silence`]).
    fn poll_timeouts(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if let Some((before, deadline)) = &mut self.head.current {
            // Not timed: a head hyper has since parsed, and HTTP/2, whose
            // streams come and go on a connection the idle timeout governs.
            if self.flags.heads.load(Relaxed) != *before || self.scan.saw_h2_preface() {
                self.head.current = None;
            } else {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.head.limit);
                if self.head.timer.poll_passed(cx, deadline).is_ready() {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received in time",
                    ));
                }
            }
        }
        self.idle
            .poll_expired(cx)
            .map(|()| io::Error::new(io::ErrorKind::TimedOut, "client connection idle"))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WireIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    this.idle.moved();
                    if this.scan.feed(new) {
                        this.flags.framing_conflict.store(true, Relaxed);
                    }
                    this.note_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.poll_timeouts(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WireIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        this.note_write(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note_write(&r);
        r
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
