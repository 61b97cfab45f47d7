//! Request and response buffering: a slow client must not hold a backend
//! connection (slowhttptest's slow-body and slow-read attacks, and plain
//! mobile clients), as nginx's `proxy_request_buffering` and
//! `proxy_buffering` and kamal-proxy's `--buffer-requests` and
//! `--buffer-responses` ensure.
//!
//! - A request body up to [`Buffering::request`] bytes is read whole before
//!   the request is routed, so no backend connection is taken (and no
//!   generation counts the request in flight) while the client dawdles. The
//!   proxy then knows the body's length and sends it with `Content-Length`
//!   framing. A longer body streams, as before.
//! - A response body is read off the backend connection into up to
//!   [`Buffering::response`] bytes before its head goes to the client, so a
//!   response that fits is off the connection (and the connection back in
//!   its pin or pool) whatever the client's pace. A longer one streams.
//! - Streams stay streams: `text/event-stream`, `X-Accel-Buffering: no`,
//!   gRPC (`application/grpc*`) either way, and upgrades are never buffered.
//!
//! Only memory is used, never temporary files (nginx spills past 16 KiB of
//! request and 64 KiB of response to disk): so these sizes are what one
//! client connection can make the proxy hold.
//!
//! The common case costs next to nothing: a request without a body is not
//! looked at, and a response whose body arrived with its head (most small
//! ones) is taken off the read buffer as it would have been by the first
//! poll from hyper; the streaming checks run only when the body has to be
//! waited for.

use crate::body::UpstreamBody;
use crate::request_body::{BodyError, RequestBody};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Request};
use http_body::Body;
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::Poll;

/// How much of each message the proxy reads ahead of the slower side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffering {
    /// Largest request body read whole before a backend is involved; 0
    /// streams every body (nginx's `proxy_request_buffering off`).
    pub request: u64,
    /// Largest response body read off the backend before the client gets
    /// the head; 0 streams every response (`proxy_buffering off`).
    pub response: u64,
}

impl Default for Buffering {
    /// What an nginx user expects: nginx buffers every request body it
    /// accepts (`client_max_body_size` 1m by default) and 64 KiB of response
    /// in memory (`proxy_buffer_size` + `proxy_buffers` 8 x 8k).
    fn default() -> Self {
        Self {
            request: 1024 * 1024,
            response: 64 * 1024,
        }
    }
}

/// Whether `headers` name a gRPC message, which is a stream both ways.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| starts_with_ignore_case(v, b"application/grpc"))
}

fn starts_with_ignore_case(v: &HeaderValue, prefix: &[u8]) -> bool {
    let v = v.as_bytes();
    v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Reads the request body whole when it is small enough, before anything
/// is sent upstream. A body that turns out longer than `limit` is left to
/// stream: what was read goes first. Fails only when the client's body does
/// (over `--max-body`, malformed, cut), and then no backend saw any of it.
pub async fn request(
    req: &mut Request<RequestBody>,
    limit: u64,
    upgrade: bool,
) -> Result<(), BodyError> {
    if limit == 0 || req.body().is_end_stream() || upgrade || is_grpc(req.headers()) {
        return Ok(());
    }
    let declared = req.body().size_hint().exact();
    if declared.is_some_and(|n| n > limit) {
        return Ok(());
    }
    let mut data = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    let body = req.body_mut();
    let end = loop {
        match body.frame().await {
            None => break End::Whole,
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    data.extend_from_slice(&chunk);
                    if data.len() as u64 > limit {
                        break End::Longer;
                    }
                }
                // Trailers end the body; they keep it chunked.
                Err(trailers) => break End::Trailers(trailers),
            },
        }
    };
    let len = data.len();
    match end {
        End::Whole => {
            body.put_back(data.freeze(), None, true);
            // The proxy now frames the body itself: whatever length the
            // client declared, or chunks, it is exactly this long.
            if len > 0 || req.headers().contains_key(header::CONTENT_LENGTH) {
                req.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        End::Longer => body.put_back(data.freeze(), None, false),
        End::Trailers(trailers) => body.put_back(data.freeze(), Some(trailers), true),
    }
    Ok(())
}

/// How reading a request body ahead stopped.
enum End {
    Whole,
    Longer,
    Trailers(http_body::Frame<Bytes>),
}

/// Reads the response body off the backend connection, up to `limit`
/// bytes, so a complete one has given its connection back before the
/// client reads a byte. Stops early, leaving the rest to stream, as soon as
/// waiting would delay a stream or could not end within `limit`.
/// A failure of the backend is kept for the client to see after what was
/// read, as it would have seen it unbuffered.
pub async fn response(
    body: &mut UpstreamBody,
    limit: u64,
    request: &HeaderMap,
    response: &HeaderMap,
) {
    if limit == 0 || body.wire_done() {
        return;
    }
    // Kept as read, not copied together: the pieces share the connection's
    // read buffer, and hyper copies them into its write buffer anyway.
    let mut first: Option<Bytes> = None;
    let mut more = VecDeque::new();
    let mut read = 0u64;
    let mut checked = false;
    let mut end_trailers = None;
    let failed = poll_fn(|cx| loop {
        match body.poll_wire(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let data = match frame.into_data() {
                    Ok(data) => data,
                    // Trailers end the body.
                    Err(trailers) => {
                        end_trailers = Some(trailers);
                        return Poll::Ready(None);
                    }
                };
                read += data.len() as u64;
                match &first {
                    None => first = Some(data),
                    Some(_) => more.push_back(data),
                }
                if body.wire_done() || read >= limit {
                    return Poll::Ready(None);
                }
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(e)),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {
                // Decided once, at the first wait: a body that arrived with
                // its head never gets here.
                if !checked {
                    checked = true;
                    let fits = body
                        .wire_remaining()
                        .is_none_or(|n| read.saturating_add(n) <= limit);
                    if !fits || streams(request, response) {
                        return Poll::Ready(None);
                    }
                }
                return Poll::Pending;
            }
        }
    })
    .await;
    body.read_ahead(first, more, end_trailers, failed);
}

/// Answers that are streams by nature: each event must reach the client
/// when it is sent, not when a buffer fills.
fn streams(request: &HeaderMap, response: &HeaderMap) -> bool {
    let event_stream = response
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| starts_with_ignore_case(v, b"text/event-stream"));
    let opted_out = response
        .get_all("x-accel-buffering")
        .iter()
        .any(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"no"));
    event_stream || opted_out || is_grpc(response) || is_grpc(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    header::HeaderName::from_static(n),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn streams_are_recognised() {
        let none = HeaderMap::new();
        assert!(streams(
            &none,
            &map(&[("content-type", "text/event-stream; charset=utf-8")])
        ));
        assert!(streams(&none, &map(&[("x-accel-buffering", " No")])));
        assert!(streams(
            &none,
            &map(&[("content-type", "application/grpc+proto")])
        ));
        assert!(streams(
            &map(&[("content-type", "application/grpc")]),
            &none
        ));
        assert!(!streams(&none, &map(&[("x-accel-buffering", "yes")])));
        assert!(!streams(&none, &map(&[("content-type", "text/html")])));
    }
}
