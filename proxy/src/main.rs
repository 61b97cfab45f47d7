//! The `handoff-proxy` binary: flags and environment in, [`Config`] out, run.
#![forbid(unsafe_code)]

mod cli;

use anyhow::{Context, Result};
use clap::Parser;
use cli::Cli;
use handoff_proxy::config::Config;
use handoff_proxy::upstream::UpstreamSettings;
use std::io::Write;

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(addr) = &cli.backend {
        handoff_shared::parse_backend_addr(addr)
            .map_err(anyhow::Error::msg)
            .context("--backend")?;
    }
    let control_group = cli
        .control_group
        .as_deref()
        .map(resolve_group)
        .transpose()
        .context("--control-group")?;
    let config = Config {
        http: cli.http,
        control: cli.control,
        control_group,
        state: cli.state,
        backend: cli.backend,
        drain_timeout: cli.drain_timeout,
        upstream_timeout: cli.upstream_timeout,
        upstream: UpstreamSettings {
            connect_timeout: cli.upstream_connect_timeout,
            ..Default::default()
        },
        header_read_timeout: cli.header_timeout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
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
