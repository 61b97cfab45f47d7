//! The active backend, read lock-free on every request.

use crate::drain::{Generation, InFlight};
use crate::upstream::{self, UpstreamSettings};
use arc_swap::ArcSwapOption;
use handoff_shared::{BackendProtocol, DrainingGeneration};
use http::uri::Authority;
use std::sync::atomic::{fence, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

/// Generation ids are unique in the process, across apps: a client
/// connection's pinned upstream connection is reused only by a request of
/// the same generation, whichever app that request is for.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// The id of the newest generation made so far (0 before the first).
pub fn last_generation() -> u64 {
    NEXT_GENERATION.load(SeqCst) - 1
}

/// Numbers the next generation after `last`, so that a process that took
/// over from another (see [`crate::upgrade`]) continues its numbering.
/// Called before the first switch.
pub fn continue_after(last: u64) {
    NEXT_GENERATION.fetch_max(last + 1, SeqCst);
}

/// Holds one app's active generation and the ones still draining.
///
/// The request path calls [`Router::acquire`] only: one `ArcSwap` load, one
/// atomic increment, one re-check. The `retired` list behind a mutex is touched
/// by switches, status calls and the reaper, never by a request.
pub struct Router {
    active: ArcSwapOption<Generation>,
    retired: Arc<Mutex<Vec<Arc<Generation>>>>,
    settings: UpstreamSettings,
}

impl Router {
    pub fn new(settings: UpstreamSettings) -> Self {
        Self {
            active: ArcSwapOption::empty(),
            retired: Arc::default(),
            settings,
        }
    }

    /// Picks the active generation for one request and counts the request on it.
    ///
    /// The increment happens before the re-check of `active`, and a switch
    /// stores the new generation before it reads the old one's counter
    /// (both sequentially consistent). So either this request sees the switch
    /// and retries on the new generation, or the drain sees this request.
    pub fn acquire(&self) -> Option<InFlight> {
        loop {
            // The guard holds the only new reference to the generation.
            let guard = self.active.load().as_ref()?.enter();
            fence(SeqCst);
            let still_active = matches!(&*self.active.load(),
                Some(cur) if Arc::ptr_eq(cur, guard.generation()));
            if still_active {
                return Some(guard);
            }
        }
    }

    /// Makes `addr`, speaking `protocol`, the active backend; returns the
    /// new and the previous generation. Callers wait on
    /// [`Router::retired`] for the drain.
    pub fn switch(
        &self,
        addr: Authority,
        protocol: BackendProtocol,
    ) -> (Arc<Generation>, Option<Arc<Generation>>) {
        let id = NEXT_GENERATION.fetch_add(1, SeqCst);
        let pool = upstream::Pool::new(addr.clone(), self.settings.clone());
        let h2c = (protocol == BackendProtocol::H2c)
            .then(|| upstream::h2c::H2Pool::new(addr.clone(), self.settings.clone()));
        let new = Arc::new(Generation::new(id, addr, pool, h2c));
        let previous = self.replace_active(Some(Arc::clone(&new)));
        (new, previous)
    }

    /// Makes `next` the active generation; the one it replaces is retired
    /// and kept in the list until its last request is done.
    fn replace_active(&self, next: Option<Arc<Generation>>) -> Option<Arc<Generation>> {
        let previous = self.active.swap(next);
        fence(SeqCst);
        if let Some(prev) = &previous {
            prev.retire();
            self.retired
                .lock()
                .expect("retired list poisoned")
                .push(Arc::clone(prev));
            self.reap_when_drained(Arc::clone(prev));
        }
        previous
    }

    /// Drops a retired generation from the list once its last request is done,
    /// which closes its upstream pool.
    fn reap_when_drained(&self, generation: Arc<Generation>) {
        let retired = Arc::clone(&self.retired);
        tokio::spawn(async move {
            generation.drained().await;
            retired
                .lock()
                .expect("retired list poisoned")
                .retain(|g| !Arc::ptr_eq(g, &generation));
        });
    }

    /// Stops routing to any generation (the app is being removed): the
    /// active one is retired and drains like one switched away from.
    pub fn retire_active(&self) -> Option<Arc<Generation>> {
        self.replace_active(None)
    }

    pub fn active(&self) -> Option<Arc<Generation>> {
        self.active.load_full()
    }

    /// Generations switched away from that still have requests.
    pub fn retired(&self) -> Vec<Arc<Generation>> {
        self.retired.lock().expect("retired list poisoned").clone()
    }

    pub fn draining(&self) -> Vec<DrainingGeneration> {
        self.retired()
            .iter()
            .filter(|g| g.in_flight() > 0)
            .map(|g| DrainingGeneration {
                backend: g.addr.to_string(),
                generation: g.id,
                in_flight: g.in_flight(),
            })
            .collect()
    }

    /// In-flight requests on every generation, active or draining.
    pub fn total_in_flight(&self) -> u64 {
        let active = self.active().map_or(0, |g| g.in_flight());
        active + self.retired().iter().map(|g| g.in_flight()).sum::<u64>()
    }
}
