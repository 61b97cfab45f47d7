//! Checks a switch must pass before anything changes.

use http::uri::Authority;
use http::StatusCode;
use std::time::Duration;

/// A backend that does not accept a TCP connection within this time is refused.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("{0}")]
    BadAddress(String),
    #[error("backend {addr} does not accept connections: {why}")]
    Unreachable { addr: String, why: String },
}

impl SwitchError {
    pub fn status(&self) -> StatusCode {
        match self {
            SwitchError::BadAddress(_) => StatusCode::BAD_REQUEST,
            SwitchError::Unreachable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// Validates `addr` and proves it accepts a TCP connection, so a typo or a
/// dead container is refused before any traffic could be routed to it.
pub async fn plan(addr: &str) -> Result<Authority, SwitchError> {
    let (host, port) = handoff_shared::parse_backend_addr(addr).map_err(SwitchError::BadAddress)?;
    let authority: Authority = addr
        .parse()
        .map_err(|e| SwitchError::BadAddress(format!("invalid backend address {addr:?}: {e}")))?;
    let unreachable = |why: String| SwitchError::Unreachable {
        addr: addr.to_string(),
        why,
    };
    match tokio::time::timeout(
        REACH_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(authority),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!("no answer within {REACH_TIMEOUT:?}"))),
    }
}
