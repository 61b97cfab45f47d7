//! Registry credentials from the usual Docker client config, so a host where
//! `docker login` was run can be deployed to without handing handoff secrets
//! on its command line.
//!
//! Reads `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`): a
//! credential helper for the registry (`credHelpers`, then `credsStore`) and
//! otherwise the inline `auths` entry. Nothing found means an anonymous pull.
//!
//! `HANDOFF_REGISTRY_USER` and `HANDOFF_REGISTRY_PASSWORD`, when both are
//! set, come first: a CI job can hand over its registry secret through the
//! environment without writing a Docker config on the host. The password is
//! never printed.

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

const DOCKER_HUB: &str = "https://index.docker.io/v1/";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// The registry host of an image reference, as Docker decides it.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".to_string(),
    }
}

fn host_of_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn is_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

fn from_helper(helper: &str, server: &str) -> Option<DockerCredentials> {
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| tracing::warn!(helper, "cannot run the Docker credential helper: {e}"))
        .ok()?;
    let _ = child.stdin.take()?.write_all(server.as_bytes());
    let output = child.wait_with_output().ok()?;
    if !output.status.success() {
        tracing::warn!(
            helper,
            server,
            "the Docker credential helper has no credentials"
        );
        return None;
    }
    let answer: HelperAnswer = serde_json::from_slice(&output.stdout).ok()?;
    Some(if answer.username == "<token>" {
        DockerCredentials {
            identitytoken: Some(answer.secret),
            serveraddress: Some(server.into()),
            ..Default::default()
        }
    } else {
        DockerCredentials {
            username: Some(answer.username),
            password: Some(answer.secret),
            serveraddress: Some(server.into()),
            ..Default::default()
        }
    })
}

fn from_config(config: &ConfigFile, registry: &str) -> Option<DockerCredentials> {
    let server = if is_hub(registry) {
        DOCKER_HUB.to_string()
    } else {
        registry.to_string()
    };
    if let Some(helper) = config
        .cred_helpers
        .get(registry)
        .or(config.creds_store.as_ref())
    {
        if let Some(creds) = from_helper(helper, &server) {
            return Some(creds);
        }
    }
    let entry = config.auths.iter().find_map(|(key, entry)| {
        let host = host_of_key(key);
        (host == registry || (is_hub(registry) && is_hub(host))).then_some(entry)
    })?;
    let mut creds = DockerCredentials {
        serveraddress: Some(server),
        ..Default::default()
    };
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        creds.username = Some(user.to_string());
        creds.password = Some(pass.to_string());
    }
    creds.identitytoken = entry.identitytoken.clone();
    Some(creds)
}

pub const USER_ENV: &str = "HANDOFF_REGISTRY_USER";
pub const PASSWORD_ENV: &str = "HANDOFF_REGISTRY_PASSWORD";

/// Credentials from `HANDOFF_REGISTRY_USER` / `HANDOFF_REGISTRY_PASSWORD`.
fn from_env(image: &str) -> Option<DockerCredentials> {
    let user = std::env::var(USER_ENV).ok().filter(|u| !u.is_empty())?;
    let password = std::env::var(PASSWORD_ENV).ok()?;
    let registry = registry_of(image);
    Some(DockerCredentials {
        username: Some(user),
        password: Some(password),
        serveraddress: Some(if is_hub(&registry) {
            DOCKER_HUB.to_string()
        } else {
            registry
        }),
        ..Default::default()
    })
}

/// Credentials for pulling `image`: from the environment, else from the
/// Docker config, else none.
pub fn credentials_for(image: &str) -> Option<DockerCredentials> {
    if let Some(creds) = from_env(image) {
        return Some(creds);
    }
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker"))
        })?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: ConfigFile = serde_json::from_str(&text)
        .map_err(|e| tracing::warn!("ignoring unreadable Docker config {}: {e}", dir.display()))
        .ok()?;
    from_config(&config, &registry_of(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries() {
        assert_eq!(registry_of("nginx"), "docker.io");
        assert_eq!(registry_of("library/nginx:1"), "docker.io");
        assert_eq!(registry_of("ghcr.io/team/app:1"), "ghcr.io");
        assert_eq!(registry_of("localhost:5000/app"), "localhost:5000");
    }

    #[test]
    fn inline_auths() {
        let config: ConfigFile = serde_json::from_str(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"reg.example:5000":{"auth":"YTpi"}}}"#,
        )
        .unwrap();
        let hub = from_config(&config, "docker.io").unwrap();
        assert_eq!(
            (hub.username.as_deref(), hub.password.as_deref()),
            (Some("user"), Some("pass"))
        );
        let own = from_config(&config, "reg.example:5000").unwrap();
        assert_eq!(own.username.as_deref(), Some("a"));
        assert!(from_config(&config, "ghcr.io").is_none());
    }
}
