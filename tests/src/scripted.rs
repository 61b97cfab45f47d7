//! A backend whose every byte the test chooses, and the raw client side to
//! talk to the proxy in front of it. The proxy speaks HTTP/1.1 to backends
//! itself (proxy/src/upstream), so its framing, reuse, retry and timeout
//! rules need backends that misbehave on purpose: answer twice, close
//! mid-head, stall mid-body, send what a smuggler would. A real HTTP server
//! library would refuse to do any of that.

use crate::proxy::Proxy;
use crate::request::{self, Conn};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

/// Every wait in these tests ends within this, so a hang fails instead.
const LIMIT: Duration = Duration::from_secs(10);

pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------
// The scripted backend.

/// One request as the scripted backend read it off the wire.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Which accepted connection it came on (0 = the first accepted).
    pub conn: usize,
    /// Its place on that connection (0 = first request).
    pub nth: usize,
    pub method: String,
    pub target: String,
    pub version: String,
    /// Names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it came chunked.
    pub body: Vec<u8>,
    /// Trailer fields after a chunked body, as sent (names lower-cased).
    pub trailers: Vec<(String, String)>,
}

impl Seen {
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one field called `name`; fails the test if it came twice.
    pub fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} sent {} times: {self:?}", all.len());
        all.first().copied()
    }
}

/// What the backend does with a request.
pub enum Reply {
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
pub struct Counts {
    pub accepts: usize,
    /// Request heads read, counted before the body (which may still be on
    /// its way).
    pub heads: usize,
    pub requests: usize,
    /// Connections the proxy ended (end of stream or error seen by the backend).
    pub proxy_closed: usize,
    /// Connections the backend ended by its script or by [`Scripted::close_idle`].
    pub backend_closed: usize,
}

struct Shared {
    script: Script,
    seen: Mutex<Vec<Seen>>,
    counts: watch::Sender<Counts>,
    /// Bumped to make every connection waiting for a request close.
    kick: watch::Sender<u64>,
}

/// A backend on 127.0.0.1:0 that answers from a script; stopped when dropped.
pub struct Scripted {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl Scripted {
    pub async fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Scripted {
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
    pub async fn routes(table: &'static [(&'static str, &'static str)]) -> Scripted {
        Scripted::start(move |req| {
            let found = table.iter().find(|(path, _)| *path == req.target);
            Reply::Send(found.map_or(NOT_FOUND, |(_, raw)| *raw).as_bytes().to_vec())
        })
        .await
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn counts(&self) -> Counts {
        *self.shared.counts.borrow()
    }

    /// Waits (bounded) until the counts satisfy `cond`.
    pub async fn wait(&self, what: &str, cond: impl FnMut(&Counts) -> bool) {
        let mut rx = self.shared.counts.subscribe();
        within(what, rx.wait_for(cond)).await.expect("backend gone");
    }

    /// Closes every connection idle between requests, as a backend's
    /// keep-alive timeout would, and waits until at least `n` are closed.
    pub async fn close_idle(&self, n: usize) {
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
        shared.counts.send_modify(|c| c.heads += 1);
        let mut seen = parse_request(&head);
        seen.conn = conn;
        seen.nth = nth;
        let reply = (shared.script)(&seen);
        if !matches!(reply, Reply::EarlyClose(_) | Reply::HoldUnread) {
            match read_body(&mut tcp, &mut buf, &mut seen).await {
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

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One message head (through the blank line) off the front of `buf`,
/// reading as needed; what follows it stays in `buf`.
pub async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
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
pub async fn take(tcp: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
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
async fn read_body(tcp: &mut TcpStream, buf: &mut Vec<u8>, req: &mut Seen) -> Option<Vec<u8>> {
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
                loop {
                    let field = line(tcp, buf).await?;
                    if field.is_empty() {
                        return Some(body);
                    }
                    let field = String::from_utf8(field).expect("trailer field is UTF-8");
                    let (name, value) = field.split_once(':').expect("trailer field with a colon");
                    req.trailers
                        .push((name.to_ascii_lowercase(), value.trim().to_string()));
                }
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
pub const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

// ---------------------------------------------------------------------------
// Client side.

pub async fn start_proxy(b: &Scripted, extra: &[&str]) -> Proxy {
    let addr = b.addr();
    let mut args = vec!["--backend", addr.as_str()];
    args.extend_from_slice(extra);
    Proxy::start(&args).await
}

pub async fn open(p: &Proxy) -> Conn {
    within("connect to the proxy", Conn::open(p.http)).await
}

pub async fn get(c: &mut Conn, path: &str) -> request::Reply {
    within(&format!("GET {path}"), c.get(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

pub async fn send(c: &mut Conn, req: Request<Full<Bytes>>) -> request::Reply {
    let what = format!("{} {}", req.method(), req.uri());
    within(&what, c.send(req))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

pub fn head(path: &str) -> Request<Full<Bytes>> {
    Request::head(path)
        .header("host", "app.test")
        .body(Full::default())
        .unwrap()
}

pub fn post(path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "app.test")
        .body(Full::new(body.into()))
        .unwrap()
}

/// Writes `bytes` on a new connection and reads until the proxy closes.
pub async fn raw(p: &Proxy, bytes: &[u8]) -> String {
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
pub async fn upload(p: &Proxy, path: &str, size: usize, until: &[u8]) -> Vec<u8> {
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
