//! What `switch` and `seed` share: the load shape (open-loop short requests
//! plus long requests always in flight), the timeline (steady phase, then a
//! cut-over every `interval`, then a tail), and the analysis of the samples.

use super::Common;
use crate::loadgen::{LoadResult, LoadSpec, Mode, Sample, Stream};
use crate::report::{self, ms, table, Machine};
use crate::stats::{self, summarize, Bucket, Summary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct CutoverArgs {
    /// Time between two cut-overs.
    #[arg(long, default_value = "500ms", value_parser = humantime_arg)]
    pub interval: Duration,
    /// How long cut-overs keep coming (smoke: 2 s).
    #[arg(long, value_parser = humantime_arg)]
    pub switch_for: Option<Duration>,
    /// Short requests per second (open loop).
    #[arg(long, default_value_t = 3000.0)]
    pub rate: f64,
    /// Connections carrying the short requests.
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
    /// Connections each keeping one long request in flight.
    #[arg(long, default_value_t = 8)]
    pub long_conns: usize,
    /// Duration of a long request (smoke: 500 ms).
    #[arg(long, value_parser = humantime_arg)]
    pub long: Option<Duration>,
}

pub fn humantime_arg(s: &str) -> Result<Duration, String> {
    handoff_shared::parse_duration(s)
}

/// The resolved timeline of one run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Timeline {
    /// Cut-overs start here; before it is the steady baseline.
    pub steady_ms: u64,
    pub switch_for_ms: u64,
    pub interval_ms: u64,
    pub long_ms: u64,
    /// No request starts after this.
    pub end_ms: u64,
}

impl Timeline {
    pub fn new(common: &Common, args: &CutoverArgs) -> Timeline {
        let switch_for = args.switch_for.unwrap_or(if common.smoke {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(20)
        });
        let long = args.long.unwrap_or(if common.smoke {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(2)
        });
        let steady = if common.smoke {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3)
        };
        let ms = |d: Duration| d.as_millis() as u64;
        Timeline {
            steady_ms: ms(steady),
            switch_for_ms: ms(switch_for),
            interval_ms: ms(args.interval).max(1),
            long_ms: ms(long),
            end_ms: ms(steady + switch_for) + 1000,
        }
    }

    /// When each cut-over is due, relative to the epoch. At most 240, so
    /// backend ids (1..=250) never repeat within a run.
    pub fn ticks(&self) -> Vec<Duration> {
        (0..self.switch_for_ms / self.interval_ms)
            .take(240)
            .map(|k| Duration::from_millis(self.steady_ms + k * self.interval_ms))
            .collect()
    }

    /// How long before its cut-over a new backend is started.
    pub fn lead(&self) -> Duration {
        Duration::from_millis((self.interval_ms / 2).min(150))
    }

    pub fn load(&self, target: SocketAddr, args: &CutoverArgs, common: &Common) -> LoadSpec {
        LoadSpec {
            target,
            streams: vec![
                Stream {
                    path: "/".into(),
                    conns: args.conns,
                    mode: Mode::Open { rate: args.rate },
                    long: false,
                    host: None,
                    fresh_conn: false,
                },
                Stream {
                    path: format!("/slow?ms={}", self.long_ms),
                    conns: args.long_conns,
                    mode: Mode::Closed,
                    long: true,
                    host: None,
                    fresh_conn: false,
                },
            ],
            duration: Duration::from_millis(self.end_ms),
            max_requests: common.max_requests,
            timeout: Duration::from_millis(self.long_ms) + Duration::from_secs(10),
        }
    }
}

/// One cut-over as the driver saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Event {
    /// When the cut-over began (switch call sent / reload issued), ms since epoch.
    pub t_ms: f64,
    /// How long the switch call (handoff) or reload + stop (seed) took.
    pub took_ms: f64,
    pub from: u8,
    pub to: u8,
    /// First request answered by the new backend, ms since epoch.
    pub first_served_ms: Option<f64>,
    pub drained: Option<bool>,
    pub in_flight: Option<u64>,
    pub drain_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CutoverReport {
    pub scenario: String,
    pub machine: Machine,
    pub timeline: Timeline,
    pub rate: f64,
    pub conns: usize,
    pub long_conns: usize,
    /// Short requests started in the steady phase (after 500 ms of warm-up).
    pub steady: Summary,
    /// Short requests started while cut-overs were happening.
    pub switching: Summary,
    /// Short requests started within 200 ms after a cut-over began.
    pub post_switch: Summary,
    /// All long requests.
    pub long: Summary,
    /// Long requests that failed after at least `CUT_AFTER` in flight: they
    /// were running on a backend that went away (the rest were refused).
    pub cut_long: u64,
    pub failed_total: u64,
    pub resent: u64,
    pub backends_started: usize,
    pub backends_seen: usize,
    pub events: Vec<Event>,
    pub series: Vec<Bucket>,
    pub notes: Vec<String>,
}

pub const POST_SWITCH: Duration = Duration::from_millis(200);
pub const CUT_AFTER: Duration = Duration::from_millis(20);

pub fn analyse(
    scenario: &str,
    machine: Machine,
    tl: Timeline,
    args: &CutoverArgs,
    result: LoadResult,
    mut events: Vec<Event>,
    backends_started: usize,
) -> CutoverReport {
    let s = &result.samples;
    if let Some(path) = std::env::var_os("HANDOFF_BENCH_DUMP") {
        // Raw samples for ad-hoc analysis: start_us,latency_us,outcome,backend,long.
        let csv: String = s
            .iter()
            .map(|x| {
                format!(
                    "{},{},{},{},{}\n",
                    x.start_us,
                    x.latency_us,
                    x.outcome.name(),
                    x.backend,
                    x.long
                )
            })
            .collect();
        let _ = std::fs::write(path, csv);
    }
    let short = |lo_ms: u64, hi_ms: u64| {
        s.iter()
            .filter(move |x| !x.long && (lo_ms * 1000..hi_ms * 1000).contains(&(x.start_us as u64)))
    };
    let steady = summarize(
        short(500, tl.steady_ms),
        Duration::from_millis(tl.steady_ms - 500),
    );
    let switching = summarize(
        short(tl.steady_ms, tl.steady_ms + tl.switch_for_ms),
        Duration::from_millis(tl.switch_for_ms),
    );
    events.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    let windows: Vec<(u64, u64)> = events
        .iter()
        .map(|e| {
            (
                (e.t_ms * 1000.0) as u64,
                (e.t_ms * 1000.0) as u64 + POST_SWITCH.as_micros() as u64,
            )
        })
        .collect();
    let in_window = |x: &&Sample| {
        windows
            .iter()
            .any(|(lo, hi)| (*lo..*hi).contains(&(x.start_us as u64)))
    };
    let post_switch = summarize(
        s.iter().filter(|x| !x.long).filter(in_window),
        POST_SWITCH * windows.len() as u32,
    );
    let long = summarize(
        s.iter().filter(|x| x.long),
        Duration::from_millis(tl.end_ms),
    );
    for e in &mut events {
        e.first_served_ms = s
            .iter()
            .filter(|x| e.to != 0 && x.backend == e.to && x.outcome.is_ok())
            .map(|x| x.start_us as f64 / 1000.0)
            .min_by(|a, b| a.total_cmp(b));
    }
    let seen: BTreeSet<u8> = s
        .iter()
        .filter(|x| x.outcome.is_ok() && x.backend != 0)
        .map(|x| x.backend)
        .collect();
    let span_us = s
        .iter()
        .map(Sample::end_us)
        .max()
        .unwrap_or(0)
        .max(tl.end_ms * 1000);
    let cut_long = s
        .iter()
        .filter(|x| x.long && !x.outcome.is_ok() && x.latency_us as u128 >= CUT_AFTER.as_micros())
        .count() as u64;
    let failed_total = s.iter().filter(|x| !x.outcome.is_ok()).count() as u64;
    CutoverReport {
        scenario: scenario.into(),
        machine,
        timeline: tl,
        rate: args.rate,
        conns: args.conns,
        long_conns: args.long_conns,
        steady,
        switching,
        post_switch,
        long,
        cut_long,
        failed_total,
        resent: result.resent,
        backends_started,
        backends_seen: seen.len(),
        events,
        series: stats::series(s, Duration::from_micros(span_us)),
        notes: Vec::new(),
    }
}

fn quantiles(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "{} / {} / {}",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

pub fn markdown(r: &CutoverReport) -> String {
    let tl = &r.timeline;
    let mut out = if r.scenario == "deploy" {
        format!(
            "### deploy (`handoff deploy` v1 -> v2 on Docker; {} req/s open loop on {} conns + {} long {} ms requests always in flight)\n\n{}\n\n",
            r.rate,
            r.conns,
            r.long_conns,
            tl.long_ms,
            r.machine.markdown()
        )
    } else {
        format!(
        "### {} ({} cut-overs every {} ms for {} s; {} req/s open loop on {} conns + {} long {} ms requests always in flight)\n\n{}\n\n",
        r.scenario,
        r.events.len(),
        tl.interval_ms,
        tl.switch_for_ms / 1000,
        r.rate,
        r.conns,
        r.long_conns,
        tl.long_ms,
        r.machine.markdown()
    )
    };
    let row = |name: &str, s: &Summary| {
        vec![
            name.to_string(),
            s.requests.to_string(),
            report::errors(&s.errors),
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.p999_ms),
            ms(s.max_ms),
        ]
    };
    out += &table(
        &[
            "requests", "count", "failed", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
        ],
        &[
            row("steady phase (no cut-over)", &r.steady),
            row("during cut-overs", &r.switching),
            row("200 ms after each cut-over", &r.post_switch),
            row("long requests", &r.long),
        ],
    );
    let took: Vec<f64> = r.events.iter().map(|e| e.took_ms).collect();
    let lag: Vec<f64> = r
        .events
        .iter()
        .filter_map(|e| Some(e.first_served_ms? - e.t_ms))
        .collect();
    let not_drained = r.events.iter().filter(|e| e.drained == Some(false)).count();
    let errors: Vec<&str> = r.events.iter().filter_map(|e| e.error.as_deref()).collect();
    out += &format!(
        "\nfailed requests: **{}** (long requests cut after >= {} ms in flight: **{}**); requests resent after an idle keep-alive close: {}\n\
         cut-over call took min/median/max: {} ms; new backend's first answer after cut-over began: {} ms\n\
         backends started {}, answered traffic {}; switches not drained: {}; cut-over errors: {}\n",
        r.failed_total,
        CUT_AFTER.as_millis(),
        r.cut_long,
        r.resent,
        quantiles(took),
        quantiles(lag),
        r.backends_started,
        r.backends_seen,
        not_drained,
        if errors.is_empty() { "none".to_string() } else { errors.join("; ") },
    );
    for n in &r.notes {
        out += &format!("\nnote: {n}\n");
    }
    out
}
