//! Accepting client connections (plain and TLS) and serving HTTP on them.
//!
//! Everything a hostile client can hold is bounded here: connections by a
//! semaphore taken before `accept` (beyond it, new clients wait in the
//! kernel backlog while existing ones keep being served), TLS handshakes by a
//! timeout, request heads by hyper's header timeout and buffer size, quiet
//! connections by the idle timeout in [`wire`](crate::wire), and each request
//! by the checks in [`limits`](crate::limits) before any backend sees it.

use crate::body::ProxyBody;
use crate::forward::{local, ClientConn, Forwarder};
use crate::limits::{self, BodyError, Limits, Rejection, RequestBody};
use crate::linger::Linger;
use crate::wire::{ConnFlags, WireIo};
use crate::workers::Workers;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// Per-connection protocol settings shared by every listener.
pub fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Timed by `WireIo` instead, without a timer per request.
        .header_read_timeout(None)
        .keep_alive(true)
        .writev(false)
        // A head that does not fit the read buffer is answered 431 by hyper.
        .max_buf_size(limits.max_header_size.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): streams the client opens and resets
        // before we accept them are capped, and so are streams we had to
        // reset for its errors; past either, the connection gets GOAWAY.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256));
    builder
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// `--redirect-https`: the plain listener sends clients to https, except on
/// paths that must stay reachable over plain HTTP (ACME http-01, health).
#[derive(Debug, Clone)]
pub struct Redirect {
    /// Port the https URL names; omitted from the URL when 443.
    pub https_port: u16,
    /// Path prefixes still forwarded over plain HTTP.
    pub exempt: Vec<String>,
}

/// What a listener does with each request.
pub struct Front {
    pub forwarder: Arc<Forwarder>,
    pub limits: Limits,
    /// Bounds the wait for a chunked body's first chunk, like the head itself.
    pub header_timeout: Duration,
    pub redirect: Option<Redirect>,
    /// `Strict-Transport-Security` value added to https responses.
    pub hsts: Option<HeaderValue>,
}

/// What the checks made of a request.
pub(crate) enum Admission {
    Forward(Request<RequestBody>),
    /// A chunked body whose first chunk is read before any backend sees it.
    PeekFirst(Request<RequestBody>),
    Answer(Response<ProxyBody>),
}

impl Front {
    /// Answers an admitted request. It takes the request by reference, as
    /// every layer below does: the one future that owns it (the service's)
    /// is moved on every request, and each async layer taking the request by
    /// value would carry its own copy of it.
    async fn handle(
        &self,
        admission: &mut Admission,
        client: &ClientConn,
        scheme: Scheme,
        repeat: bool,
    ) -> Response<ProxyBody> {
        let req = match admission {
            Admission::Forward(req) => req,
            // Boxed: a timer and a body read are large, and most requests
            // have no chunked body.
            Admission::PeekFirst(req) => match Box::pin(self.peek_first(req)).await {
                Ok(()) => req,
                Err(resp) => return resp,
            },
            Admission::Answer(resp) => return std::mem::take(resp),
        };
        // HTTP/2 streams run concurrently and cannot share one pinned
        // connection. An HTTP/1 connection's first answer goes to the pool:
        // many clients send one request (or, reading slowly, never get to
        // their next), and a pin would keep it from everyone else.
        let pin = repeat && req.version() <= Version::HTTP_11;
        let mut resp = self
            .forwarder
            .handle(req, client, scheme.as_str(), pin)
            .await;
        if let (Scheme::Https, Some(hsts)) = (scheme, &self.hsts) {
            resp.headers_mut()
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert_with(|| hsts.clone());
        }
        resp
    }

    /// The checks every request passes before a backend is involved.
    fn admit(&self, req: Request<Incoming>, flags: &ConnFlags) -> Admission {
        let h1 = req.version() <= Version::HTTP_11;
        if h1 && flags.framing_conflict() {
            return Admission::Answer(reject(
                Rejection {
                    status: StatusCode::BAD_REQUEST,
                    reason: "conflicting or duplicate Content-Length/Transfer-Encoding\n",
                },
                h1,
            ));
        }
        if let Err(r) = limits::check(&req, self.limits.max_body) {
            return Admission::Answer(reject(r, h1));
        }
        if let Some(redirect) = &self.redirect {
            let path = req.uri().path();
            if !redirect.exempt.iter().any(|p| path.starts_with(p.as_str())) {
                return Admission::Answer(redirect_response(&req, redirect.https_port));
            }
        }
        let req = req.map(|body| RequestBody::new(body, self.limits.max_body));
        if limits::is_chunked(&req) {
            Admission::PeekFirst(req)
        } else {
            Admission::Forward(req)
        }
    }

    /// Reads the first chunk before a backend is involved: a bad chunk size
    /// (the usual smuggling payload) then never leaves this proxy.
    async fn peek_first(&self, req: &mut Request<RequestBody>) -> Result<(), Response<ProxyBody>> {
        let h1 = req.version() <= Version::HTTP_11;
        let peek = tokio::time::timeout(self.header_timeout, req.body_mut().peek());
        let rejection = match peek.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(BodyError::TooLarge(_))) => limits::too_large(),
            Ok(Err(BodyError::Client(_))) => Rejection {
                status: StatusCode::BAD_REQUEST,
                reason: "malformed chunked body\n",
            },
            Err(_) => Rejection {
                status: StatusCode::REQUEST_TIMEOUT,
                reason: "request body too slow\n",
            },
        };
        Err(reject(rejection, h1))
    }
}

/// A refusal; over HTTP/1 the connection is closed after it, since the
/// request's framing (and so where the next request starts) is not trusted.
fn reject(r: Rejection, h1: bool) -> Response<ProxyBody> {
    tracing::debug!(
        status = r.status.as_u16(),
        reason = r.reason.trim_end(),
        "request refused"
    );
    let mut resp = local(r.status, r.reason);
    if h1 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn redirect_response<B>(req: &Request<B>, https_port: u16) -> Response<ProxyBody> {
    // `limits::check` guaranteed a valid authority in Host or the target.
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let host = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{https_port}{target}")
    };
    let mut resp = local(StatusCode::PERMANENT_REDIRECT, "redirecting to https\n");
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
}

/// How a listener accepts: shared by the plain and the TLS listener, so
/// `permits` caps client connections across both.
pub struct Accept {
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub permits: Arc<Semaphore>,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub metrics: &'static crate::metrics::Metrics,
}

/// Accepts until `shutdown` flips. Switches never touch these connections:
/// a keep-alive client simply sends its next request, which is routed to
/// whatever is active then.
pub async fn serve(
    listener: TcpListener,
    front: Arc<Front>,
    tls: Option<TlsAcceptor>,
    accept: Arc<Accept>,
    graceful: Arc<GracefulShutdown>,
    workers: Arc<Workers>,
    mut shutdown: watch::Receiver<bool>,
) {
    let scheme = if tls.is_some() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&accept.permits).acquire_owned() => p.expect("connection semaphore is never closed"),
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        // The socket's readiness must come from the event loop of the thread
        // that serves it, not this one's: re-registered there, every read
        // and write wake-up stays on that thread.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, %peer, "accepted connection unusable");
                continue;
            }
        };
        let watcher = graceful.watcher();
        let (front, accept, tls) = (Arc::clone(&front), Arc::clone(&accept), tls.clone());
        workers.spawn(async move {
            let _permit = permit;
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, %peer, "accepted connection unusable");
                    return;
                }
            };
            match tls {
                None => serve_connection(stream, peer, scheme, front, &accept, watcher).await,
                Some(tls) => {
                    match tokio::time::timeout(accept.handshake_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            accept.metrics.tls_handshake(true);
                            serve_connection(stream, peer, scheme, front, &accept, watcher).await
                        }
                        Ok(Err(e)) => {
                            accept.metrics.tls_handshake(false);
                            tracing::debug!(error = %e, %peer, "TLS handshake failed")
                        }
                        Err(_) => {
                            accept.metrics.tls_handshake(false);
                            tracing::debug!(%peer, "TLS handshake timed out")
                        }
                    }
                }
            }
        });
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    scheme: Scheme,
    front: Arc<Front>,
    accept: &Accept,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, flags) = WireIo::new(io, accept.idle_timeout, accept.header_timeout);
    // Everything a request needs from its connection, behind one reference
    // count that only this connection's thread touches.
    let conn = Arc::new(Conn {
        front,
        client: ClientConn::new(peer),
        flags,
        scheme,
    });
    let service = {
        let conn = Arc::clone(&conn);
        hyper::service::service_fn(move |req| {
            let conn = Arc::clone(&conn);
            let repeat = conn.flags.head_read() > 1;
            // Checked before the future is made, so it holds only what passed.
            let mut admission = conn.front.admit(req, &conn.flags);
            async move {
                let resp = conn
                    .front
                    .handle(&mut admission, &conn.client, conn.scheme, repeat)
                    .await;
                // After a 101 the connection is a tunnel, never between requests.
                let conn = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(conn);
                Ok::<_, std::convert::Infallible>(resp.map(|body| Answer { body, conn }))
            }
        })
    };
    let http = accept
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    let mut http = std::pin::pin!(watcher.watch(http));
    let mut linger = Linger::new(
        &conn.client.pinned,
        &conn.front.forwarder.router,
        &conn.flags,
    );
    let served = std::future::poll_fn(|cx| {
        let polled = http.as_mut().poll(cx);
        if polled.is_pending() {
            linger.poll(cx);
        }
        polled
    });
    if let Err(e) = served.await {
        tracing::debug!(error = %e, %peer, "client connection ended");
    }
    if let Some(active) = conn.front.forwarder.router.active() {
        conn.client.pinned.release_to(active.id, &active.pool);
    }
}

/// A response body as hyper writes it; when hyper is done with it, the
/// connection is between requests again (see [`wire`](crate::wire)).
struct Answer {
    body: ProxyBody,
    conn: Option<Arc<Conn>>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(conn) = &self.conn {
            conn.flags.answered();
        }
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One client connection as its requests see it.
struct Conn {
    front: Arc<Front>,
    client: ClientConn,
    flags: Arc<ConnFlags>,
    scheme: Scheme,
}

/// The TLS listener, bound and with its certificates loaded.
pub struct TlsBound {
    pub listener: TcpListener,
    pub addr: SocketAddr,
    pub resolver: Arc<crate::tls::CertResolver>,
    acceptor: TlsAcceptor,
}

/// Loads the certificates (a bad one fails startup, naming the file), binds
/// `--https` and reloads the certificates on SIGHUP from then on.
pub async fn bind_tls(
    settings: &crate::config::TlsListener,
) -> Result<TlsBound, crate::ProxyError> {
    let bind_err = |source| crate::ProxyError::Bind {
        addr: settings.addr,
        source,
    };
    let resolver = Arc::new(crate::tls::CertResolver::new(settings.certs.clone())?);
    let acceptor = TlsAcceptor::from(crate::tls::server_config(Arc::clone(&resolver))?);
    let listener = TcpListener::bind(settings.addr).await.map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    crate::tls::reload_on_sighup(Arc::clone(&resolver)).map_err(bind_err)?;
    let loaded = resolver.loaded();
    tracing::info!(certificates = loaded.certificates, names = ?loaded.names, "TLS certificates loaded");
    Ok(TlsBound {
        listener,
        addr,
        resolver,
        acceptor,
    })
}

/// Starts the accept loops: plain HTTP (forwarding, or redirecting to https)
/// and, when configured, TLS. Returns the graceful-shutdown handle and the
/// loops, which end when `stop` flips.
pub fn start(
    http: TcpListener,
    tls: Option<TlsBound>,
    forwarder: Arc<Forwarder>,
    config: &crate::config::Config,
    workers: Arc<Workers>,
    stop: watch::Receiver<bool>,
) -> (Arc<GracefulShutdown>, Vec<tokio::task::JoinHandle<()>>) {
    let limits = config.limits.clone();
    let accept = Arc::new(Accept {
        builder: Arc::new(connection_builder(&limits)),
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        handshake_timeout: limits.handshake_timeout,
        idle_timeout: limits.idle_timeout,
        header_timeout: config.header_read_timeout,
        metrics: forwarder.metrics,
    });
    let graceful = Arc::new(GracefulShutdown::new());
    let settings = config.tls.as_ref();
    let front = |redirect, hsts| {
        Arc::new(Front {
            forwarder: Arc::clone(&forwarder),
            limits: limits.clone(),
            header_timeout: config.header_read_timeout,
            redirect,
            hsts,
        })
    };
    let redirect = match (&tls, settings.and_then(|s| s.redirect_exempt.clone())) {
        (Some(t), Some(exempt)) => Some(Redirect {
            https_port: t.addr.port(),
            exempt,
        }),
        _ => None,
    };
    let plain = front(redirect, None);
    let mut tasks = vec![tokio::spawn(serve(
        http,
        plain,
        None,
        Arc::clone(&accept),
        Arc::clone(&graceful),
        Arc::clone(&workers),
        stop.clone(),
    ))];
    if let Some(t) = tls {
        let hsts = settings
            .and_then(|s| s.hsts_max_age)
            .and_then(|age| HeaderValue::from_str(&format!("max-age={}", age.as_secs())).ok());
        let secure = front(None, hsts);
        tasks.push(tokio::spawn(serve(
            t.listener,
            secure,
            Some(t.acceptor),
            accept,
            Arc::clone(&graceful),
            workers,
            stop,
        )));
    }
    (graceful, tasks)
}
