//! `deploy`: the full `handoff deploy` of v1 -> v2 under load, when a Docker
//! engine answers and the deployer and its test images exist.

use super::Common;
use crate::procs::sibling_binary;
use anyhow::Result;
use std::process::{Command, Stdio};

/// Why `deploy` cannot run here, or `None` when it can.
pub fn skip_reason() -> Option<String> {
    let docker = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !docker.is_ok_and(|s| s.success()) {
        return Some("skipped: no docker engine answers".into());
    }
    if sibling_binary("handoff", "HANDOFF_BIN").is_none() {
        return Some("skipped: no deployer binary `handoff` next to handoff-bench (cargo build --release -p handoff-deployer)".into());
    }
    Some(
        "skipped: the deploy scenario is not implemented yet (needs the deployer's test images)"
            .into(),
    )
}

pub async fn run(_common: &Common) -> Result<String> {
    let why = skip_reason().unwrap_or_default();
    Ok(format!("### deploy\n\n{why}\n"))
}
