//! Request-head normalisation: bytes parsed as hyper parses them (httparse),
//! then the proxy's own steps: the raw-head smuggling scanner, the request
//! checks, hop-by-hop stripping, and the head written to the backend.
//!
//! Invariants: nothing panics; the scanner gives the same verdict however
//! the bytes are split across reads; after stripping, no hop-by-hop header
//! is left; a request the checks accept has exactly one valid Host; the
//! backend's head parses, carries no hop-by-hop field and one
//! `X-Forwarded-Proto`; and (issue 12.1) the bytes written upstream, head and
//! body as the proxy frames it, parse into exactly one request whose body
//! length is the client's, whatever the client listed in `Connection`.
#![no_main]

use handoff_proxy::upstream::encode::{self, BodyFraming, Forwarding};
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
    let Ok(httparse::Status::Complete(head_len)) = head.parse(data) else { return };
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

    // What the proxy forwards at all: the scanner's framing conflicts
    // (both lengths, duplicates) and the checks' refusals are answered 400.
    let accepted = !whole && limits::check(&req, 1024).is_ok();
    if accepted && req.version() == http::Version::HTTP_11 {
        let hosts: Vec<_> = req.headers().get_all(http::header::HOST).iter().collect();
        assert_eq!(hosts.len(), 1);
        assert!(limits::valid_authority(hosts[0].as_bytes()));
    }
    let upgrade = headers::is_upgrade(req.headers());
    let client = headers::forwarded_for("192.0.2.1".parse().unwrap());
    let fwd = Forwarding { client: &client, proto: "http", fallback_host: "127.0.0.1:8080", via: "handoff-fuzz" };
    // The body as hyper would frame the client's: chunked if it says so,
    // else its Content-Length (the bytes after the head), else none.
    let rest = &data[head_len..];
    let (framing, body) = if !accepted {
        (BodyFraming::Empty, &rest[..0])
    } else if limits::is_chunked(&req) {
        (BodyFraming::Chunked, rest)
    } else {
        match req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok()) {
            Some(n) if n <= rest.len() => (if n == 0 { BodyFraming::Empty } else { BodyFraming::Length(n as u64) }, &rest[..n]),
            Some(_) => return,
            None => (BodyFraming::Empty, &rest[..0]),
        }
    };
    let wire = encode::request_head(&req, &fwd, upgrade, framing);
    let upstream = with_body(&wire, framing, body);
    assert_eq!(
        backend_reads(&upstream),
        Some((upstream.len(), body.len())),
        "the backend would not read one request with the client's {}-byte body: {:?}",
        body.len(),
        String::from_utf8_lossy(&upstream)
    );
    let mut fields = [httparse::EMPTY_HEADER; 80];
    let mut sent = httparse::Request::new(&mut fields);
    assert!(
        matches!(sent.parse(&wire), Ok(httparse::Status::Complete(n)) if n == wire.len()),
        "the backend's head does not parse: {:?}",
        String::from_utf8_lossy(&wire)
    );
    // `Trailer` is end-to-end (RFC 9110 §6.6.2); of `TE`, only `trailers`
    // is passed on, once.
    // `Transfer-Encoding` is the proxy's own, and only with chunked framing.
    let hops = ["keep-alive", "proxy-connection", "proxy-authorization"];
    let te_sent = sent.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")).count();
    assert_eq!(te_sent, usize::from(framing == BodyFraming::Chunked), "Transfer-Encoding sent {te_sent} times with {framing:?}");
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
    for hop in hops.iter().chain(&["te", "transfer-encoding"]) {
        assert!(!req.headers().contains_key(*hop), "{hop} survived stripping");
    }
});

/// The head and body as the proxy writes them upstream (upstream/http1.rs).
fn with_body(head: &[u8], framing: BodyFraming, body: &[u8]) -> Vec<u8> {
    let mut out = head.to_vec();
    match framing {
        BodyFraming::Chunked => {
            if !body.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        _ => out.extend_from_slice(body),
    }
    out
}

/// What a strict HTTP/1.1 server reads from the front of `bytes`: how many
/// bytes its first request takes, head and body, and the body's length.
/// `None` if it would refuse the head or its framing.
fn backend_reads(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; 80];
    let mut req = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(head) = req.parse(bytes).ok()? else { return None };
    let lengths: Vec<_> = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")).collect();
    let te: Vec<_> = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")).collect();
    match (lengths.as_slice(), te.as_slice()) {
        ([], []) => Some((head, 0)),
        ([cl], []) => {
            let n: usize = std::str::from_utf8(cl.value).ok()?.parse().ok()?;
            (bytes.len() >= head + n).then_some((head + n, n))
        }
        ([], [te]) if te.value.eq_ignore_ascii_case(b"chunked") => {
            let (mut at, mut total) = (head, 0);
            loop {
                let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
                let size = usize::from_str_radix(std::str::from_utf8(&bytes[at..line_end]).ok()?, 16).ok()?;
                at = line_end + 2;
                if size == 0 {
                    return (bytes.get(at..at + 2)? == b"\r\n").then_some((at + 2, total));
                }
                at += size;
                total += size;
                (bytes.get(at..at + 2)? == b"\r\n").then_some(())?;
                at += 2;
            }
        }
        _ => None,
    }
}
