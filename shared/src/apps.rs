//! The apps of the route table: `GET /v1/apps`, `GET|PUT|DELETE /v1/apps/{app}`.
//!
//! An app is a name (the deployer's `--name`), the hosts and path prefixes it
//! claims, and its own backend generation with its own drain. `PUT
//! /v1/backend` and `GET /v1/status` remain as shorthands for the default app.

use crate::api::{BackendProtocol, DrainingGeneration, SwitchResponse};
use serde::{Deserialize, Serialize};

/// The name `PUT /v1/backend` gives the default app it creates.
pub const DEFAULT_APP: &str = "default";

/// `PUT /v1/apps/{app}`: create or update an app. A route field left out
/// keeps the app's current value (an empty one for a new app), so a
/// rollback can send only `backend`. A `backend` switches, and the answer
/// waits for the drain; no `backend` keeps the current one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutApp {
    /// Exact names and `*.example.com` wildcards; compared lowercase,
    /// without port or trailing dot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// Path prefixes, matched on segment boundaries (`/api` takes `/api`
    /// and `/api/x`, never `/apix`); empty means the whole host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefixes: Option<Vec<String>>,
    /// Forward the path without the matched prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<bool>,
    /// Takes requests whose host no app names. At most one app is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// `HOST:PORT` to switch to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// What the backend speaks; `http1` when absent.
    #[serde(default, skip_serializing_if = "BackendProtocol::is_http1")]
    pub protocol: BackendProtocol,
    /// How long a switch waits for the previous generation (humantime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
}

/// One app as the proxy routes it now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub hosts: Vec<String>,
    pub path_prefixes: Vec<String>,
    pub strip_prefix: bool,
    pub default: bool,
    pub backend: Option<String>,
    #[serde(default)]
    pub protocol: BackendProtocol,
    pub generation: u64,
    pub in_flight: u64,
    pub draining: Vec<DrainingGeneration>,
}

/// `GET /v1/apps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppsResponse {
    pub apps: Vec<AppStatus>,
}

/// The answer to `PUT /v1/apps/{app}`: the app as it now is, and the
/// switch when a backend was given (sent once the drain finished or timed
/// out, as `PUT /v1/backend` does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutAppResponse {
    pub app: AppStatus,
    pub created: bool,
    pub switch: Option<SwitchResponse>,
}

/// The answer to `DELETE /v1/apps/{app}`, once its requests drained or the
/// drain timed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveAppResponse {
    pub name: String,
    pub drained: bool,
    /// Requests still running when the call returned.
    pub in_flight: u64,
    pub drain_ms: u64,
}

/// Checks an app name: it becomes a URL path segment, a container name
/// prefix and a metrics label, so it is kept to 1-60 characters of
/// `[a-zA-Z0-9_.-]`, starting with a letter or digit.
pub fn validate_app_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 60 || !ok_chars || !first_ok {
        return Err(format!(
            "invalid app name {:?}: use 1-60 characters from [a-zA-Z0-9_.-], starting with a letter or digit",
            crate::api::clip(name)
        ));
    }
    Ok(())
}

/// The control API's paths, in one place for the proxy and its clients.
pub mod paths {
    pub const STATUS: &str = "/v1/status";
    pub const BACKEND: &str = "/v1/backend";
    pub const TLS_RELOAD: &str = "/v1/tls/reload";
    pub const APPS: &str = "/v1/apps";
    /// `/v1/apps/` followed by an app name.
    pub const APP_PREFIX: &str = "/v1/apps/";

    /// The path of one app.
    pub fn app(name: &str) -> String {
        format!("{APP_PREFIX}{name}")
    }
}
