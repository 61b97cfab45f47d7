//! What a deploy, rollback or status did, for the summary line and `--json`.

use crate::error::Failure;
use crate::output::{ms, secs};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Collects what happened, for the summary line and `--json`.
#[derive(Debug, Default)]
pub struct Report {
    pub fields: Map<String, Value>,
    /// In the order they ran.
    steps: Vec<(String, u64)>,
}

impl Report {
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.into(), value.into());
    }

    pub fn step(&mut self, name: &str, took: Duration) {
        self.steps.push((name.into(), ms(took)));
    }

    /// The human-readable result of a deploy or rollback that went through.
    pub fn success_text(&self) -> String {
        let f = &self.fields;
        let text = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        let verb = if text("command") == "rollback" {
            "rolled back to"
        } else {
            "deployed"
        };
        let mut lines = vec![format!(
            "{verb} {}: {} is live at {}",
            text("image"),
            text("container"),
            text("backend")
        )];
        if let Some(prev) = f.get("previous").filter(|p| p.is_object()) {
            lines.push(format!(
                "previous: {} ({}), stopped and kept for rollback",
                prev["container"].as_str().unwrap_or("?"),
                prev["image"].as_str().unwrap_or("?")
            ));
        }
        if let Some(watch) = f.get("watch").filter(|w| w.is_object()) {
            lines.push(format!(
                "watch: stayed healthy for {} after the switch ({} checks)",
                secs(Duration::from_millis(
                    watch["watched_ms"].as_u64().unwrap_or(0)
                )),
                watch["checks"].as_u64().unwrap_or(0)
            ));
        }
        if let Some(drain) = f.get("drain") {
            let took = secs(Duration::from_millis(
                drain["drain_ms"].as_u64().unwrap_or(0),
            ));
            lines.push(match drain["drained"].as_bool() {
                Some(true) => format!("drain: all old requests finished ({took})"),
                Some(false) => format!(
                    "drain: timed out after {took} with {} requests in flight",
                    drain["in_flight"].as_u64().unwrap_or(0)
                ),
                None => format!(
                    "drain: result lost ({}); the proxy routes to the new release",
                    drain["error"].as_str().unwrap_or("no answer")
                ),
            });
        }
        if let Some(cut) = f.get("cut").and_then(Value::as_u64).filter(|c| *c > 0) {
            lines.push(format!(
                "cut: {cut} requests were still running on the old release when it was stopped"
            ));
        }
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(k, v)| {
                format!(
                    "{} {}",
                    k.replace('_', " "),
                    secs(Duration::from_millis(*v))
                )
            })
            .collect();
        lines.push(format!("steps: {}", steps.join(", ")));
        lines.join("\n")
    }

    pub fn into_json(mut self, failure: Option<&Failure>) -> Value {
        let mut out = Map::new();
        out.insert("ok".into(), json!(failure.is_none()));
        out.insert(
            "exit_code".into(),
            json!(failure.map_or(0, Failure::exit_code)),
        );
        if let Some(f) = failure {
            out.insert("error".into(), json!(f.to_string()));
            out.insert("error_kind".into(), json!(f.kind()));
            if let Failure::Unhealthy {
                exit_code: Some(code),
                ..
            } = f
            {
                out.insert("container_exit_code".into(), json!(code));
            }
        }
        out.append(&mut self.fields);
        let steps = self.steps.into_iter().map(|(k, v)| (k, json!(v))).collect();
        out.insert("steps_ms".into(), Value::Object(steps));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_for_people_and_scripts() {
        let mut report = Report::default();
        report.set("command", "deploy");
        report.set("image", "shop:2");
        report.set("container", "shop-green");
        report.set("backend", "127.0.0.1:4001");
        report.set(
            "previous",
            json!({"container": "shop-blue", "image": "shop:1"}),
        );
        report.set(
            "drain",
            json!({"drained": false, "in_flight": 2, "drain_ms": 30000}),
        );
        report.step("pull", Duration::from_millis(1200));
        report.step("health", Duration::from_millis(300));
        let text = report.success_text();
        assert!(
            text.starts_with("deployed shop:2: shop-green is live at 127.0.0.1:4001"),
            "{text}"
        );
        assert!(
            text.contains("previous: shop-blue (shop:1), stopped and kept for rollback"),
            "{text}"
        );
        assert!(
            text.contains("timed out after 30.0s with 2 requests in flight"),
            "{text}"
        );
        assert!(text.ends_with("steps: pull 1.2s, health 0.3s"), "{text}");

        let failure = Failure::Unhealthy {
            message: "it crashed".into(),
            exit_code: Some(3),
        };
        let json = report.into_json(Some(&failure));
        assert_eq!(json["ok"], false);
        assert_eq!(json["exit_code"], 2);
        assert_eq!(json["error_kind"], "unhealthy");
        assert_eq!(json["container_exit_code"], 3);
        assert_eq!(json["steps_ms"]["pull"], 1200);
    }
}
