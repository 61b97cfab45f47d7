//! Load that lives through the proxy closing connections on purpose (a
//! hand-off, a shutdown): it tells a request that failed from a connection
//! the server closed cleanly between requests.
//!
//! A connection closed cleanly is one the server announced (`Connection:
//! close` on a response, HTTP/2 GOAWAY) or closed while the client had
//! nothing on it: the client opens another, as any HTTP client does, and
//! that is counted in `reconnects`, not as a failure. A request sent and not
//! answered 200 is `failed`; a connect that did not succeed is `refused`.

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

/// What one kind of client saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    pub refused: u64,
    pub reconnects: u64,
    /// Requests that provably never reached the server's application, sent
    /// again on a new connection as every HTTP client does (hyper-util's
    /// pooled client, browsers): HTTP/2 streams the server refused
    /// unprocessed (id above its GOAWAY's last stream id, RFC 9113 §6.8),
    /// and requests hyper never wrote because the connection had closed
    /// (`is_canceled`). Not failures; each is counted once more when answered.
    pub retried_unsent: u64,
    /// 200 answers by body (the backend's name).
    pub by_body: HashMap<String, u64>,
    pub errors: Vec<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.refused += o.refused;
        self.reconnects += o.reconnects;
        self.retried_unsent += o.retried_unsent;
        for (k, v) in o.by_body {
            *self.by_body.entry(k).or_default() += v;
        }
        let room = 10usize.saturating_sub(self.errors.len());
        self.errors.extend(o.errors.into_iter().take(room));
    }

    fn error(&mut self, why: String) {
        if self.errors.len() < 10 {
            self.errors.push(why);
        }
    }

    fn answer(&mut self, status: http::StatusCode, body: &[u8]) {
        if status == 200 {
            self.ok += 1;
            *self
                .by_body
                .entry(String::from_utf8_lossy(body).into_owned())
                .or_default() += 1;
        } else {
            self.failed += 1;
            self.error(format!("{status}: {}", String::from_utf8_lossy(body)));
        }
    }
}

/// The mix of clients.
#[derive(Clone)]
pub struct Mix {
    /// HTTP/1.1 clients, each on one keep-alive connection at a time, `GET /`.
    pub keep_alive: usize,
    /// HTTP/1.1 clients opening a new connection for every `GET /`.
    pub per_request: usize,
    /// Keep-alive clients whose requests take `long_ms` at the backend.
    pub long: usize,
    pub long_ms: u64,
    /// HTTP/2-over-TLS clients, one stream at a time: (address, connector, SNI).
    pub h2: Option<(SocketAddr, TlsConnector, String, usize)>,
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub keep_alive: Tally,
    pub per_request: Tally,
    pub long: Tally,
    pub h2: Tally,
}

impl Report {
    pub fn all(&self) -> Tally {
        let mut t = Tally::default();
        for part in [&self.keep_alive, &self.per_request, &self.long, &self.h2] {
            t.merge(part.clone());
        }
        t
    }
}

#[derive(Clone, Copy)]
enum Kind {
    KeepAlive,
    PerRequest,
    Long,
    H2,
}

pub struct Churn {
    stop: watch::Sender<bool>,
    tasks: JoinSet<(Kind, Tally)>,
}

/// Upper bound on requests per client, so every loop ends even if time stalls.
const MAX_REQUESTS: u64 = 1_000_000;

/// Starts the clients against `http`; they run until [`Churn::finish`] or
/// `max`, whichever comes first.
pub fn start(http: SocketAddr, mix: Mix, max: Duration) -> Churn {
    let (stop, rx) = watch::channel(false);
    let deadline = Instant::now() + max;
    let mut tasks = JoinSet::new();
    let slow = format!("/slow?ms={}", mix.long_ms);
    for _ in 0..mix.keep_alive {
        let run = h1(http, "/".into(), true, deadline, rx.clone());
        tasks.spawn(async move { (Kind::KeepAlive, run.await) });
    }
    for _ in 0..mix.per_request {
        let run = h1(http, "/".into(), false, deadline, rx.clone());
        tasks.spawn(async move { (Kind::PerRequest, run.await) });
    }
    for _ in 0..mix.long {
        let run = h1(http, slow.clone(), true, deadline, rx.clone());
        tasks.spawn(async move { (Kind::Long, run.await) });
    }
    if let Some((addr, tls, sni, clients)) = mix.h2 {
        for _ in 0..clients {
            let run = h2(addr, tls.clone(), sni.clone(), deadline, rx.clone());
            tasks.spawn(async move { (Kind::H2, run.await) });
        }
    }
    Churn { stop, tasks }
}

impl Churn {
    /// Stops the clients after their current request and adds up.
    pub async fn finish(mut self) -> Report {
        let _ = self.stop.send(true);
        let mut report = Report::default();
        while let Some(done) = self.tasks.join_next().await {
            let (kind, tally) = done.expect("load client panicked");
            match kind {
                Kind::KeepAlive => report.keep_alive.merge(tally),
                Kind::PerRequest => report.per_request.merge(tally),
                Kind::Long => report.long.merge(tally),
                Kind::H2 => report.h2.merge(tally),
            }
        }
        report
    }
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn h1(
    addr: SocketAddr,
    path: String,
    keep_alive: bool,
    deadline: Instant,
    stop: watch::Receiver<bool>,
) -> Tally {
    let mut t = Tally::default();
    let mut conn: Option<H1> = None;
    let mut sent = 0;
    while !*stop.borrow() && Instant::now() < deadline && sent < MAX_REQUESTS {
        let sender = match &mut conn {
            Some(s) => s,
            None => match connect_h1(addr).await {
                Ok(s) => conn.insert(s),
                Err(e) => {
                    t.refused += 1;
                    t.error(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if sender.ready().await.is_err() {
            // Closed by the server while nothing was on it.
            conn = None;
            t.reconnects += 1;
            continue;
        }
        sent += 1;
        let mut req = http::Request::get(path.as_str()).header(header::HOST, "app.test");
        if !keep_alive {
            req = req.header(header::CONNECTION, "close");
        }
        let outcome = async {
            let resp = sender.send_request(req.body(Empty::new()).unwrap()).await?;
            let close = resp
                .headers()
                .get(header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body, close))
        }
        .await;
        match outcome {
            Ok((status, body, close)) => {
                t.answer(status, &body);
                if close || !keep_alive {
                    conn = None;
                    if keep_alive {
                        t.reconnects += 1;
                    }
                }
            }
            Err(e) if e.is_canceled() => {
                t.retried_unsent += 1;
                conn = None;
            }
            Err(e) => {
                t.failed += 1;
                t.error(format!("request: {e:?}"));
                conn = None;
            }
        }
    }
    t
}

async fn connect_h1(addr: SocketAddr) -> Result<H1, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2(
    addr: SocketAddr,
    tls: TlsConnector,
    sni: String,
    deadline: Instant,
    stop: watch::Receiver<bool>,
) -> Tally {
    let mut t = Tally::default();
    let mut conn: Option<H2> = None;
    let mut sent = 0;
    while !*stop.borrow() && Instant::now() < deadline && sent < MAX_REQUESTS {
        let sender = match &mut conn {
            Some(s) => s,
            None => match connect_h2(addr, &tls, &sni).await {
                Ok(s) => conn.insert(s),
                Err(e) => {
                    t.refused += 1;
                    t.error(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if sender.ready().await.is_err() {
            // GOAWAY received (or the connection closed): open another.
            conn = None;
            t.reconnects += 1;
            continue;
        }
        sent += 1;
        let req = http::Request::get(format!("https://{sni}/"))
            .body(Empty::new())
            .unwrap();
        let outcome = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        match outcome {
            Ok((status, body)) => t.answer(status, &body),
            Err(e) if refused_unprocessed(&e) => {
                t.retried_unsent += 1;
                conn = None;
            }
            Err(e) => {
                t.failed += 1;
                t.error(format!("h2 request: {e:?}"));
                conn = None;
            }
        }
    }
    t
}

/// A stream the server's GOAWAY says it never processed, or a request
/// hyper never sent.
fn refused_unprocessed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let h2 = std::error::Error::source(e).and_then(|s| s.downcast_ref::<h2::Error>());
    h2.is_some_and(|h2| {
        h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR)
    })
}

async fn connect_h2(addr: SocketAddr, tls: &TlsConnector, sni: &str) -> Result<H2, String> {
    let stream = crate::tls::connect(tls, addr, sni)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}
