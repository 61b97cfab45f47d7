//! One timer for a deadline that keeps moving later, as an idle or silence
//! timeout does with every byte.
//!
//! Resetting a tokio timer on every read or write (or making one per request)
//! costs a timer-wheel removal and insertion each time. Here the timer stays
//! where it was armed; when it fires, the current deadline is checked and the
//! timer is moved to it only if it has not passed. Traffic then costs a clock
//! read, and the wheel sees one entry per connection per timeout period.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::time::{Instant, Sleep};

#[derive(Default)]
pub struct LazyDeadline {
    /// Armed at the current deadline or earlier (deadlines only move later).
    timer: Option<Pin<Box<Sleep>>>,
    /// When the timer fires, and the task it wakes then.
    armed: Option<(Instant, Waker)>,
}

impl LazyDeadline {
    /// Ready once `deadline` has passed; until then the task is woken when
    /// the timer fires. `deadline` must never be earlier than one passed
    /// before.
    pub fn poll_passed(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        self.poll_passed_at(cx, Instant::now(), deadline)
    }

    /// [`Self::poll_passed`] for a caller that has just read the clock.
    pub fn poll_passed_at(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        deadline: Instant,
    ) -> Poll<()> {
        // Polling the timer registers the waker with the timer driver again
        // (atomics, a lock); asked by the same task before the timer is due,
        // the answer is known without it.
        if let Some((at, waker)) = &self.armed {
            if waker.will_wake(cx.waker()) && now < *at {
                return Poll::Pending;
            }
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        while timer.as_mut().poll(cx).is_ready() {
            if now >= deadline || Instant::now() >= deadline {
                self.armed = None;
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
        self.armed = Some((timer.deadline(), cx.waker().clone()));
        Poll::Pending
    }
}

/// How long a connection has gone without moving a byte, for idle and
/// silence timeouts. Traffic only calls [`Silence::moved`]; the clock is read
/// when the connection has to wait, which dates the last traffic at most one
/// wait late: a request costs one clock read, not one per read and write.
pub struct Silence {
    limit: std::time::Duration,
    since: Instant,
    moved: bool,
    timer: LazyDeadline,
}

impl Silence {
    pub fn new(limit: std::time::Duration) -> Self {
        Self {
            limit,
            since: Instant::now(),
            moved: false,
            timer: LazyDeadline::default(),
        }
    }

    /// Bytes moved.
    pub fn moved(&mut self) {
        self.moved = true;
    }

    /// Called when a read or write must wait: ready once nothing has moved
    /// for the limit.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if std::mem::take(&mut self.moved) {
            self.since = now;
        }
        self.timer.poll_passed_at(cx, now, self.since + self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn fires_only_at_the_latest_deadline() {
        let mut d = LazyDeadline::default();
        let start = Instant::now();
        let first = start + Duration::from_secs(10);
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(d.poll_passed(cx, first)))
                .await
                .is_pending()
        );
        // Traffic moved the deadline later before the first one came.
        let later = start + Duration::from_secs(25);
        std::future::poll_fn(|cx| d.poll_passed(cx, later)).await;
        assert!(Instant::now() >= later, "not before the moved deadline");
        assert!(Instant::now() < later + Duration::from_secs(1));
    }
}
