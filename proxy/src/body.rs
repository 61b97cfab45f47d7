//! The response body the proxy hands to hyper.

use crate::deadline::Silence;
use crate::drain::InFlight;
use crate::observe::Exchange;
use crate::trailers;
use crate::upstream::decode::{Decoder, Step};
use crate::upstream::{self, Conn, Pinned, UpstreamSettings};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Either a backend's streamed body, which keeps its request counted on its
/// generation until hyper drops it, or a short body the proxy made itself.
///
/// The upstream body is boxed: the response carrying it is moved a dozen
/// times between the forwarder and hyper's write path, and at 300 bytes
/// inline those copies cost more than one allocation per request
/// (callgrind: 20.8k -> 19.7k instructions per proxied request).
pub enum ProxyBody {
    Upstream(Box<UpstreamBody>),
    /// An h2c backend's body.
    H2c(Box<H2cBody>),
    Local(Option<Bytes>),
}

/// A backend's body on its way to the client, read straight off the
/// upstream connection.
pub struct UpstreamBody {
    /// `None` once the body has ended (or failed).
    conn: Option<Conn>,
    decoder: Decoder,
    /// The connection may carry another exchange after this body.
    reusable: bool,
    /// Where the connection goes when the body is complete: the client
    /// connection's pin (HTTP/1 clients) or else the generation's pool.
    home: Option<Arc<Pinned>>,
    in_flight: InFlight,
    exchange: Option<Exchange>,
    /// Read off the connection by response buffering before hyper asked
    /// (see [`crate::buffering`]): sent first, piece by piece as read (no
    /// copy), then its trailers, then the failure the read ended with, if
    /// any, so a cut body still reaches the client as cut. Most bodies are
    /// one piece, which needs no queue.
    ahead: Option<Bytes>,
    ahead_more: VecDeque<Bytes>,
    ahead_trailers: Option<Frame<Bytes>>,
    failed: Option<io::Error>,
    failed_yielded: bool,
}

impl UpstreamBody {
    /// Whether the whole body has been read off the connection.
    pub(crate) fn wire_done(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    /// Body bytes the backend has yet to send, when the framing says.
    pub(crate) fn wire_remaining(&self) -> Option<u64> {
        self.decoder.remaining()
    }

    /// Puts what response buffering read back in front of the rest.
    pub(crate) fn read_ahead(
        &mut self,
        first: Option<Bytes>,
        more: VecDeque<Bytes>,
        trailers: Option<Frame<Bytes>>,
        failed: Option<io::Error>,
    ) {
        self.ahead = first;
        self.ahead_more = more;
        self.ahead_trailers = trailers;
        self.failed = failed;
    }

    fn ahead_len(&self) -> u64 {
        let first = self.ahead.as_ref().map_or(0, Bytes::len);
        (first + self.ahead_more.iter().map(Bytes::len).sum::<usize>()) as u64
    }

    /// The body is complete: a connection with nothing after the response
    /// goes home at once, before the last bytes reach the client, so the
    /// client's next request finds it there.
    fn complete(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.reusable || conn.has_unread() {
            return;
        }
        let generation = self.in_flight.generation();
        match &self.home {
            Some(pinned) => pinned.put(generation.id, conn, &generation.pool),
            None => generation.pool.checkin(conn),
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if let Some(data) = self.ahead.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(data) = self.ahead_more.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = self.ahead_trailers.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        if let Some(e) = self.failed.take() {
            if !self.failed_yielded {
                // hyper drops what it has buffered for the client when the
                // body fails in the same pass: let it write head and data
                // first, as it would have with the failure coming later.
                self.failed_yielded = true;
                self.failed = Some(e);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(e)));
        }
        self.poll_wire(cx)
    }

    /// The next frame of the body off the connection itself.
    pub(crate) fn poll_wire(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.decoder.decode(conn.buf()) {
                Ok(Step::Data(data)) => {
                    if self.decoder.is_done() {
                        self.complete();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Trailers(trailers)) => {
                    self.complete();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Step::End) => {
                    self.complete();
                    return Poll::Ready(None);
                }
                Err(msg) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, msg))));
                }
                Ok(Step::More) => {}
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    self.conn = None;
                    if !self.decoder.eof() {
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "backend closed the connection before the body's end",
                        ))));
                    }
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

/// An h2c backend's response body on its way to the client (the exchange
/// itself is [`crate::upstream::h2c`]'s). It keeps the request counted on
/// its generation until hyper drops it (drain), is cut when the backend
/// stays silent past the upstream timeout, and finishes the request's
/// record when dropped, like the HTTP/1 body.
pub struct H2cBody {
    inner: Incoming,
    silence: Silence,
    _in_flight: InFlight,
    exchange: Option<Exchange>,
}

impl H2cBody {
    pub fn new(inner: Incoming, settings: &UpstreamSettings, in_flight: InFlight) -> Self {
        Self {
            inner,
            silence: Silence::new(settings.response_timeout),
            _in_flight: in_flight,
            exchange: None,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.silence.moved();
                if let (Some(data), Some(exchange)) = (frame.data_ref(), &mut self.exchange) {
                    exchange.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(trailers::sanitize_frame(frame))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(io::Error::other(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.silence.poll_expired(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    upstream::SILENT,
                )))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Empty, so a prepared response can be taken out of where it waits.
impl Default for ProxyBody {
    fn default() -> Self {
        ProxyBody::empty()
    }
}

impl ProxyBody {
    pub fn upstream(
        conn: Conn,
        decoder: Decoder,
        reusable: bool,
        home: Option<Arc<Pinned>>,
        in_flight: InFlight,
    ) -> Self {
        let mut body = Box::new(UpstreamBody {
            conn: Some(conn),
            decoder,
            reusable,
            home,
            in_flight,
            exchange: None,
            ahead: None,
            ahead_more: VecDeque::new(),
            ahead_trailers: None,
            failed: None,
            failed_yielded: false,
        });
        if body.decoder.is_done() {
            body.complete();
        }
        ProxyBody::Upstream(body)
    }

    pub fn local(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Local(None)
    }

    /// Ties the request's record to this body: it is finished (counted and
    /// logged) when hyper drops the body, that is after the last byte.
    pub fn finish_with(mut self, mut exchange: Exchange) -> Self {
        match &mut self {
            ProxyBody::Upstream(body) => body.exchange = Some(exchange),
            ProxyBody::H2c(body) => body.exchange = Some(exchange),
            ProxyBody::Local(bytes) => {
                exchange.bytes = bytes.as_ref().map_or(0, |b| b.len() as u64);
            }
        }
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body) => {
                let polled = body.poll_next(cx);
                if let (Poll::Ready(Some(Ok(frame))), Some(exchange)) =
                    (&polled, &mut body.exchange)
                {
                    exchange.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                polled
            }
            ProxyBody::H2c(body) => body.poll_frame(cx),
            ProxyBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body) => {
                body.ahead.is_none()
                    && body.ahead_more.is_empty()
                    && body.ahead_trailers.is_none()
                    && body.failed.is_none()
                    && body.wire_done()
            }
            ProxyBody::H2c(body) => body.is_end_stream(),
            ProxyBody::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body) => {
                let ahead = body.ahead_len();
                let wire = if body.ahead_trailers.is_some() {
                    // Trailers go only with chunked framing.
                    None
                } else if body.conn.is_none() {
                    // Read whole by response buffering (or failed).
                    body.failed.is_none().then_some(0)
                } else {
                    body.decoder.remaining()
                };
                match wire {
                    Some(n) => SizeHint::with_exact(ahead + n),
                    None => SizeHint::default(),
                }
            }
            ProxyBody::H2c(body) => body.size_hint(),
            ProxyBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
