//! `handoff list` (and `handoff status` without `--name`): every app the
//! proxy routes, read-only, no lock.
//!
//! The proxy is the truth about routes, backends and drains
//! (`GET /v1/apps`); Docker only adds which release container serves each
//! backend, and the listing still comes without it when Docker cannot be
//! asked. A proxy older than the route table (no `/v1/apps`) has one app,
//! the default one, read from `GET /v1/status`.

use crate::cli::Global;
use crate::docker::Engine;
use crate::error::Result;
use crate::output::Output;
use crate::proxy::{status_of, Proxy};
use crate::report::Report;
use crate::routes;
use handoff_shared::{AppStatus, ControlError, DEFAULT_APP};
use serde_json::{json, Value};
use std::time::Duration;

pub async fn run(global: &Global, out: &Output, report: &mut Report, command: &str) -> Result<()> {
    report.set("command", command);
    let proxy = Proxy::new(&global.control);
    let apps = match proxy.client().apps().await {
        Ok(list) => list.apps,
        Err(ControlError::Api { status, .. }) if status.as_u16() == 404 => {
            vec![default_only(&proxy).await?]
        }
        Err(e) => return Err(proxy.err("list its apps", e)),
    };
    let engine = Engine::connect(&global.docker_host, Duration::from_secs(10))
        .await
        .ok();
    let mut text = vec![format!(
        "apps on the proxy at {}:",
        global.control.display()
    )];
    let mut values = Vec::new();
    for app in &apps {
        let release = match (&engine, app.backend.as_deref()) {
            (Some(engine), Some(backend)) => engine.other_app_at(backend, "").await.ok().flatten(),
            _ => None,
        };
        text.push(line(app, release.as_ref().map(|(_, c)| c.as_str())));
        values.push(value(app, release));
    }
    if apps.is_empty() {
        text.push("  none".into());
    }
    report.set("apps", Value::Array(values));
    out.result_text(&text.join("\n"));
    Ok(())
}

/// The one app of a proxy without `/v1/apps`.
async fn default_only(proxy: &Proxy) -> Result<AppStatus> {
    let s = proxy.status().await?;
    Ok(AppStatus {
        name: DEFAULT_APP.into(),
        default: true,
        backend: s.backend,
        protocol: s.protocol,
        generation: s.generation,
        in_flight: s.in_flight,
        draining: s.draining,
        ..Default::default()
    })
}

/// One app for people: name, routes, backend (and its release), load.
fn line(app: &AppStatus, release: Option<&str>) -> String {
    let mut routes = routes::describe(&app.hosts, &app.path_prefixes, app.strip_prefix);
    if app.default {
        routes = if app.hosts.is_empty() {
            "(default app)".into()
        } else {
            format!("{routes} (and the default app)")
        };
    }
    let s = status_of(app);
    let draining: Vec<String> = s
        .draining
        .iter()
        .map(|d| format!("{} ({} in flight)", d.backend, d.in_flight))
        .collect();
    format!(
        "  {:<16} {}  backend {}{}, generation {}, {} in flight, draining: {}",
        app.name,
        routes,
        s.backend.as_deref().unwrap_or("none"),
        release.map_or(String::new(), |r| format!(" ({r})")),
        s.generation,
        s.in_flight,
        if draining.is_empty() {
            "none".to_string()
        } else {
            draining.join(", ")
        }
    )
}

fn value(app: &AppStatus, release: Option<(String, String)>) -> Value {
    let mut v = serde_json::to_value(app).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        let (owner, container) = release.unzip();
        map.insert(
            "release".into(),
            json!({"app": owner, "container": container}),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_shared::DrainingGeneration;

    #[test]
    fn one_line_per_app_with_routes_backend_and_drains() {
        let shop = AppStatus {
            name: "shop".into(),
            hosts: vec!["shop.example.com".into(), "www.shop.example.com".into()],
            backend: Some("127.0.0.1:4002".into()),
            generation: 2,
            in_flight: 1,
            draining: vec![DrainingGeneration {
                backend: "127.0.0.1:4001".into(),
                generation: 1,
                in_flight: 4,
            }],
            ..Default::default()
        };
        let text = line(&shop, Some("shop-2"));
        assert!(
            text.contains("shop.example.com, www.shop.example.com  backend 127.0.0.1:4002 (shop-2), generation 2, 1 in flight, draining: 127.0.0.1:4001 (4 in flight)"),
            "{text}"
        );
        let default = AppStatus {
            name: "default".into(),
            default: true,
            ..Default::default()
        };
        let text = line(&default, None);
        assert!(text.contains("(default app)  backend none"), "{text}");
        let v = value(&shop, Some(("shop".into(), "shop-2".into())));
        assert_eq!(v["release"]["container"], "shop-2");
        assert_eq!(v["hosts"][1], "www.shop.example.com");
        assert_eq!(v["draining"][0]["in_flight"], 4);
        assert!(value(&default, None)["release"]["container"].is_null());
    }
}
