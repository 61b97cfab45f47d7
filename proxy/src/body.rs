//! The response body the proxy hands to hyper.

use crate::drain::InFlight;
use crate::observe::Exchange;
use crate::upstream::Sender;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Either a backend's streamed body, which keeps its request counted on its
/// generation until hyper drops it, or a short body the proxy made itself.
pub enum ProxyBody {
    Upstream(UpstreamBody),
    Local(Option<Bytes>),
}

/// A backend's body on its way to the client.
pub struct UpstreamBody {
    inner: Incoming,
    in_flight: InFlight,
    exchange: Option<Exchange>,
    /// The connection it arrives on, when it goes back to the generation's
    /// pool (HTTP/2 streams): only once the body was read to its end, since
    /// a connection with half a response on it cannot carry another.
    lease: Option<Sender>,
    ended: bool,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(sender) = self.lease.take() {
            if self.ended || self.inner.is_end_stream() {
                self.in_flight.generation().pool.checkin(sender);
            }
        }
    }
}

impl ProxyBody {
    pub fn upstream(inner: Incoming, in_flight: InFlight, lease: Option<Sender>) -> Self {
        ProxyBody::Upstream(UpstreamBody {
            inner,
            in_flight,
            exchange: None,
            lease,
            ended: false,
        })
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
            ProxyBody::Local(bytes) => {
                exchange.bytes = bytes.as_ref().map_or(0, |b| b.len() as u64);
            }
        }
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body) => {
                let polled = Pin::new(&mut body.inner).poll_frame(cx);
                match (&polled, &mut body.exchange) {
                    (Poll::Ready(Some(Ok(frame))), Some(exchange)) => {
                        exchange.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    (Poll::Ready(None), _) => body.ended = true,
                    _ => {}
                }
                polled
            }
            ProxyBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body) => body.inner.is_end_stream(),
            ProxyBody::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body) => body.inner.size_hint(),
            ProxyBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
