//! The request path: pick the active generation, forward, stream back.

use crate::body::ProxyBody;
use crate::drain::InFlight;
use crate::headers;
use crate::limits::RequestBody;
use crate::metrics::{Metrics, UpstreamError};
use crate::observe::Exchange;
use crate::router::Router;
use http::{header, uri, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What every request handler shares.
pub struct Forwarder {
    pub router: Arc<Router>,
    /// How long a backend may take to send response headers.
    pub upstream_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

impl Forwarder {
    /// One request, start to finish. Never fails: every problem becomes a
    /// response the client can read, and the connection stays usable.
    pub async fn handle(
        &self,
        req: Request<RequestBody>,
        client: SocketAddr,
        proto: &'static str,
    ) -> Response<ProxyBody> {
        let mut exchange = Exchange::start(&self.metrics, req.method(), req.uri().path());
        let resp = self.forward(req, client, proto, &mut exchange).await;
        exchange.status = resp.status().as_u16();
        resp.map(|body| body.finish_with(exchange))
    }

    async fn forward(
        &self,
        mut req: Request<RequestBody>,
        client: SocketAddr,
        proto: &'static str,
        exchange: &mut Exchange,
    ) -> Response<ProxyBody> {
        let Some(in_flight) = self.router.acquire() else {
            return local(StatusCode::SERVICE_UNAVAILABLE, "no backend configured\n");
        };
        let generation = in_flight.generation();
        exchange.backend = Some((generation.addr.clone(), generation.id));
        let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
        if let Err(status) = prepare(&mut req, &in_flight, client, proto, upgrade) {
            return local(status, "bad request\n");
        }
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let sent = in_flight.generation().client.request(req);
        let mut resp = match tokio::time::timeout(self.upstream_timeout, sent).await {
            Err(_) => {
                self.metrics.upstream_error(UpstreamError::Timeout);
                return local(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n");
            }
            Ok(Err(e)) => {
                // The client's body, not the backend, failed the exchange.
                if let Some(r) = crate::limits::body_fault(&e) {
                    return local(r.status, r.reason);
                }
                let kind = if e.is_connect() {
                    UpstreamError::Connect
                } else {
                    UpstreamError::Reset
                };
                self.metrics.upstream_error(kind);
                tracing::warn!(backend = %in_flight.generation().addr, error = %error_chain(&e), "upstream failed");
                return local(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
            }
            Ok(Ok(resp)) => resp,
        };

        if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_upgrade)) =
            (resp.status(), client_upgrade)
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, in_flight));
            return resp.map(|_| ProxyBody::empty());
        }
        headers::strip_hop_by_hop(resp.headers_mut(), false);
        // hyper frames the client side itself; an HTTP/1.0 backend must not
        // turn the client's keep-alive connection into HTTP/1.0.
        *resp.version_mut() = Version::HTTP_11;
        resp.map(|body| ProxyBody::upstream(body, in_flight))
    }
}

/// Rewrites the request for the backend: origin on the generation's address,
/// HTTP/1.1, hop-by-hop headers out, forwarding headers in, `Host` kept.
fn prepare(
    req: &mut Request<RequestBody>,
    in_flight: &InFlight,
    client: SocketAddr,
    proto: &'static str,
    upgrade: bool,
) -> Result<(), StatusCode> {
    let host = match req.headers().get(header::HOST) {
        Some(h) => Some(h.clone()),
        // HTTP/2 carries the host in :authority; HTTP/1.1 backends want Host.
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let mut parts = uri::Parts::default();
    parts.scheme = Some(uri::Scheme::HTTP);
    parts.authority = Some(in_flight.generation().addr.clone());
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| uri::PathAndQuery::from_static("/")),
    );
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| StatusCode::BAD_REQUEST)?;
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    headers::strip_hop_by_hop(headers, upgrade);
    if let Some(host) = &host {
        headers.insert(header::HOST, host.clone());
    }
    headers::add_forwarded(headers, client.ip(), proto, host);
    Ok(())
}

/// Copies bytes both ways for an upgraded connection. The in-flight guard
/// lives as long as the tunnel, so a WebSocket is drained, not cut.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
    drop(in_flight);
}

pub fn local(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
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
