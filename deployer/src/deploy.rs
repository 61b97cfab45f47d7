//! `handoff deploy`: the new image into the idle slot, then the cutover.

use crate::cli::{validate_app_name, DeployArgs, Global};
use crate::cutover::{Cutover, OnUnhealthy, Report};
use crate::docker::{ContainerSpec, Engine};
use crate::env;
use crate::error::{Failure, Result};
use crate::lock;
use crate::output::{secs, Output};
use crate::proxy::Proxy;
use crate::slots::{self, Slot, Slots};
use std::collections::HashMap;
use std::time::{Instant, SystemTime};

fn labels(args: &DeployArgs, slot: Slot) -> Result<HashMap<String, String>> {
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
        (slots::LABEL_APP, args.name.clone()),
        (slots::LABEL_SLOT, slot.as_str().to_string()),
        (slots::LABEL_IMAGE, args.image.clone()),
        (slots::LABEL_CONTAINER_PORT, args.container_port.to_string()),
        (slots::LABEL_HEALTH_PATH, args.health_path.clone()),
        (slots::LABEL_DEPLOYED_AT, deployed_at),
    ] {
        labels.insert(k.to_string(), v);
    }
    if let Some(hp) = args.health_port {
        labels.insert(slots::LABEL_HEALTH_PORT.to_string(), hp.to_string());
    }
    Ok(labels)
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
    labels(args, Slot::Blue)?;
    if args.switch.health_interval.is_zero() || args.switch.health_timeout.is_zero() {
        return Err(Failure::Usage(
            "--health-interval and --health-timeout must be more than 0".into(),
        ));
    }
    Ok(())
}

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
    let env = env::build(&args.env_file, &args.env, &|k| std::env::var(k).ok())?;
    for key in &env.skipped {
        out.step(format!(
            "warning: -e {key} is not set in handoff's environment; not passed to the container"
        ));
    }

    let t = Instant::now();
    let _lock = lock::acquire(
        &global.state_dir,
        &args.name,
        &format!("deploy {}", args.image),
        args.switch.wait_lock,
        out,
    )?;
    report.step("lock", t.elapsed());

    let engine = Engine::connect(&global.docker_host, args.switch.stop_timeout).await?;
    let proxy = Proxy::new(&global.control);
    let status = proxy.status().await?;
    let slots = Slots::from_containers(
        engine.app_containers(&args.name).await?,
        status.backend.as_deref(),
    );
    if let (None, Some(backend)) = (slots.live, status.backend.as_deref()) {
        if let Some((other, container)) = engine.other_app_at(backend, &args.name).await? {
            return Err(Failure::Usage(format!(
                "the proxy at {} serves app {other} ({container} at {backend}), not {}; \
                 each app needs its own handoff-proxy and --control socket",
                global.control.display(),
                args.name
            )));
        }
    }
    let target = slots.target();
    let name = target.container_name(&args.name);
    let old = slots.live.and_then(|s| slots.get(s)).cloned();
    report.set("slot", target.as_str());
    report.set("container", name.as_str());
    let previous = old.as_ref().map(
        |o| serde_json::json!({"container": o.name, "image": o.image(), "backend": o.backend()}),
    );
    report.set("previous", previous);
    out.step(format!(
        "deploying {} as {name}; live now: {}",
        args.image,
        match (&old, &status.backend) {
            (Some(o), _) => format!("{} ({}, {})", o.name, o.image(), o.backend().unwrap_or("?")),
            (None, Some(b)) => format!("{b}, not a container of {}", args.name),
            (None, None) => "nothing (first deploy)".into(),
        }
    ));

    let t = Instant::now();
    engine.ensure_image(&args.image, args.pull, out).await?;
    report.step("pull", t.elapsed());

    // A container by that name that handoff did not make is not ours to delete.
    if let Some(existing) = engine.inspect(&name).await? {
        if existing.labels.get(slots::LABEL_APP) != Some(&args.name) {
            return Err(Failure::Usage(format!(
                "a container named {name} exists but is not managed by handoff for {}; rename or remove it",
                args.name
            )));
        }
        out.step(format!(
            "removing the previous {name} ({}, {})",
            existing.image(),
            existing.status
        ));
        engine.remove(&name).await?;
    }

    let pinned = args.host_ports.map(|(blue, green)| match target {
        Slot::Blue => blue,
        Slot::Green => green,
    });
    let env_keys: Vec<String> = env.keys().into_iter().map(|k| format!("{k}=***")).collect();
    let mut spec = ContainerSpec {
        name: name.clone(),
        image: args.image.clone(),
        env: env.entries,
        labels: labels(args, target)?,
        container_port: args.container_port,
        health_port: args.health_port,
        host_port: 0,
        init: args.init,
    };
    // The kept container of the other slot needs its port back on rollback.
    let reserved: Vec<u16> = slots
        .get(target.other())
        .map(|c| c.pinned_ports.clone())
        .unwrap_or_default();
    let t = Instant::now();
    let mut attempt = 1;
    loop {
        // Without pins, handoff still picks a concrete port: Docker keeps an
        // explicit binding across daemon restarts, while an ephemeral one
        // would change and leave the proxy's saved backend pointing nowhere.
        spec.host_port = match pinned {
            Some(port) => port,
            None => free_loopback_port(&reserved)?,
        };
        match engine.create_and_start(&spec).await {
            Ok(()) => break,
            Err(e) => {
                // A container that was created but could not start (port
                // taken) must not linger in the slot.
                let _ = engine.remove(&name).await;
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
    report.step("start", t.elapsed());
    if let Some(info) = engine.inspect(&name).await? {
        let ports: Vec<String> = info
            .ports
            .iter()
            .map(|(c, h)| format!("{h}->{c}"))
            .collect();
        out.step(format!(
            "started {name} ({}), ports {}, env {}",
            short_id(&info.id),
            ports.join(", "),
            if env_keys.is_empty() {
                "-".to_string()
            } else {
                env_keys.join(" ")
            }
        ));
    }

    let cutover = Cutover {
        engine: &engine,
        proxy: &proxy,
        out,
        switch: &args.switch,
    };
    let on_unhealthy = if args.keep_failed {
        OnUnhealthy::Stop
    } else {
        OnUnhealthy::Remove
    };
    cutover
        .run(
            &name,
            &args.health_path,
            0,
            old.as_ref(),
            on_unhealthy,
            report,
        )
        .await?;
    report.step("total", started.elapsed());
    out.step(format!(
        "deployed {} as {name} in {}",
        args.image,
        secs(started.elapsed())
    ));
    Ok(())
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
