//! `handoff rollback`: a kept release goes live again: by default the newest
//! good release that is not live, or the one `--to` names.
//!
//! It works when it is needed most: the live release may be running,
//! crash-looping, stopped, dead or removed. The target is started if needed,
//! must be stable like a new release, is switched to and watched; the
//! release it replaces is then stopped (if it still runs) and kept.

use crate::cli::{validate_app_name, Global, RollbackArgs};
use crate::docker::Engine;
use crate::error::{Failure, Result};
use crate::lock;
use crate::migrate;
use crate::output::{secs, Output};
use crate::plan::{Cutover, OnUnhealthy, Plan};
use crate::proxy::Proxy;
use crate::releases::{ContainerInfo, Releases};
use crate::report::Report;
use std::time::Instant;

pub async fn run(
    global: &Global,
    args: &RollbackArgs,
    out: &Output,
    report: &mut Report,
) -> Result<()> {
    let started = Instant::now();
    report.set("command", "rollback");
    report.set("app", args.name.as_str());
    validate_app_name(&args.name).map_err(Failure::Usage)?;
    let _lock = lock::acquire(
        &global.state_dir,
        &args.name,
        "rollback",
        args.switch.wait_lock,
        out,
    )?;
    let engine = Engine::connect(&global.docker_host, args.switch.stop_timeout).await?;
    // A host-routed app keeps its routes: only the backend is switched.
    let proxy = Proxy::resolve(&global.control, &args.name, None).await?;
    let status = proxy.status().await?;
    migrate::blue_green(&engine, &args.name, &status, out).await?;
    let releases = Releases::new(engine.app_containers(&args.name).await?, Some(&status));
    let current = releases.live().cloned();
    if current.is_none() {
        if let Some(backend) = status.backend.as_deref() {
            if let Some((other, container)) = engine.other_app_at(backend, &args.name).await? {
                return Err(Failure::Usage(format!(
                    "cannot roll back {}: the proxy serves app {other} ({container} at {backend})",
                    args.name
                )));
            }
        }
    }
    let target = pick_target(&releases, args, current.as_ref())?;
    report.set("release", target.release());
    report.set("container", target.name.as_str());
    report.set("image", target.image());
    report.set("digest", target.digest());
    report.set(
        "previous",
        current.as_ref().map(|c| {
            serde_json::json!({"container": c.name, "image": c.image(), "backend": c.backend(),
                               "state": c.state_text()})
        }),
    );
    out.step(format!(
        "rolling back {} from {} to {} ({})",
        args.name,
        current.as_ref().map_or_else(
            || format!(
                "{} (no container of this app)",
                status.backend.as_deref().unwrap_or("nothing")
            ),
            |c| format!("{} ({}, {})", c.name, c.image(), c.state_text())
        ),
        target.name,
        target.image()
    ));
    if !target.running {
        let t = Instant::now();
        // On trial again until stable; see `Engine::keep_running`.
        engine.keep_running(&target.name, false).await?;
        engine.start(&target.name).await?;
        report.step("start", t.elapsed());
        out.step(format!("started {}", target.name));
    }
    let restarts_before = engine
        .inspect(&target.name)
        .await?
        .map_or(0, |c| c.restart_count);
    let cutover = Cutover {
        engine: &engine,
        proxy: &proxy,
        out,
        switch: &args.switch,
    };
    let plan = Plan {
        app: &args.name,
        new: &target.name,
        health_path: target.health_path(),
        restarts_before,
        old: current.as_ref(),
        strays: Vec::new(),
        on_unhealthy: OnUnhealthy::Stop,
        keep: None,
    };
    cutover.run(&plan, report).await?;
    report.step("total", started.elapsed());
    out.step(format!(
        "rolled back to {} in {}",
        target.image(),
        secs(started.elapsed())
    ));
    Ok(())
}

fn pick_target(
    releases: &Releases,
    args: &RollbackArgs,
    current: Option<&ContainerInfo>,
) -> Result<ContainerInfo> {
    let target = match &args.to {
        Some(to) => releases.find(to).ok_or_else(|| {
            Failure::Usage(format!(
                "no kept release of {} matches --to {to:?}; `handoff releases --name {}` lists them",
                args.name, args.name
            ))
        })?,
        None => releases.previous_good().ok_or_else(|| {
            Failure::Usage(format!(
                "nothing to roll back to: {} and no other good release of {} is kept",
                current.map_or("nothing is live".to_string(), |c| format!("{} is live", c.name)),
                args.name
            ))
        })?,
    };
    if current.is_some_and(|c| c.id == target.id) && target.running {
        return Err(Failure::Usage(format!(
            "{} is already live; nothing to roll back",
            target.name
        )));
    }
    Ok(target.clone())
}
