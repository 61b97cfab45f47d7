//! Waiting for a new container to become healthy, and noticing at once when
//! it never will (it exited or is being restarted).
//!
//! The readiness rule: healthy means *stable*, not "answered once". An app
//! that listens at once and crashes a second later used to pass its first
//! check and go live. Now it must pass `successes` consecutive checks spread
//! over at least `healthy_for`, while Docker reports it running with no
//! restart in between (the same idea as Kubernetes' `successThreshold` and
//! HAProxy's `rise`, with a minimum duration so a fast check interval cannot
//! squeeze the window to nothing). A failed check resets the streak; an exit
//! or restart fails the wait at once.

use crate::docker::Engine;
use crate::error::{Failure, Result};
use crate::output::{secs, Output};
use std::time::{Duration, Instant};

/// How often the container's state is looked at between health tries, so a
/// crash is reported within this, not at the next try or the deadline.
pub const STATE_POLL: Duration = Duration::from_millis(250);

pub struct HealthSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub deadline: Duration,
    /// Consecutive successful checks needed.
    pub successes: u32,
    /// The streak must span at least this long.
    pub healthy_for: Duration,
    /// The container's restart count when the wait began; any increase
    /// means it crashed.
    pub restarts_before: i64,
}

/// The verdict on one answer: 2xx, and when the body is JSON with a
/// `status`, that status is `UP` in any case (Spring Actuator style).
pub fn judge(code: u16, body: &[u8]) -> std::result::Result<(), String> {
    let snippet = || {
        let text = String::from_utf8_lossy(&body[..body.len().min(120)])
            .trim()
            .to_string();
        if text.is_empty() {
            String::new()
        } else {
            format!(" {text}")
        }
    };
    if !(200..300).contains(&code) {
        return Err(format!("HTTP {code}{}", snippet()));
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(status) = map.get("status") {
            let up = status
                .as_str()
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("up"));
            if !up {
                return Err(format!("HTTP {code} but status is {status}"));
            }
        }
    }
    Ok(())
}

/// The pause after try number `tries` (0-based): 100 ms, 200 ms, 400 ms,
/// ... up to `interval`, so an app that starts in 300 ms goes live in about
/// that, not at the first full interval.
fn try_gap(tries: u32, interval: Duration) -> Duration {
    Duration::from_millis(100u64 << tries.min(16)).min(interval)
}

pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // A fresh connection per try: a pooled one could hide a dead listener.
        .pool_max_idle_per_host(0)
        .build()
        .expect("a plain-HTTP client without TLS always builds")
}

/// One health try against `http://ADDR/PATH`.
pub async fn probe(
    client: &reqwest::Client,
    addr: &str,
    path: &str,
) -> std::result::Result<String, String> {
    let url = format!("http://{addr}{path}");
    let resp = client.get(&url).send().await.map_err(|e| short_error(&e))?;
    let code = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| short_error(&e))?;
    judge(code, &body).map(|()| format!("HTTP {code}"))
}

fn short_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    // reqwest's own text repeats the URL; the innermost cause says what happened.
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if e.is_connect() {
        format!("cannot connect: {text}")
    } else {
        text
    }
}

fn waiting(container: &str, started: Instant, tries: u32, streak: u32, last: &str) -> String {
    format!(
        "waiting for {container} to become healthy ({}, {tries} tries, {streak} in a row): {last}",
        secs(started.elapsed())
    )
}

/// In CI (no terminal) a waiting step prints a plain line at least this often.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Polls until healthy, the deadline, or the container stops running.
/// Returns how long it took.
pub async fn wait_healthy(
    engine: &Engine,
    container: &str,
    settings: &HealthSettings,
    out: &Output,
) -> Result<Duration> {
    let started = Instant::now();
    let client = client(settings.timeout);
    let mut next_try = Instant::now();
    let mut last = String::from("no answer yet");
    let mut last_logged = Instant::now();
    let mut shown = String::new();
    let mut tries = 0u32;
    // Consecutive successes and when the first of them answered.
    let mut streak = 0u32;
    let mut streak_since = Instant::now();
    loop {
        let info = engine
            .inspect(container)
            .await?
            .ok_or_else(|| Failure::Unhealthy {
                message: format!(
                    "container {container} disappeared while waiting for it to become healthy"
                ),
                exit_code: None,
            })?;
        if !info.running || info.restarting || info.restart_count > settings.restarts_before {
            let code = info.exit_code;
            let how = if info.restart_count > settings.restarts_before || info.restarting {
                "exited and is being restarted"
            } else {
                "exited"
            };
            let when = if streak > 0 {
                format!("after {streak} good checks, before it was stable")
            } else {
                "before becoming healthy".to_string()
            };
            return Err(Failure::Unhealthy {
                message: format!(
                    "container {container} {how} after {} with exit code {} {when}",
                    secs(started.elapsed()),
                    code.map_or("unknown".into(), |c| c.to_string())
                ),
                exit_code: code,
            });
        }
        if Instant::now() >= next_try {
            next_try = Instant::now() + try_gap(tries, settings.interval);
            tries += 1;
            let result = match info.health_addr() {
                Some(addr) => probe(&client, addr, &settings.path).await,
                None => Err("the health port is not published".into()),
            };
            match result {
                Ok(answer) => {
                    if streak == 0 {
                        streak_since = Instant::now();
                        crate::faults::hit("after-first-health");
                    }
                    streak += 1;
                    let stable_for = streak_since.elapsed();
                    if streak >= settings.successes && stable_for >= settings.healthy_for {
                        out.step(format!(
                            "{container} is healthy ({answer} on {}, {streak} in a row over {}, \
                             no restart) after {} and {tries} tries",
                            settings.path,
                            secs(stable_for),
                            secs(started.elapsed())
                        ));
                        return Ok(started.elapsed());
                    }
                    // Spread the remaining checks over what is left of the window.
                    let left = settings.healthy_for.saturating_sub(stable_for);
                    let needed = settings.successes.saturating_sub(streak).max(1);
                    next_try = Instant::now() + (left / needed).min(settings.interval);
                    last = format!("{answer}, stable for {}", secs(stable_for));
                }
                Err(why) => {
                    streak = 0;
                    last = why;
                }
            }
        }
        if tries > 0 {
            // A line when the answer changes and at least every LOG_EVERY in
            // CI; on a terminal the line is redrawn in place.
            let text = waiting(container, started, tries, streak, &last);
            let changed = text_changed(&mut shown, &last);
            let periodic = last_logged.elapsed() >= LOG_EVERY;
            if changed || periodic {
                last_logged = Instant::now();
            }
            out.progress(text, changed || periodic);
        }
        if started.elapsed() >= settings.deadline {
            let last = if streak > 0 {
                format!("{last}; {streak} in a row, not yet stable")
            } else {
                last
            };
            return Err(Failure::Unhealthy {
                message: format!(
                    "container {container} did not become healthy within {} ({tries} tries; last: {last})",
                    secs(settings.deadline)
                ),
                exit_code: None,
            });
        }
        let until_try = next_try.saturating_duration_since(Instant::now());
        let until_deadline = settings.deadline.saturating_sub(started.elapsed());
        tokio::time::sleep(
            STATE_POLL
                .min(until_try)
                .min(until_deadline)
                .max(Duration::from_millis(10)),
        )
        .await;
    }
}

/// True when the reason differs from the one last printed (ignoring the
/// "stable for" time, which changes on every success).
fn text_changed(shown: &mut String, last: &str) -> bool {
    let key = last.split(", stable for").next().unwrap_or(last);
    if key == shown {
        return false;
    }
    *shown = key.to_string();
    true
}

#[cfg(test)]
mod tests {
    use super::judge;
    use std::time::Duration;

    #[test]
    fn tries_start_fast_and_settle_at_the_interval() {
        let gaps: Vec<u128> = (0..6)
            .map(|n| super::try_gap(n, Duration::from_secs(1)).as_millis())
            .collect();
        assert_eq!(gaps, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            super::try_gap(0, Duration::from_millis(50)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn health_verdicts() {
        assert!(judge(200, br#"{"status":"UP"}"#).is_ok());
        assert!(judge(200, br#"{"status":"up","components":{}}"#).is_ok());
        assert!(judge(204, b"").is_ok());
        assert!(judge(200, b"OK").is_ok());
        assert!(judge(200, br#"{"healthy":true}"#).is_ok());
        assert!(judge(200, br#"{"status":"DOWN"}"#)
            .unwrap_err()
            .contains("DOWN"));
        assert!(judge(200, br#"{"status":"UPPISH"}"#).is_err());
        assert!(judge(200, br#"{"status":1}"#).is_err());
        assert!(judge(503, br#"{"status":"UP"}"#)
            .unwrap_err()
            .contains("503"));
        assert!(judge(301, b"").is_err());
    }
}
