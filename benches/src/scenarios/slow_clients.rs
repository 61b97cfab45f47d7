//! `slow-clients`: slowhttptest's slow-body (`-B`) and slow-read (`-X`)
//! attacks against handoff-proxy and nginx in front of the same backend,
//! counting the backend connections each proxy holds.
//!
//! A backend with a fixed pool of workers (threads, processes) runs dry when
//! a proxy hands every slow client a backend connection of its own: the
//! point of request and response buffering. Each second the harness counts
//! the backend's established connections (from `/proc/net/tcp`, the
//! backend's listening port as the local side) and sends one probe request
//! from a normal client on a new connection, recording its status and
//! latency. Slow bodies go to `/upload`, which reads its body before
//! answering (a backend that answers without reading would end the
//! exchange itself, and hide the problem).

use super::{blocking, unavailable, Common};
use crate::procs::{find_tool, Backend, Proc, TempDir};
use crate::report::{ms, table, Machine};
use crate::servers::{missing_nginx, HandoffProxy, Nginx};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, clap::Args)]
pub struct SlowArgs {
    /// Connections slowhttptest opens in each run (smoke: 50).
    #[arg(long, default_value_t = 500)]
    pub conns: u32,
    /// Connections slowhttptest opens per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Length of each run, in seconds (smoke: 3).
    #[arg(long, default_value_t = 30)]
    pub seconds: u32,
    /// Size of the answer slow readers ask for (`/bytes?n=N`); the default
    /// is below handoff-proxy's default --response-buffer (64 KiB).
    #[arg(long, default_value_t = 32 * 1024)]
    pub read_size: u32,
    /// Proxies to run against: handoff, nginx.
    #[arg(long, value_delimiter = ',', default_values_t = ["handoff".to_string(), "nginx".to_string()])]
    pub targets: Vec<String>,
}

impl Default for SlowArgs {
    fn default() -> Self {
        Self {
            conns: 500,
            rate: 200,
            seconds: 30,
            read_size: 32 * 1024,
            targets: vec!["handoff".into(), "nginx".into()],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlowReport {
    pub machine: Machine,
    pub conns: u32,
    pub rate: u32,
    pub seconds: u32,
    pub read_size: u32,
    pub runs: Vec<Run>,
    pub notes: Vec<String>,
}

/// One proxy under one attack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub target: String,
    /// `-B` (slow body) or `-X` (slow read).
    pub mode: String,
    /// The backend's established connections, one count per second.
    pub backend_conns: Vec<u32>,
    /// The proxy's established client connections, at the same moments:
    /// the attack's connections plus the probe's.
    pub client_conns: Vec<u32>,
    pub probes: Vec<Probe>,
    /// slowhttptest's own view: the most connections it held at once, and
    /// "NO" if its probe ever found the service unavailable.
    pub attacker_connected: Option<u32>,
    pub attacker_saw_service: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    /// `None`: no answer within the probe timeout, or a broken connection.
    pub status: Option<u16>,
    pub ms: f64,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(common: &Common, args: &SlowArgs) -> Result<SlowReport> {
    let mut args = args.clone();
    if common.smoke {
        args.conns = args.conns.min(50);
        args.seconds = args.seconds.min(3);
    }
    let mut report = SlowReport {
        machine: Machine::probe(),
        conns: args.conns,
        rate: args.rate,
        seconds: args.seconds,
        read_size: args.read_size,
        runs: Vec::new(),
        notes: Vec::new(),
    };
    let Some(tool) = find_tool("slowhttptest") else {
        let why =
            unavailable("slowhttptest not found on PATH (apt-get install -y slowhttptest)".into())?;
        report.notes.push(why);
        return Ok(report);
    };
    for target in &args.targets {
        if target == "nginx" && find_tool("nginx").is_none() {
            report.notes.push(unavailable(missing_nginx())?);
            continue;
        }
        for mode in ["-B", "-X"] {
            let run = run_one(&tool, target, mode, &args).await?;
            report.runs.push(run);
        }
    }
    Ok(report)
}

/// Starts a fresh backend and proxy, runs slowhttptest against the proxy,
/// and samples once a second until it exits.
async fn run_one(tool: &std::path::Path, target: &str, mode: &str, args: &SlowArgs) -> Result<Run> {
    let backend = blocking(|| Backend::start(1, 0)).await?;
    let backend_addr = backend.addr;
    let (front_addr, front): (SocketAddr, Box<dyn std::any::Any + Send>) = match target {
        "handoff" => {
            let p = blocking(move || HandoffProxy::start(backend_addr, "5s")).await?;
            (p.addr, Box::new(p))
        }
        "nginx" => {
            let n = blocking(move || Nginx::start(backend_addr.port())).await?;
            (n.addr, Box::new(n))
        }
        other => bail!("unknown slow-clients target {other:?} (handoff or nginx)"),
    };
    let dir = TempDir::new("slowhttptest")?;
    let out_path = dir.path().join("slowhttptest.out");
    let mut cmd = Command::new(tool);
    cmd.args(attack_args(mode, front_addr, args))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(Stdio::null());
    let mut attacker = Proc::spawn("slowhttptest", &mut cmd)?;
    tracing::info!(
        target,
        mode,
        conns = args.conns,
        seconds = args.seconds,
        "slow-clients run"
    );

    let start = Instant::now();
    // slowhttptest stops by itself after its -l seconds; this is the bound
    // if it does not.
    let bound = Duration::from_secs(u64::from(args.seconds) + 15);
    let mut backend_conns = Vec::new();
    let mut client_conns = Vec::new();
    let mut probes = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ports = (backend_addr.port(), front_addr.port());
        let (at_backend, at_front) =
            blocking(move || Ok((established_to(ports.0), established_to(ports.1)))).await?;
        backend_conns.push(at_backend);
        client_conns.push(at_front);
        probes.push(tokio::spawn(probe(front_addr)));
        if attacker.check_running().is_err() || start.elapsed() > bound {
            break;
        }
    }
    attacker.terminate();
    let mut done = Vec::new();
    for p in probes {
        done.push(p.await?);
    }
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let (connected, available) = last_status(&text);
    drop(front);
    drop(backend);
    Ok(Run {
        target: target.to_string(),
        mode: mode.to_string(),
        backend_conns,
        client_conns,
        probes: done,
        attacker_connected: connected,
        attacker_saw_service: available,
    })
}

fn attack_args(mode: &str, front: SocketAddr, a: &SlowArgs) -> Vec<String> {
    let common = [
        "-c".to_string(),
        a.conns.to_string(),
        "-r".into(),
        a.rate.to_string(),
        "-l".into(),
        a.seconds.to_string(),
        "-p".into(),
        "3".into(),
    ];
    let specific: Vec<String> = match mode {
        // 8 KiB bodies, up to 10 bytes every 10 s: none ever completes;
        // `/upload` reads its body, as an app's form handler would.
        "-B" => [
            "-B",
            "-t",
            "POST",
            "-s",
            "8192",
            "-i",
            "10",
            "-x",
            "10",
            "-u",
            &format!("http://{front}/upload"),
        ]
        .map(String::from)
        .to_vec(),
        // Three requests per connection, a 512-1024 byte receive window,
        // 32 bytes read every 5 s.
        _ => [
            "-X",
            "-k",
            "3",
            "-w",
            "512",
            "-y",
            "1024",
            "-n",
            "5",
            "-z",
            "32",
            "-u",
            &format!("http://{front}/bytes?n={}", a.read_size),
        ]
        .map(String::from)
        .to_vec(),
    };
    specific.into_iter().chain(common).collect()
}

/// Established TCP connections whose local side is `port` on this host:
/// the backend's accepted connections.
fn established_to(port: u16) -> u32 {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| {
                    let mut fields = line.split_whitespace();
                    let local = fields.nth(1).unwrap_or("");
                    let state = fields.nth(1).unwrap_or("");
                    let local_port = local
                        .rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok());
                    state == "01" && local_port == Some(port)
                })
                .count() as u32
        })
        .sum()
}

/// One GET on a new connection, as a normal client would send it.
async fn probe(addr: SocketAddr) -> Probe {
    let start = Instant::now();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let line = String::from_utf8_lossy(&out[..out.len().min(32)]).into_owned();
        line.split_whitespace().nth(1)?.parse::<u16>().ok()
    };
    let status = tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .ok()
        .flatten();
    Probe {
        status,
        ms: start.elapsed().as_secs_f64() * 1000.0,
    }
}

/// The most connections slowhttptest held at once, and whether its own
/// probe ever found the service unavailable ("NO") or always did ("YES"),
/// from its coloured console status reports.
fn last_status(text: &str) -> (Option<u32>, Option<String>) {
    let plain = strip_ansi(text);
    let values = |key: &'static str| {
        plain
            .lines()
            .filter_map(move |l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let connected = values("connected:").filter_map(|v| v.parse().ok()).max();
    let verdicts: Vec<String> = values("service available:").collect();
    let verdict = if verdicts.is_empty() {
        None
    } else if verdicts.iter().any(|v| v == "NO") {
        Some("NO".to_string())
    } else {
        Some("YES".to_string())
    };
    (connected, verdict)
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn markdown(r: &SlowReport) -> String {
    let rows: Vec<Vec<String>> = r
        .runs
        .iter()
        .map(|run| {
            let n = run.backend_conns.len().max(1) as f64;
            let max = run.backend_conns.iter().max().copied().unwrap_or(0);
            let mean = run.backend_conns.iter().sum::<u32>() as f64 / n;
            let ok = run.probes.iter().filter(|p| p.status == Some(200)).count();
            let mut lat: Vec<f64> = run.probes.iter().map(|p| p.ms).collect();
            lat.sort_by(f64::total_cmp);
            let p50 = lat.get(lat.len() / 2).copied().unwrap_or(0.0);
            let worst = lat.last().copied().unwrap_or(0.0);
            vec![
                run.target.clone(),
                match run.mode.as_str() {
                    "-B" => "-B slow body".into(),
                    _ => "-X slow read".into(),
                },
                run.client_conns
                    .iter()
                    .max()
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
                max.to_string(),
                format!("{mean:.1}"),
                run.backend_conns.last().copied().unwrap_or(0).to_string(),
                format!("{ok}/{}", run.probes.len()),
                ms(p50),
                ms(worst),
                format!(
                    "{} connected, available {}",
                    run.attacker_connected.map_or("?".into(), |c| c.to_string()),
                    run.attacker_saw_service.as_deref().unwrap_or("?")
                ),
            ]
        })
        .collect();
    let mut md = format!(
        "### slow-clients\n\n{}\n\nslowhttptest {} connections at {}/s for {} s per run; \
         slow readers ask for {} bytes. Backend connections: the backend's established \
         connections, counted each second. Probe: one GET / per second on a new connection.\n\n",
        r.machine.markdown(),
        r.conns,
        r.rate,
        r.seconds,
        r.read_size
    );
    md.push_str(&table(
        &[
            "proxy",
            "attack",
            "client conns max",
            "backend conns max",
            "mean",
            "at end",
            "probe 200s",
            "probe p50 ms",
            "probe max ms",
            "slowhttptest: most connected, service available",
        ],
        &rows,
    ));
    for note in &r.notes {
        md.push_str(&format!("\n- {note}"));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowhttptest_status_is_read_through_its_colours() {
        let text = "\u{1b}[1;32mconnected:   \u{1b}[1;32m        7\n\
                    \u{1b}[1;32mservice available:\u{1b}[1;32m   \u{1b}[1;32mYES\u{1b}[0m\n\
                    \u{1b}[1;32mconnected:   \u{1b}[1;32m        20\n\
                    \u{1b}[1;32mservice available:\u{1b}[1;32m   \u{1b}[1;31mNO\u{1b}[0m\n";
        assert_eq!(last_status(text), (Some(20), Some("NO".into())));
        assert_eq!(
            last_status("connected: 3\nservice available: YES\n")
                .1
                .unwrap(),
            "YES"
        );
    }
}
