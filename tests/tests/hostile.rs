//! Issue 5, hostile input: raw bytes on real sockets against the real proxy.
//! Every malformed or smuggling request gets its exact status line and never
//! reaches the backend; slow and idle clients do not stop anyone else.

use handoff_tests::backend::Backend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request::{self, raw, status_line};
use http::StatusCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `(what, request bytes, expected status line)`. Requests a front door must
/// refuse; each is sent on its own connection.
const MALFORMED: &[(&str, &str, &str)] = &[
    // Smuggling: framing the proxy and a backend could read differently.
    (
        "CL then TE",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        "HTTP/1.1 400 Bad Request",
    ),
    (
        "TE then CL",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
        "HTTP/1.1 400 Bad Request",
    ),
    ("duplicate CL, same value", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", "HTTP/1.1 400 Bad Request"),
    ("duplicate CL, different values", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy", "HTTP/1.1 400 Bad Request"),
    ("CL list", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1, 2\r\n\r\nxy", "HTTP/1.1 400 Bad Request"),
    ("CL with sign", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: +1\r\n\r\nx", "HTTP/1.1 400 Bad Request"),
    ("TE gzip, chunked", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("TE chunked, identity", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("TE xchunked", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("TE twice", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("space before colon", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("TE on HTTP/1.0", "POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("bad chunk size", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    (
        "chunk size overflow",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
    ),
    // Invalid header names and values.
    ("space in header name", "GET / HTTP/1.1\r\nHost: a.test\r\nBad Header: x\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("control byte in value", "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\x01b\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("NUL in value", "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\0b\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("obs-fold", "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\r\n b\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("no colon", "GET / HTTP/1.1\r\nHost: a.test\r\nX-A\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    // Host.
    ("missing Host", "GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("two Hosts", "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("Host with space", "GET / HTTP/1.1\r\nHost: a.test b.test\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("Host with path", "GET / HTTP/1.1\r\nHost: a.test/x\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("Host with userinfo", "GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("empty Host", "GET / HTTP/1.1\r\nHost: \r\n\r\n", "HTTP/1.1 400 Bad Request"),
    // Absolute-form and other request-target tricks.
    ("absolute-form, other host", "GET http://evil.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("absolute-form, userinfo", "GET http://x@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("absolute-form, other scheme", "GET ftp://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("authority-form GET", "GET a.test:80 HTTP/1.1\r\nHost: a.test\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("CONNECT", "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
    ("asterisk GET", "GET * HTTP/1.1\r\nHost: a.test\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("space in target", "GET /a b HTTP/1.1\r\nHost: a.test\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("bad method", "G(T / HTTP/1.1\r\nHost: a.test\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ("bad version", "GET / HTTP/1.2\r\nHost: a.test\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    // Sizes.
    ("body over --max-body", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1025\r\n\r\n", "HTTP/1.1 413 Payload Too Large"),
    (
        "first chunk over --max-body",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n",
        "HTTP/1.1 413 Payload Too Large",
    ),
];

async fn proxy_for(b: &Backend, extra: &[&str]) -> Proxy {
    let mut args = vec![
        "--backend",
        b.addr.to_string().leak() as &str,
        "--max-body",
        "1KiB",
    ];
    args.extend_from_slice(extra);
    Proxy::start(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_smuggling_requests_get_exact_4xx_and_never_reach_the_backend() {
    let b = Backend::start("b1").await;
    let p = proxy_for(&b, &[]).await;
    let mut wrong = Vec::new();
    for (what, bytes, want) in MALFORMED {
        let mut bytes = bytes.to_string();
        if what.starts_with("first chunk") {
            bytes.push_str(&"x".repeat(0x800));
            bytes.push_str("\r\n0\r\n\r\n");
        }
        let response = raw(p.http, bytes.as_bytes()).await;
        if status_line(&response) != *want {
            wrong.push(format!(
                "{what}: got {:?}, want {want:?}",
                status_line(&response)
            ));
        }
        // Only one response: nothing pipelined behind it was served.
        if response.matches("HTTP/1.1 ").count() > 1 {
            wrong.push(format!("{what}: more than one response: {response:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(b.requests(), 0, "a malformed request reached the backend");

    // The proxy keeps serving.
    assert_eq!(request::get(p.http, "/").await.body, "b1");
    assert_eq!(b.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_behind_a_smuggling_probe_is_not_served() {
    let b = Backend::start("b1").await;
    let p = proxy_for(&b, &[]).await;
    let probe = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n\
                 POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 41\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
                 GET /admin HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let response = raw(p.http, probe.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request"),
        "{response}"
    );
    assert!(!response.contains("HTTP/1.1 200"), "{response}");
    assert_eq!(b.requests(), 0);
}

/// Issue 12.6: a chunked body that ends `0\r\n\n` made hyper read the
/// pipelined request behind it as a trailer section, and that request was
/// dropped without an answer. Now the body is refused with 400 and the
/// connection closed, so the client learns its request was not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_behind_a_bare_lf_chunked_end_is_never_dropped_silently() {
    let b = Backend::start("b1").await;
    let p = proxy_for(&b, &[]).await;
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        raw(
            p.http,
            b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\n\nGET /b HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 400 Bad Request",
        "{response}"
    );
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert_eq!(
        response.matches("HTTP/1.1 ").count(),
        1,
        "one answer, then the close: {response}"
    );
    // Well-formed trailers still pass.
    let ok = raw(
        p.http,
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          3\r\nabc\r\n0\r\nx-check: 1\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&ok), "HTTP/1.1 200 OK", "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_431_and_a_chunked_body_over_the_limit_is_413() {
    let b = Backend::start("b1").await;
    let p = proxy_for(&b, &["--max-header-size", "16KiB"]).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    assert_eq!(
        status_line(&raw(p.http, big.as_bytes()).await),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many}\r\n");
    assert_eq!(
        status_line(&raw(p.http, many.as_bytes()).await),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(b.requests(), 0);

    // Within limits, a chunked upload streams through; past the limit in a
    // later chunk it is cut with 413 (the backend saw the start of it).
    let ok = "POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let r = raw(p.http, ok.as_bytes()).await;
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK");
    assert!(r.contains("hello"), "{r}");
    let over = format!(
        "POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}\r\n400\r\n{}\r\n0\r\n\r\n",
        "a".repeat(16),
        "b".repeat(1024)
    );
    let r = raw(p.http, over.as_bytes()).await;
    assert!(
        matches!(
            status_line(&r),
            "HTTP/1.1 413 Payload Too Large" | "HTTP/1.1 200 OK"
        ) && !r.contains(&"b".repeat(1024)),
        "the part over the limit never reached the backend: {r}"
    );
}

/// Reads one response head on `stream` (up to the blank line).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_the_header_timeout_while_others_are_served() {
    let b = Backend::start("b1").await;
    let p = proxy_for(&b, &["--header-timeout", "1s"]).await;
    let mut slow = TcpStream::connect(p.http).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        .await
        .unwrap();
    // One header line every 300 ms: never a complete head.
    let dripper = tokio::spawn(async move {
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow
                .write_all(format!("X-Drip-{i}: x\r\n").as_bytes())
                .await
                .is_err()
            {
                return (i, slow);
            }
        }
        (40, slow)
    });
    // Meanwhile, normal clients are served.
    for _ in 0..5 {
        assert_eq!(request::get(p.http, "/").await.body, "b1");
    }
    let (drips, mut slow) = tokio::time::timeout(Duration::from_secs(30), dripper)
        .await
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    let text = String::from_utf8_lossy(&rest);
    // 40 drips span 12 s; a 1 s header timeout cuts the client long before.
    assert!(drips < 40, "the slow client was never cut");
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(
        b.requests(),
        5,
        "the slow request never reached the backend"
    );
}

/// This process's open-file soft limit, first raised to the hard limit with
/// util-linux's `prlimit` (no `unsafe` setrlimit here); the proxy started
/// afterwards inherits it. Often 1024 soft under systemd or Docker.
fn fd_budget() -> usize {
    let field = |n: usize| {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(n))
            .and_then(|v| v.parse::<usize>().ok())
    };
    if let Some(hard) = field(4) {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    field(3).unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_stop_a_new_client() {
    let budget = fd_budget();
    let b = Backend::start("b1").await;
    let p = proxy_for(&b, &[]).await;
    // Each idle connection costs this process one descriptor and the proxy
    // one; stay well under both limits (the proxy inherits ours).
    let n = 1000.min(budget.saturating_sub(200));
    assert!(n >= 500, "open-file limit too low for this test: {budget}",);
    eprintln!("{n} idle connections (open-file soft limit {budget})");
    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(p.http).await.unwrap();
        // Half say nothing, half stop in the middle of a head.
        if i % 2 == 0 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: a").await.unwrap();
        }
        idle.push(s);
    }
    for _ in 0..10 {
        assert_eq!(request::get(p.http, "/").await.body, "b1");
    }
    assert_eq!(b.requests(), 10);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_clients_wait_and_existing_ones_keep_working() {
    let b = Backend::start("b1").await;
    let p = proxy_for(&b, &["--max-connections", "2"]).await;
    let mut c1 = request::Conn::open(p.http).await;
    let mut c2 = request::Conn::open(p.http).await;
    assert_eq!(c1.get("/").await.unwrap().body, "b1");
    assert_eq!(c2.get("/").await.unwrap().body, "b1");
    // A third waits in the backlog, unanswered...
    let third = tokio::spawn(async move { request::get(p.http, "/").await.body });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond --max-connections 2"
    );
    // ...while the two keep being served...
    assert_eq!(c1.get("/").await.unwrap().body, "b1");
    // ...and is served as soon as one closes.
    drop(c2);
    let body = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("third served after a slot freed")
        .unwrap();
    assert_eq!(body, "b1");
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_and_h2c_connections_are_closed_after_the_idle_timeout() {
    let b = Backend::start("b1").await;
    let p = proxy_for(&b, &["--idle-timeout", "1s", "--header-timeout", "30s"]).await;
    // Plain HTTP/1.1 keep-alive: served, then closed once quiet.
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle keep-alive connection was not closed");
    // An HTTP/2 (prior knowledge) connection that only sent its preface.
    let mut h2 = TcpStream::connect(p.http).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), h2.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "idle h2c connection was not closed");
    assert_eq!(request::get(p.http, "/").await.status, StatusCode::OK);
}

/// Reads until `end` has arrived (or the connection closes); returns all of it.
async fn read_until(stream: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(end.len()).any(|w| w == end) {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// The head timeout runs from a head's first byte to its end, as nginx's
/// client_header_timeout does: not while a keep-alive connection waits for
/// its next request (the idle timeout's job), not while a body streams in,
/// and not in a tunnel. A second head that drips is cut like a first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_timeout_times_each_head_and_nothing_else() {
    let b = Backend::start("b1").await;
    let p = proxy_for(&b, &["--header-timeout", "1s", "--idle-timeout", "30s"]).await;
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    let _ = read_until(&mut s, b"b1").await;
    // Quiet between requests for longer than the head timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A body sent slowly, a byte every 400 ms: 1.6 s in all.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    for byte in [b"w", b"x", b"y", b"z"] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(byte).await.unwrap();
    }
    let echoed = String::from_utf8_lossy(&read_until(&mut s, b"wxyz").await).into_owned();
    assert!(echoed.starts_with("HTTP/1.1 200"), "{echoed}");
    assert!(echoed.contains("wxyz"), "{echoed}");
    // The third head drips, a line every 300 ms, and is cut.
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        .await
        .unwrap();
    let mut drips = 0;
    while drips < 40 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if s.write_all(format!("X-Drip-{drips}: x\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        drips += 1;
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(drips < 40, "a dripping second head was never cut");
    assert_eq!(b.requests(), 2, "the dripping head reached the backend");

    // A WebSocket quiet for longer than the head timeout stays open.
    let mut ws = TcpStream::connect(p.http).await.unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(read_head(&mut ws).await.starts_with("HTTP/1.1 101"));
    for word in ["ping", "pong"] {
        ws.write_all(word.as_bytes()).await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut got))
            .await
            .expect("tunnel answered")
            .expect("tunnel open");
        assert_eq!(&got, word.as_bytes());
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}
