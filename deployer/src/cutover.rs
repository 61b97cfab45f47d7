//! The part deploy and rollback share: a started container becomes healthy,
//! the proxy switches to it and drains, and the old container stops.
//! Until the switch nothing a user can see has changed, so every failure
//! before it leaves the site exactly as it was.

use crate::cli::SwitchArgs;
use crate::docker::Engine;
use crate::error::{Failure, Result};
use crate::health::{self, HealthSettings};
use crate::output::{ms, secs, Output};
use crate::proxy::{Proxy, SwitchOutcome};
use crate::slots::ContainerInfo;
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};
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

/// Collects what happened, for the summary line and `--json`.
#[derive(Debug, Default)]
pub struct Report {
    pub fields: Map<String, Value>,
    /// In the order they ran.
    steps: Vec<(String, u64)>,
}

impl Report {
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.into(), value.into());
    }

    pub fn step(&mut self, name: &str, took: Duration) {
        self.steps.push((name.into(), ms(took)));
    }

    /// The human-readable result of a deploy or rollback that went through.
    pub fn success_text(&self) -> String {
        let f = &self.fields;
        let text = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        let verb = if text("command") == "rollback" {
            "rolled back to"
        } else {
            "deployed"
        };
        let mut lines = vec![format!(
            "{verb} {}: {} is live at {}",
            text("image"),
            text("container"),
            text("backend")
        )];
        if let Some(prev) = f.get("previous").filter(|p| p.is_object()) {
            lines.push(format!(
                "previous: {} ({}), stopped and kept for rollback",
                prev["container"].as_str().unwrap_or("?"),
                prev["image"].as_str().unwrap_or("?")
            ));
        }
        if let Some(drain) = f.get("drain") {
            let took = secs(Duration::from_millis(
                drain["drain_ms"].as_u64().unwrap_or(0),
            ));
            lines.push(match drain["drained"].as_bool() {
                Some(true) => format!("drain: all old requests finished ({took})"),
                Some(false) => format!(
                    "drain: timed out after {took} with {} requests in flight",
                    drain["in_flight"].as_u64().unwrap_or(0)
                ),
                None => "drain: result unknown".to_string(),
            });
        }
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(k, v)| {
                format!(
                    "{} {}",
                    k.replace('_', " "),
                    secs(Duration::from_millis(*v))
                )
            })
            .collect();
        lines.push(format!("steps: {}", steps.join(", ")));
        lines.join("\n")
    }

    pub fn into_json(mut self, failure: Option<&Failure>) -> Value {
        let mut out = Map::new();
        out.insert("ok".into(), json!(failure.is_none()));
        out.insert(
            "exit_code".into(),
            json!(failure.map_or(0, Failure::exit_code)),
        );
        if let Some(f) = failure {
            out.insert("error".into(), json!(f.to_string()));
            out.insert("error_kind".into(), json!(f.kind()));
            if let Failure::Unhealthy {
                exit_code: Some(code),
                ..
            } = f
            {
                out.insert("container_exit_code".into(), json!(code));
            }
        }
        out.append(&mut self.fields);
        let steps = self.steps.into_iter().map(|(k, v)| (k, json!(v))).collect();
        out.insert("steps_ms".into(), Value::Object(steps));
        Value::Object(out)
    }
}

/// What to do with a container that never became healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnhealthy {
    Remove,
    Stop,
}

pub struct Cutover<'a> {
    pub engine: &'a Engine,
    pub proxy: &'a Proxy,
    pub out: &'a Output,
    pub switch: &'a SwitchArgs,
}

impl Cutover<'_> {
    pub fn health_settings(&self, path: &str, restarts_before: i64) -> HealthSettings {
        HealthSettings {
            restarts_before,
            path: path.to_string(),
            interval: self.switch.health_interval,
            timeout: self.switch.health_timeout,
            deadline: self.switch.deploy_timeout,
        }
    }

    /// Runs the cutover to the running container `new`; `old` is the live
    /// container to stop afterwards, if any.
    pub async fn run(
        &self,
        new: &str,
        health_path: &str,
        restarts_before: i64,
        old: Option<&ContainerInfo>,
        on_unhealthy: OnUnhealthy,
        report: &mut Report,
    ) -> Result<()> {
        let settings = self.health_settings(health_path, restarts_before);
        let t = Instant::now();
        // A cancelled CI job (SIGTERM/SIGINT) before the switch must not leave
        // a half-deployed container behind. From here on the signals are
        // caught: after the switch, handoff finishes the drain and the stop.
        let mut sigterm = signal(SignalKind::terminate());
        let mut sigint = signal(SignalKind::interrupt());
        let waited = tokio::select! {
            r = health::wait_healthy(self.engine, new, &settings, self.out) => r,
            _ = recv(&mut sigterm) => Err(Failure::Interrupted { signal: "SIGTERM", code: 143 }),
            _ = recv(&mut sigint) => Err(Failure::Interrupted { signal: "SIGINT", code: 130 }),
        };
        report.step("health", t.elapsed());
        // Healthy: from now on it serves, so it must come back after a crash.
        let ready = match waited {
            Ok(_) => self.engine.keep_running(new, true).await,
            Err(failure) => Err(failure),
        };
        if let Err(failure) = ready {
            self.give_up(new, on_unhealthy).await;
            return Err(failure);
        }

        let info = self.engine.inspect(new).await?.ok_or_else(|| {
            Failure::Docker(format!(
                "container {new} disappeared after becoming healthy"
            ))
        })?;
        let addr = info
            .backend()
            .ok_or_else(|| {
                Failure::Docker(format!(
                    "container {new} has no app port published on 127.0.0.1"
                ))
            })?
            .to_string();
        self.out.step(format!(
            "switching the proxy to {new} at {addr} (drain timeout {})",
            secs(self.switch.drain_timeout)
        ));
        let t = Instant::now();
        let outcome = match self.switch_showing_drain(&addr).await {
            Ok(outcome) => outcome,
            Err(failure) => {
                self.out
                    .step(format!("the proxy did not switch: {failure}"));
                self.give_up(new, on_unhealthy).await;
                return Err(failure);
            }
        };
        report.step("switch_and_drain", t.elapsed());
        report.set("backend", addr.as_str());
        let mut warning = None;
        match outcome {
            SwitchOutcome::Switched(resp) => {
                report.set(
                    "drain",
                    json!({"drained": resp.drained, "in_flight": resp.in_flight, "drain_ms": resp.drain_ms,
                           "generation": resp.generation, "previous": resp.previous}),
                );
                if resp.drained {
                    self.out.step(format!(
                        "{new} is live; the previous backend drained in {}",
                        secs(Duration::from_millis(resp.drain_ms))
                    ));
                } else {
                    self.out.step(format!(
                        "{new} is live; the drain timed out after {} with {} requests still in flight",
                        secs(Duration::from_millis(resp.drain_ms)),
                        resp.in_flight
                    ));
                }
            }
            SwitchOutcome::SwitchedUnconfirmed(failure) => {
                self.out.step(format!(
                    "{new} is live, but the drain result was lost: {failure}"
                ));
                report.set(
                    "drain",
                    json!({"drained": Value::Null, "error": failure.to_string()}),
                );
                warning = Some(failure);
            }
        }

        if let Some(old) = old {
            self.out.step(format!(
                "stopping {} (grace {}), keeping it for rollback",
                old.name,
                secs(self.switch.stop_timeout)
            ));
            let t = Instant::now();
            if let Err(e) = self.engine.stop(&old.name, self.switch.stop_timeout).await {
                report.step("stop_old", t.elapsed());
                return Err(Failure::Docker(format!(
                    "{new} is live, but stopping the old container failed: {e}"
                )));
            }
            report.step("stop_old", t.elapsed());
        }
        match warning {
            // The switch happened and the old container was stopped; the
            // lost answer is still worth a non-zero exit, as the proxy did
            // not behave.
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// The switch call returns only after the drain, which can take as long
    /// as the slowest old request; meanwhile, show what is still in flight
    /// so a long drain does not look like a hang.
    async fn switch_showing_drain(&self, addr: &str) -> Result<SwitchOutcome> {
        let switch = self.proxy.switch(
            addr,
            self.switch.drain_timeout,
            self.switch.backend_protocol,
        );
        tokio::pin!(switch);
        let started = Instant::now();
        let mut last_logged = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                outcome = &mut switch => return outcome,
                _ = tick.tick() => {
                    if started.elapsed() < Duration::from_secs(1) {
                        continue;
                    }
                    let Ok(status) = self.proxy.status().await else { continue };
                    let in_flight: u64 = status.draining.iter().map(|d| d.in_flight).sum();
                    let periodic = last_logged.elapsed() >= Duration::from_secs(5);
                    if periodic {
                        last_logged = Instant::now();
                    }
                    self.out.progress(
                        format!(
                            "draining the previous backend ({}): {in_flight} requests still in flight",
                            secs(started.elapsed())
                        ),
                        periodic,
                    );
                }
            }
        }
    }

    /// Prints the container's last logs and removes or stops it.
    async fn give_up(&self, name: &str, on_unhealthy: OnUnhealthy) {
        let lines = self.engine.logs_tail(name, 50).await;
        if lines.is_empty() {
            self.out.step(format!("{name} printed no logs"));
        } else {
            self.out.block(
                &format!("last {} log lines of {name}:", lines.len()),
                &lines,
            );
        }
        let (doing, result) = match on_unhealthy {
            OnUnhealthy::Remove => ("removing", self.engine.remove(name).await),
            OnUnhealthy::Stop => (
                "stopping",
                self.engine.stop(name, self.switch.stop_timeout).await,
            ),
        };
        match result {
            Ok(()) => self.out.step(format!(
                "{doing} {name}; the proxy and the live container are unchanged"
            )),
            Err(e) => self.out.step(format!("{doing} {name} failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_for_people_and_scripts() {
        let mut report = Report::default();
        report.set("command", "deploy");
        report.set("image", "shop:2");
        report.set("container", "shop-green");
        report.set("backend", "127.0.0.1:4001");
        report.set(
            "previous",
            json!({"container": "shop-blue", "image": "shop:1"}),
        );
        report.set(
            "drain",
            json!({"drained": false, "in_flight": 2, "drain_ms": 30000}),
        );
        report.step("pull", Duration::from_millis(1200));
        report.step("health", Duration::from_millis(300));
        let text = report.success_text();
        assert!(
            text.starts_with("deployed shop:2: shop-green is live at 127.0.0.1:4001"),
            "{text}"
        );
        assert!(
            text.contains("previous: shop-blue (shop:1), stopped and kept for rollback"),
            "{text}"
        );
        assert!(
            text.contains("timed out after 30.0s with 2 requests in flight"),
            "{text}"
        );
        assert!(text.ends_with("steps: pull 1.2s, health 0.3s"), "{text}");

        let failure = Failure::Unhealthy {
            message: "it crashed".into(),
            exit_code: Some(3),
        };
        let json = report.into_json(Some(&failure));
        assert_eq!(json["ok"], false);
        assert_eq!(json["exit_code"], 2);
        assert_eq!(json["error_kind"], "unhealthy");
        assert_eq!(json["container_exit_code"], 3);
        assert_eq!(json["steps_ms"]["pull"], 1200);
    }
}
