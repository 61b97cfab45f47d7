//! The request path: pick the active generation, forward, stream back.

use crate::body::ProxyBody;
use crate::drain::{Generation, InFlight};
use crate::headers;
use crate::limits::RequestBody;
use crate::metrics::{Metrics, UpstreamError};
use crate::observe::Exchange;
use crate::router::Router;
use crate::upstream::{self, ConnectError, Pinned, Sender};
use http::{header, uri, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the request path keeps about one client connection.
pub struct ClientConn {
    /// The peer as an `X-Forwarded-For` entry, formatted once.
    pub forwarded_for: HeaderValue,
    /// The upstream connection its last HTTP/1 request used.
    pub pinned: Pinned,
}

impl ClientConn {
    pub fn new(peer: SocketAddr) -> Self {
        Self {
            forwarded_for: headers::forwarded_for(peer.ip()),
            pinned: Pinned::default(),
        }
    }
}

/// What every request handler shares.
pub struct Forwarder {
    pub router: Arc<Router>,
    pub metrics: &'static Metrics,
}

impl Forwarder {
    /// One request, start to finish. Never fails: every problem becomes a
    /// response the client can read, and the connection stays usable.
    pub async fn handle(
        &self,
        req: Request<RequestBody>,
        client: &ClientConn,
        proto: &'static str,
        pin: bool,
    ) -> Response<ProxyBody> {
        let pinned = pin.then_some(&client.pinned);
        let mut exchange = Exchange::start(self.metrics, req.method(), req.uri().path());
        let resp = self
            .forward(req, client, proto, &mut exchange, pinned)
            .await;
        exchange.status = resp.status().as_u16();
        resp.map(|body| body.finish_with(exchange))
    }

    async fn forward(
        &self,
        mut req: Request<RequestBody>,
        client: &ClientConn,
        proto: &'static str,
        exchange: &mut Exchange,
        pinned: Option<&Pinned>,
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

        let sent = send(generation, pinned, req);
        // The backend's silence is timed by its connection (see `upstream`).
        let (mut resp, sender) = match sent.await {
            Err(SendError::Connect(e)) => {
                self.metrics.upstream_error(UpstreamError::Connect);
                tracing::warn!(backend = %generation.addr, error = %e, "upstream failed");
                return local(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
            }
            Err(SendError::Exchange(e)) => {
                // The client's body, not the backend, failed the exchange.
                if let Some(r) = crate::limits::body_fault(&e) {
                    return local(r.status, r.reason);
                }
                if upstream::is_response_timeout(&e) {
                    self.metrics.upstream_error(UpstreamError::Timeout);
                    return local(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n");
                }
                self.metrics.upstream_error(UpstreamError::Reset);
                tracing::warn!(backend = %generation.addr, error = %error_chain(&e), "upstream failed");
                return local(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
            }
            Ok(pair) => pair,
        };

        if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_upgrade)) =
            (resp.status(), client_upgrade)
        {
            // The connection now belongs to the tunnel; `sender` is spent.
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, in_flight));
            return resp.map(|_| ProxyBody::empty());
        }
        // An HTTP/1 client sends its next request only after this response,
        // so its pin can take the connection back now; the next request waits
        // for it to be ready. HTTP/2 streams return it to the pool once the
        // body has been read to its end.
        let lease = match pinned {
            Some(pinned) => {
                pinned.put(generation.id, sender);
                None
            }
            None => Some(sender),
        };
        headers::strip_hop_by_hop(resp.headers_mut(), false);
        // hyper frames the client side itself; an HTTP/1.0 backend must not
        // turn the client's keep-alive connection into HTTP/1.0.
        *resp.version_mut() = Version::HTTP_11;
        resp.map(|body| ProxyBody::upstream(body, in_flight, lease))
    }
}

enum SendError {
    Connect(ConnectError),
    Exchange(hyper::Error),
}

/// Sends on the client's pinned connection when it belongs to `generation`,
/// else on one from the generation's pool. A request that a reused
/// connection could not even start sending (the backend closed it while
/// idle) is sent again on a new connection, as every HTTP client does.
async fn send(
    generation: &Generation,
    pinned: Option<&Pinned>,
    req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Sender), SendError> {
    let pinned = match pinned.and_then(|p| p.take(generation.id, &generation.pool)) {
        Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
        None => None,
    };
    let (mut sender, reused) = match pinned {
        Some(sender) => (sender, true),
        // Boxed, like the retry below: the connect path is rare and its
        // future is large; unboxed, every request would carry (and copy) it.
        None => Box::pin(generation.pool.checkout())
            .await
            .map_err(SendError::Connect)?,
    };
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, sender)),
        Err(mut e) => match e.take_message() {
            Some(req) if reused => Box::pin(resend(generation, req)).await,
            _ => Err(SendError::Exchange(e.into_error())),
        },
    }
}

async fn resend(
    generation: &Generation,
    req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Sender), SendError> {
    let mut sender = generation
        .pool
        .connect()
        .await
        .map_err(SendError::Connect)?;
    match sender.send_request(req).await {
        Ok(resp) => Ok((resp, sender)),
        Err(e) => Err(SendError::Exchange(e)),
    }
}

/// Rewrites the request for the backend: origin-form target, HTTP/1.1,
/// hop-by-hop headers out, forwarding headers in, `Host` kept.
fn prepare(
    req: &mut Request<RequestBody>,
    in_flight: &InFlight,
    client: &ClientConn,
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
    // Absolute-form (and HTTP/2) targets become origin-form; the usual
    // origin-form target is left as it is, without a copy.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| uri::PathAndQuery::from_static("/"));
        let mut parts = uri::Parts::default();
        parts.path_and_query = Some(path);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| StatusCode::BAD_REQUEST)?;
    }
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    headers::strip_hop_by_hop(headers, upgrade);
    match &host {
        Some(host) => {
            headers.insert(header::HOST, host.clone());
        }
        // An HTTP/1.0 client may send no Host at all; name the backend.
        None => {
            if let Ok(v) = HeaderValue::from_str(in_flight.generation().addr.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    headers::add_forwarded(headers, &client.forwarded_for, proto, host);
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
