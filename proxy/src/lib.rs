//! handoff-proxy: a reverse proxy whose backend can be switched atomically,
//! with the old backend drained before anyone stops it.
//!
//! The pipeline, one module per step: [`listener`] accepts, [`forward`] picks
//! the app from the route table ([`apps`], [`routes`]) and that app's active
//! generation from its [`router`], and streams the exchange, [`drain`]
//! counts what each generation still serves, [`control`] switches, [`state`]
//! remembers. The binary (`main.rs`) turns flags into a [`config::Config`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod apps;
pub mod body;
pub mod buffering;
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
pub mod router;
pub mod routes;
pub mod state;
pub mod switch;
pub mod tls;
pub mod trailers;
pub mod upstream;
pub mod wire;
pub mod workers;

use config::Config;
use handoff_shared::Listeners;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

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
}

/// Runs the proxy until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (up to the drain timeout) and returns.
/// `on_ready` is called once every listener is bound.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Listeners),
) -> Result<(), ProxyError> {
    // One set of metrics for the life of the process: requests finish
    // (and are counted) on every connection thread, and a `&'static` costs
    // them no shared reference count.
    let metrics: &'static metrics::Metrics = Box::leak(Box::new(metrics::Metrics::new()));
    let apps = Arc::new(apps::Apps::new(config.upstream.clone(), metrics));
    restore_apps(&config, &apps)?;

    let http = TcpListener::bind(config.http)
        .await
        .map_err(|source| ProxyError::Bind {
            addr: config.http,
            source,
        })?;
    let http_addr = http.local_addr().map_err(|source| ProxyError::Bind {
        addr: config.http,
        source,
    })?;
    let tls = match &config.tls {
        Some(settings) => Some(listener::bind_tls(settings).await?),
        None => None,
    };
    let control_listener = control::bind(&config.control, config.control_group)?;
    let admin_listener = match config.admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind { addr, source })?,
        ),
        None => None,
    };
    let listeners = Listeners {
        http: Some(http_addr.to_string()),
        https: tls.as_ref().map(|t| t.addr.to_string()),
        admin: admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string()),
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let control = Arc::new(control::Control {
        apps: Arc::clone(&apps),
        state_path: config.state.clone(),
        default_drain_timeout: config.drain_timeout,
        listeners: listeners.clone(),
        switch_lock: tokio::sync::Mutex::new(()),
        tls: tls.as_ref().map(|t| Arc::clone(&t.resolver)),
        metrics,
        access: control::Access {
            own_uid: control::own_uid(),
            group: config.control_group,
        },
    });
    let control_task = tokio::spawn(control.serve(control_listener, stop_rx.clone()));

    if let Some(listener) = admin_listener {
        let admin = Arc::new(admin::Admin {
            metrics,
            apps: Arc::clone(&apps),
        });
        tokio::spawn(admin.serve(listener, stop_rx.clone()));
    }
    let forwarder = Arc::new(forward::Forwarder {
        apps: Arc::clone(&apps),
        metrics,
        via: headers::via_pseudonym(),
        buffering: config.buffering,
    });
    let workers = Arc::new(workers::Workers::start(config.workers).map_err(ProxyError::Workers)?);
    let (graceful, accept_tasks) = listener::start(
        http,
        tls,
        forwarder,
        &config,
        Arc::clone(&workers),
        stop_rx.clone(),
    );

    on_ready(&listeners);
    tracing::info!(http = %http_addr, control = %config.control.display(), workers = config.workers, "handoff-proxy ready");

    shutdown.await;
    tracing::info!("shutting down: no new connections, waiting for in-flight requests");
    let _ = stop_tx.send(true);
    for task in accept_tasks {
        let _ = task.await;
    }
    let deadline = tokio::time::Instant::now() + config.drain_timeout;
    let graceful =
        Arc::try_unwrap(graceful).unwrap_or_else(|_| unreachable!("accept loops have ended"));
    let connections_closed = tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_ok();
    // Upgraded connections (WebSockets) left hyper's watch; wait for them too.
    let all: Vec<_> = apps.generations().into_iter().map(|(_, g, _)| g).collect();
    for g in &all {
        g.retire();
    }
    let outcome = drain::wait_all(
        &all,
        deadline.saturating_duration_since(tokio::time::Instant::now()),
    )
    .await;
    control_task.abort();
    // Stops the connection threads; what is left on them (idle upstream
    // connections, tunnels past the deadline) is cut.
    drop(workers);
    let _ = std::fs::remove_file(&config.control);
    tracing::info!(
        connections_closed,
        drained = outcome.drained,
        in_flight = outcome.in_flight,
        "stopped"
    );
    Ok(())
}

/// The state file wins over `--backend`, so a restart never undoes a deploy.
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
