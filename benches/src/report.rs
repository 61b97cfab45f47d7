//! Where results go: JSON files under `target/bench/`, Markdown on stdout, and
//! a description of the machine the figures came from.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The machine a run happened on; figures mean nothing without it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    /// 1-minute load average when the run started: other work on the box.
    pub loadavg_at_start: f64,
    pub started_utc: String,
    pub git_commit: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let loadavg = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu,
            kernel: run_line("uname", &["-r"]),
            loadavg_at_start: loadavg,
            started_utc: run_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            git_commit: run_line("git", &["rev-parse", "--short", "HEAD"]),
        }
    }

    pub fn markdown(&self) -> String {
        format!(
            "machine: {} x {} | kernel {} | load avg {:.2} at start | {} | commit {}",
            self.nproc,
            self.cpu,
            self.kernel,
            self.loadavg_at_start,
            self.started_utc,
            self.git_commit
        )
    }
}

fn run_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `target/bench` of the workspace this binary was built from, unless
/// `--out` says otherwise.
pub fn default_out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("bench")
}

/// Writes `<scenario>-latest.json` (what the chart reads) and a timestamped
/// copy so earlier runs are kept.
pub fn write_json<T: Serialize>(out: &Path, scenario: &str, value: &T) -> Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let text = serde_json::to_string_pretty(value)?;
    let stamp = run_line("date", &["-u", "+%Y%m%dT%H%M%SZ"]);
    std::fs::write(out.join(format!("{scenario}-{stamp}.json")), &text)?;
    let latest = out.join(format!("{scenario}-latest.json"));
    std::fs::write(&latest, &text)?;
    Ok(latest)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(out: &Path, scenario: &str) -> Result<T> {
    let path = out.join(format!("{scenario}-latest.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A Markdown table from a header and rows of cells.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for row in rows {
        s.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    s
}

pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn errors(e: &std::collections::BTreeMap<String, u64>) -> String {
    if e.is_empty() {
        "0".into()
    } else {
        e.iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
