//! `handoff status`: both slots, which is live, and the proxy's own view.
//! Read-only: takes no lock and changes nothing.

use crate::cli::{validate_app_name, Global, StatusArgs};
use crate::cutover::Report;
use crate::docker::Engine;
use crate::error::{Failure, Result};
use crate::health;
use crate::output::Output;
use crate::proxy::Proxy;
use crate::slots::{Slot, Slots};
use serde_json::{json, Value};
use std::time::Duration;

pub async fn run(
    global: &Global,
    args: &StatusArgs,
    out: &Output,
    report: &mut Report,
) -> Result<()> {
    report.set("command", "status");
    report.set("app", args.name.as_str());
    validate_app_name(&args.name).map_err(Failure::Usage)?;
    let engine = Engine::connect(&global.docker_host, Duration::from_secs(10)).await?;
    let proxy = Proxy::new(&global.control);
    // The slots are still worth showing when the proxy is down.
    let proxy_status = proxy.status().await;
    let backend = proxy_status.as_ref().ok().and_then(|s| s.backend.clone());
    let slots =
        Slots::from_containers(engine.app_containers(&args.name).await?, backend.as_deref());
    let client = health::client(args.health_timeout);

    let mut text = vec![format!("app {}", args.name)];
    match &proxy_status {
        Ok(s) => {
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
    let mut slot_values = Vec::new();
    for slot in Slot::BOTH {
        let live = slots.live == Some(slot);
        let Some(c) = slots.get(slot) else {
            text.push(format!("  {:<5}  -  no container", slot.as_str()));
            slot_values.push(json!({"slot": slot.as_str(), "exists": false, "live": false}));
            continue;
        };
        let health = match (c.running, c.health_addr()) {
            (true, Some(addr)) => Some(health::probe(&client, addr, c.health_path()).await),
            _ => None,
        };
        let health_text = match &health {
            Some(Ok(_)) => "healthy".to_string(),
            Some(Err(why)) => format!("unhealthy ({why})"),
            None => "-".to_string(),
        };
        let state = match (c.running, c.exit_code) {
            (false, Some(code)) if c.status == "exited" => format!("exited ({code})"),
            _ => c.status.clone(),
        };
        let mut ports: Vec<String> = c
            .ports
            .iter()
            .map(|(cp, hp)| format!("{hp}->{cp}"))
            .collect();
        ports.sort();
        text.push(format!(
            "  {:<5} {} {}  image {}  {}  health {}  ports {}  deployed {}",
            slot.as_str(),
            if live { "*" } else { " " },
            c.name,
            c.image(),
            state,
            health_text,
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(", ")
            },
            c.labels
                .get(crate::slots::LABEL_DEPLOYED_AT)
                .map_or("?", String::as_str),
        ));
        slot_values.push(json!({
            "slot": slot.as_str(),
            "exists": true,
            "live": live,
            "container": c.name,
            "id": c.id,
            "image": c.image(),
            "state": c.status,
            "running": c.running,
            "exit_code": c.exit_code,
            "healthy": health.as_ref().map(|h| h.is_ok()),
            "health": health.map(|h| h.unwrap_or_else(|e| e)),
            "backend": c.backend(),
            "ports": c.ports.iter().map(|(cp, hp)| (cp.to_string(), json!(hp))).collect::<serde_json::Map<_, _>>(),
            "deployed_at": c.labels.get(crate::slots::LABEL_DEPLOYED_AT),
            "started_at": c.started_at,
            "finished_at": c.finished_at,
        }));
    }
    text.push(match slots.live {
        Some(s) => format!("live: {} (marked *)", s.container_name(&args.name)),
        None => "live: none of this app's containers".to_string(),
    });
    report.set("live", slots.live.map(Slot::as_str));
    report.set("slots", Value::Array(slot_values));
    out.result_text(&text.join("\n"));
    proxy_status.map(|_| ())
}
