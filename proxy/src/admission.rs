//! What each request must pass before the forwarder sees it, per listener:
//! the checks of [`limits`] (Host, framing, sizes), the first chunk of a
//! chunked body, `--redirect-https`, and, on the TLS listener, a host the
//! connection's certificate serves (else 421). Also adds HSTS to https
//! answers. The listener ([`crate::listener`]) owns connections; this module
//! owns what is decided about one request on them.

use crate::body::ProxyBody;
use crate::client::{local, ClientConn};
use crate::forward::Forwarder;
use crate::limits::{self, Limits, Rejection};
use crate::request_body::{BodyError, RequestBody};
use crate::wire::ConnFlags;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
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
    /// On the TLS listener: the certificates, to tell whether a request's
    /// host is one its connection's certificate is for (else 421).
    pub certs: Option<Arc<crate::tls::CertResolver>>,
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
    pub(crate) async fn handle(
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
    pub(crate) fn admit(
        &self,
        req: Request<Incoming>,
        flags: &ConnFlags,
        sni: Option<&str>,
    ) -> Admission {
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
        if let Some(certs) = &self.certs {
            // A connection reused for another host (HTTP/2 coalescing) must
            // not reach an app its certificate does not vouch for
            // (RFC 9110 §15.5.20).
            let host = req
                .uri()
                .authority()
                .map(|a| a.as_str())
                .or_else(|| req.headers().get(header::HOST)?.to_str().ok());
            if let Some(host) = host {
                if !certs.covers(sni, &crate::routes::host_of(host)) {
                    return Admission::Answer(reject(
                        Rejection {
                            status: StatusCode::MISDIRECTED_REQUEST,
                            reason: "this connection's certificate is not for that host\n",
                        },
                        h1,
                    ));
                }
            }
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
            Ok(Err(BodyError::Client(_) | BodyError::MalformedEnd)) => Rejection {
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
