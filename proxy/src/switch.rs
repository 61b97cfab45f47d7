//! Checks a switch must pass before anything changes.

use http::uri::Authority;
use http::StatusCode;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// A backend that does not accept a TCP connection within this time is refused.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("{0}")]
    BadAddress(String),
    #[error("backend {addr} does not accept connections: {why}")]
    Unreachable { addr: String, why: String },
    #[error(
        "backend {addr} is this proxy's own listener {listener}: every request would come \
         back to the proxy in a loop; give the address the app itself listens on"
    )]
    IsSelf { addr: String, listener: SocketAddr },
}

impl SwitchError {
    pub fn status(&self) -> StatusCode {
        match self {
            SwitchError::BadAddress(_) => StatusCode::BAD_REQUEST,
            SwitchError::Unreachable { .. } | SwitchError::IsSelf { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        }
    }
}

/// Validates `addr`, refuses one that is the proxy itself (any of `own`
/// listeners, by any name that resolves to it), and proves it accepts a TCP
/// connection, so a typo or a dead container is refused before any traffic
/// could be routed to it.
pub async fn plan(addr: &str, own: &[SocketAddr]) -> Result<Authority, SwitchError> {
    let (host, port) = handoff_shared::parse_backend_addr(addr).map_err(SwitchError::BadAddress)?;
    let shown = handoff_shared::clip(addr);
    let authority: Authority = addr
        .parse()
        .map_err(|e| SwitchError::BadAddress(format!("invalid backend address {shown:?}: {e}")))?;
    let unreachable = |why: String| SwitchError::Unreachable {
        addr: shown.clone(),
        why,
    };
    let resolved = match tokio::time::timeout(
        REACH_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable(format!("no answer within {REACH_TIMEOUT:?}"))),
    };
    if let Some(listener) = resolved
        .iter()
        .find_map(|target| own.iter().find(|l| is_same_socket(*target, **l)))
    {
        return Err(SwitchError::IsSelf {
            addr: shown.clone(),
            listener: *listener,
        });
    }
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

/// Whether a connection to `target` would reach `listener` on this host.
/// A listener on 0.0.0.0 or [::] takes every local address; a target of
/// 0.0.0.0 or [::] means this host (Linux connects it to loopback).
pub fn is_same_socket(target: SocketAddr, listener: SocketAddr) -> bool {
    if target.port() != listener.port() {
        return false;
    }
    let ip = match target.ip().to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let bound = listener.ip().to_canonical();
    if bound.is_unspecified() {
        is_local(ip)
    } else {
        bound == ip
    }
}

/// Whether `ip` is one of this host's addresses: loopback, or one a socket
/// can be bound to (the kernel's own answer, no interface list to parse).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_listeners_are_recognised_by_any_local_name() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let any6: SocketAddr = "[::]:8080".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for target in [
            "127.0.0.1:8080",
            "0.0.0.0:8080",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            let target: SocketAddr = target.parse().unwrap();
            assert!(is_same_socket(target, any), "{target} vs {any}");
            assert!(is_same_socket(target, any6), "{target} vs {any6}");
        }
        assert!(is_same_socket("0.0.0.0:8080".parse().unwrap(), lo));
        assert!(!is_same_socket("127.0.0.1:8081".parse().unwrap(), any));
        assert!(!is_same_socket("127.0.0.2:8080".parse().unwrap(), lo));
        assert!(!is_same_socket("192.0.2.1:8080".parse().unwrap(), any));
    }
}
