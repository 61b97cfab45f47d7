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
    /// TOML file with any of these settings (keys are the long flag names);
    /// a flag or env var overrides the file.
    #[arg(
        long,
        env = "HANDOFF_CONFIG",
        value_name = "FILE",
        help_heading = "Control and state"
    )]
    pub config: Option<PathBuf>,

    /// Admin listener for GET /metrics (Prometheus) and GET /healthz; `off` disables it.
    #[arg(long, env = "HANDOFF_ADMIN", default_value = "127.0.0.1:9180", value_parser = admin_addr, value_name = "ADDR", help_heading = "Listeners")]
    pub admin: Admin,

    /// Log format on stderr: text or json (one access-log line per request either way).
    #[arg(
        long,
        env = "HANDOFF_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT",
        help_heading = "Logging"
    )]
    pub log_format: LogFormat,

    /// Plain HTTP listen address.
    #[arg(
        long,
        env = "HANDOFF_HTTP",
        default_value = "0.0.0.0:80",
        value_name = "ADDR",
        help_heading = "Listeners"
    )]
    pub http: SocketAddr,

    /// Threads that serve client connections, each with its own event loop
    /// (like nginx's worker_processes); default: one per CPU.
    #[arg(long, env = "HANDOFF_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024), value_name = "N", help_heading = "Listeners")]
    pub workers: Option<u16>,

    /// Control API Unix socket (HTTP/1.1 + JSON; created with mode 0600).
    #[arg(long, env = handoff_shared::CONTROL_SOCKET_ENV, default_value = handoff_shared::DEFAULT_CONTROL_SOCKET, value_name = "PATH", help_heading = "Control and state")]
    pub control: PathBuf,

    /// Take over from the running handoff-proxy (same --control or
    /// --upgrade-socket) without a gap: receive its listening sockets, load
    /// the same state file, then it stops accepting, drains and exits 0. A
    /// failure before this process is ready leaves the old one serving.
    #[arg(long, help_heading = "Upgrade")]
    pub upgrade: bool,

    /// With --upgrade: start the new process in the background, wait until
    /// the old one has drained, print the outcome and exit (0, or 1 if the
    /// new process could not start); for `systemctl reload`.
    #[arg(long, requires = "upgrade", help_heading = "Upgrade")]
    pub background: bool,

    /// Unix socket where the running process hands its sockets to a new one
    /// (mode 0600); default: the control socket's path plus `.upgrade`.
    #[arg(
        long,
        env = "HANDOFF_UPGRADE_SOCKET",
        value_name = "PATH",
        help_heading = "Upgrade"
    )]
    pub upgrade_socket: Option<PathBuf>,

    /// Group (name or gid) also allowed on the control socket; makes it mode 0660.
    #[arg(
        long,
        env = "HANDOFF_CONTROL_GROUP",
        value_name = "GROUP",
        help_heading = "Control and state"
    )]
    pub control_group: Option<String>,

    /// File that keeps the active backend across restarts.
    #[arg(
        long,
        env = "HANDOFF_STATE",
        default_value = "/var/lib/handoff/state.json",
        value_name = "PATH",
        help_heading = "Control and state"
    )]
    pub state: PathBuf,

    /// Backend HOST:PORT to use when the state file names none.
    #[arg(
        long,
        env = "HANDOFF_BACKEND",
        value_name = "HOST:PORT",
        help_heading = "Backend and drain"
    )]
    pub backend: Option<String>,

    /// What the --backend speaks: http1, or h2c (HTTP/2 cleartext with prior knowledge, e.g. a gRPC server). A switch (PUT /v1/backend) names its own.
    #[arg(
        long,
        env = "HANDOFF_BACKEND_PROTOCOL",
        default_value = "http1",
        value_name = "PROTOCOL",
        help_heading = "Backend and drain"
    )]
    pub backend_protocol: handoff_shared::BackendProtocol,

    /// How long a switch or shutdown waits for in-flight requests.
    #[arg(long, env = "HANDOFF_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration, value_name = "DURATION", help_heading = "Backend and drain")]
    pub drain_timeout: Duration,

    /// How long a backend may stay silent after the proxy sent it a request
    /// (like nginx's proxy_read_timeout): 504 before the response head, cut after.
    #[arg(long, env = "HANDOFF_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = duration, value_name = "DURATION", help_heading = "Backend and drain")]
    pub upstream_timeout: Duration,

    /// How long connecting to a backend may take before the client gets 502.
    #[arg(long, env = "HANDOFF_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration, value_name = "DURATION", help_heading = "Backend and drain")]
    pub upstream_connect_timeout: Duration,

    /// A client must send a complete request head within this time of its first byte (of the accept, for a connection's first request); the wait between keep-alive requests falls under --idle-timeout.
    #[arg(long, env = "HANDOFF_HEADER_TIMEOUT", default_value = "10s", value_parser = duration, value_name = "DURATION", help_heading = "Client limits")]
    pub header_timeout: Duration,

    /// TLS listen address; on when certificates are given.
    #[arg(
        long,
        env = "HANDOFF_HTTPS",
        default_value = "0.0.0.0:443",
        value_name = "ADDR",
        help_heading = "Listeners"
    )]
    pub https: SocketAddr,

    /// PEM certificate chain; repeatable, paired in order with --tls-key. The first is the default for unknown SNI.
    #[arg(
        long,
        env = "HANDOFF_TLS_CERT",
        value_delimiter = ',',
        value_name = "PATH",
        help_heading = "TLS"
    )]
    pub tls_cert: Vec<PathBuf>,

    /// PEM private key (PKCS#8, RSA or EC); repeatable, one per --tls-cert.
    #[arg(
        long,
        env = "HANDOFF_TLS_KEY",
        value_delimiter = ',',
        value_name = "PATH",
        help_heading = "TLS"
    )]
    pub tls_key: Vec<PathBuf>,

    /// Directory of NAME.crt + NAME.key pairs, loaded after --tls-cert (default: none).
    #[arg(
        long,
        env = "HANDOFF_TLS_DIR",
        value_name = "DIR",
        help_heading = "TLS"
    )]
    pub tls_dir: Option<PathBuf>,

    /// Answer plain HTTP with 308 to https (needs TLS); default off.
    #[arg(long, env = "HANDOFF_REDIRECT_HTTPS", help_heading = "TLS")]
    pub redirect_https: bool,

    /// Path prefix still forwarded over plain HTTP with --redirect-https; repeatable.
    #[arg(
        long,
        env = "HANDOFF_REDIRECT_EXEMPT",
        value_delimiter = ',',
        default_value = "/.well-known/acme-challenge/",
        value_name = "PREFIX",
        help_heading = "TLS"
    )]
    pub redirect_exempt: Vec<String>,

    /// Send Strict-Transport-Security with this max-age on https (default: not sent).
    #[arg(long, env = "HANDOFF_HSTS_MAX_AGE", value_parser = duration, value_name = "DURATION", help_heading = "TLS")]
    pub hsts_max_age: Option<Duration>,

    /// A TLS handshake must finish within this time.
    #[arg(long, env = "HANDOFF_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration, value_name = "DURATION", help_heading = "TLS")]
    pub tls_handshake_timeout: Duration,

    /// A client connection that moves no byte for this long is closed.
    #[arg(long, env = "HANDOFF_IDLE_TIMEOUT", default_value = "75s", value_parser = duration, value_name = "DURATION", help_heading = "Client limits")]
    pub idle_timeout: Duration,

    /// Largest request head; bigger ones get 431 (minimum 8KiB).
    #[arg(long, env = "HANDOFF_MAX_HEADER_SIZE", default_value = "32KiB", value_parser = size, value_name = "SIZE", help_heading = "Client limits")]
    pub max_header_size: u64,

    /// Largest request body; bigger ones get 413.
    #[arg(long, env = "HANDOFF_MAX_BODY", default_value = "10MiB", value_parser = size, value_name = "SIZE", help_heading = "Client limits")]
    pub max_body: u64,

    /// Request bodies up to this size are read whole before a backend
    /// connection is taken, and sent with Content-Length (like nginx's
    /// proxy_request_buffering); longer ones stream. Memory only; 0 streams all.
    #[arg(long, env = "HANDOFF_REQUEST_BUFFER", default_value = "1MiB", value_parser = size, value_name = "SIZE", help_heading = "Client limits")]
    pub request_buffer: u64,

    /// Response bodies up to this size are read off the backend before the
    /// client gets them, so a slow reader holds no backend connection (like
    /// nginx's proxy_buffering); longer ones stream, and so do text/event-stream,
    /// X-Accel-Buffering: no, gRPC and upgrades. Memory only; 0 streams all.
    #[arg(long, env = "HANDOFF_RESPONSE_BUFFER", default_value = "64KiB", value_parser = size, value_name = "SIZE", help_heading = "Client limits")]
    pub response_buffer: u64,

    /// Client connections served at once; more wait to be accepted.
    #[arg(
        long,
        env = "HANDOFF_MAX_CONNECTIONS",
        default_value = "10000",
        value_name = "N",
        help_heading = "Client limits"
    )]
    pub max_connections: usize,

    /// Log filter, RUST_LOG syntax.
    #[arg(
        long,
        env = "RUST_LOG",
        default_value = "info",
        value_name = "FILTER",
        help_heading = "Logging"
    )]
    pub log: String,
}

pub fn duration(s: &str) -> Result<Duration, String> {
    handoff_shared::parse_duration(s)
}

/// The admin address, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub Option<SocketAddr>);

fn admin_addr(s: &str) -> Result<Admin, String> {
    match s {
        "off" | "none" => Ok(Admin(None)),
        _ => s
            .parse()
            .map(|a| Admin(Some(a)))
            .map_err(|e| format!("{e} (an ADDR:PORT or `off`)")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn size(s: &str) -> Result<u64, String> {
    handoff_proxy::limits::parse_size(s)
}

impl Cli {
    /// The TLS listener, when certificates are given; flag combinations that
    /// cannot work are errors naming the flags.
    pub fn tls(&self) -> Result<Option<handoff_proxy::config::TlsListener>, String> {
        use handoff_proxy::tls::{CertPair, TlsSettings};
        if self.tls_cert.len() != self.tls_key.len() {
            return Err(format!(
                "--tls-cert is given {} times and --tls-key {} times; give one key per certificate",
                self.tls_cert.len(),
                self.tls_key.len()
            ));
        }
        if self.tls_cert.is_empty() && self.tls_dir.is_none() {
            if self.redirect_https {
                return Err(
                    "--redirect-https needs TLS (--tls-cert/--tls-key or --tls-dir)".into(),
                );
            }
            return Ok(None);
        }
        let pairs = self
            .tls_cert
            .iter()
            .zip(&self.tls_key)
            .map(|(c, k)| CertPair {
                cert: c.clone(),
                key: k.clone(),
            })
            .collect();
        Ok(Some(handoff_proxy::config::TlsListener {
            addr: self.https,
            certs: TlsSettings {
                pairs,
                dir: self.tls_dir.clone(),
            },
            redirect_exempt: self.redirect_https.then(|| self.redirect_exempt.clone()),
            hsts_max_age: self.hsts_max_age,
        }))
    }

    pub fn limits(&self) -> Result<handoff_proxy::limits::Limits, String> {
        if self.max_header_size < 8192 {
            return Err("--max-header-size must be at least 8KiB".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        Ok(handoff_proxy::limits::Limits {
            max_body: self.max_body,
            max_header_size: usize::try_from(self.max_header_size)
                .map_err(|_| "--max-header-size is too large")?,
            max_connections: self.max_connections,
            handshake_timeout: self.tls_handshake_timeout,
            idle_timeout: self.idle_timeout,
        })
    }
}
