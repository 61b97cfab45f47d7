//! The request head as the backend receives it, written straight from the
//! client's parsed request: origin-form target, HTTP/1.1, hop-by-hop fields
//! left out, `Host` kept, `X-Forwarded-*` added (RFC 9110 §7.6.1).
//!
//! Why not edit the `HeaderMap` and then serialise it: every insert and
//! removal hashes and probes the map, and the map is thrown away right after;
//! leaving fields out and appending the proxy's own while writing costs one
//! pass over the fields.

use crate::{headers, trailers};
use http::header::{self, HeaderValue};
use http::{Method, Request};

/// What the proxy says about the client to the backend.
pub struct Forwarding<'a> {
    /// The client's address, as an `X-Forwarded-For` entry.
    pub client: &'a HeaderValue,
    /// `http` or `https`.
    pub proto: &'static str,
    /// `Host` for a request that names none (HTTP/1.0): the backend's address.
    pub fallback_host: &'a str,
}

/// The request head in wire form, and whether the body goes chunked.
/// `body_follows`: the body is not known to be empty, so it must be framed.
/// `upgrade`: the request asks to switch protocols, so `Upgrade` and
/// `Connection: upgrade` go through.
pub fn request_head<B>(
    req: &Request<B>,
    fwd: &Forwarding<'_>,
    upgrade: bool,
    body_follows: bool,
) -> (Vec<u8>, bool) {
    let map = req.headers();
    let mut out = Vec::with_capacity(256 + map.len() * 40);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");

    // HTTP/2 carries the host in :authority, absolute-form in the target.
    let host = map
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
    line(
        &mut out,
        b"host",
        host.unwrap_or(fwd.fallback_host.as_bytes()),
    );

    let named = map
        .contains_key(header::CONNECTION)
        .then(|| headers::connection_named(map, upgrade));
    let mut prior_xff = false;
    let mut te_trailers = false;
    for (name, value) in map {
        if *name == header::HOST || headers::is_forwarding(name) {
            prior_xff |= name == headers::X_FORWARDED_FOR;
            continue;
        }
        if headers::is_hop_by_hop(name) || (*name == header::UPGRADE && !upgrade) {
            // `TE: trailers` is the one hop-by-hop offer passed on: the
            // client takes trailers, which is why they are forwarded.
            te_trailers |= *name == header::TE && trailers::te_offers_trailers(value.as_bytes());
            continue;
        }
        if named.as_ref().is_some_and(|n| n.contains(name)) {
            continue;
        }
        line(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    // A sender of TE names it in Connection too (RFC 9110 §10.1.4).
    if te_trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    match (upgrade, te_trailers) {
        (true, false) => out.extend_from_slice(b"connection: upgrade\r\n"),
        (true, true) => out.extend_from_slice(b"connection: upgrade, te\r\n"),
        (false, true) => out.extend_from_slice(b"connection: te\r\n"),
        (false, false) => {}
    }

    // Appended to what earlier proxies said, in order.
    out.extend_from_slice(b"x-forwarded-for: ");
    if prior_xff {
        for prev in map.get_all(headers::X_FORWARDED_FOR) {
            let prev = prev.as_bytes().trim_ascii();
            if !prev.is_empty() {
                out.extend_from_slice(prev);
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(fwd.client.as_bytes());
    out.extend_from_slice(b"\r\n");
    line(&mut out, b"x-forwarded-proto", fwd.proto.as_bytes());
    if let Some(host) = host {
        line(&mut out, b"x-forwarded-host", host);
    }

    let mut chunked = false;
    if !map.contains_key(header::CONTENT_LENGTH) {
        if body_follows {
            // A chunked client body, or an HTTP/2 one without a length.
            chunked = true;
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
            // Some servers wait for a body they were not told is empty.
            out.extend_from_slice(b"content-length: 0\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    (out, chunked)
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(req: Request<()>, upgrade: bool) -> String {
        let client = HeaderValue::from_static("192.0.2.7");
        let fwd = Forwarding {
            client: &client,
            proto: "https",
            fallback_host: "127.0.0.1:8080",
        };
        String::from_utf8(request_head(&req, &fwd, upgrade, false).0).unwrap()
    }

    #[test]
    fn hop_by_hop_fields_stay_and_forwarding_fields_are_the_proxys() {
        let req = Request::post("http://example.test/a?b=1")
            .header("host", "example.test")
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("upgrade", "websocket")
            .header("proxy-authorization", "Basic x")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-for", "10.0.0.2")
            .header("x-forwarded-proto", "gopher")
            .header("x-forwarded-host", "evil.test")
            .header("x-app", "kept")
            .body(())
            .unwrap();
        assert_eq!(
            wire(req, false),
            "POST /a?b=1 HTTP/1.1\r\nhost: example.test\r\nx-app: kept\r\nte: trailers\r\n\
             connection: te\r\nx-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: example.test\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_and_a_missing_host_names_the_backend() {
        let req = Request::get("/ws")
            .version(http::Version::HTTP_10)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert_eq!(
            wire(req, true),
            "GET /ws HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nupgrade: websocket\r\n\
             connection: upgrade\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: https\r\n\r\n"
        );
    }
}
