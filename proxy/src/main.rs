//! The `handoff-proxy` binary: flags and environment in, [`Config`] out, run.
#![forbid(unsafe_code)]

/// The proxy allocates small, short-lived buffers on every request, from
/// several threads; mimalloc's per-thread free lists cost less there than
/// glibc's malloc (measured in benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod config_file;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, LogFormat};
use handoff_proxy::config::Config;
use handoff_proxy::upstream::UpstreamSettings;
use std::io::Write;

fn main() -> Result<()> {
    // `--upgrade --background` starts the new process through an
    // intermediate one (see the launch module): that step ends here, and
    // the new process waits until the intermediate is gone.
    handoff_proxy::upgrade::launch::spawn_step();
    handoff_proxy::upgrade::launch::wait_adopted();
    let cli = parse_cli()?;
    if cli.background {
        let outcome = handoff_proxy::upgrade::launch::run(std::env::args_os().collect())
            .context("starting the new handoff-proxy")?;
        println!("{}", outcome.summary);
        std::process::exit(outcome.exit_code);
    }
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log).context("invalid --log filter")?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
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
    let tls = cli.tls().map_err(anyhow::Error::msg)?;
    let limits = cli.limits().map_err(anyhow::Error::msg)?;
    // Before any thread starts: this reads and clears LISTEN_FDS.
    let activated = handoff_proxy::upgrade::systemd::Activated::from_env()
        .context("socket activation (LISTEN_FDS)")?;
    let upgrade_socket = cli
        .upgrade_socket
        .clone()
        .unwrap_or_else(|| handoff_proxy::upgrade::default_socket(&cli.control));
    let upgrading = cli.upgrade;
    let start = handoff_proxy::Start {
        take_over: cli.upgrade,
        activated: Some(activated),
    };
    let config = Config {
        admin: cli.admin.0,
        http: cli.http,
        control: cli.control,
        upgrade_socket,
        control_group,
        state: cli.state,
        backend: cli.backend,
        backend_protocol: cli.backend_protocol,
        drain_timeout: cli.drain_timeout,
        upstream: UpstreamSettings {
            connect_timeout: cli.upstream_connect_timeout,
            response_timeout: cli.upstream_timeout,
            ..Default::default()
        },
        header_read_timeout: cli.header_timeout,
        tls,
        limits,
        workers: cli
            .workers
            .map_or_else(handoff_proxy::workers::default_count, usize::from),
        buffering: handoff_proxy::buffering::Buffering {
            request: cli.request_buffer,
            response: cli.response_buffer,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let shutdown = {
        let _in_runtime = runtime.enter();
        if config.tls.is_none() {
            ignore_hangup()?;
        }
        shutdown_signal()?
    };
    runtime
        .block_on(async move {
            let control_path = config.control.clone();
            handoff_proxy::run(
                config,
                start,
                shutdown,
                |ready| print_ready(ready, &control_path),
                print_report,
            )
            .await
        })
        .context(if upgrading {
            "upgrade failed; the running handoff-proxy keeps its sockets and keeps serving"
        } else {
            "handoff-proxy stopped"
        })?;
    Ok(())
}

/// One stable line on stdout: scripts and tests wait for it. The fields
/// after `control=` come and go (https, then generation and, after a
/// hand-off, the old process); parse them by name.
fn print_ready(ready: &handoff_proxy::Ready, control: &std::path::Path) {
    let listeners = ready.listeners;
    let mut line = format!(
        "handoff-proxy ready http={} admin={} control={}",
        listeners.http.as_deref().unwrap_or("-"),
        listeners.admin.as_deref().unwrap_or("-"),
        control.display(),
    );
    if let Some(https) = &listeners.https {
        line += &format!(" https={https}");
    }
    line += &format!(
        " generation={} pid={}",
        ready.generation,
        std::process::id()
    );
    if let Some((pid, connections)) = ready.took_over {
        line += &format!(" took_over_from={pid} old_connections={connections}");
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// After a hand-off, while the old process drains, every few seconds:
/// `handoff-proxy draining old-process pid=N in_flight=N connections=N
/// waited_ms=N`. Then one more line when it finished (or went away
/// without saying): `handoff-proxy old-process pid=N drained=true
/// in_flight=0 connections_closed=true waited_ms=N`, or `...
/// drained=unknown error="..."`.
fn print_report(pid: u32, event: handoff_proxy::upgrade::OldProcess) {
    let report = match event {
        handoff_proxy::upgrade::OldProcess::Draining(p) => {
            tracing::info!(
                old_pid = pid,
                in_flight = p.in_flight,
                connections = p.connections,
                waited_ms = p.waited_ms,
                "the old process is draining"
            );
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "handoff-proxy draining old-process pid={pid} in_flight={} connections={} waited_ms={}",
                p.in_flight, p.connections, p.waited_ms
            );
            let _ = out.flush();
            return;
        }
        handoff_proxy::upgrade::OldProcess::Finished(report) => report,
    };
    let line = match report {
        Ok(r) => {
            tracing::info!(
                old_pid = pid,
                drained = r.drained,
                in_flight = r.in_flight,
                connections_closed = r.connections_closed,
                waited_ms = r.waited_ms,
                "the old process finished"
            );
            format!(
                "handoff-proxy old-process pid={pid} drained={} in_flight={} connections_closed={} waited_ms={}",
                r.drained, r.in_flight, r.connections_closed, r.waited_ms
            )
        }
        Err(e) => {
            tracing::warn!(old_pid = pid, error = %e, "the old process ended without a drain report");
            format!(
                "handoff-proxy old-process pid={pid} drained=unknown error={:?}",
                e.to_string()
            )
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Flags and env first; then, with `--config`, again with the file's settings
/// inserted where neither a flag nor an env var gave one.
fn parse_cli() -> Result<Cli> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = Cli::command();
    let matches = cmd
        .clone()
        .try_get_matches_from(&args)
        .unwrap_or_else(|e| e.exit());
    let Some(path) = matches.get_one::<std::path::PathBuf>("config") else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let from_file = config_file::args_from_file(path, &cmd, &matches)?;
    let merged = args
        .iter()
        .take(1)
        .chain(&from_file)
        .chain(args.iter().skip(1));
    let matches = cmd.try_get_matches_from(merged).map_err(|e| {
        anyhow::anyhow!(
            "config file {}: {}",
            path.display(),
            e.to_string().trim_start_matches("error: ").trim_end()
        )
    })?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// SIGHUP reloads certificates when TLS is on. Without TLS it must still not
/// end the proxy (the default action), since `systemctl reload` sends it.
fn ignore_hangup() -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: nothing to reload (TLS is off)");
        }
    });
    Ok(())
}

/// Installs the SIGTERM/SIGINT handlers now (not at first poll), so a signal
/// that arrives while the proxy starts up is a graceful stop, not a kill.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
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
