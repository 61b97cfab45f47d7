//! handoff-bench: the load-test harness behind every performance claim of
//! handoff. See benches/RESULTS.md for the figures and how to repeat them.
#![forbid(unsafe_code)]

mod backend;
mod chart;
mod h2_ws;
mod loadgen;
mod minproxy;
mod procs;
mod report;
mod scenarios;
mod servers;
mod stats;
mod tls;
mod upgrades;
mod wrk;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use scenarios::cutover::{self, CutoverArgs, CutoverReport};
use scenarios::steady::{self, SteadyArgs};
use scenarios::Common;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Load-test harness: zero downtime, measured side by side with nginx"
)]
struct Cli {
    /// Length of each measured `steady` run (default 10s, smoke 1s).
    #[arg(long, global = true, value_parser = cutover::humantime_arg)]
    duration: Option<Duration>,
    /// Unmeasured load before each `steady` run (default 1s, smoke 200ms).
    #[arg(long, global = true, value_parser = cutover::humantime_arg)]
    warmup: Option<Duration>,
    /// Upper bound on requests per load stream.
    #[arg(long, global = true, default_value_t = 20_000_000)]
    max_requests: u64,
    /// A few seconds per scenario: proves the harness runs and counts (CI).
    #[arg(long, global = true)]
    smoke: bool,
    /// Where JSON results and the chart go (default: target/bench of the workspace).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The upstream the scenarios proxy to (started by the harness itself).
    Backend(backend::BackendArgs),
    /// A bare hyper reverse proxy (reference target `hyper-min` in steady).
    Minproxy(minproxy::MinProxyArgs),
    /// Throughput and latency: direct vs handoff-proxy vs nginx (vs HAProxy).
    Steady(SteadyArgs),
    /// The route table's cost: handoff-proxy with 100 apps vs one app, and
    /// nginx with 100 server blocks vs one, under steady's load.
    Routes(scenarios::routes::RoutesArgs),
    /// handoff-proxy under load while the backend is replaced every interval.
    Switch(CutoverArgs),
    /// The bluegreen.sh way (nginx reload, then stop old) under the same load.
    Seed(CutoverArgs),
    /// Full `handoff deploy` v1 -> v2 under load (needs Docker and the deployer).
    Deploy(CutoverArgs),
    /// slowhttptest slow bodies (-B) and slow readers (-X) against
    /// handoff-proxy and nginx: backend connections held, and a probe.
    SlowClients(scenarios::slow_clients::SlowArgs),
    /// handoff-proxy, nginx and HAProxy each upgraded in place N times
    /// under load (`--upgrade`; USR2, WINCH, QUIT; `-x` reload).
    Upgrade(scenarios::upgrade::UpgradeArgs),
    /// steady, routes, switch, seed, deploy, slow-clients and upgrade in
    /// turn, then the charts.
    All {
        #[command(flatten)]
        cutover: CutoverArgs,
        /// Interleaved rounds of `steady`.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// Redraws the switch-vs-seed chart from the latest JSON results.
    Chart,
    /// Prints the steady tables again from the latest JSON results.
    Report,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Backend(args) => return backend::run(args),
        Cmd::Minproxy(args) => return minproxy::run(args),
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "handoff_bench=info".into()),
        )
        .init();
    let common = Common {
        duration: cli
            .duration
            .unwrap_or(Duration::from_secs(if cli.smoke { 1 } else { 10 })),
        warmup: cli
            .warmup
            .unwrap_or(Duration::from_millis(if cli.smoke { 200 } else { 1000 })),
        max_requests: cli.max_requests,
        smoke: cli.smoke,
        out: cli.out.unwrap_or_else(report::default_out_dir),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::select! {
            r = dispatch(&common, cli.command) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; child processes are being stopped"),
        }
    })
}

async fn dispatch(common: &Common, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Backend(_) | Cmd::Minproxy(_) => unreachable!("handled before the runtime starts"),
        Cmd::Steady(args) => run_steady(common, &args).await,
        Cmd::Routes(args) => run_routes(common, &args).await,
        Cmd::Switch(args) => run_cutover(common, &args, "switch").await,
        Cmd::Seed(args) => run_cutover(common, &args, "seed").await,
        Cmd::Deploy(args) => run_cutover(common, &args, "deploy").await,
        Cmd::SlowClients(args) => run_slow_clients(common, &args).await,
        Cmd::Upgrade(args) => run_upgrade(common, &args).await,
        Cmd::All { cutover, rounds } => {
            let steady_args = SteadyArgs {
                conns: vec![64, 256],
                rounds,
                targets: ["handoff", "nginx", "haproxy", "hyper-min"]
                    .map(String::from)
                    .to_vec(),
                open_fraction: 0.5,
                open_rate: None,
            };
            run_steady(common, &steady_args).await?;
            let routes_args = scenarios::routes::RoutesArgs {
                rounds,
                ..Default::default()
            };
            run_routes(common, &routes_args).await?;
            run_cutover(common, &cutover, "switch").await?;
            run_cutover(common, &cutover, "seed").await?;
            run_cutover(common, &cutover, "deploy").await?;
            run_slow_clients(common, &scenarios::slow_clients::SlowArgs::default()).await?;
            run_upgrade(common, &scenarios::upgrade::UpgradeArgs::default()).await
        }
        Cmd::Chart => {
            draw_chart(common)?;
            draw_upgrade_chart(common)
        }
        Cmd::Report => {
            let r: steady::SteadyReport = report::read_json(&common.out, "steady")?;
            println!("{}", steady::markdown(&r));
            Ok(())
        }
    }
}

async fn run_steady(common: &Common, args: &SteadyArgs) -> Result<()> {
    let r = steady::run(common, args).await?;
    let md = steady::markdown(&r);
    println!("{md}");
    let path = report::write_json(&common.out, "steady", &r)?;
    std::fs::write(common.out.join("steady-latest.md"), &md)?;
    tracing::info!("raw figures: {}", path.display());
    if let Some(row) = r.rows.iter().find(|row| row.summary.ok == 0) {
        bail!(
            "steady: {} c={} counted no successful request",
            row.target,
            row.conns
        );
    }
    Ok(())
}

async fn run_routes(common: &Common, args: &scenarios::routes::RoutesArgs) -> Result<()> {
    use scenarios::routes;
    let r = routes::run(common, args).await?;
    let md = routes::markdown(&r);
    println!("{md}");
    let path = report::write_json(&common.out, "routes", &r)?;
    std::fs::write(common.out.join("routes-latest.md"), &md)?;
    tracing::info!("raw figures: {}", path.display());
    routes::check(&r)
}

async fn run_cutover(common: &Common, args: &CutoverArgs, which: &str) -> Result<()> {
    let r = match which {
        "switch" => scenarios::switch::run(common, args).await?,
        "seed" => scenarios::seed::run(common, args).await?,
        _ => match scenarios::deploy::skip_reason() {
            Some(why) => {
                let md = format!("### deploy\n\n{why}\n");
                println!("{md}");
                std::fs::create_dir_all(&common.out)?;
                std::fs::write(common.out.join("deploy-latest.md"), md)?;
                return Ok(());
            }
            None => scenarios::deploy::run(common, args).await?,
        },
    };
    let md = cutover::markdown(&r);
    println!("{md}");
    let path = report::write_json(&common.out, which, &r)?;
    std::fs::write(common.out.join(format!("{which}-latest.md")), &md)?;
    tracing::info!("raw figures: {}", path.display());
    if let Err(e) = draw_chart(common) {
        tracing::info!("chart not drawn yet: {e:#}");
    }
    if r.steady.ok == 0 || r.events.is_empty() {
        bail!(
            "{which}: counted {} successful requests and {} cut-overs",
            r.steady.ok,
            r.events.len()
        );
    }
    Ok(())
}

async fn run_slow_clients(common: &Common, args: &scenarios::slow_clients::SlowArgs) -> Result<()> {
    use scenarios::slow_clients;
    let r = slow_clients::run(common, args).await?;
    let md = slow_clients::markdown(&r);
    println!("{md}");
    let path = report::write_json(&common.out, "slow-clients", &r)?;
    std::fs::write(common.out.join("slow-clients-latest.md"), &md)?;
    tracing::info!("raw figures: {}", path.display());
    if let Some(run) = r.runs.iter().find(|run| run.backend_conns.is_empty()) {
        bail!("slow-clients: {} {} took no sample", run.target, run.mode);
    }
    Ok(())
}

fn draw_chart(common: &Common) -> Result<()> {
    let switch: CutoverReport = report::read_json(&common.out, "switch")?;
    let seed: CutoverReport = report::read_json(&common.out, "seed")?;
    let path = common.out.join(chart::FILE);
    chart::draw(
        &path,
        "handoff-proxy switch vs nginx reload + stop (bluegreen.sh): same load, same machine",
        &chart::switch_vs_seed(&[&switch, &seed]),
    )?;
    tracing::info!("chart: {}", path.display());
    Ok(())
}

async fn run_upgrade(common: &Common, args: &scenarios::upgrade::UpgradeArgs) -> Result<()> {
    use scenarios::upgrade;
    let r = upgrade::run(common, args).await?;
    let md = upgrade::markdown(&r);
    println!("{md}");
    let path = report::write_json(&common.out, "upgrade", &r)?;
    std::fs::write(common.out.join("upgrade-latest.md"), &md)?;
    tracing::info!("raw figures: {}", path.display());
    draw_upgrade_chart(common)?;
    upgrade::check(&r)
}

fn draw_upgrade_chart(common: &Common) -> Result<()> {
    let r: scenarios::upgrade::UpgradeReport = report::read_json(&common.out, "upgrade")?;
    let path = common.out.join(scenarios::upgrade::CHART);
    chart::draw(
        &path,
        "Upgrading the proxy itself under load: handoff-proxy --upgrade vs nginx binary upgrade vs HAProxy -x reload",
        &scenarios::upgrade::panels(&r),
    )?;
    tracing::info!("chart: {}", path.display());
    Ok(())
}
