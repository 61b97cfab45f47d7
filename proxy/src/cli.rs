//! The command line of `handoff-proxy`: flags, their env vars and defaults.
//! A module of the binary, not of the library: the proxy core never parses flags.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Zero-downtime front door: routes each request to the active backend and
/// drains the previous one on a switch.
#[derive(Debug, Parser)]
#[command(name = "handoff-proxy", version, about, max_term_width = 100)]
pub struct Cli {
    /// Plain HTTP listen address.
    #[arg(
        long,
        env = "HANDOFF_HTTP",
        default_value = "0.0.0.0:80",
        value_name = "ADDR"
    )]
    pub http: SocketAddr,

    /// Control API Unix socket (HTTP/1.1 + JSON; created with mode 0600).
    #[arg(long, env = handoff_shared::CONTROL_SOCKET_ENV, default_value = handoff_shared::DEFAULT_CONTROL_SOCKET, value_name = "PATH")]
    pub control: PathBuf,

    /// Group (name or gid) also allowed on the control socket; makes it mode 0660.
    #[arg(long, env = "HANDOFF_CONTROL_GROUP", value_name = "GROUP")]
    pub control_group: Option<String>,

    /// File that keeps the active backend across restarts.
    #[arg(
        long,
        env = "HANDOFF_STATE",
        default_value = "/var/lib/handoff/state.json",
        value_name = "PATH"
    )]
    pub state: PathBuf,

    /// Backend HOST:PORT to use when the state file names none.
    #[arg(long, env = "HANDOFF_BACKEND", value_name = "HOST:PORT")]
    pub backend: Option<String>,

    /// How long a switch or shutdown waits for in-flight requests.
    #[arg(long, env = "HANDOFF_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration, value_name = "DURATION")]
    pub drain_timeout: Duration,

    /// How long a backend may take to answer before the client gets 504.
    #[arg(long, env = "HANDOFF_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = duration, value_name = "DURATION")]
    pub upstream_timeout: Duration,

    /// How long connecting to a backend may take before the client gets 502.
    #[arg(long, env = "HANDOFF_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration, value_name = "DURATION")]
    pub upstream_connect_timeout: Duration,

    /// A client must send a complete request head within this time.
    #[arg(long, env = "HANDOFF_HEADER_TIMEOUT", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub header_timeout: Duration,

    /// Log filter, RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info", value_name = "FILTER")]
    pub log: String,
}

pub fn duration(s: &str) -> Result<Duration, String> {
    handoff_shared::parse_duration(s)
}
