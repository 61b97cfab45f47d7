//! Failures, each tied to the exit code a CI job branches on.

/// Everything that can stop a command. The variant decides the exit code, so
/// a caller can tell "fix your config" from "the release is broken" from
/// "the host is broken" without parsing text.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad flags or config, or a refusal (lock held, nothing to roll back to).
    #[error("{0}")]
    Usage(String),
    /// The new container never became healthy; the proxy was not touched.
    #[error("{message}")]
    Unhealthy {
        message: String,
        /// The container's exit code when it exited or restarted.
        exit_code: Option<i64>,
    },
    /// The Docker engine is unreachable or refused an operation.
    #[error("{0}")]
    Docker(String),
    /// The proxy's control socket is unreachable or refused the switch.
    #[error("{0}")]
    Proxy(String),
    /// The proxy answered and refused (4xx: a route conflict, an
    /// unreachable backend, bad input): unlike a lost answer, it is certain
    /// that nothing changed.
    #[error("{message}")]
    ProxyRefused { status: u16, message: String },
    /// Clients are getting errors: the live backend is not answering
    /// (`status`), or a drain timed out and `--fail-on-cut` was given.
    #[error("{0}")]
    ClientsFailing(String),
    /// Stopped by a signal before the switch; the new container was removed.
    #[error(
        "interrupted by {signal} before the switch; the proxy and the live container are unchanged"
    )]
    Interrupted { signal: &'static str, code: i32 },
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 1,
            Failure::Unhealthy { .. } => 2,
            Failure::Docker(_) => 3,
            Failure::Proxy(_) | Failure::ProxyRefused { .. } => 4,
            Failure::ClientsFailing(_) => 5,
            Failure::Interrupted { code, .. } => *code,
        }
    }

    /// The proxy answered and refused; nothing changed.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Failure::ProxyRefused { .. })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Usage(_) => "usage",
            Failure::Unhealthy { .. } => "unhealthy",
            Failure::Docker(_) => "docker",
            Failure::Proxy(_) => "proxy",
            Failure::ProxyRefused { status: 409, .. } => "route_conflict",
            Failure::ProxyRefused { .. } => "proxy",
            Failure::ClientsFailing(_) => "clients_failing",
            Failure::Interrupted { .. } => "interrupted",
        }
    }
}

pub type Result<T> = std::result::Result<T, Failure>;
