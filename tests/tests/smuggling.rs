//! Issue 12.1: the framing of a forwarded message is the proxy's decision.
//! Whatever a client (or a backend) names in `Connection`, the message on
//! the other side is delimited by the length the proxy parsed.
//!
//! A differential oracle: a logging raw backend must see exactly the
//! requests the proxy counted and the client sent, with the client's bodies,
//! and the client must see exactly one response per request. It runs for
//! every header name a client can list in `Connection`, in both directions,
//! over plain HTTP/1.1 and over TLS.

use handoff_tests::proxy::Proxy;
use handoff_tests::request;
use handoff_tests::scripted::{find, raw, start_proxy, within, Reply, Scripted, OK};
use handoff_tests::tls::{self, TestCa};
use handoff_tests::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every field name worth listing in `Connection`: framing, routing, the
/// proxy's own, hop-by-hop, and ordinary end-to-end ones.
const NAMES: &[&str] = &[
    "content-length",
    "Content-Length",
    "transfer-encoding",
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "via",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "connection",
    "expect",
    "content-type",
    "content-encoding",
    "cookie",
    "authorization",
    "http2-settings",
    "x-app",
    "content-length, transfer-encoding, host",
    "keep-alive, content-length",
];

/// A whole request hidden in a body: if the backend ever reads it as a
/// request, the proxy lost control of the framing.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";

/// A whole response hidden in a body, for the other direction.
const FAKE_RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!";

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One response off `s`: status code and body, framed by its head.
async fn read_response(s: &mut dyn Stream, buf: &mut Vec<u8>) -> Option<(u16, Vec<u8>)> {
    let head = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break String::from_utf8(buf.drain(..end + 4).collect()).unwrap();
        }
        if !fill(s, buf).await {
            assert!(buf.is_empty(), "connection closed inside a head: {buf:?}");
            return None;
        }
    };
    let status: u16 = head[9..12].parse().expect("status code");
    let field = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let body = if field("transfer-encoding").is_some() {
        let mut body = Vec::new();
        loop {
            let line = read_line(s, buf).await;
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .expect("chunk size");
            if size == 0 {
                while !read_line(s, buf).await.is_empty() {}
                break body;
            }
            body.extend(take(s, buf, size + 2).await);
            body.truncate(body.len() - 2);
        }
    } else if let Some(n) = field("content-length") {
        take(s, buf, n.parse().unwrap()).await
    } else {
        // Delimited by the close.
        while fill(s, buf).await {}
        std::mem::take(buf)
    };
    Some((status, body))
}

async fn fill(s: &mut dyn Stream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match s.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

async fn take(s: &mut dyn Stream, buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    while buf.len() < n {
        assert!(fill(s, buf).await, "connection closed inside a body");
    }
    buf.drain(..n).collect()
}

async fn read_line(s: &mut dyn Stream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(at) = find(buf, b"\r\n") {
            let line: Vec<u8> = buf.drain(..at + 2).collect();
            return String::from_utf8(line[..at].to_vec()).unwrap();
        }
        assert!(fill(s, buf).await, "connection closed inside a chunk line");
    }
}

/// What a client sent, as the backend should see it.
#[derive(Debug, PartialEq)]
struct Sent {
    method: &'static str,
    target: String,
    body: Vec<u8>,
}

/// The backend answers every request with its target as the body; a
/// target under `/resp/` gets `Connection: <name>` and a hidden response
/// in its body, framed by length or by chunks.
async fn backend() -> Scripted {
    Scripted::start(|seen| {
        let target = seen.target.clone();
        let Some(rest) = target.strip_prefix("/resp/") else {
            return Reply::Send(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{target}",
                    target.len()
                )
                .into_bytes(),
            );
        };
        let (framing, name) = rest.split_once('/').unwrap();
        let name = name.replace("%20", " ");
        let body = format!("{target}{FAKE_RESPONSE}");
        let head = format!("HTTP/1.1 200 OK\r\nConnection: {name}\r\n");
        Reply::Send(
            if framing == "chunked" {
                format!(
                    "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                )
            } else {
                format!("{head}Content-Length: {}\r\n\r\n{body}", body.len())
            }
            .into_bytes(),
        )
    })
    .await
}

/// Runs every case on fresh connections made by `connect`; returns what the
/// clients sent, in order.
async fn run_cases<F, Fut>(connect: F) -> Vec<Sent>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Box<dyn Stream>>,
{
    let mut sent = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        for case in ["length", "chunked", "resp-length", "resp-chunked"] {
            let mut s = connect().await;
            let mut buf = Vec::new();
            let what = format!("case {case} with Connection: {name}");
            let first = match case {
                "length" => {
                    let target = format!("/req/{i}/length");
                    let raw = format!(
                        "POST {target} HTTP/1.1\r\nHost: x\r\nConnection: {name}\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
                        SMUGGLED.len()
                    );
                    s.write_all(raw.as_bytes()).await.unwrap();
                    Sent {
                        method: "POST",
                        target,
                        body: SMUGGLED.as_bytes().to_vec(),
                    }
                }
                "chunked" => {
                    let target = format!("/req/{i}/chunked");
                    let raw = format!(
                        "POST {target} HTTP/1.1\r\nHost: x\r\nConnection: {name}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
                        SMUGGLED.len()
                    );
                    s.write_all(raw.as_bytes()).await.unwrap();
                    Sent {
                        method: "POST",
                        target,
                        body: SMUGGLED.as_bytes().to_vec(),
                    }
                }
                _ => {
                    let framing = case.strip_prefix("resp-").unwrap();
                    let target = format!("/resp/{framing}/{}", name.replace(' ', "%20"));
                    let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
                    s.write_all(raw.as_bytes()).await.unwrap();
                    Sent {
                        method: "GET",
                        target,
                        body: Vec::new(),
                    }
                }
            };
            let (status, body) = within(&what, read_response(&mut *s, &mut buf))
                .await
                .unwrap_or_else(|| panic!("{what}: no response"));
            assert_eq!(status, 200, "{what}");
            let mut expect = first.target.clone().into_bytes();
            if case.starts_with("resp-") {
                expect.extend_from_slice(FAKE_RESPONSE.as_bytes());
            }
            assert_eq!(
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&expect),
                "{what}: the client got another body"
            );
            sent.push(first);
            // A request listing `close` ends the connection; otherwise the
            // same connection must carry the next request and nothing else.
            if case.starts_with("resp-") || !name.contains("close") {
                let target = format!("/next/{i}/{case}");
                let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                if s.write_all(raw.as_bytes()).await.is_ok() {
                    let (status, body) = within(&what, read_response(&mut *s, &mut buf))
                        .await
                        .unwrap_or_else(|| panic!("{what}: no response to the next request"));
                    assert_eq!(status, 200, "{what}: next request");
                    assert_eq!(
                        String::from_utf8_lossy(&body),
                        target,
                        "{what}: the next request got another answer"
                    );
                    sent.push(Sent {
                        method: "GET",
                        target,
                        body: Vec::new(),
                    });
                }
            }
            // Nothing more may follow: a hidden response would be here.
            let _ = within(&what, async { while fill(&mut *s, &mut buf).await {} }).await;
            assert!(
                buf.is_empty(),
                "{what}: bytes after the last response: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
    sent
}

/// Requests the proxy answered, summed over status classes, from /metrics.
async fn proxy_counted(p: &Proxy) -> u64 {
    let m = request::get(p.admin.expect("admin listener"), "/metrics").await;
    m.body
        .lines()
        .filter(|l| l.starts_with("handoff_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn assert_backend_saw_exactly(b: &Scripted, sent: &[Sent], counted: u64) {
    let seen: Vec<Sent> = b
        .seen()
        .into_iter()
        .map(|s| Sent {
            method: if s.method == "POST" {
                "POST"
            } else if s.method == "GET" {
                "GET"
            } else {
                "OTHER"
            },
            target: s.target,
            body: s.body,
        })
        .collect();
    assert!(
        !seen.iter().any(|s| s.target == "/smuggled"),
        "a smuggled request reached the backend"
    );
    assert_eq!(
        seen.len(),
        sent.len(),
        "backend saw {} requests, clients sent {}",
        seen.len(),
        sent.len()
    );
    for (s, c) in seen.iter().zip(sent) {
        assert_eq!(s, c);
    }
    assert_eq!(
        counted,
        sent.len() as u64,
        "the proxy counted another number of requests"
    );
}

#[tokio::test]
async fn connection_never_changes_the_framing_over_http1() {
    let b = backend().await;
    let p = Proxy::start(&["--backend", &b.addr()]).await;
    let addr = p.http;
    let sent = run_cases(|| async move {
        Box::new(TcpStream::connect(addr).await.unwrap()) as Box<dyn Stream>
    })
    .await;
    assert_backend_saw_exactly(&b, &sent, proxy_counted(&p).await);
}

#[tokio::test]
async fn connection_never_changes_the_framing_over_tls() {
    let b = backend().await;
    let dir = TempDir::new("smuggling-tls");
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "x", &["x"]);
    let (cert, key) = (
        leaf.cert.display().to_string(),
        leaf.key.display().to_string(),
    );
    let p = Proxy::start(&[
        "--backend",
        &b.addr(),
        "--https",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ])
    .await;
    let addr = p.https.expect("https listener");
    let connector = ca.client(&[b"http/1.1"]);
    let sent =
        run_cases(|| {
            let connector = connector.clone();
            async move {
                Box::new(tls::connect(&connector, addr, "x").await.unwrap()) as Box<dyn Stream>
            }
        })
        .await;
    assert_backend_saw_exactly(&b, &sent, proxy_counted(&p).await);
}

/// Issue 12.4: an `h2c` tunnel would carry requests the proxy never logs,
/// counts or marks with `X-Forwarded-For`. Only WebSocket upgrades tunnel;
/// any other `Upgrade` is dropped with `HTTP2-Settings`, and the request is
/// answered as an ordinary one.
#[tokio::test]
async fn an_h2c_upgrade_is_forwarded_as_a_plain_request_never_a_tunnel() {
    let b = Scripted::start(|req| {
        if req.one("upgrade").is_some() {
            Reply::Tunnel(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Reply::Send(OK.as_bytes().to_vec())
        }
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    for upgrade in ["h2c", "websocket, h2c", "H2C"] {
        let out = raw(
            &p,
            format!(
                "GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
                 Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{upgrade}: {out}");
        assert!(out.ends_with("ok"), "{upgrade}: {out}");
    }
    for seen in b.seen() {
        assert_eq!(seen.one("upgrade"), None, "{seen:?}");
        assert_eq!(seen.one("http2-settings"), None, "{seen:?}");
        assert_eq!(seen.one("connection"), None, "{seen:?}");
    }
    assert_eq!(b.seen().len(), 3);
}
