//! Typed requests and responses of the control API (`/v1/...`).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `PUT /v1/backend`: route new requests to `addr`, then wait for the old
/// generation to drain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBackend {
    /// `HOST:PORT` of the new backend, e.g. `127.0.0.1:8081`.
    pub addr: String,
    /// How long to wait for the previous generation, humantime format (`30s`,
    /// `1m 30s`). The proxy's `--drain-timeout` applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// What the backend speaks; `http1` when absent. Left out of the JSON
    /// when `http1`, so a request for an HTTP/1.1 backend is the same bytes
    /// an older proxy (which refuses unknown fields) understands.
    #[serde(default, skip_serializing_if = "BackendProtocol::is_http1")]
    pub protocol: BackendProtocol,
}

/// The protocol the proxy speaks to a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    /// HTTP/1.1, on the proxy's own client (keep-alive, pinned connections).
    #[default]
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge (RFC 9113 §3.3), as
    /// gRPC servers speak it: requests are multiplexed as streams on one
    /// connection per backend generation, and trailers pass through.
    H2c,
}

impl BackendProtocol {
    pub fn is_http1(&self) -> bool {
        *self == BackendProtocol::Http1
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackendProtocol::Http1 => "http1",
            BackendProtocol::H2c => "h2c",
        }
    }
}

impl std::fmt::Display for BackendProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http1" => Ok(BackendProtocol::Http1),
            "h2c" => Ok(BackendProtocol::H2c),
            _ => Err(format!(
                "unknown backend protocol {s:?}: expected http1 or h2c"
            )),
        }
    }
}

/// The answer to a switch. It is sent only once the drain finished or timed out,
/// so the caller knows whether stopping the old backend is safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchResponse {
    pub backend: String,
    pub previous: Option<String>,
    pub generation: u64,
    /// `true` when no request holds an older generation any more.
    pub drained: bool,
    /// Requests still running on older generations when the call returned.
    pub in_flight: u64,
    /// How long the drain wait took, in milliseconds.
    pub drain_ms: u64,
}

/// One backend generation that was switched away from and still has requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainingGeneration {
    pub backend: String,
    pub generation: u64,
    pub in_flight: u64,
}

/// The addresses the proxy actually bound (useful when started on port 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listeners {
    pub http: Option<String>,
    pub https: Option<String>,
    #[serde(default)]
    pub admin: Option<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub backend: Option<String>,
    /// What the active backend speaks (`http1` when none is active).
    #[serde(default)]
    pub protocol: BackendProtocol,
    pub generation: u64,
    pub in_flight: u64,
    pub draining: Vec<DrainingGeneration>,
    #[serde(default)]
    pub listeners: Listeners,
}

/// Every non-2xx answer of the control API carries this body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Parses a humantime duration (`30s`, `1m`, `250ms`) with an error that names
/// the offending text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Checks that `addr` is `HOST:PORT` with a non-empty host and a non-zero
/// port. Returns the host and port so callers need not split twice.
pub fn parse_backend_addr(addr: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("invalid backend address {:?}: {why}", clip(addr));
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0 is not a backend"));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("host is empty"));
    }
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let is_name = host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !is_ip && !is_name {
        return Err(bad("host is neither an IP address nor a DNS name"));
    }
    Ok((host.to_string(), port))
}

/// The most characters of a caller's input an error message quotes.
pub const QUOTE_LIMIT: usize = 200;

/// `input` as an error message may quote it: at most [`QUOTE_LIMIT`]
/// characters, then an ellipsis and how many were left out. A 60 000
/// character address is not worth echoing back whole.
pub fn clip(input: &str) -> String {
    match input.char_indices().nth(QUOTE_LIMIT) {
        None => input.to_string(),
        Some((at, _)) => format!(
            "{}… ({} more characters)",
            &input[..at],
            input[at..].chars().count()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_clipped_when_quoted() {
        assert_eq!(clip("short"), "short");
        let long = "a".repeat(60_000);
        let shown = clip(&long);
        assert!(shown.len() < 260, "{}", shown.len());
        assert!(shown.ends_with("(59800 more characters)"));
        assert!(parse_backend_addr(&format!("{long}:x")).unwrap_err().len() < 300);
    }

    #[test]
    fn backend_addresses() {
        assert_eq!(
            parse_backend_addr("127.0.0.1:8080").unwrap(),
            ("127.0.0.1".into(), 8080)
        );
        assert_eq!(parse_backend_addr("[::1]:80").unwrap(), ("::1".into(), 80));
        assert_eq!(parse_backend_addr("app-blue:8080").unwrap().0, "app-blue");
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            ":80",
            "a b:80",
            "x:y",
        ] {
            assert!(parse_backend_addr(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
    }

    #[test]
    fn set_backend_rejects_unknown_fields() {
        assert!(serde_json::from_str::<SetBackend>(r#"{"addr":"a:1","bogus":1}"#).is_err());
    }

    #[test]
    fn set_backend_protocol_defaults_to_http1_and_is_checked() {
        let old: SetBackend = serde_json::from_str(r#"{"addr":"a:1"}"#).unwrap();
        assert_eq!(old.protocol, BackendProtocol::Http1);
        assert_eq!(serde_json::to_string(&old).unwrap(), r#"{"addr":"a:1"}"#);
        let h2c: SetBackend = serde_json::from_str(r#"{"addr":"a:1","protocol":"h2c"}"#).unwrap();
        assert_eq!(h2c.protocol, BackendProtocol::H2c);
        assert!(serde_json::from_str::<SetBackend>(r#"{"addr":"a:1","protocol":"h3"}"#).is_err());
        assert_eq!("H2C".parse::<BackendProtocol>(), Ok(BackendProtocol::H2c));
        assert!("spdy".parse::<BackendProtocol>().is_err());
    }
}
