//! `switch`: handoff-proxy under load while its backend is replaced every
//! `interval`, the way `handoff deploy` does it: start the new backend, switch
//! over the control socket, and stop the old one once the call reports the
//! drain finished.

use super::cutover::{analyse, CutoverArgs, CutoverReport, Event, Timeline};
use super::{blocking, Common};
use crate::loadgen;
use crate::procs::Backend;
use crate::report::Machine;
use crate::servers::HandoffProxy;
use anyhow::Result;
use handoff_shared::{ControlClient, SetBackend};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub async fn run(common: &Common, args: &CutoverArgs) -> Result<CutoverReport> {
    let machine = Machine::probe();
    let tl = Timeline::new(common, args);
    let first = blocking(|| Backend::start(1, 0)).await?;
    let first_addr = first.addr;
    let proxy = blocking(move || HandoffProxy::start(first_addr, "30s")).await?;
    let client = ControlClient::new(&proxy.control);
    client.status().await?;
    let drain_timeout = format!("{}ms", tl.long_ms + 10_000);

    let epoch = Instant::now();
    let load = tokio::spawn(loadgen::run(tl.load(proxy.addr, args, common), epoch));
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut calls = Vec::new();
    let mut current = first;
    let mut started = 1;
    for (k, at) in tl.ticks().into_iter().enumerate() {
        let id = (k % 249 + 2) as u8;
        // Start the new version shortly before its cut-over, not right after
        // the previous one: a port must not be re-occupied early.
        tokio::time::sleep_until((epoch + at.saturating_sub(tl.lead())).into()).await;
        let next = blocking(move || Backend::start(id, 0)).await?;
        started += 1;
        tokio::time::sleep_until((epoch + at).into()).await;
        let old = std::mem::replace(&mut current, next);
        let (client, events, drain_timeout) =
            (client.clone(), events.clone(), drain_timeout.clone());
        let req = SetBackend {
            addr: current.addr.to_string(),
            drain_timeout: Some(drain_timeout),
            protocol: Default::default(),
        };
        calls.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let answer = client.set_backend(&req).await;
            let mut event = Event {
                t_ms: t0.duration_since(epoch).as_secs_f64() * 1000.0,
                took_ms: t0.elapsed().as_secs_f64() * 1000.0,
                from: old.id,
                to: id,
                ..Event::default()
            };
            match answer {
                Ok(r) => {
                    event.drained = Some(r.drained);
                    event.in_flight = Some(r.in_flight);
                    event.drain_ms = Some(r.drain_ms);
                }
                Err(e) => event.error = Some(e.to_string()),
            }
            events.lock().expect("events lock").push(event);
            // What the deployer does next: stop the old backend.
            let mut old = old;
            let _ = tokio::task::spawn_blocking(move || old.proc.terminate()).await;
        }));
    }
    let result = load.await?;
    for call in calls {
        call.await?;
    }
    let status = client.status().await;
    let events = std::mem::take(&mut *events.lock().expect("events lock"));
    let mut report = analyse("switch", machine, tl, args, result, events, started);
    match status {
        Ok(s) if !s.draining.is_empty() => report
            .notes
            .push(format!("still draining at the end: {:?}", s.draining)),
        Ok(_) => {}
        Err(e) => report.notes.push(format!(
            "status after run failed: {e}; proxy log: {}",
            proxy.log_tail()
        )),
    }
    report.notes.push(format!(
        "proxy RSS after run: {:.1} MiB",
        proxy.rss_kb() as f64 / 1024.0
    ));
    drop(current);
    drop(proxy);
    Ok(report)
}
