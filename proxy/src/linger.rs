//! How long a client connection may keep an upstream connection pinned
//! while it sends nothing.
//!
//! An HTTP/1 client connection keeps the upstream connection its last
//! request used (see [`crate::upstream`]), which saves the pool for a client
//! that sends request after request. But a client that reads its answer
//! slowly, or just stays connected, would hold that backend connection for
//! as long as it likes: 500 slowhttptest slow readers held 500 backend
//! connections. So once the client connection's task has nothing to do and
//! the pin has waited for [`LINGER`], or at once when the client's socket
//! would not take the last write (a slow reader), the connection goes to
//! the generation's pool, where any client's request can take it (nginx
//! keeps no per-client upstream connection at all).
//!
//! The check runs when the client connection's task is about to sleep: one
//! uncontended lock and one clock read. The timer is a [`LazyDeadline`], so a
//! busy connection moves it by comparing instants, and the timer wheel sees
//! at most one wake-up per connection per [`LINGER`].

use crate::apps::Apps;
use crate::deadline::LazyDeadline;
use crate::upstream::Pinned;
use crate::wire::ConnFlags;
use std::task::Context;
use std::time::Duration;

/// Long enough for a busy client's next request (a keep-alive client that
/// is not idle sends it within milliseconds), short enough that slow
/// readers arriving at hundreds per second pin only a handful.
pub const LINGER: Duration = Duration::from_millis(50);

pub struct Linger<'a> {
    pinned: &'a Pinned,
    apps: &'a Apps,
    flags: &'a ConnFlags,
    timer: LazyDeadline,
}

impl<'a> Linger<'a> {
    pub fn new(pinned: &'a Pinned, apps: &'a Apps, flags: &'a ConnFlags) -> Self {
        Self {
            pinned,
            apps,
            flags,
            timer: LazyDeadline::default(),
        }
    }

    /// Called when the client connection's task waits: releases a pin that
    /// has waited long enough, or has the task woken when it will have.
    pub fn poll(&mut self, cx: &mut Context<'_>) {
        let Some(since) = self.pinned.idle_since() else {
            return;
        };
        if self.flags.write_blocked() || self.timer.poll_passed(cx, since + LINGER).is_ready() {
            self.apps.release_pinned(self.pinned);
        }
    }
}
