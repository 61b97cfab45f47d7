//! handoff-proxy: a reverse proxy whose apps' backends can be switched
//! atomically, with the old backend drained before anyone stops it.
//!
//! # Architecture map
//!
//! One request, in order (the request path):
//! - [`listener`]: accepts (one event loop per CPU, [`workers`]), TLS and
//!   SNI ([`tls`]), the HTTP/2 preface check ([`preface`]); [`admission`]
//!   decides each request (the checks of [`limits`]: Host, framing, sizes;
//!   redirects; 421 for a host the certificate does not serve); [`wire`] times heads and idle connections, [`head_scan`]
//!   spots smuggling-shaped heads, [`deadline`] is their clock.
//! - [`forward`]: the named phases: refuse loops ([`headers`]' `Via`), pick
//!   the app ([`apps`] holds every app, [`routes`] is the route table), read a
//!   small body whole ([`buffering`], [`request_body`]), pick that app's active generation
//!   ([`router`]), forward over the proxy's own HTTP/1.1 client
//!   ([`upstream`]: encode, exchange, decode, pool) or to an h2c backend
//!   ([`forward_h2c`]), pass trailers ([`trailers`]), and stream the answer
//!   back ([`body`]); [`linger`] gives an idle client's pinned upstream
//!   connection back to the pool. Both forwarders (and [`admission`]) take
//!   what they keep about the client connection, and the proxy's own short
//!   answers, from [`client`].
//! - [`drain`] counts what each generation still serves; [`observe`] writes
//!   the access log and feeds [`metrics`] ([`histogram`]), which [`admin`]
//!   serves.
//!
//! One change, in order (the control path):
//! - [`control`]: the Unix-socket API (access, JSON, TLS reload);
//!   [`control_apps`]: apps and the default-app shorthands; [`switch`]
//!   checks a backend before anything changes; [`state`] writes every app
//!   down before a change is acknowledged.
//!
//! The process itself: [`config`] (built by `main.rs` from flags, env and
//! TOML), [`sockets`] (bind, or receive from systemd or an old process),
//! [`upgrade`] (hand the sockets to a new process), [`retire`] (close client
//! connections without cutting a request).
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod apps;
pub mod body;
pub mod buffering;
pub mod client;
pub mod config;
pub mod control;
pub mod control_apps;
pub mod deadline;
pub mod drain;
pub mod forward;
pub mod forward_h2c;
pub mod head_scan;
pub mod headers;
pub mod histogram;
pub mod limits;
pub mod linger;
pub mod listener;
pub mod metrics;
pub mod observe;
pub mod preface;
pub mod request_body;
pub mod retire;
pub mod router;
pub mod routes;
pub mod sockets;
pub mod state;
pub mod switch;
pub mod tls;
pub mod trailers;
pub mod upgrade;
pub mod upstream;
pub mod wire;
pub mod workers;

use config::Config;
use handoff_shared::Listeners;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("invalid initial backend: {0}")]
    Backend(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] control::ControlSocketError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot start the connection threads: {0}")]
    Workers(std::io::Error),
    #[error(transparent)]
    Upgrade(#[from] upgrade::UpgradeError),
}

/// How the process gets its listening sockets, besides binding them.
#[derive(Default)]
pub struct Start {
    /// Take them over from the running process (`--upgrade`).
    pub take_over: bool,
    /// Passed by systemd (socket activation).
    pub activated: Option<upgrade::systemd::Activated>,
}

/// What the process tells once it serves.
pub struct Ready<'a> {
    pub listeners: &'a Listeners,
    /// 1 when started afresh, one more than the old process's after a hand-off.
    pub generation: u64,
    /// After a hand-off: the old process's pid and the client connections
    /// it still held (it finishes them itself).
    pub took_over: Option<(u32, u64)>,
}

/// Runs the proxy until `shutdown` resolves or a new process takes its
/// sockets over, then stops accepting, lets in-flight requests finish (up
/// to the drain timeout) and returns. `on_ready` is called once every
/// listener serves; after a hand-off, `on_old` hears how the old process's
/// drain goes and ends, from another thread, after `on_ready` returned.
pub async fn run(
    config: Config,
    mut start: Start,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Ready),
    mut on_old: impl FnMut(u32, upgrade::OldProcess) + Send + 'static,
) -> Result<(), ProxyError> {
    let mut taker = match start.take_over {
        true => Some(take_over(&config).await?),
        false => None,
    };
    let generation = taker.as_ref().map_or(1, |t| t.offer.generation + 1);
    if let Some(t) = &taker {
        router::continue_after(t.offer.backend_generation);
    }
    // One set of metrics for the life of the process: requests finish
    // (and are counted) on every connection thread, and a `&'static` costs
    // them no shared reference count.
    let metrics: &'static metrics::Metrics = Box::leak(Box::new(metrics::Metrics::new()));
    let apps = Arc::new(apps::Apps::new(config.upstream.clone(), metrics));
    restore_apps(&config, &apps)?;

    let systemd_owns = |role| {
        start
            .activated
            .as_ref()
            .is_some_and(|a: &upgrade::systemd::Activated| a.has_unix(role))
    };
    let keep_files = (
        systemd_owns(upgrade::Role::Control),
        systemd_owns(upgrade::Role::Upgrade),
    );
    let sockets = sockets::Sockets::open(&config, taker.as_mut(), start.activated.as_mut()).await?;
    let duplicates = sockets.duplicates().map_err(upgrade::UpgradeError::Io)?;
    let listeners = Listeners {
        http: sockets.http.local_addr().ok().map(|a| a.to_string()),
        https: sockets.tls.as_ref().map(|t| t.addr.to_string()),
        admin: sockets
            .admin
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string()),
    };
    metrics.set_process_generation(generation);
    let retire = retire::Retire::new();

    let control = Arc::new(control::Control {
        apps: Arc::clone(&apps),
        state_path: config.state.clone(),
        default_drain_timeout: config.drain_timeout,
        listeners: listeners.clone(),
        switch_lock: tokio::sync::Mutex::new(()),
        tls: sockets.tls.as_ref().map(|t| Arc::clone(&t.resolver)),
        metrics,
        access: control::Access {
            own_uid: control::own_uid(),
            group: config.control_group,
        },
        handed_off: std::sync::atomic::AtomicBool::new(false),
    });
    let forwarder = Arc::new(forward::Forwarder {
        apps: Arc::clone(&apps),
        metrics,
        via: headers::via_pseudonym(),
        buffering: config.buffering,
    });
    let workers = Arc::new(workers::Workers::start(config.workers).map_err(ProxyError::Workers)?);

    // Everything is ready but nothing is accepted yet: after a hand-off,
    // the old process stops only once it has answered this.
    let (took_over, old_report) = match taker {
        Some(t) => {
            let (pid, connections, t) = confirm_take_over(t).await?;
            (Some((pid, connections)), Some((pid, t)))
        }
        None => (None, None),
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let control_task = tokio::spawn(Arc::clone(&control).serve(sockets.control, stop_rx.clone()));
    if let Some(listener) = sockets.admin {
        let admin = Arc::new(admin::Admin {
            metrics,
            apps: Arc::clone(&apps),
        });
        tokio::spawn(admin.serve(listener, stop_rx.clone()));
    }
    let accept_tasks = listener::start(
        sockets.http,
        sockets.tls,
        forwarder,
        &config,
        Arc::clone(&workers),
        Arc::clone(&retire),
        stop_rx.clone(),
    );
    let giver = upgrade::give::Giver {
        listener: sockets.upgrade,
        sockets: duplicates,
        control: Arc::clone(&control),
        generation,
        control_path: config.control.clone(),
        upgrade_path: config.upgrade_socket.clone(),
        retire: Arc::clone(&retire),
        metrics,
    };
    let mut give_task = tokio::spawn(giver.serve(stop_rx.clone()));

    on_ready(&Ready {
        listeners: &listeners,
        generation,
        took_over,
    });
    // Only now: the old process's report may come at once (nothing to
    // drain), and its line must not come before the ready one.
    if let Some((pid, taker)) = old_report {
        std::thread::spawn(move || taker.follow(|event| on_old(pid, event)));
    }
    tracing::info!(http = ?listeners.http, control = %config.control.display(), workers = config.workers, generation, pid = std::process::id(), "handoff-proxy ready");
    upgrade::systemd::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));

    let handed_off = tokio::select! {
        () = shutdown => {
            give_task.abort();
            upgrade::systemd::notify("STOPPING=1");
            tracing::info!(generation, "shutting down: no new connections, waiting for in-flight requests");
            None
        }
        done = &mut give_task => done.ok().flatten(),
    };
    if let Some(h) = &handed_off {
        // Before this process can exit: systemd must already follow the
        // taker, or it takes this exit for the end of the service and stops
        // the unit, taker included. The taker's own MAINPID= may come later
        // than this exit (a process with nothing to drain exits at once),
        // while this datagram is queued before it.
        upgrade::systemd::notify(&format!("MAINPID={}", h.taker_pid));
        tracing::info!(
            generation,
            taker_pid = h.taker_pid,
            connections = h.connections,
            "handed over: no new connections here, waiting for in-flight requests"
        );
    }
    let _ = stop_tx.send(true);
    for task in accept_tasks {
        let _ = task.await;
    }
    let progress = handed_off
        .as_ref()
        .and_then(|h| h.progress())
        .map(|sender| {
            tokio::spawn(tell_progress(
                sender,
                Arc::clone(&apps),
                Arc::clone(&retire),
            ))
        });
    let report = drain_and_stop(&config, &apps, &retire, workers).await;
    if let Some(task) = progress {
        // Awaited, not only aborted: no progress may be written after this.
        task.abort();
        let _ = task.await;
    }
    control_task.abort();

    let kept = handed_off.as_ref().map_or(&[][..], |h| &h.kept[..]);
    if !keep_files.0 && !kept.contains(&upgrade::Role::Control) {
        let _ = std::fs::remove_file(&config.control);
    }
    if !keep_files.1 && !kept.contains(&upgrade::Role::Upgrade) {
        let _ = std::fs::remove_file(&config.upgrade_socket);
    }
    tracing::info!(
        generation,
        connections_closed = report.connections_closed,
        drained = report.drained,
        in_flight = report.in_flight,
        "stopped"
    );
    if let Some(h) = handed_off {
        h.report(report);
    }
    Ok(())
}

/// `--upgrade`: receives the running process's sockets.
async fn take_over(config: &Config) -> Result<upgrade::take::Taker, ProxyError> {
    let path = config.upgrade_socket.clone();
    tokio::task::spawn_blocking(move || upgrade::take::connect(&path))
        .await
        .map_err(|e| upgrade::UpgradeError::Protocol(e.to_string()))?
        .map_err(ProxyError::from)
}

/// Tells the old process this one is ready and waits for its answer. Its
/// drain report comes later on the same taker, read on a thread of its own.
async fn confirm_take_over(
    mut taker: upgrade::take::Taker,
) -> Result<(u32, u64, upgrade::take::Taker), ProxyError> {
    let pid = taker.offer.pid;
    let (taker, accepted) = tokio::task::spawn_blocking(move || {
        let accepted = taker.ready();
        (taker, accepted)
    })
    .await
    .map_err(|e| upgrade::UpgradeError::Protocol(e.to_string()))?;
    let accepted = accepted?;
    tracing::info!(
        old_pid = pid,
        old_connections = accepted.connections,
        "took over the listening sockets; the old process drains"
    );
    Ok((pid, accepted.connections, taker))
}

/// After a hand-off, tells the taker every [`upgrade::PROGRESS_EVERY`] what
/// the drain still waits for, until aborted.
async fn tell_progress(
    sender: upgrade::give::ProgressSender,
    apps: Arc<apps::Apps>,
    retire: Arc<retire::Retire>,
) {
    let start = tokio::time::Instant::now();
    let every = upgrade::PROGRESS_EVERY;
    let mut tick = tokio::time::interval_at(start + every, every);
    loop {
        tick.tick().await;
        let in_flight = apps
            .generations()
            .iter()
            .map(|(_, g, _)| g.in_flight())
            .sum();
        sender.send(upgrade::Progress {
            in_flight,
            connections: retire.open() as u64,
            waited_ms: start.elapsed().as_millis() as u64,
        });
    }
}

/// Retires the client connections, waits for requests and tunnels up to
/// the drain timeout, then stops the connection threads.
async fn drain_and_stop(
    config: &Config,
    apps: &apps::Apps,
    retire: &retire::Retire,
    workers: Arc<workers::Workers>,
) -> upgrade::Report {
    let start = tokio::time::Instant::now();
    let deadline = start + config.drain_timeout;
    let connections_closed = tokio::time::timeout_at(deadline, retire.retire_all())
        .await
        .is_ok();
    // Upgraded connections (WebSockets) left hyper; wait for them too.
    let all: Vec<_> = apps.generations().into_iter().map(|(_, g, _)| g).collect();
    for g in &all {
        g.retire();
    }
    let outcome = drain::wait_all(
        &all,
        deadline.saturating_duration_since(tokio::time::Instant::now()),
    )
    .await;
    // Stops the connection threads; what is left on them (idle upstream
    // connections, tunnels past the deadline) is cut.
    drop(workers);
    upgrade::Report {
        connections_closed,
        drained: outcome.drained,
        in_flight: outcome.in_flight,
        waited_ms: start.elapsed().as_millis() as u64,
    }
}

/// Brings back every app from the state file; with none there, `--backend`
/// becomes the default app (and is written down).
fn restore_apps(config: &Config, apps: &apps::Apps) -> Result<(), ProxyError> {
    let mut saved = state::load(&config.state)?;
    if saved.apps.is_empty() {
        if let Some(addr) = &config.backend {
            saved.apps.push(state::AppState {
                name: handoff_shared::DEFAULT_APP.to_string(),
                default: true,
                backend: Some(addr.clone()),
                protocol: config.backend_protocol,
                ..state::AppState::default()
            });
            check_backend(addr)?;
            state::save(&config.state, &saved)?;
            tracing::info!(backend = %addr, "initial backend from --backend");
        }
    }
    for app in saved.apps {
        let spec = routes::RouteSpec {
            hosts: app.hosts,
            path_prefixes: app.path_prefixes,
            strip_prefix: app.strip_prefix,
            default: app.default,
        };
        let (restored, _) = apps
            .upsert(&app.name, spec)
            .map_err(|e| ProxyError::Backend(format!("state file, app {:?}: {e}", app.name)))?;
        if let Some(addr) = app.backend {
            restored.router.switch(check_backend(&addr)?, app.protocol);
            tracing::info!(app = %app.name, backend = %addr, protocol = %app.protocol, "app restored");
        }
    }
    Ok(())
}

fn check_backend(addr: &str) -> Result<http::uri::Authority, ProxyError> {
    handoff_shared::parse_backend_addr(addr).map_err(ProxyError::Backend)?;
    addr.parse()
        .map_err(|e| ProxyError::Backend(format!("{addr:?}: {e}")))
}
