//! The control channel between `handoff` (the deployer) and `handoff-proxy`.
//!
//! Both binaries depend on this crate so that a request one side builds is, by
//! construction, a request the other side parses. The wire format is plain
//! HTTP/1.1 + JSON on a Unix socket, so `curl --unix-socket` speaks it too.
#![forbid(unsafe_code)]

pub mod api;
pub mod apps;
pub mod client;

pub use api::*;
pub use apps::*;
pub use client::{ControlClient, ControlError};

/// Where both binaries look for the control socket unless told otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/handoff/control.sock";
/// The environment variable both binaries read for the control socket path.
pub const CONTROL_SOCKET_ENV: &str = "HANDOFF_CONTROL";
