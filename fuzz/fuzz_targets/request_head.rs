//! Request-head normalisation: bytes parsed as hyper parses them (httparse),
//! then the proxy's own steps: the raw-head smuggling scanner, the request
//! checks, hop-by-hop stripping, and the head written to the backend.
//!
//! Invariants: nothing panics; the scanner gives the same verdict however
//! the bytes are split across reads; after stripping, no hop-by-hop header
//! is left; a request the checks accept has exactly one valid Host; the
//! backend's head parses, carries no hop-by-hop field and one
//! `X-Forwarded-Proto`.
#![no_main]

use handoff_proxy::upstream::encode::{self, Forwarding};
use handoff_proxy::{head_scan::HeadScan, headers, limits};
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
    let client = headers::forwarded_for("192.0.2.1".parse().unwrap());
    let fwd = Forwarding { client: &client, proto: "http", fallback_host: "127.0.0.1:8080" };
    let (wire, _) = encode::request_head(&req, &fwd, upgrade, false);
    let mut fields = [httparse::EMPTY_HEADER; 80];
    let mut sent = httparse::Request::new(&mut fields);
    assert!(
        matches!(sent.parse(&wire), Ok(httparse::Status::Complete(n)) if n == wire.len()),
        "the backend's head does not parse: {:?}",
        String::from_utf8_lossy(&wire)
    );
    // `Trailer` is end-to-end (RFC 9110 §6.6.2); of `TE`, only `trailers`
    // is passed on, once.
    let hops = ["keep-alive", "proxy-connection", "transfer-encoding", "proxy-authorization"];
    for h in sent.headers.iter() {
        assert!(!hops.iter().any(|hop| h.name.eq_ignore_ascii_case(hop)), "{} sent to the backend", h.name);
        if h.name.eq_ignore_ascii_case("te") {
            assert_eq!(h.value, b"trailers", "TE offer other than trailers sent to the backend");
        }
    }
    let tes = sent.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("te")).count();
    assert!(tes <= 1, "TE sent {tes} times");
    let protos = sent.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-proto")).count();
    assert_eq!(protos, 1);

    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    for hop in hops.iter().chain(&["te"]) {
        assert!(!req.headers().contains_key(*hop), "{hop} survived stripping");
    }
});
