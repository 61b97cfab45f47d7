//! Accepting client connections (plain and TLS) and serving HTTP on them.
//!
//! Everything a hostile client can hold is bounded here: connections by a
//! semaphore taken before `accept` (beyond it, new clients wait in the
//! kernel backlog while existing ones keep being served), TLS handshakes by a
//! timeout, request heads by hyper's header timeout and buffer size, quiet
//! connections by the idle timeout in [`wire`](crate::wire), and each request
//! by the checks in [`limits`](crate::limits) before any backend sees it.

use crate::admission::{Front, Redirect, Scheme};
use crate::body::ProxyBody;
use crate::client::ClientConn;
use crate::forward::Forwarder;
use crate::limits::Limits;
use crate::linger::Linger;
use crate::wire::{ConnFlags, WireIo};
use crate::workers::Workers;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
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

/// How a listener accepts: shared by the plain and the TLS listener, so
/// `permits` caps client connections across both.
pub struct Accept {
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub permits: Arc<Semaphore>,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub metrics: &'static crate::metrics::Metrics,
    /// Counts the connections and ends them on shutdown or hand-off.
    pub retire: Arc<crate::retire::Retire>,
}

/// Accepts until `shutdown` flips. Switches never touch these connections:
/// a keep-alive client simply sends its next request, which is routed to
/// whatever is active then.
pub async fn serve(
    listener: TcpListener,
    front: Arc<Front>,
    tls: Option<TlsAcceptor>,
    accept: Arc<Accept>,
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
        let tracked = accept.retire.track();
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
                None => serve_connection(stream, peer, None, scheme, front, &accept, tracked).await,
                Some(tls) => {
                    match tokio::time::timeout(accept.handshake_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            accept.metrics.tls_handshake(true);
                            let sni = stream.get_ref().1.server_name().map(Box::from);
                            match crate::preface::expect_h2(stream, accept.header_timeout).await {
                                Ok(io) => {
                                    serve_connection(io, peer, sni, scheme, front, &accept, tracked)
                                        .await
                                }
                                Err(e) => {
                                    tracing::debug!(error = %e, %peer, "h2 connection refused")
                                }
                            }
                        }
                        Ok(Ok(stream)) => {
                            accept.metrics.tls_handshake(true);
                            let sni = stream.get_ref().1.server_name().map(Box::from);
                            serve_connection(stream, peer, sni, scheme, front, &accept, tracked)
                                .await
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
    sni: Option<Box<str>>,
    scheme: Scheme,
    front: Arc<Front>,
    accept: &Accept,
    tracked: crate::retire::Tracked,
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
        sni,
        retire: Arc::clone(&accept.retire),
    });
    let service = {
        let conn = Arc::clone(&conn);
        hyper::service::service_fn(move |req| {
            let conn = Arc::clone(&conn);
            let repeat = conn.flags.head_read() > 1;
            let h1 = req.version() <= Version::HTTP_11;
            if !h1 {
                conn.flags.saw_http2();
            }
            // Checked before the future is made, so it holds only what passed.
            let mut admission = conn.front.admit(req, &conn.flags, conn.sni.as_deref());
            async move {
                let mut resp = conn
                    .front
                    .handle(&mut admission, &conn.client, conn.scheme, repeat)
                    .await;
                if h1 && conn.retire.closing() {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
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
    let served = crate::retire::serve(tracked, http, &conn.flags);
    let mut served = std::pin::pin!(served);
    let mut linger = Linger::new(&conn.client.pinned, &conn.front.forwarder.apps, &conn.flags);
    let served = std::future::poll_fn(|cx| {
        let polled = served.as_mut().poll(cx);
        if polled.is_pending() {
            linger.poll(cx);
        }
        polled
    });
    if let Err(e) = served.await {
        tracing::debug!(error = %e, %peer, "client connection ended");
    }
    conn.front
        .forwarder
        .apps
        .release_pinned(&conn.client.pinned);
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
    /// The name the TLS client asked for, if any.
    sni: Option<Box<str>>,
    retire: Arc<crate::retire::Retire>,
}

/// The TLS listener, bound and with its certificates loaded.
pub struct TlsBound {
    pub listener: TcpListener,
    pub addr: SocketAddr,
    pub resolver: Arc<crate::tls::CertResolver>,
    acceptor: TlsAcceptor,
}

/// Loads the certificates (a bad one fails startup, naming the file), binds
/// `--https` (or takes the socket `inherited` from a previous process) and
/// reloads the certificates on SIGHUP from then on.
pub async fn bind_tls(
    settings: &crate::config::TlsListener,
    inherited: Option<std::net::TcpListener>,
) -> Result<TlsBound, crate::ProxyError> {
    let bind_err = |source| crate::ProxyError::Bind {
        addr: settings.addr,
        source,
    };
    let resolver = Arc::new(crate::tls::CertResolver::new(settings.certs.clone())?);
    let acceptor = TlsAcceptor::from(crate::tls::server_config(Arc::clone(&resolver))?);
    let listener = match inherited {
        Some(l) => crate::upgrade::take::into_tokio(l).map_err(bind_err)?,
        None => TcpListener::bind(settings.addr).await.map_err(bind_err)?,
    };
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
/// and, when configured, TLS. Returns the loops, which end when `stop`
/// flips; `retire` then ends their connections.
pub fn start(
    http: TcpListener,
    tls: Option<TlsBound>,
    forwarder: Arc<Forwarder>,
    config: &crate::config::Config,
    workers: Arc<Workers>,
    retire: Arc<crate::retire::Retire>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let limits = config.limits.clone();
    let accept = Arc::new(Accept {
        builder: Arc::new(connection_builder(&limits)),
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        handshake_timeout: limits.handshake_timeout,
        idle_timeout: limits.idle_timeout,
        header_timeout: config.header_read_timeout,
        metrics: forwarder.metrics,
        retire,
    });
    let settings = config.tls.as_ref();
    let front = |redirect, hsts, certs| {
        Arc::new(Front {
            forwarder: Arc::clone(&forwarder),
            limits: limits.clone(),
            header_timeout: config.header_read_timeout,
            redirect,
            hsts,
            certs,
        })
    };
    let redirect = match (&tls, settings.and_then(|s| s.redirect_exempt.clone())) {
        (Some(t), Some(exempt)) => Some(Redirect {
            https_port: t.addr.port(),
            exempt,
        }),
        _ => None,
    };
    let plain = front(redirect, None, None);
    let mut tasks = vec![tokio::spawn(serve(
        http,
        plain,
        None,
        Arc::clone(&accept),
        Arc::clone(&workers),
        stop.clone(),
    ))];
    if let Some(t) = tls {
        let hsts = settings
            .and_then(|s| s.hsts_max_age)
            .and_then(|age| HeaderValue::from_str(&format!("max-age={}", age.as_secs())).ok());
        let secure = front(None, hsts, Some(Arc::clone(&t.resolver)));
        tasks.push(tokio::spawn(serve(
            t.listener,
            secure,
            Some(t.acceptor),
            accept,
            workers,
            stop,
        )));
    }
    tasks
}
