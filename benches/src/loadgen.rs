//! The load generator: N keep-alive HTTP/1.1 connections on hyper, either as
//! fast as they go (closed loop) or at a fixed rate (open loop).
//!
//! In open loop, a request that could not be sent on time because every
//! connection was still busy is timed from when it *should* have been sent, so
//! a stall in the system under test shows up as latency instead of silently
//! lowering the send rate (coordinated omission). When a connection was idle
//! and merely woke late from the timer, the clock starts at the real send:
//! the timer's slack is the generator's, not the server's.

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Mode {
    /// Every connection sends its next request as soon as the last one ended.
    Closed,
    /// Requests are due at `rate` per second in total, spread over the pool.
    Open { rate: f64 },
}

/// One class of traffic: `conns` connections requesting `path`.
#[derive(Debug, Clone)]
pub struct Stream {
    pub path: String,
    pub conns: usize,
    pub mode: Mode,
    /// Marks the samples, so long requests can be reported apart.
    pub long: bool,
    /// The `Host` header of this stream's requests; `None` sends the
    /// target's address (what a client given an IP:port sends). `routes`
    /// spreads its connections over several apps' hosts this way.
    pub host: Option<HeaderValue>,
    /// Every request on a connection of its own (`Connection: close`), as
    /// clients without keep-alive do: what a proxy's listener sees as a
    /// stream of new connections during a restart or upgrade. Such a request
    /// is never resent: a connection closed before it was written is a
    /// refused connection ([`Outcome::Connect`]).
    pub fresh_conn: bool,
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: SocketAddr,
    pub streams: Vec<Stream>,
    /// No request is started after this long from the epoch.
    pub duration: Duration,
    /// Upper bound on requests per stream, whatever the duration.
    pub max_requests: u64,
    /// A request taking longer than this is abandoned and counted as failed.
    pub timeout: Duration,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[repr(u8)]
pub enum Outcome {
    Ok,
    /// The server answered 5xx (a proxy's 502/503/504).
    Status5xx,
    /// Any other non-2xx answer.
    StatusOther,
    /// No TCP connection could be made, or a new connection was closed
    /// before its first request could be written: refused.
    Connect,
    /// The connection broke after the request was (maybe partly) sent.
    Broken,
    Timeout,
}

impl Outcome {
    pub fn is_ok(self) -> bool {
        self == Outcome::Ok
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Status5xx => "http_5xx",
            Outcome::StatusOther => "http_other",
            Outcome::Connect => "connect",
            Outcome::Broken => "conn_broken",
            Outcome::Timeout => "timeout",
        }
    }
}

/// One finished request. Kept raw (12 bytes) so any window of the run can be
/// re-analysed afterwards, e.g. the 200 ms after each switch.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When the clock started, in µs since the epoch.
    pub start_us: u32,
    pub latency_us: u32,
    pub outcome: Outcome,
    /// The backend's `x-bench-backend` header, 0 when absent.
    pub backend: u8,
    pub long: bool,
    /// Sent on a connection of its own ([`Stream::fresh_conn`]).
    pub fresh: bool,
}

impl Sample {
    pub fn end_us(&self) -> u64 {
        self.start_us as u64 + self.latency_us as u64
    }
}

#[derive(Debug, Default)]
pub struct LoadResult {
    pub samples: Vec<Sample>,
    /// Requests resent on a fresh connection because hyper reported that the
    /// idle keep-alive connection closed before the request went out (what
    /// every HTTP client does); not failures.
    pub resent: u64,
}

/// Pause of a closed-loop connection after a failed request.
pub const FAILURE_PAUSE: Duration = Duration::from_millis(50);

struct Shared {
    spec: LoadSpec,
    epoch: Instant,
    deadline: Instant,
    host: HeaderValue,
}

/// Runs the load to completion. `epoch` is the run's time zero, shared with
/// whatever drives switches so both can be put on one time axis.
///
/// Like wrk, the generator runs one single-threaded event loop per thread
/// (`LOAD_THREADS`), each owning a share of the connections: no work stealing
/// and no cross-thread wake-ups on the hot path, so the generator takes as
/// little CPU as possible from the system under test on the same machine.
pub async fn run(spec: LoadSpec, epoch: Instant) -> LoadResult {
    let threads = load_threads();
    let shared = Arc::new(Shared {
        deadline: epoch + spec.duration,
        host: HeaderValue::from_str(&spec.target.to_string())
            .expect("a socket address is a valid header value"),
        epoch,
        spec,
    });
    let mut plan: Vec<Vec<(Stream, Arc<AtomicU64>)>> = vec![Vec::new(); threads];
    let mut n = 0;
    for stream in &shared.spec.streams {
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..stream.conns {
            plan[n % threads].push((stream.clone(), next.clone()));
            n += 1;
        }
    }
    let handles: Vec<_> = plan
        .into_iter()
        .map(|workers| {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a load-generator runtime");
                rt.block_on(async move {
                    let tasks: Vec<_> = workers
                        .into_iter()
                        .map(|(stream, next)| tokio::spawn(worker(shared.clone(), stream, next)))
                        .collect();
                    let mut out = Vec::new();
                    for t in tasks {
                        out.push(t.await.expect("load worker panicked"));
                    }
                    out
                })
            })
        })
        .collect();
    let mut result = LoadResult::default();
    for h in handles {
        for (samples, resent) in h.await.expect("load thread panicked") {
            result.samples.extend(samples);
            result.resent += resent;
        }
    }
    result
}

/// Threads of the load generator: `HANDOFF_BENCH_THREADS`, else 2 (what wrk
/// is run with in the cross-check).
fn load_threads() -> usize {
    std::env::var("HANDOFF_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

async fn worker(shared: Arc<Shared>, stream: Stream, next: Arc<AtomicU64>) -> (Vec<Sample>, u64) {
    let mut conn: Option<Conn> = None;
    let mut samples = Vec::new();
    let mut resent = 0;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= shared.spec.max_requests {
            break;
        }
        let start = match stream.mode {
            Mode::Closed => Instant::now(),
            Mode::Open { rate } => {
                let due = shared.epoch + Duration::from_secs_f64(i as f64 / rate);
                if due >= shared.deadline {
                    break;
                }
                if due > Instant::now() {
                    // Keep driving the idle connection: a close by the server
                    // is noticed now, not on the next request.
                    let sleep = tokio::time::sleep_until(due.into());
                    match conn.as_mut() {
                        Some(c) => driving(sleep, &mut c.driver).await,
                        None => sleep.await,
                    }
                    Instant::now()
                } else {
                    due
                }
            }
        };
        if start >= shared.deadline {
            break;
        }
        let (outcome, backend) = match tokio::time::timeout(
            shared.spec.timeout,
            request(&shared, &stream, &mut conn, &mut resent),
        )
        .await
        {
            Ok(answer) => answer,
            Err(_) => {
                conn = None;
                (Outcome::Timeout, 0)
            }
        };
        let end = Instant::now();
        samples.push(Sample {
            start_us: start.saturating_duration_since(shared.epoch).as_micros() as u32,
            latency_us: end.duration_since(start).as_micros().min(u32::MAX as u128) as u32,
            outcome,
            backend,
            long: stream.long,
            fresh: stream.fresh_conn,
        });
        if !outcome.is_ok() && stream.mode == Mode::Closed {
            // A closed loop would otherwise spin through its budget on
            // instant failures; a real client backs off too.
            tokio::time::sleep(FAILURE_PAUSE).await;
        }
    }
    (samples, resent)
}

type Driver = Pin<Box<hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>>>;

/// One keep-alive connection, driven inside the worker's own task: no
/// connection task, no wake-up hop between two tasks per request.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    driver: Option<Driver>,
}

impl Conn {
    fn is_usable(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
    }
}

/// Runs `fut` while also polling the connection, so both progress in one task.
async fn driving<F: Future>(fut: F, driver: &mut Option<Driver>) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Some(d) = driver.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                *driver = None;
            }
        }
        fut.as_mut().poll(cx)
    })
    .await
}

async fn connect(addr: SocketAddr) -> Option<Conn> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    Some(Conn {
        sender,
        driver: Some(Box::pin(connection)),
    })
}

async fn request(
    shared: &Shared,
    stream: &Stream,
    conn: &mut Option<Conn>,
    resent: &mut u64,
) -> (Outcome, u8) {
    if stream.fresh_conn {
        *conn = None;
    }
    for attempt in 0..2 {
        if !matches!(conn, Some(c) if c.is_usable()) {
            *conn = connect(shared.spec.target).await;
        }
        let Some(Conn { sender, driver }) = conn.as_mut() else {
            return (Outcome::Connect, 0);
        };
        if driving(sender.ready(), driver).await.is_err() {
            *conn = None;
            if stream.fresh_conn {
                return (Outcome::Connect, 0);
            }
            // Closed while idle, before anything was sent: reconnect.
            continue;
        }
        let host = stream.host.as_ref().unwrap_or(&shared.host);
        let mut req = Request::get(stream.path.as_str())
            .header(http::header::HOST, host.clone())
            .body(Empty::new())
            .expect("static request parts are valid");
        if stream.fresh_conn {
            req.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        match driving(sender.send_request(req), driver).await {
            Ok(resp) => {
                let status = resp.status();
                let backend = resp
                    .headers()
                    .get(crate::backend::ID_HEADER)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0);
                if driving(resp.into_body().collect(), driver).await.is_err() {
                    *conn = None;
                    return (Outcome::Broken, backend);
                }
                if stream.fresh_conn {
                    *conn = None;
                }
                return (classify(status), backend);
            }
            Err(e) if e.is_canceled() && stream.fresh_conn => {
                *conn = None;
                return (Outcome::Connect, 0);
            }
            Err(e) if e.is_canceled() && attempt == 0 => {
                *resent += 1;
                *conn = None;
            }
            Err(_) => {
                *conn = None;
                return (Outcome::Broken, 0);
            }
        }
    }
    (Outcome::Broken, 0)
}

fn classify(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Ok
    } else if status.is_server_error() {
        Outcome::Status5xx
    } else {
        Outcome::StatusOther
    }
}
