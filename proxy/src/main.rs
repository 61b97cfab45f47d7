//! The `handoff-proxy` binary: flags and environment in, [`Config`] out, run.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::Parser;
use handoff_proxy::config::Config;
use handoff_proxy::upstream::UpstreamSettings;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Zero-downtime front door: routes each request to the active backend and
/// drains the previous one on a switch.
#[derive(Debug, Parser)]
#[command(name = "handoff-proxy", version, about, max_term_width = 100)]
struct Cli {
    /// Plain HTTP listen address.
    #[arg(long, env = "HANDOFF_HTTP", default_value = "0.0.0.0:80", value_name = "ADDR")]
    http: SocketAddr,

    /// Control API Unix socket (HTTP/1.1 + JSON; created with mode 0600).
    #[arg(long, env = handoff_shared::CONTROL_SOCKET_ENV, default_value = handoff_shared::DEFAULT_CONTROL_SOCKET, value_name = "PATH")]
    control: PathBuf,

    /// Group (name or gid) also allowed on the control socket; makes it mode 0660.
    #[arg(long, env = "HANDOFF_CONTROL_GROUP", value_name = "GROUP")]
    control_group: Option<String>,

    /// File that keeps the active backend across restarts.
    #[arg(long, env = "HANDOFF_STATE", default_value = "/var/lib/handoff/state.json", value_name = "PATH")]
    state: PathBuf,

    /// Backend HOST:PORT to use when the state file names none.
    #[arg(long, env = "HANDOFF_BACKEND", value_name = "HOST:PORT")]
    backend: Option<String>,

    /// How long a switch or shutdown waits for in-flight requests.
    #[arg(long, env = "HANDOFF_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration, value_name = "DURATION")]
    drain_timeout: Duration,

    /// How long a backend may take to answer before the client gets 504.
    #[arg(long, env = "HANDOFF_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = duration, value_name = "DURATION")]
    upstream_timeout: Duration,

    /// How long connecting to a backend may take before the client gets 502.
    #[arg(long, env = "HANDOFF_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration, value_name = "DURATION")]
    upstream_connect_timeout: Duration,

    /// A client must send a complete request head within this time.
    #[arg(long, env = "HANDOFF_HEADER_TIMEOUT", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    header_timeout: Duration,

    /// Log filter, RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info", value_name = "FILTER")]
    log: String,
}

fn duration(s: &str) -> Result<Duration, String> {
    handoff_shared::parse_duration(s)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(addr) = &cli.backend {
        handoff_shared::parse_backend_addr(addr).map_err(anyhow::Error::msg).context("--backend")?;
    }
    let control_group = cli.control_group.as_deref().map(resolve_group).transpose().context("--control-group")?;
    let config = Config {
        http: cli.http,
        control: cli.control,
        control_group,
        state: cli.state,
        backend: cli.backend,
        drain_timeout: cli.drain_timeout,
        upstream_timeout: cli.upstream_timeout,
        upstream: UpstreamSettings { connect_timeout: cli.upstream_connect_timeout, ..Default::default() },
        header_read_timeout: cli.header_timeout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let control_path = config.control.clone();
        handoff_proxy::run(config, shutdown_signal(), |listeners| {
            // One stable line on stdout: scripts and tests wait for it.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "handoff-proxy ready http={} control={}",
                listeners.http.as_deref().unwrap_or("-"),
                control_path.display()
            );
            let _ = out.flush();
        })
        .await
    })?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// A group name from /etc/group, or a numeric gid.
fn resolve_group(name: &str) -> Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, gid)| gid.parse().ok())
        .with_context(|| format!("no group named {name:?}"))
}
