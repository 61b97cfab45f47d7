//! `upgrade`: the proxy itself replaced in place, again and again, under the
//! same load for each proxy: handoff-proxy's `--upgrade`, nginx's binary
//! upgrade (USR2, WINCH, QUIT) and HAProxy's `-x` reload, one after the
//! other in the same run (see `upgrades.rs` for each procedure).
//!
//! The load is that of issue 15's test: keep-alive clients in open loop,
//! clients that open a new connection for every request (what a listener
//! handed over too late or closed too early refuses), long requests always
//! in flight (what an old process that stops too early cuts), HTTP/2
//! streams over TLS and WebSocket echo sessions (`h2_ws.rs`).

use super::cutover::{analyse, humantime_arg, CutoverArgs, CutoverReport, Event, Timeline};
use super::{blocking, unavailable, Common};
use crate::h2_ws::{self, Tally};
use crate::loadgen::{self, Mode, Outcome, Stream};
use crate::procs::{find_tool, Backend};
use crate::report::Machine;
use crate::servers::HandoffProxy;
use crate::stats::{summarize, Summary};
use crate::upgrades::{DaemonNginx, ReloadableHaproxy, Upgradable};

pub use super::upgrade_report::{markdown, panels, CHART};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct UpgradeArgs {
    /// Upgrades of each proxy (default 10, smoke 2).
    #[arg(long)]
    pub upgrades: Option<usize>,
    /// From the start of one upgrade to the next; an upgrade still running
    /// delays the next (default 5s: a long request and a WebSocket session
    /// end within it; smoke 1s).
    #[arg(long, value_parser = humantime_arg)]
    pub interval: Option<Duration>,
    /// Keep-alive connections carrying the short requests.
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
    /// Short requests per second on them (open loop).
    #[arg(long, default_value_t = 3000.0)]
    pub rate: f64,
    /// Requests per second each on a new connection (open loop).
    #[arg(long, default_value_t = 200.0)]
    pub fresh_rate: f64,
    /// Clients opening those connections.
    #[arg(long, default_value_t = 8)]
    pub fresh_conns: usize,
    /// Connections each keeping one long request in flight.
    #[arg(long, default_value_t = 4)]
    pub long_conns: usize,
    /// Duration of a long request (default 3s, smoke 500ms).
    #[arg(long, value_parser = humantime_arg)]
    pub long: Option<Duration>,
    /// HTTP/2-over-TLS clients, one stream at a time each.
    #[arg(long, default_value_t = 4)]
    pub h2_clients: usize,
    /// WebSocket clients, each in echo sessions of `--ws-session`.
    #[arg(long, default_value_t = 2)]
    pub ws_clients: usize,
    /// Length of one WebSocket session (default 2s, smoke 300ms).
    #[arg(long, value_parser = humantime_arg)]
    pub ws_session: Option<Duration>,
    /// Proxies to upgrade, in this order.
    #[arg(long, value_delimiter = ',', default_value = "handoff,nginx,haproxy")]
    pub targets: Vec<String>,
}

impl Default for UpgradeArgs {
    fn default() -> Self {
        UpgradeArgs {
            upgrades: None,
            interval: None,
            conns: 64,
            rate: 3000.0,
            fresh_rate: 200.0,
            fresh_conns: 8,
            long_conns: 4,
            long: None,
            h2_clients: 4,
            ws_clients: 2,
            ws_session: None,
            targets: ["handoff", "nginx", "haproxy"].map(String::from).to_vec(),
        }
    }
}

/// One proxy's run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetRun {
    pub target: String,
    /// How it was upgraded, for the report.
    pub method: String,
    pub upgrades_planned: usize,
    /// Requests per second, all told, on new connections.
    pub fresh_rate: f64,
    pub h2_clients: usize,
    pub ws_clients: usize,
    /// The run on the cut-over time line: each event is one upgrade
    /// (`took_ms` until the new process served, `drain_ms` from then until
    /// the old one had exited).
    pub run: CutoverReport,
    pub keep_alive: Summary,
    pub fresh: Summary,
    pub h2: Tally,
    pub ws: Tally,
    /// Connections that could not be made, or that were closed before
    /// their first request could be written (all clients).
    pub refused: u64,
    /// Requests and messages not answered, refused ones included (all
    /// clients).
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeReport {
    pub machine: Machine,
    pub targets: Vec<TargetRun>,
    /// Proxies left out (not installed), and why.
    pub skipped: Vec<String>,
}

/// The arguments in the shape `cutover`'s time line and analysis take.
fn cutover_args(common: &Common, args: &UpgradeArgs) -> (CutoverArgs, usize) {
    let upgrades = args.upgrades.unwrap_or(if common.smoke { 2 } else { 10 });
    let interval = args.interval.unwrap_or(if common.smoke {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    });
    let long = args.long.unwrap_or(if common.smoke {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    });
    let cut = CutoverArgs {
        interval,
        switch_for: Some(interval * upgrades as u32),
        rate: args.rate,
        conns: args.conns,
        long_conns: args.long_conns,
        long: Some(long),
    };
    (cut, upgrades)
}

pub async fn run(common: &Common, args: &UpgradeArgs) -> Result<UpgradeReport> {
    let machine = Machine::probe();
    let backend = blocking(|| Backend::start(1, 0)).await?;
    let mut report = UpgradeReport {
        machine: machine.clone(),
        targets: Vec::new(),
        skipped: Vec::new(),
    };
    for target in &args.targets {
        let tool = match target.as_str() {
            "handoff" => None,
            "nginx" | "haproxy" => Some(target.as_str()),
            other => bail!("unknown target {other:?} (handoff, nginx, haproxy)"),
        };
        if let Some(tool) = tool.filter(|t| find_tool(t).is_none()) {
            report.skipped.push(unavailable(format!(
                "{tool} not found (apt-get install -y {tool})"
            ))?);
            continue;
        }
        let run = run_target(common, args, &machine, target, backend.addr).await?;
        tracing::info!(
            "{target}: {} upgrades, {} failed, {} refused",
            run.run.events.len(),
            run.run.failed_total,
            run.refused
        );
        report.targets.push(run);
    }
    Ok(report)
}

async fn run_target(
    common: &Common,
    args: &UpgradeArgs,
    machine: &Machine,
    target: &str,
    backend: std::net::SocketAddr,
) -> Result<TargetRun> {
    let (cut, planned) = cutover_args(common, args);
    let tl = Timeline::new(common, &cut);
    // The old process may take a long request's time to finish, plus slack.
    let drain_for = Duration::from_millis(tl.long_ms) + Duration::from_secs(15);
    let drain_timeout = format!("{}ms", tl.long_ms + 10_000);
    let name = target.to_string();
    let tls = blocking(crate::tls::TlsFiles::new).await?;
    let connector = tls.h2_client()?;
    let (proxy, method, tls) = blocking(move || {
        let (proxy, method): (Box<dyn Upgradable>, _) = match name.as_str() {
            "handoff" => (
                Box::new(HandoffProxy::start_tls(
                    backend,
                    &drain_timeout,
                    &tls.cert,
                    &tls.key,
                )?),
                "same flags + --upgrade (sockets over SCM_RIGHTS)",
            ),
            "nginx" => (
                Box::new(DaemonNginx::start(backend.port(), &tls)?),
                "binary upgrade: USR2, WINCH, QUIT",
            ),
            _ => (
                Box::new(ReloadableHaproxy::start(backend, &tls)?),
                "new process with -x <stats socket> -sf <old pid>",
            ),
        };
        Ok((proxy, method, tls))
    })
    .await?;

    let epoch = Instant::now();
    let deadline = epoch + Duration::from_millis(tl.end_ms);
    let ws_session = args.ws_session.unwrap_or(if common.smoke {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    });
    let h2 = tokio::spawn(h2_ws::h2(
        proxy.https(),
        connector,
        args.h2_clients,
        deadline,
    ));
    let ws = tokio::spawn(h2_ws::websocket(
        proxy.http(),
        args.ws_clients,
        ws_session,
        deadline,
    ));
    let mut spec = tl.load(proxy.http(), &cut, common);
    spec.streams.push(Stream {
        path: "/".into(),
        conns: args.fresh_conns,
        mode: Mode::Open {
            rate: args.fresh_rate,
        },
        long: false,
        host: None,
        fresh_conn: true,
    });
    let load = tokio::spawn(loadgen::run(spec, epoch));
    let (proxy, events) = upgrade_on_ticks(proxy, &tl, epoch, drain_for).await?;
    let result = load.await?;
    let (h2, ws) = (h2.await?, ws.await?);
    blocking(move || {
        drop(proxy);
        drop(tls);
        Ok(())
    })
    .await?;

    let samples = &result.samples;
    let window = Duration::from_millis(tl.end_ms);
    let keep_alive = summarize(samples.iter().filter(|s| !s.long && !s.fresh), window);
    let fresh = summarize(samples.iter().filter(|s| s.fresh), window);
    let refused = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Connect)
        .count() as u64
        + h2.refused
        + ws.refused;
    let failed = samples.iter().filter(|s| !s.outcome.is_ok()).count() as u64
        + h2.failed
        + h2.refused
        + ws.failed
        + ws.refused;
    let run = analyse(
        &format!("upgrade-{target}"),
        machine.clone(),
        tl,
        &cut,
        result,
        events,
        0,
    );
    Ok(TargetRun {
        target: target.to_string(),
        method: method.to_string(),
        upgrades_planned: planned,
        fresh_rate: args.fresh_rate,
        h2_clients: args.h2_clients,
        ws_clients: args.ws_clients,
        run,
        keep_alive,
        fresh,
        h2,
        ws,
        refused,
        failed,
    })
}

/// One upgrade per tick, each to its end before the next; none starts after
/// the upgrade phase, so a slow one shortens the series rather than the
/// load's tail.
async fn upgrade_on_ticks(
    mut proxy: Box<dyn Upgradable>,
    tl: &Timeline,
    epoch: Instant,
    drain_for: Duration,
) -> Result<(Box<dyn Upgradable>, Vec<Event>)> {
    let last_start = epoch + Duration::from_millis(tl.steady_ms + tl.switch_for_ms);
    // Long requests start together and end together; half a long request
    // later, every long connection has one in flight on the old process.
    let phase = Duration::from_millis(tl.long_ms / 2);
    let mut events = Vec::new();
    for at in tl.ticks() {
        tokio::time::sleep_until((epoch + at + phase).into()).await;
        let t0 = Instant::now();
        if t0 > last_start {
            break;
        }
        let (back, outcome) = blocking(move || {
            let outcome = proxy.upgrade(drain_for);
            Ok((proxy, outcome))
        })
        .await?;
        proxy = back;
        let mut event = Event {
            t_ms: t0.duration_since(epoch).as_secs_f64() * 1000.0,
            ..Event::default()
        };
        match outcome {
            Ok(u) => {
                event.took_ms = u.ready.as_secs_f64() * 1000.0;
                event.drain_ms = Some(u.done.saturating_sub(u.ready).as_millis() as u64);
                event.drained = u.drained;
                event.in_flight = u.in_flight;
            }
            Err(e) => {
                event.took_ms = t0.elapsed().as_secs_f64() * 1000.0;
                event.error = Some(format!("{e:#}"));
            }
        }
        events.push(event);
    }
    Ok((proxy, events))
}

/// The harness ran: every proxy served and was upgraded at least once.
pub fn check(r: &UpgradeReport) -> Result<()> {
    for t in &r.targets {
        let done = t.run.events.iter().filter(|e| e.error.is_none()).count();
        if done == 0 || t.run.steady.ok == 0 {
            bail!(
                "upgrade: {} completed {done} upgrades and answered {} requests in the steady phase",
                t.target,
                t.run.steady.ok
            );
        }
    }
    Ok(())
}
