//! The request head as the backend receives it, written straight from the
//! client's parsed request: origin-form target, HTTP/1.1, hop-by-hop fields
//! left out, `Host` kept, `X-Forwarded-*` and `Via` added (RFC 9110 §7.6).
//!
//! The body's framing is the proxy's own decision, made from the length it
//! parsed ([`BodyFraming`]): the client's `Content-Length` and
//! `Transfer-Encoding` are never copied, and nothing the client names in
//! `Connection` can leave the framing out (issue 12.1: a client listing
//! `Content-Length` there once made its body a second, smuggled request).
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
    /// This proxy's pseudonym for `Via` ([`crate::headers::via_pseudonym`]).
    pub via: &'a str,
}

/// How the forwarded body is delimited, decided by the proxy from what it
/// parsed of the client's message, never from the client's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// Length unknown in advance: chunked.
    Chunked,
}

impl BodyFraming {
    /// The framing of a body from what the parser knows of it.
    pub fn of(body: &impl http_body::Body) -> Self {
        if body.is_end_stream() {
            BodyFraming::Empty
        } else if let Some(n) = body.size_hint().exact() {
            BodyFraming::Length(n)
        } else {
            BodyFraming::Chunked
        }
    }
}

/// The request head in wire form. `framing` is the body's, as the proxy
/// will send it. `upgrade`: the request asks to switch protocols, so
/// `Upgrade` and `Connection: upgrade` go through.
pub fn request_head<B>(
    req: &Request<B>,
    fwd: &Forwarding<'_>,
    upgrade: bool,
    framing: BodyFraming,
) -> Vec<u8> {
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
        // Framing is written below, from `framing` alone.
        if *name == header::CONTENT_LENGTH
            || headers::is_hop_by_hop(name)
            || (*name == header::UPGRADE && !upgrade)
        {
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

    // Earlier proxies' entries came through with the other fields.
    out.extend_from_slice(b"via: ");
    out.extend_from_slice(match req.version() {
        http::Version::HTTP_10 => b"1.0 ",
        http::Version::HTTP_2 => b"2 ",
        _ => b"1.1 ",
    });
    out.extend_from_slice(fwd.via.as_bytes());
    out.extend_from_slice(b"\r\n");

    match framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa_u64(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        // A chunked client body, or an HTTP/2 one without a length.
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // Some servers wait for a body they were not told is empty.
        BodyFraming::Empty
            if map.contains_key(header::CONTENT_LENGTH)
                || matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) =>
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        BodyFraming::Empty => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `n` in decimal, written into the end of `buf`.
fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
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
            via: "handoff-test",
        };
        String::from_utf8(request_head(&req, &fwd, upgrade, BodyFraming::Empty)).unwrap()
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
             x-forwarded-host: example.test\r\nvia: 1.1 handoff-test\r\ncontent-length: 0\r\n\r\n"
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
             connection: upgrade\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: https\r\n\
             via: 1.0 handoff-test\r\n\r\n"
        );
    }

    #[test]
    fn the_framing_is_the_proxys_whatever_connection_names() {
        let client = HeaderValue::from_static("192.0.2.7");
        let fwd = Forwarding {
            client: &client,
            proto: "http",
            fallback_host: "b",
            via: "handoff-test",
        };
        let req = Request::post("/a")
            .header("host", "x")
            .header("connection", "Content-Length, transfer-encoding")
            .header("content-length", "61")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        for (framing, expect) in [
            (BodyFraming::Length(61), "content-length: 61\r\n\r\n"),
            (BodyFraming::Chunked, "transfer-encoding: chunked\r\n\r\n"),
            (BodyFraming::Empty, "content-length: 0\r\n\r\n"),
        ] {
            let wire = String::from_utf8(request_head(&req, &fwd, false, framing)).unwrap();
            assert!(wire.ends_with(expect), "{wire}");
            assert_eq!(
                wire.matches("content-length").count() + wire.matches("transfer-encoding").count(),
                1,
                "{wire}"
            );
        }
        assert_eq!(itoa_u64(0, &mut [0; 20]), b"0");
        assert_eq!(itoa_u64(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }
}
