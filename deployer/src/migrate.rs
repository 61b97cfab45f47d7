//! First run after the blue/green versions: their `APP-blue` / `APP-green`
//! containers become releases by a rename (`docker rename` keeps the
//! container, its ports and its state, so the proxy's backend stays valid).
//! The one the proxy does not route to gets the lower number, so the live
//! one stays the newest and the other one the rollback target.

use crate::docker::Engine;
use crate::error::Result;
use crate::output::Output;
use crate::releases::{self, ContainerInfo, Releases, LABEL_SLOT};
use handoff_shared::StatusResponse;

pub async fn blue_green(
    engine: &Engine,
    app: &str,
    status: &StatusResponse,
    out: &Output,
) -> Result<()> {
    let all = engine.app_containers(app).await?;
    let (mut slots, numbered): (Vec<ContainerInfo>, Vec<ContainerInfo>) = all
        .into_iter()
        .partition(|c| c.labels.contains_key(LABEL_SLOT) && c.release().is_none());
    if slots.is_empty() {
        return Ok(());
    }
    let first = Releases::new(numbered, Some(status)).next_number();
    let backend = status.backend.clone();
    // Not live first, then by deploy time.
    slots.sort_by_key(|c| {
        (
            c.backend().is_some() && c.backend() == backend,
            c.labels
                .get(releases::LABEL_DEPLOYED_AT)
                .cloned()
                .unwrap_or_default(),
        )
    });
    for (next, c) in (first..).zip(slots) {
        let to = releases::container_name(app, next);
        engine.rename(&c.name, &to).await?;
        out.step(format!(
            "migrated {} ({}) to release {next}: {to}",
            c.name,
            c.image()
        ));
    }
    Ok(())
}
