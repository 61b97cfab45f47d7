//! The request path for a backend that speaks h2c: the same promises as the
//! HTTP/1.1 path in [`crate::forward`] (the request counted on its
//! generation until its body is done, `X-Forwarded-*`, hop-by-hop fields
//! left out, upstream timeouts, the access log), with the request handed to
//! [`crate::upstream::h2c`] instead of written by hand.
//!
//! Kept apart from `forward` so the HTTP/1.1 path, which most requests
//! take, pays nothing for it but one branch.

use crate::body::{H2cBody, ProxyBody};
use crate::client::{local, ClientConn};
use crate::drain::InFlight;
use crate::headers;
use crate::metrics::{Metrics, UpstreamError};
use crate::request_body::RequestBody;
use crate::upstream::h2c::{H2cError, UpstreamBody};
use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use std::sync::Arc;

/// Forwards one request to an h2c backend. Takes the request's body and
/// headers (the request itself is dropped once the response is ready,
/// while its body may still be streaming to the backend).
pub async fn forward(
    req: &mut Request<RequestBody>,
    client: &ClientConn,
    proto: &'static str,
    in_flight: InFlight,
    metrics: &Metrics,
) -> Response<ProxyBody> {
    let generation = Arc::clone(in_flight.generation());
    let Some(h2c) = generation.h2c.as_ref() else {
        unreachable!("only h2c generations come here");
    };
    let upstream = match upstream_request(req, client, proto, &generation.addr) {
        Ok(upstream) => upstream,
        Err(why) => return local(StatusCode::BAD_REQUEST, why),
    };
    match h2c.send(upstream).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, false);
            // As the HTTP/1.1 path's responses are: hyper's HTTP/1 server
            // would otherwise log a coercion from HTTP/2 for each one.
            parts.version = Version::HTTP_11;
            let body = H2cBody::new(body, h2c.settings(), in_flight);
            Response::from_parts(parts, ProxyBody::H2c(Box::new(body)))
        }
        Err(e) => failure(&e, &generation.addr, metrics),
    }
}

/// The answer to a failed exchange, as on the HTTP/1.1 path.
fn failure(e: &H2cError, backend: &Authority, metrics: &Metrics) -> Response<ProxyBody> {
    // The client's body, not the backend, failed the exchange.
    if let Some(r) = crate::request_body::body_fault(e) {
        return local(r.status, r.reason);
    }
    let kind = match e {
        H2cError::Connect(_) | H2cError::Handshake { .. } => UpstreamError::Connect,
        H2cError::Timeout => UpstreamError::Timeout,
        H2cError::Stream(_) => UpstreamError::Reset,
    };
    metrics.upstream_error(kind);
    tracing::warn!(%backend, error = %error_chain(e), "h2c upstream failed");
    match kind {
        UpstreamError::Timeout => local(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"),
        _ => local(StatusCode::BAD_GATEWAY, "upstream unavailable\n"),
    }
}

/// The request as the backend receives it: absolute URI with the client's
/// host as `:authority`, hop-by-hop fields out (but `TE: trailers` kept,
/// which HTTP/2 allows and gRPC servers expect), `X-Forwarded-*` the
/// proxy's, as [`crate::upstream::encode`] writes them for HTTP/1.1.
fn upstream_request(
    req: &mut Request<RequestBody>,
    client: &ClientConn,
    proto: &'static str,
    backend: &Authority,
) -> Result<Request<UpstreamBody>, &'static str> {
    let mut map = std::mem::take(req.headers_mut());
    let te_trailers = map
        .get_all(header::TE)
        .iter()
        .any(|v| crate::trailers::te_offers_trailers(v.as_bytes()));
    headers::strip_hop_by_hop(&mut map, false);
    if te_trailers {
        map.insert(header::TE, HeaderValue::from_static("trailers"));
    }

    // HTTP/2 carries the host in :authority, HTTP/1.1 in Host.
    let host = match map.remove(header::HOST) {
        Some(h) => Some(h),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let authority = match &host {
        Some(h) => Authority::try_from(h.as_bytes()).map_err(|_| "invalid Host header\n")?,
        None => backend.clone(),
    };
    forwarding(&mut map, client, proto, host);

    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| "invalid request target\n")?;
    let mut upstream = Request::new(UpstreamBody(req.body_mut().take()));
    *upstream.method_mut() = req.method().clone();
    *upstream.uri_mut() = uri;
    *upstream.version_mut() = Version::HTTP_2;
    *upstream.headers_mut() = map;
    Ok(upstream)
}

/// `X-Forwarded-For` appended to (earlier proxies' entries first),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` set.
fn forwarding(
    map: &mut HeaderMap,
    client: &ClientConn,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    let mut xff = BytesMut::new();
    for prev in map.get_all(headers::X_FORWARDED_FOR) {
        let prev = prev.as_bytes().trim_ascii();
        if !prev.is_empty() {
            xff.extend_from_slice(prev);
            xff.extend_from_slice(b", ");
        }
    }
    xff.extend_from_slice(client.forwarded_for.as_bytes());
    let xff = HeaderValue::from_maybe_shared(xff.freeze())
        .unwrap_or_else(|_| client.forwarded_for.clone());
    map.insert(headers::X_FORWARDED_FOR, xff);
    map.insert(
        header::HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    let forwarded_host = header::HeaderName::from_static("x-forwarded-host");
    match host {
        Some(h) => {
            map.insert(forwarded_host, h);
        }
        None => {
            map.remove(forwarded_host);
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
