//! `handoff rollback`: the kept previous container goes live again.

use crate::cli::{validate_app_name, Global, RollbackArgs};
use crate::cutover::{Cutover, OnUnhealthy, Report};
use crate::docker::Engine;
use crate::error::{Failure, Result};
use crate::lock;
use crate::output::{secs, Output};
use crate::proxy::Proxy;
use crate::slots::Slots;
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
    let proxy = Proxy::new(&global.control);
    let status = proxy.status().await?;
    let slots = Slots::from_containers(
        engine.app_containers(&args.name).await?,
        status.backend.as_deref(),
    );

    let Some(live) = slots.live else {
        return Err(Failure::Usage(format!(
            "cannot roll back {}: the proxy's backend ({}) is not a running container of this app",
            args.name,
            status.backend.as_deref().unwrap_or("none")
        )));
    };
    let current = slots
        .get(live)
        .cloned()
        .expect("the live slot has a container");
    let Some(previous) = slots.get(live.other()).cloned() else {
        return Err(Failure::Usage(format!(
            "nothing to roll back to: {} is live and there is no previous container {}",
            current.name,
            live.other().container_name(&args.name)
        )));
    };
    report.set("slot", live.other().as_str());
    report.set("container", previous.name.as_str());
    report.set("image", previous.image());
    report.set(
        "previous",
        serde_json::json!({"container": current.name, "image": current.image(), "backend": current.backend()}),
    );
    out.step(format!(
        "rolling back {} from {} ({}) to {} ({})",
        args.name,
        current.name,
        current.image(),
        previous.name,
        previous.image()
    ));
    if !previous.running {
        let t = Instant::now();
        // On trial again until healthy; see `Engine::keep_running`.
        engine.keep_running(&previous.name, false).await?;
        engine.start(&previous.name).await?;
        report.step("start", t.elapsed());
        out.step(format!("started {}", previous.name));
    }
    let restarts_before = engine
        .inspect(&previous.name)
        .await?
        .map_or(0, |c| c.restart_count);
    let cutover = Cutover {
        engine: &engine,
        proxy: &proxy,
        out,
        switch: &args.switch,
    };
    cutover
        .run(
            &previous.name,
            previous.health_path(),
            restarts_before,
            Some(&current),
            OnUnhealthy::Stop,
            report,
        )
        .await?;
    report.step("total", started.elapsed());
    out.step(format!(
        "rolled back to {} in {}",
        previous.image(),
        secs(started.elapsed())
    ));
    Ok(())
}
