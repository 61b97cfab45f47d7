//! The proxy's settings, already parsed and validated. The binary builds this
//! from flags, environment and files; the library never reads those itself.

use crate::upstream::UpstreamSettings;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// Plain HTTP listener.
    pub http: SocketAddr,
    /// Control socket path.
    pub control: PathBuf,
    /// Group allowed on the control socket (mode 0660) besides root and our uid.
    pub control_group: Option<u32>,
    /// Where the active backend is persisted.
    pub state: PathBuf,
    /// Backend to use when the state file names none.
    pub backend: Option<String>,
    /// How long a switch (and shutdown) waits for in-flight requests.
    pub drain_timeout: Duration,
    /// How long a backend may take to send response headers (then 504).
    pub upstream_timeout: Duration,
    pub upstream: UpstreamSettings,
    /// A client must send a full request head within this time (slowloris).
    pub header_read_timeout: Duration,
}
