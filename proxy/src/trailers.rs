//! Trailer fields (RFC 9110 §6.5): what may pass between client and backend
//! after a body, and how they are written in HTTP/1.1 chunked framing.
//!
//! Trailers carry what is known only once a body has been sent: gRPC's
//! `grpc-status`, a checksum. They are forwarded both ways wherever the two
//! hops can carry them. A trailer section is never allowed to say anything
//! that changes how the message was framed, routed or authorised, since a
//! recipient that merges trailers into the header section (RFC 9110 §6.5.1
//! permits it) would then act on fields no one checked: such fields are
//! dropped on the way through, as are the forwarding fields the proxy
//! itself vouches for.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http_body::Frame;

/// Fields no trailer section may carry through this proxy: framing,
/// routing, connection handling, authentication, content processing, and
/// the proxy's own `X-Forwarded-*`.
static FORBIDDEN: [HeaderName; 23] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::AUTHORIZATION,
    header::WWW_AUTHENTICATE,
    header::COOKIE,
    header::SET_COOKIE,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::EXPECT,
    header::MAX_FORWARDS,
    header::RANGE,
    header::LOCATION,
    header::CACHE_CONTROL,
];

/// Whether a trailer field called `name` may be forwarded.
pub fn allowed(name: &HeaderName) -> bool {
    !crate::headers::is_forwarding(name) && !FORBIDDEN.iter().any(|f| f == name)
}

/// Removes the fields [`allowed`] refuses; returns how many it removed.
pub fn sanitize(trailers: &mut HeaderMap) -> usize {
    let refused: Vec<HeaderName> = trailers.keys().filter(|n| !allowed(n)).cloned().collect();
    for name in &refused {
        trailers.remove(name);
    }
    if !refused.is_empty() {
        tracing::debug!(fields = ?refused, "trailer fields dropped");
    }
    refused.len()
}

/// A body frame as it passes through: a trailer section [`sanitize`]d,
/// data untouched.
pub fn sanitize_frame(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            sanitize(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

/// The end of a chunked body with `trailers` (already sanitized) after the
/// last chunk: `0\r\n`, one line per field, the empty line.
pub fn chunked_end(trailers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + trailers.len() * 32);
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether a `TE` field value offers `trailers`, the one transfer coding
/// preference worth passing on (RFC 9110 §10.1.4): it tells the backend the
/// client takes trailers, which gRPC servers check for.
pub fn te_offers_trailers(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn framing_and_routing_fields_never_pass() {
        let mut t = HeaderMap::new();
        for (n, v) in [
            ("grpc-status", "0"),
            ("x-checksum", "abc"),
            ("content-length", "99"),
            ("transfer-encoding", "chunked"),
            ("host", "evil.test"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "evil.test"),
            ("authorization", "Basic x"),
        ] {
            t.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        assert_eq!(sanitize(&mut t), 6);
        assert_eq!(t.len(), 2);
        assert_eq!(
            chunked_end(&t),
            b"0\r\ngrpc-status: 0\r\nx-checksum: abc\r\n\r\n"
        );
        assert_eq!(chunked_end(&HeaderMap::new()), b"0\r\n\r\n");
    }

    #[test]
    fn te_trailers_is_found_among_codings() {
        assert!(te_offers_trailers(b"trailers"));
        assert!(te_offers_trailers(b"gzip, Trailers"));
        assert!(!te_offers_trailers(b"gzip"));
        assert!(!te_offers_trailers(b"trailersx"));
    }
}
