//! `handoff-proxy --upgrade --background`: the whole upgrade as one command
//! that ends, for operators and for systemd's `ExecReload`.
//!
//! It starts the new process (this binary, the same arguments without
//! `--background`) in its own process group, relays its stdout, and returns
//! once the old process reported its drain: the outcome is printed, the new
//! process keeps running. If the new process exits before it is ready, the
//! old one never stopped serving; this command fails with the new one's
//! exit code and its reason (on stderr, which both share).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// What became of the upgrade; `exit_code` is this command's.
#[derive(Debug)]
pub struct Outcome {
    pub exit_code: i32,
    pub summary: String,
}

/// Runs the new process with `args` (this process's own, `--background`
/// removed) and waits as the module doc says.
pub fn run(args: Vec<OsString>) -> std::io::Result<Outcome> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(&exe)
        .args(args.iter().skip(1).filter(|a| *a != "--background"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Away from the terminal's process group: a Ctrl-C aimed at this
        // command must not reach the new proxy.
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let mut ready = None;
    let mut out = std::io::stdout();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let _ = writeln!(out, "{line}");
        if line.starts_with("handoff-proxy ready ") {
            ready = Some(line);
        } else if line.starts_with("handoff-proxy old-process ") {
            let ready = ready.unwrap_or_default();
            let summary = summarize(pid, &ready, &line);
            return Ok(Outcome {
                exit_code: 0,
                summary,
            });
        }
    }
    // Stdout closed: the new process is gone.
    let status = child.wait()?;
    let exit_code = status.code().unwrap_or(1).max(1);
    let summary = match ready {
        None => format!(
            "upgrade failed: the new handoff-proxy (pid {pid}) exited ({status}) before it was ready; the running one keeps serving"
        ),
        Some(_) => format!(
            "the new handoff-proxy (pid {pid}) took over, then exited ({status}) before the old one finished draining"
        ),
    };
    Ok(Outcome { exit_code, summary })
}

fn summarize(pid: u32, ready: &str, report: &str) -> String {
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("?")
            .to_owned()
    };
    format!(
        "upgraded: pid {} -> {pid} (generation {}); the old process finished {} connections: drained={} in_flight={} in {} ms",
        field(ready, "took_over_from"),
        field(ready, "generation"),
        field(ready, "old_connections"),
        field(report, "drained"),
        field(report, "in_flight"),
        field(report, "waited_ms"),
    )
}
