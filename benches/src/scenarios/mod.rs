//! The scenarios, and what they share: run options and helpers.

pub mod cutover;
pub mod deploy;
pub mod routes;
pub mod seed;
pub mod slow_clients;
pub mod steady;
mod steady_report;
pub mod switch;
pub mod upgrade;
mod upgrade_report;

use anyhow::{anyhow, Result};
use std::path::PathBuf;
use std::time::Duration;

/// Options every scenario honours.
#[derive(Debug, Clone)]
pub struct Common {
    /// Length of each measured `steady` run.
    pub duration: Duration,
    /// Unmeasured load before each `steady` run.
    pub warmup: Duration,
    /// Upper bound on requests per load stream, whatever the duration.
    pub max_requests: u64,
    /// A few seconds per scenario, for CI: proves it runs and counts.
    pub smoke: bool,
    pub out: PathBuf,
}

/// Runs blocking process management off the load generator's threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("blocking task failed: {e}"))?
}

/// In CI a missing piece must fail the run; on a workstation it is reported
/// in the output and the scenario carries on without it.
pub fn unavailable(why: String) -> Result<String> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        Err(anyhow!("{why} (CI=true: required)"))
    } else {
        tracing::warn!("{why}");
        Ok(why)
    }
}
