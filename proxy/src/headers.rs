//! Header rewriting between client and backend (RFC 9110 §7.6.1).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

/// Headers that describe one hop's connection and must not be forwarded.
/// `HTTP2-Settings` belongs to an `Upgrade: h2c` (RFC 7540 §3.2.1), which
/// the proxy never forwards. `Trailer` is not among them (RFC 9110 §6.6.2
/// makes it end-to-end): hyper sends an HTTP/1.1 client only the trailer
/// fields it declares.
// A `static`, not a `const`: a const array is built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("http2-settings"),
];

/// The protocols a client may switch to through the proxy. Only WebSocket:
/// an `h2c` tunnel would carry requests the proxy never sees (no logging,
/// no in-flight count, no `X-Forwarded-For`), and other protocols have no
/// user yet.
const TUNNELLED: &[&str] = &["websocket"];

/// Whether the request asks to switch to a protocol the proxy tunnels
/// (WebSocket). Any other `Upgrade` (`h2c` above all) is not an upgrade:
/// the field is dropped and the request is forwarded as an ordinary one.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let mut offers = headers.get_all(header::UPGRADE).iter().peekable();
    offers.peek().is_some()
        && offers.all(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').map(str::trim).all(|p| {
                    let name = p.split('/').next().unwrap_or_default();
                    TUNNELLED.iter().any(|t| name.eq_ignore_ascii_case(t))
                })
            })
        })
        && connection_lists(headers, "upgrade")
}

/// Fields whose meaning the proxy decides itself, so `Connection` cannot
/// remove them: the message's framing (`Content-Length`,
/// `Transfer-Encoding`), `Host`, and the proxy's own `X-Forwarded-*`. A
/// client listing `Content-Length` in `Connection` must never make the
/// forwarded body a second request (issue 12.1).
pub fn is_protected(name: &HeaderName) -> bool {
    *name == header::CONTENT_LENGTH
        || *name == header::TRANSFER_ENCODING
        || *name == header::HOST
        || is_forwarding(name)
}

pub fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether `name` is hop-by-hop whatever `Connection` says.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.iter().any(|h| h == name)
}

/// [`is_hop_by_hop`] for a name as it came off the wire, in any case.
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Removes hop-by-hop headers. For an upgrade, `Upgrade` and
/// `Connection: upgrade` are end-to-end in effect and are kept.
///
/// Most requests carry none of them, so one pass over the names decides
/// whether there is anything to remove at all: cheaper than looking each of
/// the eight up (and hashing the non-standard ones) on every request.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let any = headers
        .keys()
        .any(|n| is_hop_by_hop(n) || (!upgrade && n == header::UPGRADE));
    if !any && !upgrade {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        for name in connection_named(headers, upgrade) {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The client's address as an `X-Forwarded-For` entry, made once per
/// connection rather than formatted on every request.
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_canonical().to_string())
        .expect("an IP address is a valid header value")
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The forwarding fields the proxy writes itself: a client's own are not
/// passed on as they are (`X-Forwarded-For` is appended to, the others set).
pub fn is_forwarding(name: &HeaderName) -> bool {
    *name == X_FORWARDED_FOR || *name == X_FORWARDED_PROTO || *name == X_FORWARDED_HOST
}

/// The fields `Connection` names as hop-by-hop for this message, less the
/// ones it may not remove ([`is_protected`]); for an upgrade, `Upgrade` is
/// not among them.
pub fn connection_named(headers: &HeaderMap, upgrade: bool) -> Vec<HeaderName> {
    connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !(is_protected(n) || upgrade && *n == header::UPGRADE))
        .collect()
}

/// This proxy's name in `Via` (RFC 9110 §7.6.3): a pseudonym made once per
/// process, so a request that comes back carrying it went around a loop
/// (the backend is the proxy itself, or forwards to it).
pub fn via_pseudonym() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("handoff-{:08x}", h.finish() as u32)
}

/// Whether any `Via` entry of the request names `pseudonym`.
pub fn via_names(headers: &HeaderMap, pseudonym: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|entry| entry.split_whitespace().nth(1) == Some(pseudonym))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_connection_and_what_it_names() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-app"], "kept");
    }

    #[test]
    fn keeps_upgrade_for_upgrades() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn nothing_to_strip_leaves_the_map_alone() {
        let mut h = map(&[("host", "a"), ("accept", "*/*"), ("x-app", "1")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 3);
        let mut h = map(&[("host", "a"), ("upgrade", "h2c")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "a stray Upgrade without Connection is dropped");
    }

    #[test]
    fn connection_cannot_remove_framing_host_or_forwarding_fields() {
        let mut h = map(&[
            (
                "connection",
                "content-length, Transfer-Encoding, host, x-forwarded-for, x-app",
            ),
            ("content-length", "5"),
            ("host", "a"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-app", "gone"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["content-length"], "5");
        assert_eq!(h["host"], "a");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert!(!h.contains_key("x-app"));
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        for (upgrade, yes) in [
            ("websocket", true),
            ("WebSocket", true),
            ("websocket/13", true),
            ("h2c", false),
            ("websocket, h2c", false),
            ("TLS/1.2", false),
        ] {
            let h = map(&[("connection", "Upgrade"), ("upgrade", upgrade)]);
            assert_eq!(is_upgrade(&h), yes, "{upgrade}");
        }
        let h = map(&[("upgrade", "websocket")]);
        assert!(!is_upgrade(&h), "Connection must list upgrade");
    }

    #[test]
    fn via_finds_the_pseudonym_in_any_entry() {
        let me = via_pseudonym();
        assert!(me.starts_with("handoff-"));
        let mine = format!("2 {me}");
        let h = map(&[
            ("via", "1.0 fred, 1.1 p.example.net"),
            ("via", mine.as_str()),
        ]);
        assert!(via_names(&h, &me));
        let h = map(&[("via", "1.1 handoff-other")]);
        assert!(!via_names(&h, &me));
    }

    #[test]
    fn forwarded_for_is_canonical() {
        assert_eq!(
            forwarded_for("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.3"
        );
        assert_eq!(forwarded_for("::1".parse().unwrap()), "::1");
    }
}
