//! The client's request body on its way to a backend: counted against
//! `--max-body` as it streams (so a chunked upload cannot bypass the limit),
//! with what buffering or the first-chunk check read put back in front, and
//! the answer a failed body gets.

use crate::limits::{bad, too_large, Rejection};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is over the {0}-byte limit")]
    TooLarge(u64),
    #[error("reading the request body: {0}")]
    Client(#[from] hyper::Error),
    /// hyper read bytes after the last chunk as a trailer section and found
    /// no field in them: the body ended in a bare LF (`0\r\n\n`), and
    /// whatever followed, a pipelined request, was taken in as trailers.
    /// Refused, and the connection closed, rather than that request dropped
    /// without a word (issue 12.6).
    #[error("the chunked body's end is malformed (a bare LF after the last chunk)")]
    MalformedEnd,
}

/// The client's request body on its way upstream, cut off with an error once
/// it passes the limit (so a chunked upload cannot bypass `--max-body`).
pub struct RequestBody {
    /// `None` once the body was handed on whole ([`RequestBody::take`]).
    inner: Option<Incoming>,
    seen: u64,
    max: u64,
    peeked: Option<Frame<Bytes>>,
    /// Trailers request buffering read after the data in `peeked`.
    peeked_trailers: Option<Frame<Bytes>>,
    done: bool,
}

impl RequestBody {
    pub fn new(inner: Incoming, max: u64) -> Self {
        Self {
            inner: Some(inner),
            seen: 0,
            max,
            peeked: None,
            peeked_trailers: None,
            done: false,
        }
    }

    /// Puts back what request buffering read (see [`crate::buffering`]):
    /// `data`, then `trailers`, then the rest of the client's stream unless
    /// `ended`.
    pub fn put_back(&mut self, data: Bytes, trailers: Option<Frame<Bytes>>, ended: bool) {
        self.peeked = (!data.is_empty()).then(|| Frame::data(data));
        self.peeked_trailers = trailers;
        self.done = ended;
    }

    /// Reads the first frame now and keeps it for the upstream request.
    pub async fn peek(&mut self) -> Result<(), BodyError> {
        use http_body_util::BodyExt;
        match self.frame().await {
            Some(Ok(frame)) => {
                self.peeked = Some(frame);
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => {
                self.done = true;
                Ok(())
            }
        }
    }

    /// Moves the body out, leaving an empty one: for an upstream that
    /// streams it from a task of its own (HTTP/2 to the backend), while
    /// the request it came with is dropped once its response is ready.
    pub fn take(&mut self) -> RequestBody {
        RequestBody {
            inner: self.inner.take(),
            seen: self.seen,
            max: self.max,
            peeked: self.peeked.take(),
            peeked_trailers: self.peeked_trailers.take(),
            done: std::mem::replace(&mut self.done, true),
        }
    }

    fn count(&mut self, frame: &Frame<Bytes>) -> Result<(), BodyError> {
        if let Some(data) = frame.data_ref() {
            self.seen += data.len() as u64;
            if self.seen > self.max {
                return Err(BodyError::TooLarge(self.max));
            }
        }
        Ok(())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.peeked.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(frame) = this.peeked_trailers.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(inner) = this.inner.as_mut().filter(|_| !this.done) else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.trailers_ref().is_some_and(|t| t.is_empty()) => {
                this.done = true;
                Poll::Ready(Some(Err(BodyError::MalformedEnd)))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(this.count(&frame).map(|()| frame))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.peeked.is_none()
            && self.peeked_trailers.is_none()
            && (self.done || self.inner.as_ref().is_none_or(Incoming::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        if self.done && self.peeked_trailers.is_none() {
            let len = self
                .peeked
                .as_ref()
                .and_then(Frame::data_ref)
                .map_or(0, |d| d.len());
            return SizeHint::with_exact(len as u64);
        }
        if self.peeked.is_some() || self.done {
            return SizeHint::default();
        }
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// When an upstream exchange failed because of the client's request body
/// (over the limit, a bad chunk after the first, a client gone mid-upload),
/// the answer that says so; `None` when the backend side failed.
pub fn body_fault(e: &(dyn std::error::Error + 'static)) -> Option<Rejection> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        match err.downcast_ref::<BodyError>() {
            Some(BodyError::TooLarge(_)) => return Some(too_large()),
            Some(BodyError::Client(_) | BodyError::MalformedEnd) => {
                return Some(bad("malformed or incomplete request body\n"))
            }
            None => cur = err.source(),
        }
    }
    None
}
