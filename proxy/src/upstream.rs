//! Connections to one backend generation: connecting, the generation's idle
//! pool, and the connection a client connection keeps pinned between its
//! requests.
//!
//! Why not hyper-util's pooled `Client`: profiling (benches/RESULTS.md) put
//! its per-request pool-key hashing, checkout futures and the channel hop
//! into a separate connection task among the largest items of the proxy's
//! own CPU time. An HTTP/1 client connection sends one request at a time, so
//! it can simply keep the upstream connection its last request used, and only
//! go to the generation's pool when it has none for the active generation
//! (first request, after a switch, HTTP/2 streams).

use crate::deadline::LazyDeadline;
use crate::limits::RequestBody;
use http::uri::Authority;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Sends requests on one upstream HTTP/1.1 connection.
pub type Sender = SendRequest<RequestBody>;

/// Idle connections kept per generation; more than this are closed.
const MAX_IDLE: usize = 1024;

/// Timeouts that shape how the proxy talks to backends.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// An upstream connection idle for longer is closed instead of reused.
    /// Kept below common app-server keep-alive timeouts (Tomcat closes after
    /// 20 s), so the proxy never sends a request into the backend's close.
    pub pool_idle_timeout: Duration,
    /// How long a backend may stay silent while the proxy waits for its
    /// answer (like nginx's `proxy_read_timeout`): before the response head
    /// the client gets 504; later the response is cut.
    pub response_timeout: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(15),
            response_timeout: Duration::from_secs(60),
        }
    }
}

/// Why no upstream connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr} timed out")]
    Timeout { addr: Authority },
    #[error("connecting to {addr}: {source}")]
    Io {
        addr: Authority,
        source: std::io::Error,
    },
    #[error("HTTP/1.1 handshake with {addr}: {source}")]
    Handshake {
        addr: Authority,
        source: hyper::Error,
    },
}

/// A connection not in use, and since when.
struct Idle {
    sender: Sender,
    since: Instant,
}

/// The upstream connections of one generation. Dropping the pool (when its
/// drained generation is dropped) closes every connection it opened, idle
/// or pinned by a client connection.
pub struct Pool {
    addr: Authority,
    settings: UpstreamSettings,
    idle: Mutex<VecDeque<Idle>>,
    /// Never sends; its drop tells the connection tasks to end.
    closed: watch::Sender<()>,
}

impl Pool {
    pub fn new(addr: Authority, settings: UpstreamSettings) -> Self {
        Self {
            addr,
            settings,
            idle: Mutex::new(VecDeque::new()),
            closed: watch::channel(()).0,
        }
    }

    /// A connection ready to send, reused (most recently idle first) or new.
    /// Reused connections are checked for readiness here, so one the backend
    /// closed while idle is skipped, not handed out.
    pub async fn checkout(&self) -> Result<(Sender, bool), ConnectError> {
        while let Some(mut sender) = self.pop_idle() {
            if sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    fn pop_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("upstream pool poisoned");
        while let Some(entry) = idle.pop_back() {
            if let Some(sender) = self.usable(entry) {
                return Some(sender);
            }
        }
        None
    }

    /// The connection of `entry` if it may carry another request: still
    /// open, and idle for less than the limit (pooled or pinned alike).
    fn usable(&self, entry: Idle) -> Option<Sender> {
        (!entry.sender.is_closed() && entry.since.elapsed() < self.settings.pool_idle_timeout)
            .then_some(entry.sender)
    }

    /// Returns a connection whose last exchange is complete.
    pub fn checkin(&self, sender: Sender) {
        self.keep(Idle {
            sender,
            since: Instant::now(),
        });
    }

    fn keep(&self, entry: Idle) {
        if entry.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let max_age = self.settings.pool_idle_timeout;
        let mut idle = self.idle.lock().expect("upstream pool poisoned");
        // Oldest first: drop what aged out, and the oldest beyond the cap.
        while idle
            .front()
            .is_some_and(|e| now.duration_since(e.since) >= max_age || idle.len() >= MAX_IDLE)
        {
            idle.pop_front();
        }
        idle.push_back(entry);
    }

    /// Opens a new connection; its I/O runs in its own task until the
    /// backend or the proxy closes it, or this pool is dropped.
    pub async fn connect(&self) -> Result<Sender, ConnectError> {
        let addr = &self.addr;
        let tcp = match tokio::time::timeout(
            self.settings.connect_timeout,
            TcpStream::connect(addr.as_str()),
        )
        .await
        {
            Err(_) => return Err(ConnectError::Timeout { addr: addr.clone() }),
            Ok(Err(source)) => {
                return Err(ConnectError::Io {
                    addr: addr.clone(),
                    source,
                })
            }
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(UpstreamIo::new(
                tcp,
                self.settings.response_timeout,
            )))
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: addr.clone(),
                source,
            })?;
        let mut closed = self.closed.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                r = conn.with_upgrades() => if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream connection ended");
                },
                // The generation is gone (drained): close what is left.
                _ = closed.changed() => {}
            }
        });
        Ok(sender)
    }
}

/// The upstream connection an HTTP/1 client connection used last, tagged
/// with its generation. It is reused only while that generation is still the
/// one a request acquires, so every request still goes to the active backend.
#[derive(Default)]
pub struct Pinned {
    slot: Mutex<Option<(u64, Idle)>>,
}

impl Pinned {
    /// The pinned connection if it belongs to generation `id` and `pool`
    /// would still reuse it; otherwise it is dropped here.
    pub fn take(&self, id: u64, pool: &Pool) -> Option<Sender> {
        let (pinned_id, entry) = self.slot.lock().expect("pinned slot poisoned").take()?;
        (pinned_id == id).then(|| pool.usable(entry)).flatten()
    }

    pub fn put(&self, id: u64, sender: Sender) {
        let entry = Idle {
            sender,
            since: Instant::now(),
        };
        *self.slot.lock().expect("pinned slot poisoned") = Some((id, entry));
    }

    /// Hands the pinned connection to its generation's pool when the client
    /// connection ends, so the next client does not connect anew.
    /// Only an idle connection goes back: one whose client left in the
    /// middle of a response is closing and is dropped.
    pub fn release_to(&self, id: u64, pool: &Pool) {
        let pinned = self.slot.lock().expect("pinned slot poisoned").take();
        if let Some((pinned_id, entry)) = pinned {
            if pinned_id == id && entry.sender.is_ready() {
                pool.keep(entry);
            }
        }
    }
}

/// The message an upstream read fails with when the backend stayed silent
/// too long; [`is_response_timeout`] recognises it in an error chain.
const SILENT: &str = "backend sent nothing within the upstream timeout";

/// Whether `e` (or what caused it) is the backend's silence timing out.
pub fn is_response_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut && io.to_string() == SILENT {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// An upstream socket that fails its read once the backend has been silent
/// for `timeout` after the proxy last wrote to it.
///
/// Why here and not a `tokio::time::timeout` per request: that registers
/// and removes a timer on every request (measurable in the profile); a
/// [`LazyDeadline`] keeps one per connection, so a request costs two clock
/// reads. An idle keep-alive connection (nothing
/// written since its last answer) never times out here; the pool's idle
/// limit handles it.
struct UpstreamIo {
    inner: TcpStream,
    timeout: Duration,
    /// When the proxy last wrote, if nothing was read since.
    waiting_since: Option<Instant>,
    timer: LazyDeadline,
}

impl UpstreamIo {
    fn new(inner: TcpStream, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            waiting_since: None,
            timer: LazyDeadline::default(),
        }
    }

    /// Polled only while a read is pending.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(since) = self.waiting_since else {
            return Poll::Pending;
        };
        self.timer
            .poll_passed(cx, since + self.timeout)
            .map(|()| io::Error::new(io::ErrorKind::TimedOut, SILENT))
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.waiting_since = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.poll_silence(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl UpstreamIo {
    /// After a write the backend owes an answer: the timer must be armed
    /// (and this task's waker registered with it) now, because hyper may
    /// have polled its read before it wrote.
    fn wrote(&mut self, cx: &mut Context<'_>, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.waiting_since = Some(Instant::now());
            // Only just set, so it cannot have expired: this arms, never fails.
            let _ = self.poll_silence(cx);
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        this.wrote(cx, &r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(cx, &r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
