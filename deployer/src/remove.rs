//! `handoff remove --name APP`: the app goes off the proxy, then its
//! releases go.
//!
//! Order matters for the clients: `DELETE /v1/apps/{app}` first (the proxy
//! stops routing to the app and answers once its requests drained), and
//! only then are the containers stopped and removed. Under the app's lock,
//! so no deploy of the same app runs meanwhile.
//!
//! Which proxy app is removed:
//! - the proxy app named APP (host-routed, or the default app by that name);
//! - else the default app, when it routes to (or drains) a release of APP:
//!   the app was deployed without `--host`, and `PUT /v1/backend` made the
//!   default app for it;
//! - else none: only containers are removed.
//!
//! Refused (exit 1, nothing changed): a proxy app named APP that is the
//! default app while no container of APP exists (handoff did not deploy it
//! under that name; the message names the app whose release it routes to),
//! and an APP with neither a proxy app nor a container.
//!
//! A container that any app of the proxy still routes to or drains after
//! the delete is never stopped or removed; it is reported as kept.

use crate::cli::{validate_app_name, Global, RemoveArgs};
use crate::docker::Engine;
use crate::error::{Failure, Result};
use crate::lock;
use crate::output::{secs, Output};
use crate::proxy::{backends_of, Proxy, PROXY_RESTART_WAIT};
use crate::releases::ContainerInfo;
use crate::report::Report;
use handoff_shared::{AppStatus, ControlError, RemoveAppResponse};
use serde_json::json;
use std::time::{Duration, Instant};

/// What the proxy side of a removal is.
#[derive(Debug, PartialEq, Eq)]
enum Pick {
    /// Delete this proxy app.
    App(String),
    /// The proxy does not route to APP; only containers go.
    None,
    /// Refused: a default app with no container of APP, named APP.
    ForeignDefault,
}

pub async fn run(
    global: &Global,
    args: &RemoveArgs,
    out: &Output,
    report: &mut Report,
) -> Result<()> {
    let started = Instant::now();
    report.set("command", "remove");
    report.set("app", args.name.as_str());
    validate_app_name(&args.name).map_err(Failure::Usage)?;
    let _lock = lock::acquire(&global.state_dir, &args.name, "remove", args.wait_lock, out)?;
    let engine = Engine::connect(&global.docker_host, args.stop_timeout).await?;
    let proxy = Proxy::new(&global.control);
    let containers = engine.app_containers(&args.name).await?;
    let apps = all_apps(&proxy).await?;
    let target = match pick(&args.name, &apps, &containers) {
        Pick::ForeignDefault => {
            return Err(refuse_foreign_default(&engine, &args.name, &apps).await)
        }
        Pick::None if containers.is_empty() => {
            return Err(Failure::Usage(format!(
                "nothing to remove: the proxy has no app {0} and no container of {0} exists \
                 (`handoff list` shows the proxy's apps)",
                args.name
            )))
        }
        Pick::None => None,
        Pick::App(name) => Some(name),
    };
    report.set("proxy_app", target.clone());
    let mut cut = 0;
    if let Some(name) = &target {
        cut = take_off_proxy(&proxy, name, &args.name, out, report).await?;
    }
    let (removed, kept) = remove_containers(&engine, &proxy, &containers, args, out).await?;
    report.set("removed", removed.clone());
    report.set("kept", kept.clone());
    report.set("cut", cut);
    report.step("total", started.elapsed());
    let mut text = vec![match &target {
        Some(name) if *name == args.name => format!(
            "removed app {}: the proxy no longer routes to it",
            args.name
        ),
        Some(name) => format!(
            "removed app {}: it was the proxy's default app ({name}); requests for hosts no \
             app names now get the proxy's own 404 (503 while it has no app at all)",
            args.name
        ),
        None => format!("removed app {}: the proxy did not route to it", args.name),
    }];
    if cut > 0 {
        text.push(format!(
            "cut: {cut} requests were still running when the drain timed out"
        ));
    }
    text.push(format!(
        "containers removed: {}",
        if removed.is_empty() {
            "none".to_string()
        } else {
            removed.join(", ")
        }
    ));
    if !kept.is_empty() {
        text.push(format!(
            "containers kept (another app of the proxy still routes to them): {}",
            kept.join(", ")
        ));
    }
    out.result_text(&text.join("\n"));
    Ok(())
}

/// Every app of the proxy; a proxy without `/v1/apps` cannot remove one.
async fn all_apps(proxy: &Proxy) -> Result<Vec<AppStatus>> {
    proxy
        .client()
        .apps()
        .await
        .map(|a| a.apps)
        .map_err(|e| proxy.err("list its apps", e))
}

fn pick(app: &str, apps: &[AppStatus], containers: &[ContainerInfo]) -> Pick {
    if let Some(a) = apps.iter().find(|a| a.name == app) {
        if a.default && containers.is_empty() {
            return Pick::ForeignDefault;
        }
        return Pick::App(a.name.clone());
    }
    let routed_by_default = apps.iter().find(|a| {
        a.default
            && containers.iter().any(|c| {
                c.backend().is_some_and(|b| {
                    a.backend.as_deref() == Some(b.as_str())
                        || a.draining.iter().any(|d| d.backend == b)
                })
            })
    });
    match routed_by_default {
        Some(a) => Pick::App(a.name.clone()),
        None => Pick::None,
    }
}

async fn refuse_foreign_default(engine: &Engine, app: &str, apps: &[AppStatus]) -> Failure {
    let backend = apps
        .iter()
        .find(|a| a.name == app)
        .and_then(|a| a.backend.clone());
    let owner = match &backend {
        Some(b) => engine.other_app_at(b, app).await.ok().flatten(),
        None => None,
    };
    let hint = match owner {
        Some((other, container)) => format!(
            "; it routes to {container}, a release of {other}: `handoff remove --name {other}` \
             removes that app"
        ),
        None => format!("; if it must go, remove it with the control API (DELETE /v1/apps/{app})"),
    };
    Failure::Usage(format!(
        "the proxy's app {app} is its default app (`PUT /v1/backend` manages it) and no \
         container of {app} exists, so handoff did not deploy it under this name{hint}"
    ))
}

/// `DELETE /v1/apps/{name}`; a lost answer is settled by re-reading the
/// app. Returns the requests cut by a drain timeout.
async fn take_off_proxy(
    proxy: &Proxy,
    name: &str,
    app: &str,
    out: &Output,
    report: &mut Report,
) -> Result<u64> {
    out.step(format!(
        "removing app {name} from the proxy; it answers once the app's requests drained"
    ));
    let t = Instant::now();
    let answer = proxy.client().remove_app(name).await;
    report.step("drain", t.elapsed());
    let settled: Option<RemoveAppResponse> = match answer {
        Ok(r) => Some(r),
        // Gone already (e.g. a remove that was killed after the delete).
        Err(ControlError::Api { status, .. }) if status.as_u16() == 404 => None,
        Err(ControlError::Api { status, message }) => {
            return Err(proxy.err(
                &format!("remove app {name}"),
                ControlError::Api { status, message },
            ))
        }
        Err(lost) => {
            out.step(format!(
                "the remove call failed ({lost}); asking the proxy whether app {name} is still there"
            ));
            still_there(proxy, name, app, &lost.to_string()).await?;
            report.set("drain", json!({"drained": null, "error": lost.to_string()}));
            return Ok(0);
        }
    };
    let Some(r) = settled else {
        out.step(format!("app {name} was not on the proxy any more"));
        return Ok(0);
    };
    report.set(
        "drain",
        json!({"drained": r.drained, "in_flight": r.in_flight, "drain_ms": r.drain_ms}),
    );
    out.step(format!(
        "app {name} is off the proxy; {}",
        if r.drained {
            format!(
                "its requests drained in {}",
                secs(Duration::from_millis(r.drain_ms))
            )
        } else {
            format!(
                "the drain timed out after {} with {} requests in flight",
                secs(Duration::from_millis(r.drain_ms)),
                r.in_flight
            )
        }
    ));
    Ok(if r.drained { 0 } else { r.in_flight })
}

/// After a lost DELETE: Ok when the proxy no longer has the app.
async fn still_there(proxy: &Proxy, name: &str, app: &str, lost: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        match proxy.client().app(name).await {
            Err(ControlError::Api { status, .. }) if status.as_u16() == 404 => return Ok(()),
            Ok(_) => {
                return Err(Failure::Proxy(format!(
                    "removing app {name} failed ({lost}) and the proxy still routes it; nothing \
                     was stopped. Run `handoff remove --name {app}` again"
                )))
            }
            Err(e) if started.elapsed() >= PROXY_RESTART_WAIT => {
                return Err(Failure::Proxy(format!(
                    "removing app {name} failed ({lost}) and the proxy did not answer within {} \
                     ({e}); nothing was stopped. Run `handoff remove --name {app}` again",
                    secs(PROXY_RESTART_WAIT)
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Stops and removes the app's containers, except those any app of the
/// proxy (re-read now) routes to or drains.
async fn remove_containers(
    engine: &Engine,
    proxy: &Proxy,
    containers: &[ContainerInfo],
    args: &RemoveArgs,
    out: &Output,
) -> Result<(Vec<String>, Vec<String>)> {
    let apps = all_apps(proxy).await.map_err(|e| {
        Failure::Proxy(format!(
            "{e}; the app is off the proxy, but its containers are left until the proxy can \
             say which backends are still in use: run `handoff remove --name {}` again",
            args.name
        ))
    })?;
    // The removed app is gone from the list: every app left counts.
    let in_use: Vec<String> = backends_of(apps.iter())
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let (mut removed, mut kept) = (Vec::new(), Vec::new());
    for c in containers {
        if c.backend().is_some_and(|b| in_use.contains(&b)) {
            out.step(format!(
                "keeping {}: an app of the proxy still routes to {}",
                c.name,
                c.backend().unwrap_or_default()
            ));
            kept.push(c.name.clone());
            continue;
        }
        if c.running || c.restarting {
            out.step(format!(
                "stopping {} (grace {})",
                c.name,
                secs(args.stop_timeout)
            ));
            engine.stop(&c.name, args.stop_timeout).await?;
        }
        engine.remove(&c.name).await?;
        out.step(format!("removed {} ({})", c.name, c.image()));
        removed.push(c.name.clone());
    }
    Ok((removed, kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::releases::{LABEL_APP, LABEL_CONTAINER_PORT};
    use handoff_shared::DrainingGeneration;
    use std::collections::HashMap;

    fn release(name: &str, port: u16) -> ContainerInfo {
        ContainerInfo {
            name: name.into(),
            labels: HashMap::from([
                (LABEL_APP.to_string(), "shop".to_string()),
                (LABEL_CONTAINER_PORT.to_string(), "8080".to_string()),
            ]),
            pinned: HashMap::from([(8080, port)]),
            ..Default::default()
        }
    }

    fn app(name: &str, default: bool, backend: &str) -> AppStatus {
        AppStatus {
            name: name.into(),
            default,
            backend: Some(backend.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_proxy_app_of_that_name_first() {
        let apps = [
            app("default", true, "127.0.0.1:4001"),
            app("shop", false, "127.0.0.1:4002"),
        ];
        let list = [release("shop-1", 4002)];
        assert_eq!(pick("shop", &apps, &list), Pick::App("shop".into()));
    }

    #[test]
    fn an_app_deployed_without_host_is_the_default_app() {
        let mut default = app("default", true, "127.0.0.1:4009");
        default.draining = vec![DrainingGeneration {
            backend: "127.0.0.1:4001".into(),
            generation: 1,
            in_flight: 1,
        }];
        // Found by the draining backend too.
        let list = [release("shop-1", 4001)];
        assert_eq!(
            pick("shop", std::slice::from_ref(&default), &list),
            Pick::App("default".into())
        );
        // Not routed at all: only containers.
        let other = [app("default", true, "127.0.0.1:4555")];
        assert_eq!(pick("shop", &other, &list), Pick::None);
    }

    #[test]
    fn the_default_app_without_containers_of_that_name_is_refused() {
        let apps = [app("default", true, "127.0.0.1:4001")];
        assert_eq!(pick("default", &apps, &[]), Pick::ForeignDefault);
        // With containers of that name it is this app's.
        let list = [release("default-1", 4001)];
        assert_eq!(pick("default", &apps, &list), Pick::App("default".into()));
    }
}
