//! `handoff deploy`: the new image as a new release `APP-<n>`, then the
//! cutover. Nothing that exists is removed or stopped before the new release
//! is live and watched.

use crate::cli::{validate_app_name, DeployArgs, Global};
use crate::docker::{ContainerSpec, Engine};
use crate::env;
use crate::error::{Failure, Result};
use crate::output::{secs, Output};
use crate::plan::{Cutover, OnUnhealthy, Plan};
use crate::proxy::{Proxy, Target};
use crate::releases::{self as rel, ContainerInfo, Releases};
use crate::report::Report;
use crate::routes::Routes;
use crate::{faults, lock, migrate};
use std::collections::HashMap;
use std::time::{Instant, SystemTime};

fn labels(args: &DeployArgs, release: u64) -> Result<HashMap<String, String>> {
    let mut labels = HashMap::new();
    for item in &args.label {
        let (k, v) = item
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                Failure::Usage(format!("invalid --label {item:?}: expected KEY=VALUE"))
            })?;
        if k.starts_with("handoff.") {
            return Err(Failure::Usage(format!(
                "--label {k}: the handoff.* labels are reserved"
            )));
        }
        labels.insert(k.to_string(), v.to_string());
    }
    let deployed_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    for (k, v) in [
        (rel::LABEL_APP, args.name.clone()),
        (rel::LABEL_RELEASE, release.to_string()),
        (rel::LABEL_IMAGE, args.image.clone()),
        (rel::LABEL_CONTAINER_PORT, args.container_port.to_string()),
        (rel::LABEL_HEALTH_PATH, args.health_path.clone()),
        (rel::LABEL_DEPLOYED_AT, deployed_at),
    ] {
        labels.insert(k.to_string(), v);
    }
    if let Some(hp) = args.health_port {
        labels.insert(rel::LABEL_HEALTH_PORT.to_string(), hp.to_string());
    }
    Ok(labels)
}

fn routes(args: &DeployArgs) -> Result<Option<Routes>> {
    Routes::from_flags(&args.hosts, &args.path_prefixes, args.strip_prefix).map_err(Failure::Usage)
}

/// Everything that can be checked without touching Docker or the proxy.
fn validate(args: &DeployArgs) -> Result<()> {
    validate_app_name(&args.name).map_err(Failure::Usage)?;
    if args.image.trim().is_empty() || args.image.chars().any(char::is_whitespace) {
        return Err(Failure::Usage(format!("invalid --image {:?}", args.image)));
    }
    if !args.health_path.starts_with('/') {
        return Err(Failure::Usage(format!(
            "--health-path must start with '/', got {:?}",
            args.health_path
        )));
    }
    if args.container_port == 0 || args.health_port == Some(0) {
        return Err(Failure::Usage(
            "container ports must be from 1 to 65535".into(),
        ));
    }
    labels(args, 1)?;
    routes(args)?;
    if args.switch.health_interval.is_zero() || args.switch.health_timeout.is_zero() {
        return Err(Failure::Usage(
            "--health-interval and --health-timeout must be more than 0".into(),
        ));
    }
    Ok(())
}

/// A deploy, as a list of named steps. Nothing a user can see changes
/// before `cut_over`.
pub async fn run(
    global: &Global,
    args: &DeployArgs,
    out: &Output,
    report: &mut Report,
) -> Result<()> {
    let started = Instant::now();
    report.set("command", "deploy");
    report.set("app", args.name.as_str());
    report.set("image", args.image.as_str());
    validate(args)?;
    let env = container_env(args, out)?;
    let _lock = take_lock(global, args, out, report)?;
    let engine = Engine::connect(&global.docker_host, args.switch.stop_timeout).await?;
    let proxy = connect_proxy(&engine, global, args, report).await?;
    let now = read_live(&engine, &proxy, args, out).await?;
    let number = now.releases.next_number();
    let name = rel::container_name(&args.name, number);
    record_release(report, number, &name, now.old.as_ref());
    announce(out, &proxy, args, &now, number, &name);
    let digest = pull(&engine, args, out, report).await?;
    let env_keys: Vec<String> = env.keys().into_iter().map(|k| format!("{k}=***")).collect();
    let mut spec = release_spec(&engine, args, number, &name, env, digest).await?;
    let t = Instant::now();
    start_release(
        &engine,
        &mut spec,
        args,
        &now.releases,
        now.old.as_ref(),
        out,
    )
    .await?;
    report.step("start", t.elapsed());
    faults::hit("after-start");
    describe_started(&engine, &spec, &env_keys, out).await?;
    cut_over(&engine, &proxy, args, &now, &name, out, report).await?;
    report.step("total", started.elapsed());
    out.step(format!(
        "deployed {} as {name} in {}",
        args.image,
        secs(started.elapsed())
    ));
    Ok(())
}

/// The container env; a `-e KEY` that handoff's environment lacks is a
/// warning, not an error.
fn container_env(args: &DeployArgs, out: &Output) -> Result<env::ContainerEnv> {
    let env = env::build(&args.env_file, &args.env, &|k| std::env::var(k).ok())?;
    for key in &env.skipped {
        out.step(format!(
            "warning: -e {key} is not set in handoff's environment; not passed to the container"
        ));
    }
    Ok(env)
}

fn take_lock(
    global: &Global,
    args: &DeployArgs,
    out: &Output,
    report: &mut Report,
) -> Result<lock::AppLock> {
    let t = Instant::now();
    let lock = lock::acquire(
        &global.state_dir,
        &args.name,
        &format!("deploy {}", args.image),
        args.switch.wait_lock,
        out,
    )?;
    report.step("lock", t.elapsed());
    Ok(lock)
}

/// What is live before the deploy: the app's status on the proxy and its
/// releases (blue/green containers renamed first).
struct Now {
    status: handoff_shared::StatusResponse,
    releases: Releases,
    old: Option<ContainerInfo>,
}

async fn read_live(engine: &Engine, proxy: &Proxy, args: &DeployArgs, out: &Output) -> Result<Now> {
    let status = proxy.status().await?;
    migrate::blue_green(engine, &args.name, &status, out).await?;
    let releases = Releases::new(engine.app_containers(&args.name).await?, Some(&status));
    let old = releases.live().cloned();
    refuse_foreign_backend(engine, proxy, &args.name, old.as_ref(), &status).await?;
    Ok(Now {
        status,
        releases,
        old,
    })
}

fn record_release(report: &mut Report, number: u64, name: &str, old: Option<&ContainerInfo>) {
    report.set("release", number);
    report.set("container", name);
    let previous = old.map(
        |o| serde_json::json!({"container": o.name, "image": o.image(), "backend": o.backend()}),
    );
    report.set("previous", previous);
}

/// `deploying IMAGE as release N (APP-N) for ROUTES; live now: ...`
fn announce(out: &Output, proxy: &Proxy, args: &DeployArgs, now: &Now, number: u64, name: &str) {
    let routes = match proxy.target() {
        Target::Default => String::new(),
        Target::App {
            routes: Some(r), ..
        } => format!(" for {}", r.text()),
        Target::App {
            before: Some(r), ..
        } => format!(" for {} (the routes the proxy has)", r.text()),
        Target::App { .. } => String::new(),
    };
    let live = match (&now.old, &now.status.backend) {
        (Some(o), _) => format!(
            "{} ({}, {}, {})",
            o.name,
            o.image(),
            o.backend().unwrap_or_default(),
            o.state_text()
        ),
        (None, Some(b)) => format!("{b}, not a container of {}", args.name),
        (None, None) => "nothing (first deploy)".into(),
    };
    out.step(format!(
        "deploying {} as release {number} ({name}){routes}; live now: {live}",
        args.image,
    ));
}

/// Pulls as `--pull` says; returns the registry digest when there is one.
async fn pull(
    engine: &Engine,
    args: &DeployArgs,
    out: &Output,
    report: &mut Report,
) -> Result<Option<String>> {
    let t = Instant::now();
    engine.ensure_image(&args.image, args.pull, out).await?;
    let digest = engine.image_digest(&args.image).await;
    report.step("pull", t.elapsed());
    report.set("digest", digest.clone());
    Ok(digest)
}

/// The new release's container, refused when a container of that name
/// exists that handoff did not make (it is not ours to touch).
async fn release_spec(
    engine: &Engine,
    args: &DeployArgs,
    number: u64,
    name: &str,
    env: env::ContainerEnv,
    digest: Option<String>,
) -> Result<ContainerSpec> {
    if engine.inspect(name).await?.is_some() {
        return Err(Failure::Usage(format!(
            "a container named {name} exists but is not a release of {}; rename or remove it",
            args.name
        )));
    }
    let mut labels = labels(args, number)?;
    if let Some(d) = digest {
        labels.insert(rel::LABEL_DIGEST.to_string(), d);
    }
    Ok(ContainerSpec {
        name: name.to_string(),
        image: args.image.clone(),
        env: env.entries,
        labels,
        container_port: args.container_port,
        health_port: args.health_port,
        host_port: 0,
        init: args.init,
    })
}

/// `started APP-N (ID), ports ..., env KEY=*** ...`: keys, never values.
async fn describe_started(
    engine: &Engine,
    spec: &ContainerSpec,
    keys: &[String],
    out: &Output,
) -> Result<()> {
    let Some(info) = engine.inspect(&spec.name).await? else {
        return Ok(());
    };
    let mut ports: Vec<String> = info
        .ports
        .iter()
        .map(|(c, h)| format!("{h}->{c}"))
        .collect();
    ports.sort();
    out.step(format!(
        "started {} ({}), ports {}, env {}",
        spec.name,
        short_id(&info.id),
        ports.join(", "),
        if keys.is_empty() {
            "-".to_string()
        } else {
            keys.join(" ")
        }
    ));
    Ok(())
}

/// The readiness rule, the watched switch, the drain and the stop of the
/// previous release (see `cutover.rs`).
async fn cut_over(
    engine: &Engine,
    proxy: &Proxy,
    args: &DeployArgs,
    now: &Now,
    name: &str,
    out: &Output,
    report: &mut Report,
) -> Result<()> {
    let cutover = Cutover {
        engine,
        proxy,
        out,
        switch: &args.switch,
    };
    let old = now.old.as_ref();
    let strays = now
        .releases
        .list
        .iter()
        .filter(|c| (c.running || c.restarting) && Some(&c.id) != old.map(|o| &o.id))
        .cloned()
        .collect();
    let plan = Plan {
        app: &args.name,
        new: name,
        health_path: &args.health_path,
        restarts_before: 0,
        old,
        strays,
        on_unhealthy: if args.keep_failed {
            OnUnhealthy::KeepFailed
        } else {
            OnUnhealthy::Remove
        },
        keep: Some(args.keep),
    };
    cutover.run(&plan, report).await
}

/// Which proxy app this deploy switches (see [`Proxy::resolve`]), with
/// the one case the rule cannot take: an app served as the default app
/// that is now given `--host`. Its live release would stay routed by the
/// default app while its new one went to a new app, and the deploy would
/// then stop a release another app routes to; so it is refused, and the
/// message says both ways out.
async fn connect_proxy(
    engine: &Engine,
    global: &Global,
    args: &DeployArgs,
    report: &mut Report,
) -> Result<Proxy> {
    let proxy = Proxy::resolve(&global.control, &args.name, routes(args)?).await?;
    let Target::App { routes, before, .. } = proxy.target() else {
        return Ok(proxy);
    };
    if let Some(r) = routes.as_ref().or(before.as_ref()) {
        report.set("routes", r.to_json());
    }
    if before.is_none() {
        let default = Proxy::new(&global.control).status().await?;
        let releases = Releases::new(engine.app_containers(&args.name).await?, Some(&default));
        let served = releases.list.iter().find(|c| releases.in_use(c));
        if let Some(container) = served.map(|c| &c.name) {
            return Err(Failure::Usage(format!(
                "{app} is served by the proxy's default app ({container}); a deploy with --host \
                 would leave it there and route the hosts to a second copy. Deploy without \
                 --host to keep it the default app, or take it off first with \
                 `handoff remove --name {app}` (it stops serving) and deploy again with --host",
                app = args.name
            )));
        }
    }
    Ok(proxy)
}

/// A proxy app whose backend is a container of another handoff app is not
/// switched to this one.
async fn refuse_foreign_backend(
    engine: &Engine,
    proxy: &Proxy,
    app: &str,
    live: Option<&ContainerInfo>,
    status: &handoff_shared::StatusResponse,
) -> Result<()> {
    let (None, Some(backend)) = (live, status.backend.as_deref()) else {
        return Ok(());
    };
    if let Some((other, container)) = engine.other_app_at(backend, app).await? {
        let which = match proxy.app_name() {
            None => "the proxy's default app".to_string(),
            Some(name) => format!("the proxy's app {name}"),
        };
        return Err(Failure::Usage(format!(
            "{which} at {} serves app {other} ({container} at {backend}), not {app}; \
             give {app} its own --host (one proxy routes many apps by host name)",
            proxy.client().path().display(),
        )));
    }
    Ok(())
}

/// Creates and starts the release on a concrete 127.0.0.1 port: one of the
/// two `--host-ports` (the one the live release does not use), or a free
/// port that no kept release has pinned (it needs its port back on rollback).
async fn start_release(
    engine: &Engine,
    spec: &mut ContainerSpec,
    args: &DeployArgs,
    releases: &Releases,
    live: Option<&ContainerInfo>,
    out: &Output,
) -> Result<()> {
    let live_port = live
        .and_then(|l| l.container_port().and_then(|p| l.pinned.get(&p)))
        .copied();
    let pinned = args
        .host_ports
        .map(|(a, b)| if live_port == Some(a) { b } else { a });
    let reserved: Vec<u16> = releases
        .list
        .iter()
        .flat_map(|c| c.pinned.values().copied())
        .collect();
    let mut attempt = 1;
    loop {
        // Without pins, handoff still picks a concrete port: Docker keeps an
        // explicit binding across daemon restarts, while an ephemeral one
        // would change and leave the proxy's saved backend pointing nowhere.
        spec.host_port = match pinned {
            Some(port) => port,
            None => free_loopback_port(&reserved)?,
        };
        match engine.create_and_start(spec).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                // A container that was created but could not start (port
                // taken) must not linger.
                let _ = engine.remove(&spec.name).await;
                let raced = pinned.is_none() && is_port_conflict(&e) && attempt < 5;
                if !raced {
                    return Err(e);
                }
                out.step(format!(
                    "port {} was taken meanwhile; picking another",
                    spec.host_port
                ));
                attempt += 1;
            }
        }
    }
}

/// A port on 127.0.0.1 that is free right now. Another process may take it
/// before Docker binds it; the caller retries on that conflict.
/// Ports in `reserved` are skipped even when free right now.
fn free_loopback_port(reserved: &[u16]) -> Result<u16> {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| Failure::Docker(format!("cannot find a free port on 127.0.0.1: {e}")))?;
        if !reserved.contains(&port) {
            return Ok(port);
        }
    }
    Err(Failure::Docker(
        "cannot find a free port on 127.0.0.1".into(),
    ))
}

fn is_port_conflict(failure: &Failure) -> bool {
    let text = failure.to_string();
    text.contains("already allocated") || text.contains("already in use")
}

fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}
