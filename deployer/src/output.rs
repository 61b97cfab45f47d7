//! What the person or the CI log sees.
//!
//! Progress goes to stderr; the result (human text or, with `--json`, one JSON
//! line) goes to stdout, so `handoff deploy --json ... | tail -n1 | jq` works
//! whatever was logged before. On a terminal a waiting step redraws one line;
//! without one (CI) every line is a plain, timestamped log line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

pub struct Output {
    tty: bool,
    json: bool,
    started: Instant,
    /// A redrawable progress line is on screen and must be ended first.
    progress_shown: AtomicBool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            json,
            started: Instant::now(),
            progress_shown: AtomicBool::new(false),
        }
    }

    fn prefix(&self) -> String {
        if self.tty {
            format!("[{:>6.1}s]", self.started.elapsed().as_secs_f64())
        } else {
            humantime::format_rfc3339_millis(SystemTime::now()).to_string()
        }
    }

    fn end_progress(&self, err: &mut impl Write) {
        if self.progress_shown.swap(false, Ordering::Relaxed) {
            let _ = writeln!(err);
        }
    }

    /// One line of progress.
    pub fn step(&self, message: impl AsRef<str>) {
        let mut err = std::io::stderr().lock();
        self.end_progress(&mut err);
        let _ = writeln!(err, "{} {}", self.prefix(), message.as_ref());
    }

    /// A line about something still going on: redrawn in place on a
    /// terminal; in CI only printed when `log_anyway` (so a 2-minute wait
    /// does not produce 120 lines).
    pub fn progress(&self, message: impl AsRef<str>, log_anyway: bool) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{} {}", self.prefix(), message.as_ref());
            let _ = err.flush();
            self.progress_shown.store(true, Ordering::Relaxed);
        } else if log_anyway {
            let _ = writeln!(err, "{} {}", self.prefix(), message.as_ref());
        }
    }

    /// Lines quoted verbatim under a heading, e.g. a container's logs.
    pub fn block(&self, heading: &str, lines: &[String]) {
        let mut err = std::io::stderr().lock();
        self.end_progress(&mut err);
        let _ = writeln!(err, "{} {heading}", self.prefix());
        for line in lines {
            let _ = writeln!(err, "    | {line}");
        }
    }

    /// The final human-readable result, on stdout.
    pub fn result_text(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        self.end_progress(&mut err);
        drop(err);
        if !self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
        }
    }

    /// The machine-readable summary: the last line on stdout.
    pub fn result_json(&self, value: &serde_json::Value) {
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        }
    }
}

/// Milliseconds of a duration, for summaries.
pub fn ms(d: std::time::Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// `1.234s` for people.
pub fn secs(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
