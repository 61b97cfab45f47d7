//! Request-head normalisation: bytes parsed as hyper parses them (httparse),
//! then the proxy's own steps: the raw-head smuggling scanner, the request
//! checks, hop-by-hop stripping and the forwarding headers.
//!
//! Invariants: nothing panics; the scanner gives the same verdict however
//! the bytes are split across reads; after stripping, no hop-by-hop header
//! is left; a request the checks accept has exactly one valid Host.
#![no_main]

use handoff_proxy::{headers, limits, wire::HeadScan};
use http::header::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = HeadScan::default().feed(data);
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut split = HeadScan::default();
    let first = split.feed(&data[..cut]);
    let second = split.feed(&data[cut..]);
    assert_eq!(whole, first || second, "scanner verdict depends on the split at {cut}");

    let mut parsed = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut parsed);
    let Ok(httparse::Status::Complete(_)) = head.parse(data) else { return };
    let mut builder = http::Request::builder()
        .method(head.method.unwrap_or("GET"))
        .uri(head.path.unwrap_or("/"))
        .version(if head.version == Some(0) { http::Version::HTTP_10 } else { http::Version::HTTP_11 });
    for h in head.headers.iter() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value)) else {
            return;
        };
        builder = builder.header(name, value);
    }
    let Ok(mut req) = builder.body(()) else { return };

    if limits::check(&req, 1024).is_ok() && req.version() == http::Version::HTTP_11 {
        let hosts: Vec<_> = req.headers().get_all(http::header::HOST).iter().collect();
        assert_eq!(hosts.len(), 1);
        assert!(limits::valid_authority(hosts[0].as_bytes()));
    }
    let upgrade = headers::is_upgrade(req.headers());
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    for hop in ["keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "proxy-authorization"] {
        assert!(!req.headers().contains_key(hop), "{hop} survived stripping");
    }
    let host = req.headers().get(http::header::HOST).cloned();
    headers::add_forwarded(req.headers_mut(), "192.0.2.1".parse().unwrap(), "http", host);
    assert_eq!(req.headers()["x-forwarded-proto"], "http");
});
