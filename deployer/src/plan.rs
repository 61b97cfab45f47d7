//! What one cutover is given: the [`Plan`] (which release goes live, what
//! it replaces, what becomes of it if it fails) and the [`Cutover`] it runs
//! with (Docker, the proxy, the output, the switch flags).
//!
//! The cutover's steps are methods on [`Cutover`]: the sequence in
//! `cutover` (become stable, retire, switch back) and the watched switch in
//! `watch`. Both take these types from here, so `watch` needs nothing from
//! `cutover` and the imports run one way: cutover, then watch, then plan.

use crate::cli::SwitchArgs;
use crate::docker::Engine;
use crate::output::Output;
use crate::proxy::Proxy;
use crate::releases::ContainerInfo;

/// What to do with a release that never became stable or failed its watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnhealthy {
    /// A new release: remove it.
    Remove,
    /// A new release with `--keep-failed`: stop it and rename it `-failed`.
    KeepFailed,
    /// A rollback target: stop it, it stays a kept release.
    Stop,
}

/// One cutover: which release goes live and what it replaces.
pub struct Plan<'a> {
    pub app: &'a str,
    /// Container name of the release going live (started already).
    pub new: &'a str,
    pub health_path: &'a str,
    pub restarts_before: i64,
    /// The release the proxy routes to now, whatever its state.
    pub old: Option<&'a ContainerInfo>,
    /// Other running releases of the app, stopped once the new one is live.
    pub strays: Vec<ContainerInfo>,
    pub on_unhealthy: OnUnhealthy,
    /// Stopped releases to keep; older ones are removed at the end.
    pub keep: Option<usize>,
}

/// What one cutover runs with.
pub struct Cutover<'a> {
    pub engine: &'a Engine,
    pub proxy: &'a Proxy,
    pub out: &'a Output,
    pub switch: &'a SwitchArgs,
}
