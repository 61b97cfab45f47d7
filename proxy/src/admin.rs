//! The admin listener: `GET /metrics` (Prometheus text) and `GET /healthz`.
//! Separate from the traffic listener so scrapes never compete with clients
//! for a port, and it can stay on loopback while :80 faces the internet.

use crate::apps::Apps;
use crate::body::ProxyBody;
use crate::metrics::Metrics;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct Admin {
    pub metrics: &'static Metrics,
    pub apps: Arc<Apps>,
}

impl Admin {
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let this = Arc::clone(&self);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let this = Arc::clone(&this);
                    async move { Ok::<_, std::convert::Infallible>(this.route(&req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let _ = conn.await;
            });
        }
    }

    fn route(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let (status, content_type, body) = match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.render(&self.apps.in_flight_series()),
            ),
            (&Method::GET, "/healthz") => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ok\n".to_string(),
            ),
            (_, "/metrics" | "/healthz") => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "use GET\n".to_string(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n".to_string(),
            ),
        };
        let mut resp = Response::new(ProxyBody::local(body));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        resp
    }
}
