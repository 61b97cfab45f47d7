//! The part deploy and rollback share: a started release becomes stable,
//! the proxy switches to it while the previous release keeps running, the
//! new one is watched, and only then is the previous one drained and stopped.
//!
//! Until the switch nothing a user can see has changed, so every failure
//! before it leaves the site exactly as it was. After the switch, a release
//! that fails the watch is switched back from at once. When an answer from
//! the proxy is lost, what happens next is decided by what `/v1/status` says
//! now, never by what the lost call was meant to do.

use crate::error::{Failure, Result};
use crate::faults;
use crate::health::{self, HealthSettings};
use crate::output::secs;
use crate::plan::{Cutover, OnUnhealthy, Plan};
use crate::proxy::PROXY_RESTART_WAIT;
use crate::releases::{ContainerInfo, Releases, FAILED_SUFFIX};
use crate::report::Report;
use crate::watch::{DrainResult, WatchEnd};
use serde_json::json;
use std::time::Instant;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Waits for a signal; never completes when the handler could not be set up.
async fn recv(sig: &mut std::io::Result<Signal>) {
    match sig {
        Ok(s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

impl Cutover<'_> {
    pub fn health_settings(&self, path: &str, restarts_before: i64) -> HealthSettings {
        HealthSettings {
            restarts_before,
            path: path.to_string(),
            interval: self.switch.health_interval,
            timeout: self.switch.health_timeout,
            deadline: self.switch.deploy_timeout,
            successes: self.switch.health_successes.max(1),
            healthy_for: self.switch.healthy_for,
        }
    }

    pub async fn run(&self, plan: &Plan<'_>, report: &mut Report) -> Result<()> {
        let addr = self.become_stable(plan, report).await?;
        let t = Instant::now();
        let end = self.switch_and_watch(plan, &addr).await;
        report.step("switch_and_watch", t.elapsed());
        let drain = match end {
            WatchEnd::Stable {
                drain,
                checks,
                watched,
            } => {
                report.set("backend", addr.as_str());
                report.set(
                    "watch",
                    json!({"checks": checks, "watched_ms": crate::output::ms(watched)}),
                );
                drain
            }
            WatchEnd::Failed { reason, exit_code } => {
                return Err(self
                    .switch_back(plan, &addr, reason, exit_code, report)
                    .await);
            }
            WatchEnd::NotSwitched(failure) => {
                self.out.step(format!(
                    "the proxy did not switch to {}: {failure}",
                    plan.new
                ));
                self.give_up(plan.new, plan.on_unhealthy).await;
                return Err(failure);
            }
            WatchEnd::Unknown(failure) => {
                self.out.step(format!(
                    "cannot tell whether the proxy switched to {}: {failure}; \
                     both releases are left running. Run `handoff status` to see what is live.",
                    plan.new
                ));
                return Err(failure);
            }
        };
        self.retire(plan, drain, report).await
    }

    /// Health-checks until stable, then sets the restart policy for serving.
    /// Returns the new release's backend address.
    async fn become_stable(&self, plan: &Plan<'_>, report: &mut Report) -> Result<String> {
        let settings = self.health_settings(plan.health_path, plan.restarts_before);
        let t = Instant::now();
        // A cancelled CI job (SIGTERM/SIGINT) before the switch must not leave
        // a half-deployed container behind. From the switch on, handoff
        // finishes the watch, the drain and the stop, which timeouts bound.
        let mut sigterm = signal(SignalKind::terminate());
        let mut sigint = signal(SignalKind::interrupt());
        let waited = tokio::select! {
            r = health::wait_healthy(self.engine, plan.new, &settings, self.out) => r,
            _ = recv(&mut sigterm) => Err(Failure::Interrupted { signal: "SIGTERM", code: 143 }),
            _ = recv(&mut sigint) => Err(Failure::Interrupted { signal: "SIGINT", code: 130 }),
        };
        report.step("health", t.elapsed());
        let ready = match waited {
            Ok(_) => self.engine.keep_running(plan.new, true).await,
            Err(failure) => Err(failure),
        };
        if let Err(failure) = ready {
            self.give_up(plan.new, plan.on_unhealthy).await;
            return Err(failure);
        }
        let info = self.engine.inspect(plan.new).await?.ok_or_else(|| {
            Failure::Docker(format!(
                "container {} disappeared after becoming healthy",
                plan.new
            ))
        })?;
        let addr = info.backend().ok_or_else(|| {
            Failure::Docker(format!(
                "container {} has no app port published on 127.0.0.1",
                plan.new
            ))
        })?;
        self.out.step(format!(
            "switching the proxy to {} at {addr}; watching it for {}{}",
            plan.new,
            secs(self.switch.watch),
            match plan.old {
                Some(old) if old.running => format!(", {} keeps running until then", old.name),
                _ => String::new(),
            }
        ));
        Ok(addr)
    }

    /// The new release failed its watch: back to the previous one, then the
    /// new one is drained, stopped and marked failed.
    async fn switch_back(
        &self,
        plan: &Plan<'_>,
        addr: &str,
        reason: String,
        exit_code: Option<i64>,
        report: &mut Report,
    ) -> Failure {
        self.out
            .step(format!("{} failed the watch: {reason}", plan.new));
        let old = plan.old.filter(|o| o.running && !o.restarting);
        let Some(old_addr) = old.and_then(ContainerInfo::backend) else {
            return Failure::Unhealthy {
                message: format!(
                    "{} failed the watch ({reason}) and there is no running previous release to \
                     switch back to; it stays live",
                    plan.new
                ),
                exit_code,
            };
        };
        let old_name = old.map_or("?", |o| o.name.as_str());
        self.out.step(format!(
            "switching back to {old_name} at {old_addr}; draining {}",
            plan.new
        ));
        let back = match self
            .proxy
            .switch_back(&old_addr, self.switch.drain_timeout)
            .await
        {
            Ok(_) => true,
            // Lost answer: what the proxy routes to now decides.
            Err(_) => self
                .proxy
                .status_within(PROXY_RESTART_WAIT)
                .await
                .is_ok_and(|s| s.backend.as_deref() == Some(old_addr.as_str())),
        };
        if !back {
            return Failure::Proxy(format!(
                "{} failed the watch ({reason}) and switching back to {old_name} failed; \
                 run `handoff status --name APP` and `handoff rollback`",
                plan.new
            ));
        }
        report.set("backend", old_addr.as_str());
        report.set("switched_back_to", old_name);
        let _ = addr;
        // It went live, so its logs are evidence: kept stopped as -failed
        // (a rollback target stays a plain kept release).
        let how = match plan.on_unhealthy {
            OnUnhealthy::Stop => OnUnhealthy::Stop,
            _ => OnUnhealthy::KeepFailed,
        };
        self.give_up(plan.new, how).await;
        Failure::Unhealthy {
            message: format!(
                "{} failed within the watch after the switch ({reason}); switched back to {old_name}, \
                 which serves again",
                plan.new
            ),
            exit_code,
        }
    }

    /// After a good watch: the previous release (once drained) and any
    /// stray running release stop, and old stopped releases beyond `--keep`
    /// are removed. Nothing the proxy routes to or drains, for this app or
    /// any other, is touched.
    async fn retire(&self, plan: &Plan<'_>, drain: DrainResult, report: &mut Report) -> Result<()> {
        report.set("drain", drain.to_json());
        if let Some(lost) = &drain.lost {
            self.out.step(format!(
                "warning: the drain result was lost ({lost}); the proxy routes to {} \
                 (re-read from /v1/status)",
                plan.new
            ));
        }
        let mut cut = 0;
        if let Some(old) = plan.old {
            cut = self.stop_drained(old, "the previous release", true).await?;
        }
        for stray in &plan.strays {
            cut += self
                .stop_drained(stray, "a stray running release", false)
                .await?;
        }
        report.set("cut", cut);
        if let Some(keep) = plan.keep {
            self.prune(plan, keep).await;
        }
        if cut > 0 && self.switch.fail_on_cut {
            return Err(Failure::ClientsFailing(format!(
                "{} is live, but {cut} requests were cut when the old release stopped after the \
                 drain timed out (--fail-on-cut)",
                plan.new
            )));
        }
        Ok(())
    }

    /// Waits (bounded by the drain timeout) until the proxy no longer drains
    /// `c`, then stops it. Returns the requests it still had (cut).
    async fn stop_drained(&self, c: &ContainerInfo, what: &str, keep_note: bool) -> Result<u64> {
        let Some(now) = self.engine.inspect(&c.name).await? else {
            return Ok(0);
        };
        if !now.running && !now.restarting {
            return Ok(0);
        }
        let in_flight = match c.backend() {
            Some(b) => self.proxy.wait_drained(&b, self.switch.drain_timeout).await,
            None => 0,
        };
        // Another app of the proxy routing there (when the proxy can say)
        // keeps it running: stopping it would cut that app.
        let others = self.proxy.used_by_other_apps().await.unwrap_or_default();
        if let Some((app, b)) = others.iter().find(|(_, b)| Some(b) == c.backend().as_ref()) {
            self.out.step(format!(
                "leaving {what} {} running: the proxy's app {app} routes to it ({b})",
                c.name
            ));
            return Ok(0);
        }
        faults::hit("during-stop");
        self.out.step(format!(
            "stopping {what} {} (grace {}){}{}",
            c.name,
            secs(self.switch.stop_timeout),
            if keep_note {
                ", keeping it for rollback"
            } else {
                ""
            },
            if in_flight > 0 {
                format!("; {in_flight} requests still running there are cut")
            } else {
                String::new()
            }
        ));
        self.engine
            .stop(&c.name, self.switch.stop_timeout)
            .await
            .map_err(|e| Failure::Docker(format!("the new release is live, but {e}")))?;
        Ok(in_flight)
    }

    /// Removes stopped releases beyond `keep`; failures are only reported.
    async fn prune(&self, plan: &Plan<'_>, keep: usize) {
        // Removal cannot be undone: without the proxy's word, nothing goes.
        let (Ok(list), Ok(status), Ok(others)) = (
            self.engine.app_containers(plan.app).await,
            self.proxy.status().await,
            self.proxy.used_by_other_apps().await,
        ) else {
            return;
        };
        let releases = Releases::new(list, Some(&status));
        let spare: Vec<&str> = plan.old.iter().map(|o| o.name.as_str()).collect();
        for c in releases.prunable(keep, &spare) {
            let elsewhere = others.iter().any(|(_, b)| Some(b) == c.backend().as_ref());
            if c.name == plan.new || elsewhere {
                continue;
            }
            match self.engine.remove(&c.name).await {
                Ok(()) => self.out.step(format!(
                    "removed {} ({}): more than --keep {keep} stopped releases",
                    c.name,
                    c.image()
                )),
                Err(e) => self.out.step(format!("warning: {e}")),
            }
        }
    }

    /// Prints the release's last logs and removes, stops or marks it failed.
    pub async fn give_up(&self, name: &str, on_unhealthy: OnUnhealthy) {
        let lines = self.engine.logs_tail(name, 50).await;
        if lines.is_empty() {
            self.out.step(format!("{name} printed no logs"));
        } else {
            self.out.block(
                &format!("last {} log lines of {name}:", lines.len()),
                &lines,
            );
        }
        let result = match on_unhealthy {
            OnUnhealthy::Remove => self
                .engine
                .remove(name)
                .await
                .map(|()| "removed".to_string()),
            OnUnhealthy::Stop => self
                .engine
                .stop(name, self.switch.stop_timeout)
                .await
                .map(|()| "stopped".to_string()),
            OnUnhealthy::KeepFailed => {
                let failed = format!("{name}{FAILED_SUFFIX}");
                match self.engine.stop(name, self.switch.stop_timeout).await {
                    Ok(()) => self
                        .engine
                        .rename(name, &failed)
                        .await
                        .map(|()| format!("stopped and kept as {failed}")),
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(done) => self
                .out
                .step(format!("{name} {done}; the previous release is untouched")),
            Err(e) => self.out.step(format!("cleaning up {name} failed: {e}")),
        }
    }
}
