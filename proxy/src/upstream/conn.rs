//! One upstream TCP connection with its read buffer and silence timer.
//!
//! The proxy speaks HTTP/1.1 to backends itself (see `http1`), inside the
//! task of the client request, so a connection is a plain socket plus the
//! bytes read from it and not yet used: no connection task, no channel.

use crate::deadline::Silence;
use bytes::BytesMut;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// Free space below which the read buffer grows before a read.
const MIN_SPARE: usize = 2048;
/// How much it grows by: most response heads and small bodies fit in one read.
const GROW: usize = 16 * 1024;

/// The message a read or write fails with when the backend stayed silent
/// too long; [`super::is_response_timeout`] recognises it.
pub(crate) const SILENT: &str = "backend sent nothing within the upstream timeout";

/// Boxed: a connection moves from its pool or pin into the exchange, into
/// the response body and home again on every request, and its state (a
/// socket, a buffer, a timer) is large enough that copying it each time cost
/// more than the one allocation per connection.
pub struct Conn(Box<State>);

struct State {
    tcp: TcpStream,
    /// Read from the backend and not yet consumed.
    buf: BytesMut,
    /// How long the backend may stay silent while the proxy waits on it
    /// (nginx's `proxy_read_timeout` and `proxy_send_timeout` in one). One
    /// timer per connection, not a `tokio::time::timeout` per request:
    /// registering and removing a timer on every request was measurable in
    /// the profile; see `deadline`.
    silence: Silence,
    /// The connection thread whose event loop the socket is registered
    /// with (see [`crate::workers::current`]).
    owner: Option<usize>,
}

impl Conn {
    pub fn new(tcp: TcpStream, timeout: Duration) -> Self {
        Self(Box::new(State {
            tcp,
            buf: BytesMut::new(),
            silence: Silence::new(timeout),
            owner: crate::workers::current(),
        }))
    }

    /// Whether the socket's readiness comes from this thread's event loop.
    pub(crate) fn is_local(&self) -> bool {
        self.0.owner == crate::workers::current()
    }

    /// Moves the socket to this thread's event loop (two `epoll_ctl`), so
    /// its wake-ups stop crossing threads; cheaper than a new connection.
    pub(crate) fn rebind(self) -> io::Result<Conn> {
        let State {
            tcp, buf, silence, ..
        } = *self.0;
        let tcp = TcpStream::from_std(tcp.into_std()?)?;
        Ok(Conn(Box::new(State {
            tcp,
            buf,
            silence,
            owner: crate::workers::current(),
        })))
    }

    /// Read from the backend and not yet consumed.
    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        &mut self.0.buf
    }

    pub(crate) fn has_unread(&self) -> bool {
        !self.0.buf.is_empty()
    }

    /// Reads whatever the backend has sent into `buf`; `Ok(0)` is its end of
    /// stream. Fails with a timeout once the backend has been silent too long.
    ///
    /// Through `AsyncRead`, not `try_read`: tokio then forgets the socket's
    /// readiness after a short read, so [`Conn::is_open`] on a connection
    /// whose answer was read whole needs no system call.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let this = &mut *self.0;
        if this.buf.capacity() - this.buf.len() < MIN_SPARE {
            this.buf.reserve(GROW);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.tcp), cx, &mut this.buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.silence.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_silence(cx).map(Err),
        }
    }

    /// Writes all of `data`; the backend not taking it for the silence
    /// timeout fails the write.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        // A request starts the backend's clock, whatever it did before.
        self.0.silence.moved();
        let mut written = 0;
        poll_fn(|cx| {
            while written < data.len() {
                match Pin::new(&mut self.0.tcp).poll_write(cx, &data[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        written += n;
                        self.0.silence.moved();
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return self.0.poll_silence(cx).map(Err),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Whether an idle connection can carry another request: the backend
    /// has neither closed it nor sent anything unasked. Costs no system call
    /// unless the socket has become readable since it was last read.
    pub fn is_open(&self) -> bool {
        if self.has_unread() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        // Pending unless the backend sent something (its close included)
        // since the last read came up short.
        match self.0.tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.0.tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// The socket and the bytes already read from it, for a tunnel.
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        let State { tcp, buf, .. } = *self.0;
        (tcp, buf)
    }
}

impl State {
    /// Called when a read or write must wait.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.silence
            .poll_expired(cx)
            .map(|()| io::Error::new(io::ErrorKind::TimedOut, SILENT))
    }
}
