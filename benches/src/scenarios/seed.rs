//! `seed`: what teams do today (bluegreen.sh in /work/shared/seed), measured
//! with the same load as `switch`: nginx in front, the new backend started on
//! the other of two ports, the upstream rewritten with envsubst, `nginx -s
//! reload`, and the old backend stopped right away.

use super::cutover::{analyse, CutoverArgs, CutoverReport, Event, Timeline};
use super::{blocking, Common};
use crate::loadgen;
use crate::procs::{free_port, Backend};
use crate::report::Machine;
use crate::servers::Nginx;
use anyhow::Result;
use std::sync::Arc;
use std::time::Instant;

pub async fn run(common: &Common, args: &CutoverArgs) -> Result<CutoverReport> {
    let machine = Machine::probe();
    let tl = Timeline::new(common, args);
    // The script's 8080/8081 pair, as two free high ports.
    let ports = [free_port()?, free_port()?];
    let first = blocking(move || Backend::start(1, ports[0])).await?;
    let nginx = Arc::new(blocking(move || Nginx::start(ports[0])).await?);

    let epoch = Instant::now();
    let load = tokio::spawn(loadgen::run(tl.load(nginx.addr, args, common), epoch));
    let mut events = Vec::new();
    let mut current = first;
    let mut started = 1;
    for (k, at) in tl.ticks().into_iter().enumerate() {
        let id = (k % 249 + 2) as u8;
        let port = ports[(k + 1) % 2];
        // `docker run` of the new version happens before bluegreen.sh runs.
        // Start the new version shortly before its cut-over, not right after
        // the previous one: a port must not be re-occupied early.
        tokio::time::sleep_until((epoch + at.saturating_sub(tl.lead())).into()).await;
        let next = blocking(move || Backend::start(id, port)).await?;
        started += 1;
        tokio::time::sleep_until((epoch + at).into()).await;
        let mut old = std::mem::replace(&mut current, next);
        let from = old.id;
        let nginx = nginx.clone();
        let t0 = Instant::now();
        // bluegreen.sh step 8 and 9, back to back.
        let outcome = blocking(move || {
            let reload = nginx.switch_upstream(port);
            old.proc.terminate();
            reload
        })
        .await;
        events.push(Event {
            t_ms: t0.duration_since(epoch).as_secs_f64() * 1000.0,
            took_ms: t0.elapsed().as_secs_f64() * 1000.0,
            from,
            to: id,
            error: outcome.err().map(|e| e.to_string()),
            ..Event::default()
        });
    }
    let result = load.await?;
    let mut report = analyse("seed", machine, tl, args, result, events, started);
    report.notes.push(format!(
        "nginx RSS after run (master + workers): {:.1} MiB",
        nginx.rss_kb() as f64 / 1024.0
    ));
    drop(current);
    drop(nginx);
    Ok(report)
}
