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
//! (first request, after a switch, HTTP/2 streams). A connection's first
//! answer, and a pin whose client has gone quiet or stopped reading, go to
//! the pool instead (see [`crate::linger`]): slow clients must not hold
//! backend connections.
//!
//! A backend declared `h2c` is reached through [`h2c`] instead: one HTTP/2
//! connection per generation, multiplexed, on hyper's client.

mod conn;
pub mod decode;
pub mod encode;
pub mod h2c;
pub mod http1;

pub use conn::Conn;
pub(crate) use conn::SILENT;
use http::uri::Authority;
use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

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
}

/// A connection not in use, and since when.
struct Idle {
    conn: Conn,
    since: Instant,
}

/// The upstream connections of one generation. Dropping the pool (when its
/// drained generation is dropped) closes every connection it opened, idle
/// or pinned by a client connection.
pub struct Pool {
    addr: Authority,
    settings: UpstreamSettings,
    idle: Mutex<VecDeque<Idle>>,
}

impl Pool {
    pub fn new(addr: Authority, settings: UpstreamSettings) -> Self {
        Self {
            addr,
            settings,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// A connection to send on, reused (most recently idle first) or new,
    /// and whether it was reused. Reused connections are checked first, so
    /// one the backend closed while idle is dropped, not handed out.
    pub async fn checkout(&self) -> Result<(Conn, bool), ConnectError> {
        if let Some(conn) = self.pop_idle() {
            return Ok((conn, true));
        }
        Ok((self.connect().await?, false))
    }

    /// The newest usable idle connection of this connection thread's;
    /// failing that, another thread's, moved to this one. A connection whose
    /// socket another thread's event loop watches would have that thread
    /// wake this one for every answer (an `eventfd` write and a scheduling
    /// round each), for as long as a client connection keeps it pinned.
    fn pop_idle(&self) -> Option<Conn> {
        let foreign = {
            let mut idle = self.idle.lock().expect("upstream pool poisoned");
            let mut i = idle.len();
            while i > 0 {
                i -= 1;
                if idle[i].conn.is_local() {
                    let entry = idle.remove(i).expect("index below the length");
                    if let Some(conn) = self.usable(entry) {
                        return Some(conn);
                    }
                }
            }
            std::iter::from_fn(|| idle.pop_back()).find_map(|entry| self.usable(entry))
        }?;
        match foreign.rebind() {
            Ok(conn) => {
                tracing::debug!(backend = %self.addr, "idle upstream connection moved to this thread");
                Some(conn)
            }
            Err(e) => {
                tracing::debug!(error = %e, "pooled upstream connection unusable");
                None
            }
        }
    }

    /// The connection of `entry` if it may carry another request: still
    /// open, and idle for less than the limit (pooled or pinned alike).
    fn usable(&self, entry: Idle) -> Option<Conn> {
        (entry.since.elapsed() < self.settings.pool_idle_timeout && entry.conn.is_open())
            .then_some(entry.conn)
    }

    /// Takes back a connection whose last exchange is complete.
    pub fn checkin(&self, conn: Conn) {
        self.keep(Idle {
            conn,
            since: Instant::now(),
        });
    }

    fn keep(&self, entry: Idle) {
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

    /// Opens a new connection. It lives wherever it is kept (a request, a
    /// client's pin, this pool); dropping this pool closes the idle ones.
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
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
        Ok(Conn::new(tcp, self.settings.response_timeout))
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
    pub fn take(&self, id: u64, pool: &Pool) -> Option<Conn> {
        let (pinned_id, entry) = self.slot.lock().expect("pinned slot poisoned").take()?;
        (pinned_id == id).then(|| pool.usable(entry)).flatten()
    }

    /// Pins a connection whose exchange is complete. Whatever was pinned
    /// before (only possible if a response outlived the next request) goes
    /// to its pool when it is of the same generation.
    pub fn put(&self, id: u64, conn: Conn, pool: &Pool) {
        let entry = Idle {
            conn,
            since: Instant::now(),
        };
        let before = self
            .slot
            .lock()
            .expect("pinned slot poisoned")
            .replace((id, entry));
        if let Some((before_id, before)) = before {
            if before_id == id {
                pool.keep(before);
            }
        }
    }

    /// Since when the pinned connection has waited, if one is pinned.
    pub fn idle_since(&self) -> Option<Instant> {
        let slot = self.slot.lock().expect("pinned slot poisoned");
        slot.as_ref().map(|(_, entry)| entry.since)
    }

    /// Hands the pinned connection to its generation's pool when the client
    /// connection ends (or has gone quiet), so the next client does not
    /// connect anew.
    pub fn release_to(&self, id: u64, pool: &Pool) {
        let pinned = self.slot.lock().expect("pinned slot poisoned").take();
        if let Some((pinned_id, entry)) = pinned {
            if pinned_id == id {
                pool.keep(entry);
            }
        }
    }

    /// Closes the pinned connection, whatever it is.
    pub fn drop_pinned(&self) {
        drop(self.slot.lock().expect("pinned slot poisoned").take());
    }

    /// The generation of the pinned connection, if one is pinned.
    pub fn pinned_id(&self) -> Option<u64> {
        self.slot
            .lock()
            .expect("pinned slot poisoned")
            .as_ref()
            .map(|(id, _)| *id)
    }
}

/// Whether `e` (or what caused it) is the backend's silence timing out.
pub fn is_response_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut && io.to_string() == conn::SILENT {
                return true;
            }
        }
        cur = err.source();
    }
    false
}
