//! `handoff status` and `handoff releases`: read-only, no lock, change nothing.
//! (`status` without `--name` is `handoff list`, in `listing.rs`.)
//!
//! `status` tells the truth about what clients get: it asks the proxy what
//! it routes to, looks at that container's state (running, restarts, exit
//! code) and probes it. When the live backend is not answering it exits 5
//! with one line saying clients are getting errors and the command to fix
//! it; `--json` carries the same facts.

use crate::cli::{validate_app_name, Global, ReleasesArgs, StatusArgs};
use crate::docker::Engine;
use crate::error::{Failure, Result};
use crate::health;
use crate::listing;
use crate::output::Output;
use crate::proxy::{Proxy, Target};
use crate::releases::{ContainerInfo, Releases, LABEL_DEPLOYED_AT};
use crate::report::Report;
use crate::routes::Routes;
use serde_json::{json, Value};
use std::time::Duration;

fn row(releases: &Releases, c: &ContainerInfo) -> (String, Value) {
    let role = releases.role(c);
    let text = format!(
        "  {:>4} {:<9} {}  image {}{}  {}  backend {}  deployed {}",
        c.release().map_or("?".into(), |n| n.to_string()),
        role,
        c.name,
        c.image(),
        c.digest().map_or(String::new(), |d| format!(" ({d})")),
        c.state_text(),
        c.backend().unwrap_or_else(|| "-".into()),
        c.labels.get(LABEL_DEPLOYED_AT).map_or("?", String::as_str),
    );
    let value = json!({
        "release": c.release(),
        "container": c.name,
        "id": c.id,
        "role": role,
        "image": c.image(),
        "digest": c.digest(),
        "state": c.status,
        "running": c.running,
        "restarting": c.restarting,
        "restart_count": c.restart_count,
        "exit_code": c.exit_code,
        "backend": c.backend(),
        "deployed_at": c.labels.get(LABEL_DEPLOYED_AT),
        "started_at": c.started_at,
        "finished_at": c.finished_at,
    });
    (text, value)
}

pub async fn releases(
    global: &Global,
    args: &ReleasesArgs,
    out: &Output,
    report: &mut Report,
) -> Result<()> {
    report.set("command", "releases");
    report.set("app", args.name.as_str());
    validate_app_name(&args.name).map_err(Failure::Usage)?;
    let engine = Engine::connect(&global.docker_host, Duration::from_secs(10)).await?;
    let status = resolve(global, &args.name).await.status().await.ok();
    let releases = Releases::new(engine.app_containers(&args.name).await?, status.as_ref());
    let mut text = vec![format!("releases of {}, newest first:", args.name)];
    let mut values = Vec::new();
    for c in &releases.list {
        let (t, v) = row(&releases, c);
        text.push(t);
        values.push(v);
    }
    if releases.list.is_empty() {
        text.push("  none".into());
    }
    report.set("releases", Value::Array(values));
    out.result_text(&text.join("\n"));
    Ok(())
}

pub async fn run(
    global: &Global,
    args: &StatusArgs,
    out: &Output,
    report: &mut Report,
) -> Result<()> {
    let Some(name) = &args.name else {
        return listing::run(global, out, report, "status").await;
    };
    report.set("command", "status");
    report.set("app", name.as_str());
    validate_app_name(name).map_err(Failure::Usage)?;
    let engine = Engine::connect(&global.docker_host, Duration::from_secs(10)).await?;
    let proxy = resolve(global, name).await;
    // The releases are still worth showing when the proxy is down.
    let proxy_status = proxy.status().await;
    let releases = Releases::new(
        engine.app_containers(name).await?,
        proxy_status.as_ref().ok(),
    );
    let client = health::client(args.health_timeout);

    let mut text = vec![format!("app {name}")];
    match &proxy_status {
        Ok(s) => {
            text.push(routes_line(&proxy, report).await);
            let draining: Vec<String> = s
                .draining
                .iter()
                .map(|d| format!("{} ({} in flight)", d.backend, d.in_flight))
                .collect();
            text.push(format!(
                "proxy: backend {}, generation {}, {} in flight, draining: {}",
                s.backend.as_deref().unwrap_or("none"),
                s.generation,
                s.in_flight,
                if draining.is_empty() {
                    "none".to_string()
                } else {
                    draining.join(", ")
                }
            ));
            report.set("proxy", serde_json::to_value(s).unwrap_or(Value::Null));
        }
        Err(e) => {
            text.push(format!("proxy: {e}"));
            report.set("proxy", json!({"error": e.to_string()}));
        }
    }
    let live = releases.live();
    let verdict = match (&proxy_status, live) {
        (Err(_), _) => None,
        (Ok(_), Some(c)) => Some(probe_live(&client, c).await),
        (Ok(s), None) => Some(match s.backend.as_deref() {
            None => Err("the proxy has no backend".to_string()),
            Some(b) => health::probe(&client, b, "/")
                .await
                .map(|_| format!("{b} answers (not a release of {name})"))
                .or_else(|e| {
                    if e.starts_with("HTTP") {
                        Ok(format!("{b} answers {e} (not a release of {name})"))
                    } else {
                        Err(format!("{b} is not a release of {name} and {e}"))
                    }
                }),
        }),
    };
    let mut values = Vec::new();
    text.push("releases, newest first:".into());
    for c in &releases.list {
        let (t, v) = row(&releases, c);
        text.push(t);
        values.push(v);
    }
    report.set("releases", Value::Array(values));
    report.set(
        "live",
        live.map(|c| {
            json!({"container": c.name, "release": c.release(), "image": c.image(),
                             "state": c.status, "restart_count": c.restart_count,
                             "exit_code": c.exit_code})
        }),
    );
    let fix = format!("handoff rollback --name {name}");
    match &verdict {
        Some(Ok(answer)) => {
            text.push(format!("serving: yes, {answer}"));
            report.set("serving", true);
        }
        Some(Err(why)) => {
            text.push(format!(
                "CLIENTS ARE GETTING ERRORS: {why}. Fix: {fix} (or deploy a good release)"
            ));
            report.set("serving", false);
            report.set("problem", why.as_str());
            report.set("fix", fix.as_str());
        }
        None => report.set("serving", Value::Null),
    }
    out.result_text(&text.join("\n"));
    proxy_status?;
    match verdict {
        Some(Err(why)) => Err(Failure::ClientsFailing(format!(
            "clients are getting errors: {why}; fix: {fix}"
        ))),
        _ => Ok(()),
    }
}

/// The app's proxy side, found by the rule of [`Proxy::resolve`]; when the
/// proxy cannot be asked, the default app (whose status then says why).
async fn resolve(global: &Global, app: &str) -> Proxy {
    Proxy::resolve(&global.control, app, None)
        .await
        .unwrap_or_else(|_| Proxy::new(&global.control))
}

/// `routes: ...`: the hosts and prefixes of a host-routed app, or that it
/// is the default app.
async fn routes_line(proxy: &Proxy, report: &mut Report) -> String {
    match proxy.target() {
        Target::Default => {
            report.set("routes", Value::Null);
            "routes: the default app (requests for hosts no other app names)".into()
        }
        Target::App { name, .. } => match proxy.client().app(name).await {
            Ok(app) => {
                let routes = Routes::of(&app);
                report.set("routes", routes.to_json());
                format!(
                    "routes: {}{}",
                    routes.text(),
                    if app.default {
                        " (and the default app)"
                    } else {
                        ""
                    }
                )
            }
            Err(e) => format!("routes: unknown ({e})"),
        },
    }
}

/// The live release as clients see it: Docker's state first (a stopped or
/// crash-looping container cannot serve), then a health check.
async fn probe_live(
    client: &reqwest::Client,
    c: &ContainerInfo,
) -> std::result::Result<String, String> {
    if !c.running || c.restarting {
        return Err(format!("the live release {} is {}", c.name, c.state_text()));
    }
    let Some(addr) = c.health_addr() else {
        return Err(format!(
            "the live release {} publishes no health port",
            c.name
        ));
    };
    match health::probe(client, addr, c.health_path()).await {
        Ok(answer) => Ok(format!(
            "{} is running ({} restarts) and healthy ({answer} on {})",
            c.name,
            c.restart_count,
            c.health_path()
        )),
        Err(why) => Err(format!(
            "the live release {} is running but its health check fails: {why}",
            c.name
        )),
    }
}
