//! `handoff-proxy --upgrade --background`: the whole upgrade as one command
//! that ends, for operators and for systemd's `ExecReload`.
//!
//! It starts the new process (this binary, the same arguments without
//! `--background`) in its own process group, relays its stdout, and returns
//! once the old process reported its drain: the outcome is printed, the new
//! process keeps running. If the new process exits before it is ready, the
//! old one never stopped serving; this command fails (exit 1) with its
//! reason (on stderr, which both share).
//!
//! The new process is not this command's child: a short-lived intermediate
//! process (this binary again, [`spawn_step`]) starts it and exits at once,
//! and the new process waits until it has been adopted ([`wait_adopted`]),
//! by systemd under `systemctl reload`, before it takes anything over. So
//! when systemd hears `MAINPID=` its new main process is its own child:
//! one that is not is "alien" to systemd, which then does not wait for it
//! on stop (SIGTERM and SIGKILL at once, no drain).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set on the intermediate process: start the new one, then exit.
const SPAWN_ENV: &str = "HANDOFF_UPGRADE_SPAWN";
/// Set on the new process: the intermediate's pid, which it waits to outlive.
const INTERMEDIATE_ENV: &str = "HANDOFF_UPGRADE_INTERMEDIATE";
/// The intermediate's one line on stdout, read (not relayed) by [`run`].
const SPAWNED: &str = "handoff-proxy spawned pid=";

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
    let mut intermediate = Command::new(&exe)
        .args(args.iter().skip(1).filter(|a| *a != "--background"))
        .env(SPAWN_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Away from the terminal's process group: a Ctrl-C aimed at this
        // command must not reach the new proxy.
        .process_group(0)
        .spawn()?;
    let stdout = intermediate.stdout.take().expect("piped");
    let started = intermediate.wait()?;
    let mut lines = BufReader::new(stdout).lines();
    let spawned = lines.next().transpose()?;
    let Some(pid) = spawned
        .as_deref()
        .and_then(|l| l.strip_prefix(SPAWNED)?.parse::<u32>().ok())
    else {
        return Ok(Outcome {
            exit_code: 1,
            summary: format!(
                "upgrade failed: the new handoff-proxy could not be started ({started}); the running one keeps serving"
            ),
        });
    };
    let mut ready = None;
    let mut out = std::io::stdout();
    for line in lines {
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
    // Stdout closed: the new process is gone (not a child: no status).
    let summary = match ready {
        None => format!(
            "upgrade failed: the new handoff-proxy (pid {pid}) exited before it was ready; the running one keeps serving"
        ),
        Some(_) => format!(
            "the new handoff-proxy (pid {pid}) took over, then exited before the old one finished draining"
        ),
    };
    Ok(Outcome {
        exit_code: 1,
        summary,
    })
}

/// The intermediate step of [`run`]: when this process is it, starts the
/// new process (the same arguments, the same stdout and stderr), prints its
/// pid and exits, leaving it to be adopted by systemd (or init). Returns
/// at once otherwise. Call first thing in `main`.
pub fn spawn_step() {
    if std::env::var_os(SPAWN_ENV).is_none() {
        return;
    }
    let spawned = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env_remove(SPAWN_ENV)
            .env(INTERMEDIATE_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .spawn()
    });
    match spawned {
        Ok(child) => {
            println!("{SPAWNED}{}", child.id());
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("handoff-proxy: cannot start the new process: {e}");
            std::process::exit(1);
        }
    }
}

/// In a process started by [`spawn_step`]: waits (up to 10 s) until the
/// intermediate has exited and this one was adopted, so that systemd sees
/// its own child when it hears `MAINPID=`. Does nothing otherwise.
pub fn wait_adopted() {
    let Some(intermediate) = std::env::var(INTERMEDIATE_ENV)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::process::parent_id() == intermediate && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
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
