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
    /// Admin listener for `/metrics` and `/healthz`; none disables it.
    pub admin: Option<SocketAddr>,
    /// Control socket path.
    pub control: PathBuf,
    /// Where a new process asks this one for its sockets (see
    /// [`crate::upgrade`]); by default next to the control socket.
    pub upgrade_socket: PathBuf,
    /// Group allowed on the control socket (mode 0660) besides root and our uid.
    pub control_group: Option<u32>,
    /// Where the active backend is persisted.
    pub state: PathBuf,
    /// Backend to use when the state file names none.
    pub backend: Option<String>,
    /// What `backend` speaks (the state file keeps its own).
    pub backend_protocol: handoff_shared::BackendProtocol,
    /// How long a switch (and shutdown) waits for in-flight requests.
    pub drain_timeout: Duration,
    pub upstream: UpstreamSettings,
    /// A client must send a full request head within this time (slowloris).
    pub header_read_timeout: Duration,
    /// TLS listener and its certificates; none serves plain HTTP only.
    pub tls: Option<TlsListener>,
    /// Sizes, counts and timeouts that bound what a client can hold.
    pub limits: crate::limits::Limits,
    /// Threads serving client connections (see [`crate::workers`]).
    pub workers: usize,
    /// How much of each request and response body is read ahead of the
    /// slower side (see [`crate::buffering`]).
    pub buffering: crate::buffering::Buffering,
}

/// `--https` with its certificates and what the plain listener does about it.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub addr: SocketAddr,
    pub certs: crate::tls::TlsSettings,
    /// Answer plain-HTTP requests with 308 to https, except under these
    /// path prefixes; none forwards plain HTTP as usual.
    pub redirect_exempt: Option<Vec<String>>,
    /// `Strict-Transport-Security: max-age` for https responses.
    pub hsts_max_age: Option<Duration>,
}
