//! The proxy's own HTTP/1.1 client to backends (proxy/src/upstream): the real
//! proxy binary against scripted raw-TCP backends that send exactly the bytes
//! a test chooses. Framing (interim answers, chunked, read-until-close,
//! bodiless statuses), refusal of ambiguous answers, keep-alive reuse and the
//! retry of a request a stale connection swallowed, request bodies and
//! headers as the backend receives them, early answers and timeouts.

use bytes::Bytes;
use handoff_shared::SetBackend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request::{self, Conn};
use http::{Request, StatusCode};
use http_body_util::Full;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

/// Every wait in this file ends within this, so a hang fails instead.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------
// The scripted backend.

/// One request as the scripted backend read it off the wire.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// Which accepted connection it came on (0 = the first accepted).
    conn: usize,
    /// Its place on that connection (0 = first request).
    nth: usize,
    method: String,
    target: String,
    version: String,
    /// Names lower-cased, in the order sent.
    headers: Vec<(String, String)>,
    /// The body, de-chunked if it came chunked.
    body: Vec<u8>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one field called `name`; fails the test if it came twice.
    fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} sent {} times: {self:?}", all.len());
        all.first().copied()
    }
}

/// What the backend does with a request.
enum Reply {
    /// Writes the bytes, then waits for the next request on the connection.
    Send(Vec<u8>),
    /// Writes the bytes and closes the connection.
    SendClose(Vec<u8>),
    /// Closes the connection without answering.
    Close,
    /// Writes the bytes (maybe none), then neither writes nor closes: it
    /// only waits for the proxy to close the connection.
    Hold(Vec<u8>),
    /// Writes the bytes and closes *before reading the request body*.
    EarlyClose(Vec<u8>),
    /// Reads neither the request body nor answers; waits for the proxy to
    /// close (a backend stuck before it reads an upload).
    HoldUnread,
    /// Writes each piece with a pause between, then waits for the next request.
    Drip(Vec<Vec<u8>>, Duration),
    /// Writes the bytes (a 101 and what follows it), then echoes every byte
    /// it receives until the proxy closes.
    Tunnel(Vec<u8>),
}

/// Chooses the reply from the request head (the body is read afterwards,
/// unless the reply is [`Reply::EarlyClose`] or [`Reply::HoldUnread`]).
type Script = Box<dyn Fn(&Seen) -> Reply + Send + Sync>;

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    accepts: usize,
    requests: usize,
    /// Connections the proxy ended (end of stream or error seen by the backend).
    proxy_closed: usize,
    /// Connections the backend ended by its script or by [`Scripted::close_idle`].
    backend_closed: usize,
}

struct Shared {
    script: Script,
    seen: Mutex<Vec<Seen>>,
    counts: watch::Sender<Counts>,
    /// Bumped to make every connection waiting for a request close.
    kick: watch::Sender<u64>,
}

/// A backend on 127.0.0.1:0 that answers from a script; stopped when dropped.
struct Scripted {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl Scripted {
    async fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            script: Box::new(script),
            seen: Mutex::new(Vec::new()),
            counts: watch::Sender::new(Counts::default()),
            kick: watch::Sender::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared))).abort_handle();
        Scripted {
            addr,
            shared,
            accept,
        }
    }

    /// Answers every request from a table of `(path, reply)`: the reply's
    /// bytes are sent and the connection kept. Unknown paths get 404.
    async fn routes(table: &'static [(&'static str, &'static str)]) -> Scripted {
        Scripted::start(move |req| {
            let found = table.iter().find(|(path, _)| *path == req.target);
            Reply::Send(found.map_or(NOT_FOUND, |(_, raw)| *raw).as_bytes().to_vec())
        })
        .await
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    fn counts(&self) -> Counts {
        *self.shared.counts.borrow()
    }

    /// Waits (bounded) until the counts satisfy `cond`.
    async fn wait(&self, what: &str, cond: impl FnMut(&Counts) -> bool) {
        let mut rx = self.shared.counts.subscribe();
        within(what, rx.wait_for(cond)).await.expect("backend gone");
    }

    /// Closes every connection idle between requests, as a backend's
    /// keep-alive timeout would, and waits until at least `n` are closed.
    async fn close_idle(&self, n: usize) {
        let before = self.counts().backend_closed;
        self.shared.kick.send_modify(|k| *k += 1);
        self.wait("backend closed its idle connections", |c| {
            c.backend_closed >= before + n
        })
        .await;
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): all stop.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    let mut n = 0;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        shared.counts.send_modify(|c| c.accepts += 1);
        conns.spawn(serve(tcp, n, Arc::clone(&shared)));
        n += 1;
    }
}

async fn serve(mut tcp: TcpStream, conn: usize, shared: Arc<Shared>) {
    let mut kick = shared.kick.subscribe();
    kick.mark_unchanged();
    let mut buf = Vec::new();
    let closed_by_proxy = || shared.counts.send_modify(|c| c.proxy_closed += 1);
    let closed_by_backend = || shared.counts.send_modify(|c| c.backend_closed += 1);
    for nth in 0.. {
        let head = tokio::select! {
            head = read_head(&mut tcp, &mut buf) => head,
            _ = kick.changed() => {
                drop(tcp);
                closed_by_backend();
                return;
            }
        };
        let Some(head) = head else {
            closed_by_proxy();
            return;
        };
        let mut seen = parse_request(&head);
        seen.conn = conn;
        seen.nth = nth;
        let reply = (shared.script)(&seen);
        if !matches!(reply, Reply::EarlyClose(_) | Reply::HoldUnread) {
            match read_body(&mut tcp, &mut buf, &seen).await {
                Some(body) => seen.body = body,
                None => {
                    closed_by_proxy();
                    return;
                }
            }
        }
        // Recorded before answering: once the client has its answer, the
        // test sees this request.
        shared.seen.lock().unwrap().push(seen);
        shared.counts.send_modify(|c| c.requests += 1);
        match reply {
            Reply::Send(bytes) => {
                if tcp.write_all(&bytes).await.is_err() {
                    closed_by_proxy();
                    return;
                }
            }
            Reply::SendClose(bytes) | Reply::EarlyClose(bytes) => {
                let _ = tcp.write_all(&bytes).await;
                drop(tcp);
                closed_by_backend();
                return;
            }
            Reply::Close => {
                drop(tcp);
                closed_by_backend();
                return;
            }
            Reply::Hold(_) | Reply::HoldUnread => {
                if let Reply::Hold(bytes) = reply {
                    let _ = tcp.write_all(&bytes).await;
                }
                let mut sink = [0u8; 4096];
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                closed_by_proxy();
                return;
            }
            Reply::Drip(pieces, gap) => {
                for piece in pieces {
                    if tcp.write_all(&piece).await.is_err() {
                        closed_by_proxy();
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
            }
            Reply::Tunnel(bytes) => {
                let _ = tcp.write_all(&bytes).await;
                if !buf.is_empty() && tcp.write_all(&buf).await.is_err() {
                    closed_by_proxy();
                    return;
                }
                let mut chunk = [0u8; 4096];
                loop {
                    match tcp.read(&mut chunk).await {
                        Ok(n) if n > 0 => {
                            if tcp.write_all(&chunk[..n]).await.is_err() {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                closed_by_proxy();
                return;
            }
        }
    }
}

/// Reads more bytes into `buf`; false at end of stream or on an error.
async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    match tcp.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One message head (through the blank line) off the front of `buf`,
/// reading as needed; what follows it stays in `buf`.
async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            return Some(buf.drain(..end + 4).collect());
        }
        assert!(buf.len() < 256 * 1024, "runaway head");
        if !fill(tcp, buf).await {
            return None;
        }
    }
}

/// Exactly `n` bytes off the front of `buf`, reading as needed.
async fn take(tcp: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        if !fill(tcp, buf).await {
            return None;
        }
    }
    Some(buf.drain(..n).collect())
}

/// One CRLF-terminated line, without its CRLF.
async fn line(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(at) = find(buf, b"\r\n") {
            let mut l: Vec<u8> = buf.drain(..at + 2).collect();
            l.truncate(at);
            return Some(l);
        }
        if !fill(tcp, buf).await {
            return None;
        }
    }
}

/// The request body as framed by the head; `None` if the stream ends early.
async fn read_body(tcp: &mut TcpStream, buf: &mut Vec<u8>, req: &Seen) -> Option<Vec<u8>> {
    let chunked = req
        .all("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut body = Vec::new();
        loop {
            let size_line = line(tcp, buf).await?;
            let size_line = String::from_utf8(size_line).expect("chunk size line");
            let hex = size_line.split(';').next().unwrap().trim();
            let size = usize::from_str_radix(hex, 16).expect("chunk size");
            if size == 0 {
                // Trailer fields, up to the empty line.
                while !line(tcp, buf).await?.is_empty() {}
                return Some(body);
            }
            body.extend(take(tcp, buf, size).await?);
            assert_eq!(take(tcp, buf, 2).await?, b"\r\n", "chunk without CRLF");
        }
    }
    match req.one("content-length") {
        Some(n) => take(tcp, buf, n.parse().expect("content-length")).await,
        None => Some(Vec::new()),
    }
}

fn parse_request(head: &[u8]) -> Seen {
    let text = std::str::from_utf8(head).expect("request head is UTF-8");
    let mut lines = text.split("\r\n");
    let mut start = lines.next().unwrap().split(' ');
    let mut seen = Seen {
        method: start.next().unwrap_or_default().to_string(),
        target: start.next().unwrap_or_default().to_string(),
        version: start.next().unwrap_or_default().to_string(),
        ..Seen::default()
    };
    for l in lines.filter(|l| !l.is_empty()) {
        let (name, value) = l.split_once(':').expect("header line with a colon");
        seen.headers
            .push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    seen
}

const NOT_FOUND: &str = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

// ---------------------------------------------------------------------------
// Client side.

async fn start_proxy(b: &Scripted, extra: &[&str]) -> Proxy {
    let addr = b.addr();
    let mut args = vec!["--backend", addr.as_str()];
    args.extend_from_slice(extra);
    Proxy::start(&args).await
}

async fn open(p: &Proxy) -> Conn {
    within("connect to the proxy", Conn::open(p.http)).await
}

async fn get(c: &mut Conn, path: &str) -> request::Reply {
    within(&format!("GET {path}"), c.get(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn send(c: &mut Conn, req: Request<Full<Bytes>>) -> request::Reply {
    let what = format!("{} {}", req.method(), req.uri());
    within(&what, c.send(req))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Writes `bytes` on a new connection and reads until the proxy closes.
async fn raw(p: &Proxy, bytes: &[u8]) -> String {
    let mut s = within("connect", TcpStream::connect(p.http)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    within("proxy closes", s.read_to_end(&mut out))
        .await
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// POSTs `size` bytes to `path` on a new connection, reading while writing:
/// an answer that comes before the body is through would never be seen by
/// a client that only wrote. Reads until the proxy closes (or resets) the
/// connection, or what arrived ends with `until`.
async fn upload(p: &Proxy, path: &str, size: usize, until: &[u8]) -> Vec<u8> {
    let mut s = within("connect", TcpStream::connect(p.http)).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let head = format!("POST {path} HTTP/1.1\r\nHost: app.test\r\nContent-Length: {size}\r\n\r\n");
    let write = async {
        wr.write_all(head.as_bytes()).await?;
        let block = vec![b'x'; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len());
            wr.write_all(&block[..n]).await?;
            left -= n;
        }
        std::io::Result::Ok(())
    };
    let read = async {
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while !out.ends_with(until) {
            match rd.read(&mut chunk).await {
                Ok(n) if n > 0 => out.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        out
    };
    let (_, out) = within(&format!("POST {path}"), async { tokio::join!(write, read) }).await;
    out
}

// ---------------------------------------------------------------------------
// 1. Interim answers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_100_and_103_answers_are_skipped_and_the_final_200_arrives_with_its_body() {
    let b = Scripted::routes(&[
        (
            "/interim",
            "HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Final: yes\r\n\r\nhello world",
        ),
        (
            "/post",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated",
        ),
    ])
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;

    let r = get(&mut c, "/interim").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "hello world");
    assert_eq!(r.headers["x-final"], "yes");

    let post = Request::post("/post")
        .header("host", "app.test")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let r = send(&mut c, post).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::CREATED, "created")
    );

    // Nothing of the interim answers was left behind on the connection.
    let r = get(&mut c, "/interim").await;
    assert_eq!(r.body, "hello world");
    assert_eq!(b.counts().accepts, 1);
    let seen = b.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].body, b"payload");
}

// ---------------------------------------------------------------------------
// 2. Chunked responses.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_with_extensions_and_trailers_is_decoded_and_its_connection_reused() {
    let b = Scripted::routes(&[(
        "/chunked",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
         5;name=value\r\nhello\r\n\
         1 ; quoted=\"a;b\"\r\n,\r\n\
         A\r\n chunked b\r\n\
         3;last\r\node\r\n\
         0;end=1\r\nx-checksum: abc\r\nx-other: 1\r\n\r\n",
    )])
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    for _ in 0..2 {
        let r = get(&mut c, "/chunked").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "hello, chunked bode");
        assert!(r.headers.get("x-checksum").is_none(), "{:?}", r.headers);
        assert!(r.headers.get("trailer").is_none(), "{:?}", r.headers);
    }
    let seen = b.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        b.counts().accepts,
        1,
        "two requests, one upstream connection"
    );
    assert_eq!((seen[0].conn, seen[1].conn), (0, 0));
    assert_eq!((seen[0].nth, seen[1].nth), (0, 1));
}

// ---------------------------------------------------------------------------
// 3. Bodies delimited by the backend's close.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_until_close_response_arrives_whole_and_the_next_request_gets_a_new_connection() {
    // Large enough to take many reads on the way.
    let body: Vec<u8> = (0..300 * 1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let reply = {
        let mut r = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        r.extend_from_slice(&body);
        r
    };
    let b = Scripted::start(move |req| match req.target.as_str() {
        "/until-close" => Reply::SendClose(reply.clone()),
        // An HTTP/1.0 answer and an explicit close: not reused either.
        "/http10" => Reply::Send(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nv1.0".to_vec()),
        "/close" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nclose".to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    let r = get(&mut c, "/until-close").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes.len(), body.len());
    assert!(r.bytes == body.as_slice(), "body differs");
    assert_eq!(get(&mut c, "/ok").await.body, "ok");
    assert_eq!(b.counts().accepts, 2);

    assert_eq!(get(&mut c, "/http10").await.body, "v1.0");
    assert_eq!(get(&mut c, "/ok").await.body, "ok");
    assert_eq!(get(&mut c, "/close").await.body, "close");
    assert_eq!(get(&mut c, "/ok").await.body, "ok");
    let seen = b.seen();
    let conns: Vec<_> = seen.iter().map(|s| (s.target.as_str(), s.conn)).collect();
    // /ok after /until-close is on a new connection; /http10 reuses it, and
    // after /http10 and /close the proxy connects anew.
    assert_eq!(
        conns,
        [
            ("/until-close", 0),
            ("/ok", 1),
            ("/http10", 1),
            ("/ok", 2),
            ("/close", 2),
            ("/ok", 3),
        ]
    );
}

// ---------------------------------------------------------------------------
// 4. Ambiguous and malformed responses.

const AMBIGUOUS: &[(&str, &str)] = &[
    (
        "/cl-and-te",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "/te-and-cl",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "/two-lengths",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ),
    (
        "/length-list",
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
    ),
    (
        "/signed-length",
        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    ),
    (
        "/te-gzip",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    ),
    (
        "/te-gzip-chunked",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "/te-twice",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "/bad-status",
        "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    ),
    ("/no-status-line", "hello there\r\n\r\n"),
    (
        "/obs-fold",
        "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "/unasked-101",
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_malformed_responses_are_502_and_the_proxy_keeps_serving() {
    let b = Scripted::start(|req| {
        let raw = AMBIGUOUS
            .iter()
            .find(|(path, _)| *path == req.target)
            .map_or(OK, |(_, raw)| *raw);
        // Kept open: the proxy, not the backend, must give the connection up.
        Reply::Send(raw.as_bytes().to_vec())
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    let mut wrong = Vec::new();
    for (path, _) in AMBIGUOUS {
        let r = get(&mut c, path).await;
        if r.status != StatusCode::BAD_GATEWAY {
            wrong.push(format!("{path}: {} {:?}", r.status, r.body));
        }
        // The same client connection goes on being served.
        let r = get(&mut c, "/ok").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "ok"),
            "{path}"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    let seen = b.seen();
    assert_eq!(seen.len(), 2 * AMBIGUOUS.len(), "a request was retried");
    // A connection that gave an ambiguous answer never carries another request.
    for pair in seen.chunks(2) {
        let (bad, next) = (&pair[0], &pair[1]);
        assert_eq!(next.target, "/ok");
        assert_ne!(
            bad.conn, next.conn,
            "{} was followed on its connection",
            bad.target
        );
    }
    b.wait("the proxy closed every refused connection", |c| {
        c.proxy_closed >= AMBIGUOUS.len()
    })
    .await;
    // And from a fresh client too.
    assert_eq!(request::get(p.http, "/ok").await.body, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_or_a_short_one_cuts_the_response_and_its_connection_is_dropped() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/bad-chunk" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n"
                .to_vec(),
        ),
        "/short" => Reply::SendClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..".to_vec(),
        ),
        "/short-chunked" => Reply::SendClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    for path in ["/bad-chunk", "/short", "/short-chunked"] {
        let mut c = open(&p).await;
        let r = within(path, c.get(path)).await;
        assert!(r.is_err(), "{path}: a cut body arrived as complete: {r:?}");
        assert_eq!(request::get(p.http, "/ok").await.body, "ok", "{path}");
    }
    let seen = b.seen();
    let bad_chunk = seen.iter().find(|s| s.target == "/bad-chunk").unwrap();
    assert!(
        seen.iter()
            .filter(|s| s.conn == bad_chunk.conn)
            .all(|s| s.target == "/bad-chunk"),
        "the connection with broken framing was reused: {seen:?}"
    );
}

// ---------------------------------------------------------------------------
// 5. Stale keep-alive connections.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_connection_the_backend_closed_while_idle_is_not_used_for_the_next_request() {
    let b = Scripted::start(|_| Reply::Send(OK.as_bytes().to_vec())).await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/first").await.body, "ok");
    // The backend's keep-alive timeout fires between the two requests.
    b.close_idle(1).await;
    let r = get(&mut c, "/second").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    let seen = b.seen();
    let targets: Vec<_> = seen.iter().map(|s| (s.target.as_str(), s.conn)).collect();
    // Whether the proxy saw the close before sending or retried after, the
    // backend got each request once on a live connection (a request sent
    // into the closed socket is not read by anyone).
    assert_eq!(targets, [("/first", 0), ("/second", 1)]);
    assert_eq!(b.counts().requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_a_reused_connection_swallowed_is_retried_once_on_a_new_connection() {
    // The first connection answers its first request, then takes the second
    // and closes without a word: the race of a backend's keep-alive close.
    let b = Scripted::start(|req| match (req.conn, req.nth) {
        (0, 1) => Reply::Close,
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/one").await.body, "ok");
    let r = get(&mut c, "/two").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    let seen: Vec<_> = b
        .seen()
        .iter()
        .map(|s| (s.target.clone(), s.conn, s.nth))
        .collect();
    assert_eq!(
        seen,
        [
            ("/one".to_string(), 0, 0),
            ("/two".to_string(), 0, 1),
            ("/two".to_string(), 1, 0),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_happen_once_only_for_bodiless_requests_on_reused_connections() {
    // Every request after a connection's first is swallowed; on a fresh
    // connection, requests to /drop are swallowed too.
    let b = Scripted::start(|req| {
        if req.nth > 0 || req.target == "/drop" {
            Reply::Close
        } else {
            Reply::Send(OK.as_bytes().to_vec())
        }
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let count = |b: &Scripted, target: &str| b.seen().iter().filter(|s| s.target == target).count();

    // A fresh connection failing is not retried.
    let mut c = open(&p).await;
    let r = get(&mut c, "/drop").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(count(&b, "/drop"), 1);

    // A POST on a reused connection is not retried: its body may have been
    // acted on.
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/warm").await.body, "ok");
    let post = Request::post("/post")
        .header("host", "app.test")
        .body(Full::new(Bytes::from_static(b"do it once")))
        .unwrap();
    let r = send(&mut c, post).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(count(&b, "/post"), 1);

    // Nor is an empty POST: not idempotent (RFC 9110 §9.2.2), whereas an
    // empty DELETE is, and is retried.
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/warm").await.body, "ok");
    let post = Request::post("/empty-post")
        .header("host", "app.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&mut c, post).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(count(&b, "/empty-post"), 1);
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/warm").await.body, "ok");
    let delete = Request::delete("/delete")
        .header("host", "app.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // The retry goes on a new connection, whose first request is answered.
    assert_eq!(send(&mut c, delete).await.status, StatusCode::OK);
    assert_eq!(count(&b, "/delete"), 2, "1 try + 1 retry");

    // A GET on a reused connection is retried once, and only once.
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/warm").await.body, "ok");
    let r = get(&mut c, "/drop").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(count(&b, "/drop"), 3, "1 before, then 1 try + 1 retry");

    assert_eq!(get(&mut c, "/after").await.body, "ok");
}

// ---------------------------------------------------------------------------
// 6. Responses without a body whatever their headers say.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_have_no_body_despite_their_length_and_the_connection_is_reused() {
    let b = Scripted::start(|req| {
        let raw = match (req.method.as_str(), req.target.as_str()) {
            ("HEAD", "/head") => {
                "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Mark: head\r\n\r\n"
            }
            ("HEAD", "/head-chunked") => {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Mark: head-chunked\r\n\r\n"
            }
            (_, "/204") => "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Mark: 204\r\n\r\n",
            (_, "/304") => {
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nETag: \"v1\"\r\nX-Mark: 304\r\n\r\n"
            }
            _ => OK,
        };
        Reply::Send(raw.as_bytes().to_vec())
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    let head = |path: &str| {
        Request::head(path)
            .header("host", "app.test")
            .body(Full::default())
            .unwrap()
    };

    let r = send(&mut c, head("/head")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-mark"], "head");
    assert_eq!(r.headers["content-length"], "1234", "{:?}", r.headers);
    assert!(r.bytes.is_empty());

    let r = send(&mut c, head("/head-chunked")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-mark"], "head-chunked");
    assert!(r.bytes.is_empty());

    let r = get(&mut c, "/204").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.headers["x-mark"], "204");
    assert!(r.bytes.is_empty());

    let r = get(&mut c, "/304").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers["x-mark"], "304");
    assert_eq!(r.headers["etag"], "\"v1\"");
    assert!(r.bytes.is_empty());

    // Had the proxy waited for those bodies, this would hang or be garbled.
    assert_eq!(get(&mut c, "/ok").await.body, "ok");
    assert_eq!(
        b.counts().accepts,
        1,
        "five requests, one upstream connection"
    );
    assert!(b.seen().iter().all(|s| s.conn == 0));
}

// ---------------------------------------------------------------------------
// 7. Request bodies.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_backend_intact_with_length_chunked_or_empty_framing() {
    let b = Scripted::start(|_| Reply::Send(OK.as_bytes().to_vec())).await;
    let p = start_proxy(&b, &[]).await;

    // Content-Length body, large enough for many writes.
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut c = open(&p).await;
    let req = Request::post("/length")
        .header("host", "app.test")
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    assert_eq!(send(&mut c, req).await.status, StatusCode::OK);

    // A chunked client body, with extensions and a trailer.
    let chunked = "POST /chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                   5;ext=1\r\nhello\r\n1\r\n,\r\n7\r\n world!\r\n0\r\nx-trailer: t\r\n\r\n";
    let r = raw(&p, chunked.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");

    // An empty POST without any framing, and one with Content-Length: 0.
    let r = raw(
        &p,
        b"POST /empty HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    let r = raw(
        &p,
        b"POST /empty-cl HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");

    let seen = b.seen();
    let by = |t: &str| seen.iter().find(|s| s.target == t).unwrap().clone();

    let length = by("/length");
    assert_eq!(length.one("content-length"), Some("1048576"));
    assert_eq!(length.one("transfer-encoding"), None);
    assert_eq!(length.body.len(), payload.len());
    assert!(length.body == payload, "Content-Length body differs");

    let chunked = by("/chunked");
    assert_eq!(chunked.one("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.one("content-length"), None);
    assert_eq!(String::from_utf8_lossy(&chunked.body), "hello, world!");

    for t in ["/empty", "/empty-cl"] {
        let empty = by(t);
        assert_eq!(empty.one("content-length"), Some("0"), "{t}: {empty:?}");
        assert_eq!(empty.one("transfer-encoding"), None, "{t}");
        assert!(empty.body.is_empty());
    }
    assert!(seen
        .iter()
        .all(|s| s.method == "POST" && s.version == "HTTP/1.1"));
}

// ---------------------------------------------------------------------------
// 8. An answer before the body was read.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_413_before_reading_a_large_body_is_relayed_not_turned_into_502() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/upload" => Reply::EarlyClose(
            b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 9\r\n\r\ntoo large"
                .to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    // The backend closes with most of the 4 MiB unread, so its kernel sends
    // a reset, and the proxy's next write fails. Linux hands out what was
    // already queued (the 413) before it reports the reset, so this is not
    // a race: 50 runs in a row and 6 suites in parallel on 2 CPUs passed.
    let out = upload(&p, "/upload", 4 * 1024 * 1024, b"too large").await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "got {text:?}"
    );
    assert!(text.ends_with("too large"), "{text:?}");
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body.is_empty(), "the backend read no body");
    assert_eq!(request::get(p.http, "/ok").await.body, "ok");
}

// ---------------------------------------------------------------------------
// 9 and 10. Headers both ways.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sees_host_kept_forwarding_headers_set_and_no_hop_by_hop_fields() {
    let b = Scripted::start(|_| Reply::Send(OK.as_bytes().to_vec())).await;
    let p = start_proxy(&b, &[]).await;
    let req = "GET /path/x?q=1&r=%20 HTTP/1.1\r\n\
               Host: shop.example:8443\r\n\
               X-Forwarded-For: 203.0.113.9\r\n\
               X-Forwarded-For: 198.51.100.2\r\n\
               X-Forwarded-Proto: gopher\r\n\
               X-Forwarded-Host: evil.test\r\n\
               Connection: keep-alive, X-Hop\r\n\
               X-Hop: secret\r\n\
               Keep-Alive: timeout=5\r\n\
               TE: trailers\r\n\
               Proxy-Authorization: Basic c2VjcmV0\r\n\
               Proxy-Connection: keep-alive\r\n\
               Upgrade: h2c\r\n\
               X-App: kept\r\n\
               X-App: twice\r\n\
               Authorization: Bearer end-to-end\r\n\
               \r\n";
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head = within("response head", read_head(&mut s, &mut buf))
        .await
        .expect("a response");
    assert!(
        head.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );

    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str(), r.version.as_str()),
        ("GET", "/path/x?q=1&r=%20", "HTTP/1.1")
    );
    assert_eq!(r.one("host"), Some("shop.example:8443"));
    assert_eq!(
        r.one("x-forwarded-for"),
        Some("203.0.113.9, 198.51.100.2, 127.0.0.1")
    );
    assert_eq!(r.one("x-forwarded-proto"), Some("http"));
    assert_eq!(r.one("x-forwarded-host"), Some("shop.example:8443"));
    assert_eq!(r.all("x-app"), ["kept", "twice"]);
    assert_eq!(r.one("authorization"), Some("Bearer end-to-end"));
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
        "content-length",
    ] {
        assert!(r.all(hop).is_empty(), "{hop} reached the backend: {r:?}");
    }
    // Host comes first, as the request line's companion.
    assert_eq!(r.headers[0].0, "host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_hop_by_hop_fields_are_not_relayed_and_end_to_end_ones_are() {
    let b = Scripted::routes(&[
        (
            "/connection-first",
            "HTTP/1.1 200 OK\r\nConnection: x-foo, keep-alive\r\nX-Foo: secret\r\nKeep-Alive: timeout=5\r\n\
             X-End: kept\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nProxy-Authenticate: Basic\r\n\
             Trailer: x-t\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "/connection-last",
            "HTTP/1.1 200 OK\r\nX-Foo: secret\r\nX-Bar: secret too\r\nX-End: kept\r\nKeep-Alive: max=9\r\n\
             Connection: X-Foo\r\nConnection: x-bar\r\nContent-Length: 2\r\n\r\nok",
        ),
    ])
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    for path in ["/connection-first", "/connection-last"] {
        let r = get(&mut c, path).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "ok"),
            "{path}"
        );
        assert_eq!(r.headers["x-end"], "kept", "{path}");
        for hop in [
            "x-foo",
            "x-bar",
            "keep-alive",
            "proxy-authenticate",
            "trailer",
            "upgrade",
        ] {
            assert!(
                r.headers.get(hop).is_none(),
                "{path}: {hop} was relayed: {:?}",
                r.headers
            );
        }
        for v in r.headers.get_all("connection") {
            let v = v.to_str().unwrap().to_ascii_lowercase();
            assert!(!v.contains("x-foo") && !v.contains("x-bar"), "{path}: {v}");
        }
        if path == "/connection-first" {
            let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
            assert_eq!(cookies, ["a=1", "b=2"]);
        }
    }
    // `Connection` naming fields is no reason to close.
    assert_eq!(b.counts().accepts, 1);
}

// ---------------------------------------------------------------------------
// 11. The backend's silence.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_silent_past_the_upstream_timeout_is_504_and_the_proxy_keeps_serving() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/silent" => Reply::Hold(Vec::new()),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &["--upstream-timeout", "300ms"]).await;
    let mut c = open(&p).await;
    let started = Instant::now();
    let r = get(&mut c, "/silent").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.body, "upstream timed out\n");
    assert!(
        took >= Duration::from_millis(250),
        "504 after only {took:?}"
    );
    assert!(took < Duration::from_secs(5), "504 only after {took:?}");
    // The proxy gave the silent connection up.
    b.wait("the silent connection closed by the proxy", |c| {
        c.proxy_closed >= 1
    })
    .await;
    // Same client connection, then a new one.
    assert_eq!(get(&mut c, "/ok").await.body, "ok");
    assert_eq!(request::get(p.http, "/ok").await.body, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_stalling_mid_body_past_the_upstream_timeout_cuts_the_response() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/stall-length" => {
            Reply::Hold(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..".to_vec())
        }
        "/stall-chunked" => Reply::Hold(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten..\r\n".to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &["--upstream-timeout", "300ms"]).await;
    for (i, path) in ["/stall-length", "/stall-chunked"].into_iter().enumerate() {
        // Raw, to see what did arrive: the head and the first ten bytes,
        // then the connection ends without the rest.
        let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n");
        let mut s = TcpStream::connect(p.http).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        let read = within(&format!("{path}: the proxy ends the response"), async {
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => out.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n"),
            "{path}: {text:?} {read:?}"
        );
        assert!(text.contains("only ten.."), "{path}: {text:?}");
        match path {
            // Fewer bytes than the length promised.
            "/stall-length" => {
                assert!(text.contains("content-length: 100"), "{text:?}");
                let body = &out[find(&out, b"\r\n\r\n").unwrap() + 4..];
                assert_eq!(body, b"only ten..");
            }
            // No last chunk.
            _ => assert!(!text.ends_with("0\r\n\r\n"), "{text:?}"),
        }
        b.wait("the stalled connection closed by the proxy", |c| {
            c.proxy_closed > i
        })
        .await;
        assert_eq!(request::get(p.http, "/ok").await.body, "ok", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_that_keeps_sending_is_not_cut_by_the_upstream_timeout() {
    // Twelve pieces 50 ms apart: 600 ms in all, twice the timeout, but never
    // silent for long.
    let mut pieces = vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()];
    for i in 0..11 {
        pieces.push(format!("1\r\n{}\r\n", (b'a' + i) as char).into_bytes());
    }
    pieces.push(b"0\r\n\r\n".to_vec());
    let b = Scripted::start(move |_| Reply::Drip(pieces.clone(), Duration::from_millis(50))).await;
    let p = start_proxy(&b, &["--upstream-timeout", "300ms"]).await;
    let mut c = open(&p).await;
    let r = get(&mut c, "/drip").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "abcdefghijk"));
}

// ---------------------------------------------------------------------------
// 101: a raw tunnel.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_answer_to_an_upgrade_becomes_a_tunnel_with_the_bytes_that_followed_it() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/ws" => Reply::Tunnel(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Tunnel: 1\r\n\r\nEARLY"
                .to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let head = within("101 head", read_head(&mut s, &mut buf))
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("x-tunnel: 1"), "{head}");
    // What the backend sent right behind its 101 comes first.
    let early = within("early bytes", take(&mut s, &mut buf, 5))
        .await
        .unwrap();
    assert_eq!(early, b"EARLY");
    s.write_all(b"ping").await.unwrap();
    let echo = within("echo", take(&mut s, &mut buf, 4)).await.unwrap();
    assert_eq!(echo, b"ping");

    let seen = b.seen();
    assert_eq!(seen[0].one("upgrade"), Some("websocket"));
    assert_eq!(seen[0].one("connection"), Some("upgrade"));
    drop(s);
    b.wait("the tunnel closed through to the backend", |c| {
        c.proxy_closed >= 1
    })
    .await;
    assert_eq!(request::get(p.http, "/ok").await.body, "ok");
}

// ---------------------------------------------------------------------------
// More framing and connection edge cases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_after_part_of_an_answer_is_502_not_retried() {
    // The backend took the request and began answering: this is not an idle
    // connection closed under the proxy, and sending the request again
    // would repeat whatever it did. The proxy's own rule (forward.rs: a
    // reused connection "failed before any answer") says: no retry.
    let b = Scripted::start(|req| match (req.conn, req.nth) {
        (0, 1) => Reply::SendClose(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/one").await.body, "ok");
    let r = get(&mut c, "/two").await;
    let two = b.seen().iter().filter(|s| s.target == "/two").count();
    assert_eq!(
        (r.status, two),
        (StatusCode::BAD_GATEWAY, 1),
        "a request the backend had begun to answer was sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_backend_sends_beyond_its_answer_are_never_taken_for_the_next_answer() {
    let b = Scripted::start(|req| match (req.conn, req.target.as_str()) {
        // A second, unasked response right behind the first.
        (_, "/extra") => Reply::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
                .to_vec(),
        ),
        // A body behind an answer to HEAD.
        (_, "/head-with-body") => Reply::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled".to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/extra").await.body, "ok");
    let r = get(&mut c, "/next").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));

    let head = Request::head("/head-with-body")
        .header("host", "app.test")
        .body(Full::default())
        .unwrap();
    let r = send(&mut c, head).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.bytes.is_empty());
    let r = get(&mut c, "/next").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));

    // Each request after a dirty answer went on another connection.
    let seen: Vec<_> = b
        .seen()
        .iter()
        .map(|s| (s.target.clone(), s.conn))
        .collect();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for pair in seen.chunks(2) {
        assert_eq!(pair[1].0, "/next");
        assert_ne!(pair[0].1, pair[1].1, "reused after unread bytes: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_heads_are_502() {
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 2\r\n\r\nok");
    let huge = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(200 * 1024)
    );
    let b = Scripted::start(move |req| {
        Reply::Send(
            match req.target.as_str() {
                "/many" => many.as_str(),
                "/huge" => huge.as_str(),
                _ => OK,
            }
            .as_bytes()
            .to_vec(),
        )
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    for path in ["/many", "/huge"] {
        let r = get(&mut c, path).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path}");
        assert_eq!(get(&mut c, "/ok").await.body, "ok", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_just_over_64_kib_is_502() {
    // http1.rs: `MAX_HEAD` "the largest response head accepted" is 64 KiB.
    let head = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(66 * 1024)
    );
    let b = Scripted::start(move |req| match req.target.as_str() {
        "/big" => Reply::Send(head.as_bytes().to_vec()),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    let r = get(&mut c, "/big").await;
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "a 66 KiB response head was relayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_expecting_100_continue_gets_one_100_and_its_body_is_delivered() {
    // The backend also sends its own 100 before the final answer.
    let b = Scripted::start(|_| {
        Reply::Send(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"
                .to_vec(),
        )
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    // The client sends its body only once told to continue.
    let interim = within("100 Continue", read_head(&mut s, &mut buf))
        .await
        .unwrap();
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    s.write_all(b"hello").await.unwrap();
    let head = within("final head", read_head(&mut s, &mut buf))
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(
        within("body", take(&mut s, &mut buf, 4)).await.unwrap(),
        b"done"
    );
    assert_eq!(b.seen()[0].body, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_neither_reads_an_upload_nor_answers_is_504() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/stuck" => Reply::HoldUnread,
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &["--upstream-timeout", "300ms"]).await;
    // Far more than the socket buffers between proxy and backend hold, so
    // the proxy's writes stall, not only its wait for an answer.
    let out = upload(&p, "/stuck", 8 * 1024 * 1024, b"upstream timed out\n").await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
        "{text:?}"
    );
    b.wait("the stuck connection closed by the proxy", |c| {
        c.proxy_closed >= 1
    })
    .await;
    assert_eq!(request::get(p.http, "/ok").await.body, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_arriving_in_awkward_pieces_is_put_back_together() {
    // Split inside the status line, a field, the blank line, an interim
    // answer, a chunk-size line, chunk data and the CRLFs around them.
    let pieces: Vec<Vec<u8>> = [
        "HTTP/1.1 10",
        "3 Early Hints\r\nLink: </a>\r",
        "\n\r",
        "\nHTTP/1.1 200 OK\r\nTransfer-Enc",
        "oding: chunked\r\nX-Y: z\r\n\r",
        "\n5",
        ";e=1\r",
        "\nhel",
        "lo\r",
        "\n0\r\n",
        "x-trailer: 1\r\n",
        "\r\n",
    ]
    .iter()
    .map(|p| p.as_bytes().to_vec())
    .collect();
    let b = Scripted::start(move |_| Reply::Drip(pieces.clone(), Duration::from_millis(15))).await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    for _ in 0..2 {
        let r = get(&mut c, "/pieces").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "hello"));
        assert_eq!(r.headers["x-y"], "z");
    }
    assert_eq!(b.counts().accepts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_length_delimited_body_streams_through_and_its_connection_is_reused() {
    let body: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let reply = {
        let mut r =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(&body);
        r
    };
    let b = Scripted::start(move |_| Reply::Send(reply.clone())).await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    for _ in 0..2 {
        let r = get(&mut c, "/big").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["content-length"], body.len().to_string().as_str());
        assert_eq!(r.bytes.len(), body.len());
        assert!(r.bytes == body.as_slice(), "body differs");
    }
    assert_eq!(b.counts().accepts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_without_host_names_the_backend_and_a_declined_upgrade_is_a_plain_answer()
{
    let b = Scripted::start(|req| match req.target.as_str() {
        "/ws" => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno".to_vec()),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let r = raw(&p, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\nok"), "{r}");

    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    within("two answers", s.read_to_end(&mut out))
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{out}");
    assert!(
        out.contains("\r\n\r\nno") && out.ends_with("\r\n\r\nok"),
        "{out}"
    );

    let seen = b.seen();
    let old = seen.iter().find(|s| s.target == "/old").unwrap();
    assert_eq!(old.version, "HTTP/1.1");
    assert_eq!(old.one("host"), Some(b.addr().as_str()));
    assert_eq!(old.one("x-forwarded-host"), None);
    let ws = seen.iter().find(|s| s.target == "/ws").unwrap();
    assert_eq!(ws.one("upgrade"), Some("websocket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switch_a_pinned_connection_of_the_old_generation_is_closed_and_never_reused() {
    let b1 = Scripted::start(|_| {
        Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nb1".to_vec())
    })
    .await;
    let b2 = Scripted::start(|_| {
        Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nb2".to_vec())
    })
    .await;
    let p = start_proxy(&b1, &[]).await;
    let switch = |addr: String| {
        let client = p.client();
        async move {
            within(
                "switch",
                client.set_backend(&SetBackend {
                    addr,
                    drain_timeout: None,
                }),
            )
            .await
            .expect("switch")
        }
    };
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/").await.body, "b1");
    switch(b2.addr()).await;
    assert_eq!(get(&mut c, "/").await.body, "b2");
    // The first generation's connection, pinned by this client, is let go.
    b1.wait("b1's connection closed by the proxy", |c| {
        c.proxy_closed >= 1
    })
    .await;
    // Back to the same address: a new generation, a new connection.
    switch(b1.addr()).await;
    assert_eq!(get(&mut c, "/").await.body, "b1");
    assert_eq!(get(&mut c, "/").await.body, "b1");
    // (A switch first proves the backend accepts a TCP connection: that
    // probe is an accept with no request, hence no fixed numbers here.)
    let conns: Vec<_> = b1.seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns.len(), 3);
    assert_eq!(conns[0], 0);
    assert_ne!(conns[1], 0, "the old generation's connection was reused");
    assert_eq!(
        conns[1], conns[2],
        "the new generation's connection is pinned"
    );
}
