//! What a client request must satisfy before any backend sees it.
//!
//! hyper's parser already refuses most malformed heads (invalid names and
//! values, obs-fold, bad chunk sizes, a head over the buffer) with 400/431.
//! This module adds the policy a front door needs on top: one valid `Host`,
//! no absolute-form target naming another host, `chunked` as the only
//! transfer coding, and a body size limit. Checks read headers in place and
//! allocate nothing.

use http::{header, HeaderMap, Method, Request, StatusCode, Version};
use std::time::Duration;

/// Per-connection and per-request bounds, each one a flag.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted (413 beyond it).
    pub max_body: u64,
    /// Largest request head, in bytes (431 beyond it).
    pub max_header_size: usize,
    /// Client connections served at once; further ones wait in the backlog.
    pub max_connections: usize,
    /// A TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// A connection that moves no byte for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    /// Close to nginx and HAProxy defaults; the body limit is larger than
    /// nginx's 1 MiB because the apps behind this proxy take uploads.
    fn default() -> Self {
        Self {
            max_body: 10 * 1024 * 1024,
            max_header_size: 32 * 1024,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// Why a request is refused; the text is the whole response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: &'static str,
}

pub(crate) const fn bad(reason: &'static str) -> Rejection {
    Rejection {
        status: StatusCode::BAD_REQUEST,
        reason,
    }
}

/// Checks a request head. Cheap: a handful of header lookups, no allocation.
pub fn check<B>(req: &Request<B>, max_body: u64) -> Result<(), Rejection> {
    if req.method() == Method::CONNECT {
        return Err(Rejection {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "CONNECT is not supported\n",
        });
    }
    let headers = req.headers();
    check_host(req)?;
    let path = req.uri().path();
    if !(path.starts_with('/') || (path == "*" && req.method() == Method::OPTIONS)) {
        return Err(bad("invalid request target\n"));
    }
    check_framing(headers, max_body)?;
    Ok(())
}

fn check_host<B>(req: &Request<B>) -> Result<(), Rejection> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("multiple Host headers\n"));
    }
    if let Some(h) = host {
        if !valid_authority(h.as_bytes()) {
            return Err(bad("invalid Host header\n"));
        }
    }
    let target = req.uri().authority();
    if let Some(a) = target {
        if !valid_authority(a.as_str().as_bytes()) {
            return Err(bad("invalid request target authority\n"));
        }
    }
    match (req.version(), host, target) {
        // HTTP/2 carries the host in :authority, which hyper puts in the URI.
        (Version::HTTP_2 | Version::HTTP_3, None, None) => Err(bad("missing :authority\n")),
        (Version::HTTP_11, None, _) => Err(bad("missing Host header\n")),
        // Absolute-form (`GET http://other/ HTTP/1.1`) or an HTTP/2
        // :authority must agree with Host, or the backend and this proxy
        // would disagree about which site was asked for.
        (_, Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => {
            Err(bad("request target and Host name different hosts\n"))
        }
        _ => match req.uri().scheme_str() {
            None | Some("http" | "https") => Ok(()),
            Some(_) => Err(bad("unsupported scheme in request target\n")),
        },
    }
}

/// `host[:port]` with a DNS name, IPv4 or bracketed IPv6 host. No userinfo,
/// path, spaces or control bytes: those are request-smuggling and cache
/// poisoning tools, never a real host.
pub fn valid_authority(b: &[u8]) -> bool {
    if b.is_empty() || b.len() > 255 {
        return false;
    }
    let (host, port) = if b[0] == b'[' {
        let Some(end) = b.iter().position(|&c| c == b']') else {
            return false;
        };
        let inner = &b[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'))
        {
            return false;
        }
        match &b[end + 1..] {
            [] => (&b[..0], None),
            [b':', port @ ..] => (&b[..0], Some(port)),
            _ => return false,
        }
    } else {
        match b.iter().rposition(|&c| c == b':') {
            Some(i) => (&b[..i], Some(&b[i + 1..])),
            None => (b, None),
        }
    };
    let host_ok = b[0] == b'['
        || (!host.is_empty()
            && host
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_')));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

/// Body framing hyper accepted but a front door should not: transfer codings
/// other than a lone `chunked` (nginx answers those 501), and declared
/// lengths over the limit (refused before any byte is read).
fn check_framing(headers: &HeaderMap, max_body: u64) -> Result<(), Rejection> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(v) = te.next() {
        if te.next().is_some() || !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(bad("unsupported Transfer-Encoding\n"));
        }
    }
    if let Some(cl) = headers.get(header::CONTENT_LENGTH) {
        let len = parse_u64(cl.as_bytes()).ok_or(bad("invalid Content-Length\n"))?;
        if len > max_body {
            return Err(too_large());
        }
    }
    Ok(())
}

pub const fn too_large() -> Rejection {
    Rejection {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        reason: "request body too large\n",
    }
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

/// Whether the body is framed by chunks, so its first chunk is worth reading
/// before the request goes upstream (a bad chunk size then never reaches a
/// backend).
pub fn is_chunked<B>(req: &Request<B>) -> bool {
    req.version() <= Version::HTTP_11 && req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// Parses a byte size: `1048576`, `512KiB`, `10MiB`, `1GiB` (also `k`, `m`, `g`, `KB`...).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected a number with an optional unit"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1",
            "[::1]:443",
            "[::1]",
            "a_b.local",
        ] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for no in [
            "",
            "a b",
            "user@host",
            "host/path",
            "host:",
            "host:x",
            "[::1",
            "[zz]",
            ":80",
            "h\0",
            "h:123456",
        ] {
            assert!(!valid_authority(no.as_bytes()), "{no:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("2k").unwrap(), 2048);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1TiB").is_err());
    }

    fn req(f: impl FnOnce(http::request::Builder) -> http::request::Builder) -> Request<()> {
        f(Request::builder()).body(()).unwrap()
    }

    #[test]
    fn heads() {
        assert!(check(&req(|b| b.uri("/").header("host", "a.test")), 10).is_ok());
        let no_host = req(|b| b.uri("/"));
        assert_eq!(
            check(&no_host, 10).unwrap_err().reason,
            "missing Host header\n"
        );
        let two = req(|b| b.uri("/").header("host", "a").header("host", "b"));
        assert_eq!(
            check(&two, 10).unwrap_err().reason,
            "multiple Host headers\n"
        );
        let abs = req(|b| b.uri("http://evil.test/").header("host", "a.test"));
        assert_eq!(check(&abs, 10).unwrap_err().status, StatusCode::BAD_REQUEST);
        let abs_same = req(|b| b.uri("http://A.test/x").header("host", "a.test"));
        assert!(check(&abs_same, 10).is_ok());
        let big = req(|b| {
            b.uri("/")
                .header("host", "a")
                .header("content-length", "11")
        });
        assert_eq!(
            check(&big, 10).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let gzip = req(|b| {
            b.uri("/")
                .header("host", "a")
                .header("transfer-encoding", "gzip, chunked")
        });
        assert!(check(&gzip, 10).is_err());
    }
}
