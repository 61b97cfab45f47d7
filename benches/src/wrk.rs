//! wrk, the independent load generator the harness's own figures are checked
//! against: a harness that flatters the proxy is worse than none.

use crate::procs::find_tool;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WrkFigures {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Socket errors plus non-2xx/3xx responses.
    pub errors: u64,
}

pub fn available() -> bool {
    find_tool("wrk").is_some()
}

/// Runs `wrk -t2 -cN -dS --latency` against `/` and parses its summary.
/// Blocking; bounded by `duration` plus wrk's own 2 s socket timeout.
pub fn run(target: SocketAddr, conns: usize, duration: Duration) -> Result<WrkFigures> {
    let bin = find_tool("wrk").ok_or_else(|| anyhow!("wrk not found (apt-get install -y wrk)"))?;
    let secs = duration.as_secs().max(1);
    let out = Command::new(bin)
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            "--timeout",
            "5s",
        ])
        .arg(format!("http://{target}/"))
        .output()?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn parse(text: &str) -> Result<WrkFigures> {
    let mut f = WrkFigures::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => f.rps = v.parse()?,
            ["50%", v] => f.p50_ms = duration_ms(v)?,
            ["99%", v] => f.p99_ms = duration_ms(v)?,
            [n, "requests", "in", ..] => f.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => f.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                f.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    if f.rps == 0.0 {
        bail!("no Requests/sec in wrk output:\n{text}");
    }
    Ok(f)
}

fn duration_ms(v: &str) -> Result<f64> {
    let split = v
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| anyhow!("no unit in {v:?}"))?;
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse()?;
    Ok(match unit {
        "us" => num / 1000.0,
        "ms" => num,
        "s" => num * 1000.0,
        "m" => num * 60_000.0,
        _ => bail!("unknown unit in {v:?}"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_wrk_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/\n  2 threads and 64 connections\n  Latency Distribution\n     50%  251.00us\n     75%  400.00us\n     99%    1.23ms\n  123456 requests in 5.00s, 10.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\nRequests/sec:  24691.20\nTransfer/sec:      2.00MB\n";
        let f = super::parse(text).unwrap();
        assert_eq!(f.rps, 24691.2);
        assert_eq!(f.requests, 123456);
        assert_eq!(f.errors, 3);
        assert!((f.p50_ms - 0.251).abs() < 1e-9);
        assert!((f.p99_ms - 1.23).abs() < 1e-9);
    }
}
