//! `steady`: the same load against the backend directly (the ceiling),
//! handoff-proxy, nginx and HAProxy, each proxy's throughput reported as a
//! ratio of the direct figure measured in the same round.

use super::{blocking, unavailable, Common};
use crate::loadgen::{self, LoadSpec, Mode, Stream};
use crate::procs::{cpu_ms_tree, find_tool, Backend};
use crate::report::{ms, Machine};
use crate::servers::{missing_nginx, HandoffProxy, Haproxy, MinProxy, Nginx};
use crate::stats::{self, summarize, Bucket, Summary};
use crate::wrk::{self, WrkFigures};
use anyhow::Result;
use http::HeaderValue;
use serde::{Deserialize, Serialize};

pub use super::steady_report::markdown;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct SteadyArgs {
    /// Connection counts to run (closed loop).
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    pub conns: Vec<usize>,
    /// Interleaved rounds over all targets; the table shows the median.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Only these targets (direct is always measured: it is the baseline);
    /// `hyper-min` adds a bare hyper proxy as a reference point.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "handoff,nginx,haproxy,hyper-min"
    )]
    pub targets: Vec<String>,
    /// Open-loop pass at this fraction of the slowest target's closed-loop
    /// throughput at the first connection count (0 skips it).
    #[arg(long, default_value_t = 0.5)]
    pub open_fraction: f64,
    /// Open-loop rate in req/s, instead of the fraction.
    #[arg(long)]
    pub open_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub target: String,
    pub conns: usize,
    pub mode: String,
    pub round: usize,
    pub summary: Summary,
    /// Throughput relative to `direct` in the same round, mode and conns.
    pub ratio: Option<f64>,
    /// Resident memory of the proxy (all processes) after the run, KiB.
    pub rss_kb: Option<u64>,
    /// CPU time per successful request, µs: of the proxy (all its
    /// processes), of the backend, and of the load generator.
    #[serde(default)]
    pub proxy_cpu_us: Option<f64>,
    #[serde(default)]
    pub backend_cpu_us: f64,
    #[serde(default)]
    pub loadgen_cpu_us: f64,
    /// Per-100 ms figures of open-loop runs, to see when a stall happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<Bucket>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkRow {
    pub target: String,
    pub conns: usize,
    pub harness: Summary,
    pub wrk: WrkFigures,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SteadyReport {
    pub machine: Machine,
    pub duration_s: f64,
    pub rows: Vec<Row>,
    pub wrk: Vec<WrkRow>,
    pub missing: Vec<String>,
}

pub(super) enum Server {
    Direct,
    Handoff(HandoffProxy),
    Nginx(Nginx),
    Haproxy(Haproxy),
    MinProxy(MinProxy),
}

pub(super) struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub server: Server,
}

/// One kind of request in a load: its `Host` (`None`: the target's
/// address) and path. A load's connections are dealt out over its kinds.
#[derive(Debug, Clone)]
pub(super) struct RequestKind {
    pub host: Option<HeaderValue>,
    pub path: String,
}

/// `steady`'s load: `GET /` with the target's address as `Host`.
fn plain() -> Vec<RequestKind> {
    vec![RequestKind {
        host: None,
        path: "/".into(),
    }]
}

/// The streams of one pass: `conns` connections dealt out over `kinds`
/// (the first kinds get one more when they do not divide evenly), an open
/// loop's rate shared in proportion.
fn streams(kinds: &[RequestKind], conns: usize, mode: Mode) -> Vec<Stream> {
    let n = kinds.len().max(1);
    kinds
        .iter()
        .enumerate()
        .map(|(k, kind)| {
            let share = conns / n + usize::from(k < conns % n);
            let mode = match mode {
                Mode::Closed => Mode::Closed,
                Mode::Open { rate } => Mode::Open {
                    rate: rate * share as f64 / conns.max(1) as f64,
                },
            };
            Stream {
                path: kind.path.clone(),
                conns: share,
                mode,
                long: false,
                host: kind.host.clone(),
                fresh_conn: false,
            }
        })
        .filter(|s| s.conns > 0)
        .collect()
}

impl Target {
    fn cpu_ms(&self) -> Option<f64> {
        match &self.server {
            Server::Direct => None,
            Server::Handoff(p) => Some(p.cpu_ms()),
            Server::Nginx(p) => Some(p.cpu_ms()),
            Server::Haproxy(p) => Some(p.cpu_ms()),
            Server::MinProxy(p) => Some(p.cpu_ms()),
        }
    }

    fn rss_kb(&self) -> Option<u64> {
        match &self.server {
            Server::Direct => None,
            Server::Handoff(p) => Some(p.rss_kb()),
            Server::Nginx(p) => Some(p.rss_kb()),
            Server::Haproxy(p) => Some(p.rss_kb()),
            Server::MinProxy(p) => Some(p.rss_kb()),
        }
    }
}

pub async fn run(common: &Common, args: &SteadyArgs) -> Result<SteadyReport> {
    let machine = Machine::probe();
    let backend = blocking(|| Backend::start(1, 0)).await?;
    let mut missing = Vec::new();
    let mut targets = vec![Target {
        name: "direct",
        addr: backend.addr,
        server: Server::Direct,
    }];
    let addr = backend.addr;
    let want = |name: &str| args.targets.iter().any(|t| t == name);
    if !want("handoff") {
    } else if let Err(e) = HandoffProxy::binary() {
        missing.push(unavailable(e.to_string())?);
    } else {
        let p = blocking(move || HandoffProxy::start(addr, "30s")).await?;
        targets.push(Target {
            name: "handoff",
            addr: p.addr,
            server: Server::Handoff(p),
        });
    }
    if !want("nginx") {
    } else if find_tool("nginx").is_none() {
        missing.push(unavailable(missing_nginx())?);
    } else {
        let port = backend.addr.port();
        let p = blocking(move || Nginx::start(port)).await?;
        targets.push(Target {
            name: "nginx",
            addr: p.addr,
            server: Server::Nginx(p),
        });
    }
    if !want("haproxy") {
    } else if Haproxy::available() {
        let p = blocking(move || Haproxy::start(addr)).await?;
        targets.push(Target {
            name: "haproxy",
            addr: p.addr,
            server: Server::Haproxy(p),
        });
    } else {
        missing.push("haproxy not installed (optional: apt-get install -y haproxy)".into());
    }
    if want("hyper-min") {
        let p = blocking(move || MinProxy::start(addr)).await?;
        targets.push(Target {
            name: "hyper-min",
            addr: p.addr,
            server: Server::MinProxy(p),
        });
    }

    let mut rows = Vec::new();
    let targets_ref: Vec<&Target> = targets.iter().collect();
    for round in 0..args.rounds.max(1) {
        for &conns in &args.conns {
            measure_all(
                common,
                &backend,
                &targets_ref,
                &plain(),
                conns,
                Mode::Closed,
                round,
                &mut rows,
            )
            .await;
        }
    }
    let first_c = args.conns.first().copied().unwrap_or(64);
    // A rate every target sustains, so p99 reflects the proxy, not a queue.
    let slowest = targets
        .iter()
        .map(|t| {
            median(
                rows.iter()
                    .filter(|r| r.target == t.name && r.conns == first_c)
                    .map(|r| r.summary.rps),
            )
        })
        .fold(f64::INFINITY, f64::min);
    let rate = match args.open_rate {
        Some(rate) => rate,
        None if slowest.is_finite() => (slowest * args.open_fraction).round(),
        None => 0.0,
    };
    if rate > 0.0 {
        measure_all(
            common,
            &backend,
            &targets_ref,
            &plain(),
            first_c,
            Mode::Open { rate },
            0,
            &mut rows,
        )
        .await;
    }

    let mut wrk_rows = Vec::new();
    if wrk::available() {
        for t in &targets {
            let (addr, dur) = (t.addr, common.duration);
            let figures = blocking(move || wrk::run(addr, first_c, dur)).await?;
            let harness = rows
                .iter()
                .rev()
                .find(|r| r.target == t.name && r.conns == first_c && r.mode == "closed")
                .map(|r| r.summary.clone())
                .unwrap_or_default();
            wrk_rows.push(WrkRow {
                target: t.name.into(),
                conns: first_c,
                harness,
                wrk: figures,
            });
        }
    } else {
        missing.push(unavailable(
            "wrk not installed: no cross-check (apt-get install -y wrk)".into(),
        )?);
    }
    drop(targets_ref);
    drop(targets);
    drop(backend);
    Ok(SteadyReport {
        machine,
        duration_s: common.duration.as_secs_f64(),
        rows,
        wrk: wrk_rows,
        missing,
    })
}

/// One pass over every target in turn (warm-up, then the measured run),
/// each row's throughput as a ratio of `direct`'s in the same pass when
/// `direct` is among the targets (it comes first).
#[allow(clippy::too_many_arguments)]
pub(super) async fn measure_all(
    common: &Common,
    backend: &Backend,
    targets: &[&Target],
    kinds: &[RequestKind],
    conns: usize,
    mode: Mode,
    round: usize,
    rows: &mut Vec<Row>,
) {
    let mut direct_rps = None;
    for t in targets.iter().copied() {
        let spec = |duration| LoadSpec {
            target: t.addr,
            streams: streams(kinds, conns, mode),
            duration,
            max_requests: common.max_requests,
            timeout: Duration::from_secs(10),
        };
        loadgen::run(spec(common.warmup), Instant::now()).await;
        let cpu_before = (
            t.cpu_ms(),
            backend.proc.cpu_ms(),
            cpu_ms_tree(std::process::id()),
        );
        let result = loadgen::run(spec(common.duration), Instant::now()).await;
        let summary = summarize(&result.samples, common.duration);
        let series = match mode {
            Mode::Open { .. } => stats::series(&result.samples, common.duration),
            Mode::Closed => Vec::new(),
        };
        let per_req =
            |after: f64, before: f64| (after - before) * 1000.0 / summary.ok.max(1) as f64;
        let proxy_cpu_us = t.cpu_ms().zip(cpu_before.0).map(|(a, b)| per_req(a, b));
        let backend_cpu_us = per_req(backend.proc.cpu_ms(), cpu_before.1);
        let loadgen_cpu_us = per_req(cpu_ms_tree(std::process::id()), cpu_before.2);
        if t.name == "direct" {
            direct_rps = Some(summary.rps);
        }
        let ratio = direct_rps.filter(|d| *d > 0.0).map(|d| summary.rps / d);
        let mode_name = match mode {
            Mode::Closed => "closed".to_string(),
            Mode::Open { rate } => format!("open {rate:.0}/s"),
        };
        tracing::info!(
            "{} c={conns} {mode_name}: {:.0} req/s p99 {} ms, {} failed",
            t.name,
            summary.rps,
            ms(summary.p99_ms),
            summary.failed
        );
        rows.push(Row {
            target: t.name.into(),
            conns,
            mode: mode_name,
            round,
            summary,
            ratio,
            rss_kb: t.rss_kb(),
            proxy_cpu_us,
            backend_cpu_us,
            loadgen_cpu_us,
            series,
        });
    }
}

pub(super) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
