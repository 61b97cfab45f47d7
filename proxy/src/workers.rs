//! Connection threads: one single-threaded runtime per thread, each serving
//! whole client connections, the way nginx runs one event loop per worker
//! process.
//!
//! Why not tokio's work-stealing runtime for connections: a proxied request
//! is one task's work here (the client connection's: it writes to the
//! backend and reads the answer itself, see `upstream::http1`), but on the
//! shared runtime that task's wake-ups come from whichever thread polled the
//! I/O driver, so it keeps moving between CPUs, and with it the sockets'
//! kernel state and its own buffers; idle workers also spin looking for work
//! to steal. Pinned to one thread, a connection and everything it spawns
//! (a WebSocket tunnel, HTTP/2 streams) stays on one CPU's caches, as in
//! nginx's worker processes. Measured on the 2-core bench machine, the same
//! binary served about 25 % more requests per second this way, at about
//! 20 % less CPU per request (benches/RESULTS.md). Only handing the accepted
//! socket over crosses threads, once per connection.
//!
//! Control, admin and accept loops stay on the main runtime, so a switch or a
//! scrape never waits behind request traffic and vice versa.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Which connection thread the caller runs on; `None` off them. A socket
/// belongs to the event loop of the thread that registered it, and the
/// upstream pool uses this to hand each thread its own connections.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// The connection threads; dropping this stops them and cancels whatever
/// still runs on them (callers drain first).
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped to tell every thread to stop.
    _stop: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` threads (at least one), each with its own runtime.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let count = count.max(1);
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("handoff-conn-{i}"))
                    .spawn(move || {
                        CURRENT.with(|c| c.set(Some(i)));
                        let _ = runtime.block_on(stopped);
                        // Cancel what is left without waiting for it.
                        runtime.shutdown_background();
                    })?,
            );
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            _stop: stops,
            threads,
        })
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `conn` on the next thread in turn.
    pub fn spawn<F>(&self, conn: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Relaxed) % self.handles.len();
        self.handles[i].spawn(conn);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self._stop.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The default thread count: one per CPU the process may run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
