//! In-flight accounting per backend generation, and waiting for a generation
//! to drain.
//!
//! The request path only touches atomics here: incrementing and decrementing a
//! counter, and, for a generation that was switched away from, waking the
//! drain waiters when the last request finishes. Nothing on the request path
//! ever waits for a drain (the kamal-proxy stall we must not repeat).

use crate::upstream::h2c::H2Pool;
use crate::upstream::Pool;
use handoff_shared::BackendProtocol;
use http::uri::Authority;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One backend address as it was made active by one switch. Switching to the
/// same address again makes a new generation, so "drained" always means the
/// requests routed before that switch.
pub struct Generation {
    pub id: u64,
    /// Parsed once at switch time so the request path never re-parses it.
    pub addr: Authority,
    /// Upstream connections of this generation only: dropping the last
    /// reference to a drained generation closes them.
    pub pool: Pool,
    /// For a backend that speaks h2c, its HTTP/2 connection (then `pool`
    /// stays empty); `None` for HTTP/1.1.
    pub h2c: Option<H2Pool>,
    in_flight: AtomicU64,
    retired: AtomicBool,
    idle: Notify,
}

impl Generation {
    pub fn new(id: u64, addr: Authority, pool: Pool, h2c: Option<H2Pool>) -> Self {
        Self {
            id,
            addr,
            pool,
            h2c,
            in_flight: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            idle: Notify::new(),
        }
    }

    pub fn protocol(&self) -> BackendProtocol {
        match self.h2c {
            Some(_) => BackendProtocol::H2c,
            None => BackendProtocol::Http1,
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(SeqCst)
    }

    /// Counts one more request on this generation until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, SeqCst);
        InFlight {
            generation: Arc::clone(self),
        }
    }

    /// Marks the generation as switched away from, so that the last request
    /// leaving it wakes the drain waiters.
    pub fn retire(&self) {
        self.retired.store(true, SeqCst);
    }

    /// Resolves once no request holds this generation. Call after [`retire`].
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before reading the counter so a wake-up between the
            // read and the await cannot be lost.
            notified.as_mut().enable();
            if self.in_flight.load(SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Waits for [`drained`] until `deadline`; returns whether it drained.
    pub async fn drained_by(&self, deadline: Instant) -> bool {
        tokio::time::timeout_at(deadline, self.drained())
            .await
            .is_ok()
    }
}

/// Proof that a request is running on a generation. It lives inside the
/// response body (or the upgraded tunnel), so a request counts until its last
/// byte was sent or the client went away, not merely until headers were sent.
pub struct InFlight {
    generation: Arc<Generation>,
}

impl InFlight {
    pub fn generation(&self) -> &Arc<Generation> {
        &self.generation
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let g = &self.generation;
        if g.in_flight.fetch_sub(1, SeqCst) == 1 && g.retired.load(SeqCst) {
            g.idle.notify_waiters();
        }
    }
}

/// The outcome of waiting for older generations after a switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    pub drained: bool,
    pub in_flight: u64,
    pub waited: Duration,
}

/// Waits until every generation in `retired` is drained or `timeout` passed.
pub async fn wait_all(retired: &[Arc<Generation>], timeout: Duration) -> DrainOutcome {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut drained = true;
    for g in retired {
        drained &= g.drained_by(deadline).await;
    }
    let in_flight = retired.iter().map(|g| g.in_flight()).sum();
    DrainOutcome {
        drained: drained && in_flight == 0,
        in_flight,
        waited: start.elapsed(),
    }
}
