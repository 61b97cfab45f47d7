//! The request path, as named phases: refuse loops, pick the app (route
//! table), buffer a small body, pick the app's active generation, forward,
//! stream back.

use crate::apps::{Apps, Route};
use crate::body::ProxyBody;
use crate::buffering::{self, Buffering};
use crate::client::{local, ClientConn};
use crate::drain::{Generation, InFlight};
use crate::headers;
use crate::metrics::{Metrics, UpstreamError};
use crate::observe::Exchange;
use crate::request_body::RequestBody;
use crate::upstream::decode::Decoder;
use crate::upstream::encode::{self, BodyFraming, Forwarding};
use crate::upstream::http1::{self, ExchangeError, Head};
use crate::upstream::{self, Conn, ConnectError, Pinned};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// What every request handler shares.
pub struct Forwarder {
    pub apps: Arc<Apps>,
    pub metrics: &'static Metrics,
    /// This process's name in `Via`; a request already carrying it looped.
    pub via: String,
    pub buffering: Buffering,
}

impl Forwarder {
    /// One request, start to finish. Never fails: every problem becomes a
    /// response the client can read, and the connection stays usable.
    pub async fn handle(
        &self,
        req: &mut Request<RequestBody>,
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
        req: &mut Request<RequestBody>,
        client: &ClientConn,
        proto: &'static str,
        exchange: &mut Exchange,
        pinned: Option<&Arc<Pinned>>,
    ) -> Response<ProxyBody> {
        if headers::via_names(req.headers(), &self.via) {
            // The request came back through a backend that is this proxy,
            // or that forwards to it: forwarding again would loop.
            return local(StatusCode::LOOP_DETECTED, "request loop detected\n");
        }
        let Some(route) = self.apps.route(authority(req), path_and_query(req)) else {
            // A proxy given no app at all is not configured yet (503, as
            // before apps); one whose apps do not take this request says so.
            return if self.apps.is_empty() {
                local(StatusCode::SERVICE_UNAVAILABLE, "no backend configured\n")
            } else {
                local(
                    StatusCode::NOT_FOUND,
                    "no app is routed for this host and path\n",
                )
            };
        };
        let Route { app, rewritten } = route;
        if let Some(target) = rewritten {
            if rewrite_target(req, &target).is_none() {
                return local(StatusCode::BAD_REQUEST, "invalid request target\n");
            }
        }
        exchange.app = Some(Arc::clone(&app.counters));
        let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
        // Before the generation is picked: a slow body holds no backend
        // connection and counts on no generation. Boxed, as most requests
        // have no body.
        if !req.body().is_end_stream() {
            let read = buffering::request(req, self.buffering.request, upgrade);
            if let Err(e) = Box::pin(read).await {
                return body_refused(req.version(), &e);
            }
        }
        let Some(in_flight) = app.router.acquire() else {
            return local(StatusCode::SERVICE_UNAVAILABLE, "no backend configured\n");
        };
        let generation = in_flight.generation();
        exchange.backend = Some((generation.addr.clone(), generation.id));
        if generation.h2c.is_some() {
            // Boxed, so the HTTP/1.1 path's future does not carry it.
            let h2c = crate::forward_h2c::forward(req, client, proto, in_flight, self.metrics);
            return Box::pin(h2c).await;
        }
        let framing = BodyFraming::of(req.body());
        let has_body = framing != BodyFraming::Empty;
        let chunked = framing == BodyFraming::Chunked;
        let wire = encode::request_head(
            req,
            &Forwarding {
                client: &client.forwarded_for,
                proto,
                fallback_host: generation.addr.as_str(),
                via: &self.via,
            },
            upgrade,
            framing,
        );
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));

        // The backend's silence is timed by its connection (see `upstream`).
        let method = req.method().clone();
        let request = Outgoing {
            wire: &wire,
            chunked,
            body: has_body.then(|| req.body_mut()),
            method,
            upgrade,
        };
        let (head, conn) = match send(generation, pinned, request).await {
            Ok(pair) => pair,
            Err(SendError::Connect(e)) => {
                self.metrics.upstream_error(UpstreamError::Connect);
                tracing::warn!(backend = %generation.addr, error = %e, "upstream failed");
                return local(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
            }
            // The client's body, not the backend, failed the exchange.
            Err(SendError::Exchange(ExchangeError::Body(e))) => {
                return body_refused(req.version(), &e);
            }
            Err(SendError::Exchange(e)) => {
                if upstream::is_response_timeout(&e) {
                    self.metrics.upstream_error(UpstreamError::Timeout);
                    return local(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n");
                }
                self.metrics.upstream_error(UpstreamError::Reset);
                tracing::warn!(backend = %generation.addr, error = %error_chain(&e), "upstream failed");
                return local(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
            }
        };
        let Head {
            status,
            headers,
            framing,
            reusable,
        } = head;
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        // The head carries no hop-by-hop field: the parser left them out
        // (and kept `Upgrade` with `Connection: upgrade` for a tunnel).
        *resp.headers_mut() = headers;
        if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_upgrade)) = (status, client_upgrade) {
            // The connection now belongs to the tunnel.
            tokio::spawn(tunnel(client_upgrade, conn, in_flight));
            return resp.map(|()| ProxyBody::empty());
        }
        // An HTTP/1 client sends its next request only after this response,
        // so the connection waits in its pin; HTTP/2 streams share the pool.
        let home = pinned.cloned();
        let mut body = ProxyBody::upstream(conn, Decoder::new(framing), reusable, home, in_flight);
        if let ProxyBody::Upstream(upstream) = &mut body {
            let limit = self.buffering.response;
            buffering::response(upstream, limit, req.headers(), resp.headers()).await;
        }
        resp.map(|()| body)
    }
}

enum SendError {
    Connect(ConnectError),
    Exchange(ExchangeError),
}

/// A request ready for the backend.
struct Outgoing<'a> {
    wire: &'a [u8],
    chunked: bool,
    body: Option<&'a mut RequestBody>,
    method: Method,
    upgrade: bool,
}

/// Sends on the client's pinned connection when it belongs to `generation`,
/// else on one from the generation's pool. An idempotent request without a
/// body that a reused connection failed before any answer (the backend
/// closed it while idle) is sent once more on a new connection, as nginx
/// and Go's client do; a POST is not (RFC 9110 §9.2.2), so its client sees
/// the 502 rather than risk the backend acting twice.
async fn send(
    generation: &Generation,
    pinned: Option<&Arc<Pinned>>,
    req: Outgoing<'_>,
) -> Result<(Head, Conn), SendError> {
    let (mut conn, reused) = match pinned.and_then(|p| p.take(generation.id, &generation.pool)) {
        Some(conn) => (conn, true),
        // Boxed, like the retry below: the connect path is rare and its
        // future is large; unboxed, every request would carry (and copy) it.
        None => Box::pin(generation.pool.checkout())
            .await
            .map_err(SendError::Connect)?,
    };
    let has_body = req.body.is_some();
    let exchange = http1::exchange(
        &mut conn,
        req.wire,
        req.chunked,
        req.body,
        &req.method,
        req.upgrade,
    );
    match exchange.await {
        Ok(head) => Ok((head, conn)),
        Err(e) if reused && !has_body && req.method.is_idempotent() && e.is_stale() => {
            Box::pin(resend(generation, req.wire, &req.method, req.upgrade)).await
        }
        Err(e) => Err(SendError::Exchange(e)),
    }
}

async fn resend(
    generation: &Generation,
    wire: &[u8],
    method: &Method,
    upgrade: bool,
) -> Result<(Head, Conn), SendError> {
    let mut conn = generation
        .pool
        .connect()
        .await
        .map_err(SendError::Connect)?;
    match http1::exchange(&mut conn, wire, false, None, method, upgrade).await {
        Ok(head) => Ok((head, conn)),
        Err(e) => Err(SendError::Exchange(e)),
    }
}

/// Copies bytes both ways for an upgraded connection. The in-flight guard
/// lives as long as the tunnel, so a WebSocket is drained, not cut.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: Conn, in_flight: InFlight) {
    let client = match client.await {
        Ok(client) => client,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let (mut upstream, early) = upstream.into_parts();
    // What the backend sent right after its 101 was read with the head.
    if !early.is_empty() {
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut client, &early).await {
            tracing::debug!(error = %e, "upgraded connection ended");
            return;
        }
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
    drop(in_flight);
}

/// The host a request names: the absolute-form target or HTTP/2
/// `:authority` first (RFC 9112 §3.2.2), else `Host`.
fn authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
}

fn path_and_query<B>(req: &Request<B>) -> &str {
    req.uri().path_and_query().map_or("/", |p| p.as_str())
}

/// Forwards `target` (a route stripped its prefix) instead of the
/// client's path; scheme and authority stay as they were.
fn rewrite_target<B>(req: &mut Request<B>, target: &str) -> Option<()> {
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(target).ok()?);
    *req.uri_mut() = http::Uri::from_parts(parts).ok()?;
    Some(())
}

/// The answer to a request whose body failed (over the limit, malformed,
/// cut). What is left of the body on the connection cannot be trusted to
/// frame a next request, so an HTTP/1 connection closes after it.
fn body_refused(version: Version, e: &(dyn std::error::Error + 'static)) -> Response<ProxyBody> {
    let r = crate::request_body::body_fault(e).unwrap_or_else(crate::limits::too_large);
    let mut resp = local(r.status, r.reason);
    if version <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
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
