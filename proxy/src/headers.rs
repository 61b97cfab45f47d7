//! Header rewriting between client and backend (RFC 9110 §7.6.1).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

/// Headers that describe one hop's connection and must not be forwarded.
/// `Trailer` is not among them (RFC 9110 §6.6.2 makes it end-to-end): hyper
/// sends an HTTP/1.1 client only the trailer fields it declares.
// A `static`, not a `const`: a const array is built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// Whether the request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_lists(headers, "upgrade")
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
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            if !(upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
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

/// The fields `Connection` names as hop-by-hop for this message; for an
/// upgrade, `Upgrade` is not among them.
pub fn connection_named(headers: &HeaderMap, upgrade: bool) -> Vec<HeaderName> {
    connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !(upgrade && *n == header::UPGRADE))
        .collect()
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
    fn forwarded_for_is_canonical() {
        assert_eq!(
            forwarded_for("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.3"
        );
        assert_eq!(forwarded_for("::1".parse().unwrap()), "::1");
    }
}
