//! The client's side of the request path: what is kept about one client
//! connection ([`ClientConn`]) and the short answers the proxy gives a
//! client itself instead of a backend's ([`local`]).
//!
//! A module of its own because both forwarders use them, `forward`
//! (HTTP/1.1 backends) and `forward_h2c` (h2c backends), as does
//! `admission`: each imports them from here, so neither forwarder imports
//! the other's module for them.

use crate::body::ProxyBody;
use crate::headers;
use crate::upstream::Pinned;
use http::{header, HeaderValue, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the request path keeps about one client connection.
pub struct ClientConn {
    /// The peer as an `X-Forwarded-For` entry, formatted once.
    pub forwarded_for: HeaderValue,
    /// The upstream connection its last HTTP/1 request used; shared with
    /// the response body, which puts the connection back when it ends.
    pub pinned: Arc<Pinned>,
}

impl ClientConn {
    pub fn new(peer: SocketAddr) -> Self {
        Self {
            forwarded_for: headers::forwarded_for(peer.ip()),
            pinned: Arc::default(),
        }
    }
}

/// A response the proxy makes itself: `status` and a short plain-text body.
pub fn local(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
