//! The watched switch: `PUT /v1/backend` (or `PUT /v1/apps/{app}`) to the new release, and while the
//! proxy drains the previous one (which keeps running), the new release is
//! checked every `--health-interval` for `--watch`. A release that exits,
//! restarts, or fails `--health-failures` checks in a row ends the watch so
//! the caller switches back at once; a release that passed its readiness
//! checks and then crashed no longer stays live.
//!
//! The switch call answers only after the drain. When that answer is lost,
//! the app's status (re-read, waiting for a restarting proxy) says whether
//! the switch happened; the watch goes on only if it did. A refusal (4xx,
//! e.g. a route conflict) is an answer: not switched, not asked again.

use crate::error::{Failure, Result};
use crate::faults;
use crate::health::{self, LOG_EVERY};
use crate::output::secs;
use crate::plan::{Cutover, Plan};
use crate::proxy::PROXY_RESTART_WAIT;
use handoff_shared::SwitchResponse;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What the proxy said about the drain of the previous release.
#[derive(Debug, Default)]
pub struct DrainResult {
    pub response: Option<SwitchResponse>,
    /// Why the answer is missing, when it is.
    pub lost: Option<String>,
}

impl DrainResult {
    pub fn to_json(&self) -> Value {
        match &self.response {
            Some(r) => json!({"drained": r.drained, "in_flight": r.in_flight,
                              "drain_ms": r.drain_ms, "generation": r.generation,
                              "previous": r.previous}),
            None => json!({"drained": Value::Null, "error": self.lost}),
        }
    }
}

pub enum WatchEnd {
    /// Switched, and the new release stayed healthy for the whole watch.
    Stable {
        drain: DrainResult,
        checks: u32,
        watched: Duration,
    },
    /// Switched, then the new release failed; the caller switches back.
    Failed {
        reason: String,
        exit_code: Option<i64>,
    },
    /// The proxy says it does not route to the new release.
    NotSwitched(Failure),
    /// The proxy cannot be asked: whether it switched is unknown.
    Unknown(Failure),
}

/// What one check during the watch found.
struct Watcher {
    failures_in_a_row: u32,
    checks: u32,
    last: String,
    /// When the last health check ran; Docker's state is read more often.
    last_probe: Option<Instant>,
}

impl Cutover<'_> {
    pub async fn switch_and_watch(&self, plan: &Plan<'_>, addr: &str) -> WatchEnd {
        let mut retried = false;
        let put = self.proxy.switch(
            addr,
            self.switch.drain_timeout,
            self.switch.backend_protocol,
        );
        let mut put = Box::pin(put);
        let mut drain: Option<DrainResult> = None;
        let started = Instant::now();
        let mut seen_switched = false;
        let mut watcher = Watcher {
            failures_in_a_row: 0,
            checks: 0,
            last: "no check yet".into(),
            last_probe: None,
        };
        let client = health::client(self.switch.health_timeout);
        // A crash must end the watch within a fraction of a second, not at
        // the next health check: Docker's state is read every STATE_POLL.
        let mut tick = tokio::time::interval(health::STATE_POLL.min(self.switch.health_interval));
        let mut last_logged = Instant::now();
        let deaths = self.engine.deaths(plan.new);
        tokio::pin!(deaths);
        let mut deaths_open = true;
        loop {
            if drain.is_some() && started.elapsed() >= self.switch.watch {
                return WatchEnd::Stable {
                    drain: drain.unwrap_or_default(),
                    checks: watcher.checks,
                    watched: started.elapsed(),
                };
            }
            tokio::select! {
                answer = &mut put, if drain.is_none() => {
                    match self.settle(addr, answer).await {
                        Ok(result) => {
                            if !seen_switched {
                                seen_switched = true;
                                faults::hit("after-switch");
                            }
                            drain = Some(result);
                        }
                        Err(WatchEnd::NotSwitched(f)) if !retried && !f.is_refusal() => {
                            // A proxy that lost the call before switching
                            // (restarted meanwhile) gets it once more.
                            retried = true;
                            self.out.step(format!("{f}; asking the proxy again"));
                            put = Box::pin(self.proxy.switch(addr, self.switch.drain_timeout, self.switch.backend_protocol));
                        }
                        Err(end) => return end,
                    }
                }
                death = futures_util::StreamExt::next(&mut deaths), if deaths_open => {
                    match death {
                        // It died: read its state now, not at the next tick.
                        Some(()) => {
                            if let Some(end) = self.check(plan, &client, &mut watcher).await {
                                return end;
                            }
                        }
                        None => deaths_open = false,
                    }
                }
                _ = tick.tick() => {
                    let in_flight = if drain.is_none() {
                        self.note_switch(addr, &mut seen_switched).await
                    } else {
                        None
                    };
                    if let Some(end) = self.check(plan, &client, &mut watcher).await {
                        return end;
                    }
                    let periodic = last_logged.elapsed() >= LOG_EVERY;
                    if periodic {
                        last_logged = Instant::now();
                    }
                    let text = if started.elapsed() >= self.switch.watch {
                        // The watch is over; the switch call still waits for the drain.
                        format!(
                            "{} watched for {} ({} checks, {}); waiting for the previous release's \
                             drain: {} requests in flight",
                            plan.new,
                            secs(self.switch.watch),
                            watcher.checks,
                            watcher.last,
                            in_flight.map_or("?".to_string(), |n| n.to_string())
                        )
                    } else {
                        format!(
                            "watching {} ({} of {}): {} checks, {}{}",
                            plan.new,
                            secs(started.elapsed()),
                            secs(self.switch.watch),
                            watcher.checks,
                            watcher.last,
                            match in_flight {
                                Some(n) => format!("; previous release draining, {n} requests in flight"),
                                None => String::new(),
                            }
                        )
                    };
                    self.out.progress(
                        text,
                        periodic,
                    );
                }
            }
        }
    }

    /// While the switch call is pending: has the proxy switched, and how
    /// many requests does the previous release still have?
    async fn note_switch(&self, addr: &str, seen: &mut bool) -> Option<u64> {
        let status = self.proxy.status().await.ok()?;
        if status.backend.as_deref() == Some(addr) && !*seen {
            *seen = true;
            faults::hit("after-switch");
        }
        let in_flight = status.draining.iter().map(|d| d.in_flight).sum();
        if *seen && !status.draining.is_empty() {
            faults::hit("during-drain");
        }
        Some(in_flight)
    }

    /// The switch call answered, or failed: decide from the proxy's truth.
    async fn settle(
        &self,
        addr: &str,
        answer: Result<SwitchResponse>,
    ) -> std::result::Result<DrainResult, WatchEnd> {
        let failure = match answer {
            Ok(resp) => {
                return Ok(DrainResult {
                    response: Some(resp),
                    lost: None,
                })
            }
            // The proxy answered "no": nothing changed, nothing to re-read.
            Err(f) if f.is_refusal() => return Err(WatchEnd::NotSwitched(f)),
            Err(f) => f,
        };
        self.out.step(format!(
            "the switch call failed ({failure}); asking the proxy what it routes to (waiting up to {})",
            secs(PROXY_RESTART_WAIT)
        ));
        match self.proxy.status_within(PROXY_RESTART_WAIT).await {
            Ok(s) if s.backend.as_deref() == Some(addr) => Ok(DrainResult {
                response: None,
                lost: Some(failure.to_string()),
            }),
            Ok(s) => Err(WatchEnd::NotSwitched(Failure::Proxy(format!(
                "{failure}; the proxy routes to {}, not to {addr}",
                s.backend.as_deref().unwrap_or("nothing")
            )))),
            Err(again) => Err(WatchEnd::Unknown(Failure::Proxy(format!(
                "{failure}; and the proxy did not answer /v1/status within {}: {again}",
                secs(PROXY_RESTART_WAIT)
            )))),
        }
    }

    /// One check of the new release: Docker's state, then its health.
    async fn check(
        &self,
        plan: &Plan<'_>,
        client: &reqwest::Client,
        w: &mut Watcher,
    ) -> Option<WatchEnd> {
        let info = match self.engine.inspect(plan.new).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                return Some(WatchEnd::Failed {
                    reason: format!("container {} disappeared", plan.new),
                    exit_code: None,
                })
            }
            // Docker did not answer: not a verdict on the release.
            Err(e) => {
                w.last = format!("docker: {e}");
                return None;
            }
        };
        if !info.running || info.restarting || info.restart_count > plan.restarts_before {
            // Once Docker restarted it, the exit code is that of the new
            // run (0): only the restart count tells the crash.
            let reason = if info.running || info.restarting {
                format!(
                    "it crashed and Docker restarted it ({} restarts)",
                    info.restart_count - plan.restarts_before
                )
            } else {
                format!(
                    "it exited with exit code {}",
                    info.exit_code.map_or("unknown".into(), |c| c.to_string())
                )
            };
            let exit_code = (!info.running).then_some(info.exit_code).flatten();
            return Some(WatchEnd::Failed { reason, exit_code });
        }
        if w.last_probe
            .is_some_and(|t| t.elapsed() < self.switch.health_interval)
        {
            return None;
        }
        w.last_probe = Some(Instant::now());
        w.checks += 1;
        let result = match info.health_addr() {
            Some(a) => health::probe(client, a, plan.health_path).await,
            None => Err("the health port is not published".into()),
        };
        match result {
            Ok(answer) => {
                w.failures_in_a_row = 0;
                w.last = answer;
            }
            Err(why) => {
                w.failures_in_a_row += 1;
                w.last = format!("{why} ({} in a row)", w.failures_in_a_row);
                if w.failures_in_a_row >= self.switch.health_failures.max(1) {
                    return Some(WatchEnd::Failed {
                        reason: format!(
                            "{} health checks failed in a row, last: {why}",
                            w.failures_in_a_row
                        ),
                        exit_code: None,
                    });
                }
            }
        }
        None
    }
}
