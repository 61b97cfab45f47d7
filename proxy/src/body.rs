//! The response body the proxy hands to hyper.

use crate::drain::InFlight;
use crate::observe::Exchange;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Either a backend's streamed body, which keeps its request counted on its
/// generation until hyper drops it, or a short body the proxy made itself.
pub enum ProxyBody {
    Upstream {
        inner: Incoming,
        _in_flight: InFlight,
        exchange: Option<Exchange>,
    },
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn upstream(inner: Incoming, in_flight: InFlight) -> Self {
        ProxyBody::Upstream {
            inner,
            _in_flight: in_flight,
            exchange: None,
        }
    }

    pub fn local(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Local(None)
    }

    /// Ties the request's record to this body: it is finished (counted and
    /// logged) when hyper drops the body, that is after the last byte.
    pub fn finish_with(self, mut exchange: Exchange) -> Self {
        match self {
            ProxyBody::Upstream {
                inner, _in_flight, ..
            } => ProxyBody::Upstream {
                inner,
                _in_flight,
                exchange: Some(exchange),
            },
            ProxyBody::Local(bytes) => {
                exchange.bytes = bytes.as_ref().map_or(0, |b| b.len() as u64);
                ProxyBody::Local(bytes)
            }
        }
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
            ProxyBody::Upstream {
                inner, exchange, ..
            } => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let (Poll::Ready(Some(Ok(frame))), Some(exchange)) = (&polled, exchange) {
                    exchange.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                polled
            }
            ProxyBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
