//! Ending client connections without failing a request: on shutdown, and in
//! a process that handed its sockets to a new one (see [`crate::upgrade`]).
//!
//! hyper's own graceful shutdown closes an idle HTTP/1.1 connection at once.
//! A busy keep-alive client is "idle" for the few microseconds between a
//! response and its next request, so closing then races that request and
//! the client sees its request cut (it cannot know whether it was
//! processed). Here instead:
//! - HTTP/1.1: every response from then on carries `Connection: close`, so
//!   a busy client is told in-band and hyper closes after that response; a
//!   connection closes while idle only once it has stayed idle (no new
//!   request, no new answer) for a whole [`GRACE`] tick, as an idle timeout
//!   would;
//! - HTTP/2: GOAWAY at once (hyper sends the two-step GOAWAY, so streams
//!   the client opened meanwhile are still served);
//! - a request, stream or body in progress always runs to its end, bounded
//!   by the caller's drain timeout. A WebSocket (after its 101) has left the
//!   connection; the drain waits for it through its in-flight count.

use crate::wire::ConnFlags;
use hyper_util::server::graceful::GracefulConnection;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Notify;

/// How long an HTTP/1.1 connection must stay idle before a retiring
/// process closes it.
pub const GRACE: Duration = Duration::from_millis(500);

/// The open client connections of this process, and whether they are
/// being retired.
pub struct Retire {
    closing: AtomicBool,
    /// Wakes every connection when `closing` is set.
    signal: Notify,
    open: AtomicUsize,
    all_closed: Notify,
}

/// One open connection, counted until dropped.
pub struct Tracked {
    retire: Arc<Retire>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.retire.open.fetch_sub(1, SeqCst) == 1 {
            self.retire.all_closed.notify_waiters();
        }
    }
}

impl Retire {
    pub fn new() -> Arc<Self> {
        Arc::new(Retire {
            closing: AtomicBool::new(false),
            signal: Notify::new(),
            open: AtomicUsize::new(0),
            all_closed: Notify::new(),
        })
    }

    /// Whether responses should now close their HTTP/1.1 connection; one
    /// relaxed load, read once per response.
    pub fn closing(&self) -> bool {
        self.closing.load(Relaxed)
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(SeqCst)
    }

    /// Counts a newly accepted connection.
    pub fn track(self: &Arc<Self>) -> Tracked {
        self.open.fetch_add(1, SeqCst);
        Tracked {
            retire: Arc::clone(self),
        }
    }

    /// Retires every connection and resolves once all have ended. The
    /// accept loops must have stopped first.
    pub async fn retire_all(&self) {
        self.closing.store(true, SeqCst);
        self.signal.notify_waiters();
        loop {
            let notified = self.all_closed.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.open.load(SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Serves `conn` to its end; once the process retires connections, ends it
/// as the module doc says. `flags` tells whether it is between requests.
///
/// Until then it costs a connection one relaxed load per wake-up: the
/// retirement signal is polled once, to register this task's waker, and
/// afterwards only the flag is read. That relies on the waker staying the
/// same, which holds because this future is the connection task's own
/// (awaited directly in the task the accept loop spawned), never moved into
/// a select or another task. (A `select!` over the signal, as hyper's
/// graceful watcher does, locked the signal's waiter list at every wake-up.)
pub async fn serve<C>(tracked: Tracked, conn: C, flags: &ConnFlags) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    let retire = &tracked.retire;
    let mut conn = pin!(conn);
    // Created before `closing` is read: a `notify_waiters` after this point
    // reaches it even before its first poll.
    let mut signal = pin!(retire.signal.notified());
    let mut registered = false;
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if retire.closing() {
            return Poll::Ready(None);
        }
        if !registered {
            if signal.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            registered = true;
        }
        Poll::Pending
    })
    .await;
    if let Some(r) = ended {
        return r;
    }
    // Idle at the previous tick, with this many answers; `None` when busy.
    let mut idle_at_last_tick = None;
    loop {
        let idle_now = flags.between_requests();
        if flags.is_http2() || (idle_now.is_some() && idle_now == idle_at_last_tick) {
            conn.as_mut().graceful_shutdown();
            return conn.await;
        }
        idle_at_last_tick = idle_now;
        tokio::select! {
            r = conn.as_mut() => return r,
            () = tokio::time::sleep(GRACE) => {}
        }
    }
}
