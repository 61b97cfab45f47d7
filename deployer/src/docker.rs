//! The Docker engine, through bollard. Every engine error becomes
//! `Failure::Docker` (exit 3) with a message that says what was being done.

use crate::cli::PullPolicy;
use crate::error::{Failure, Result};
use crate::output::Output;
use crate::registry_auth;
use crate::releases::{ContainerInfo, LABEL_APP};
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerUpdateBody, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

pub struct Engine {
    docker: Docker,
    host: String,
}

/// Everything needed to create a slot container.
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub container_port: u16,
    pub health_port: Option<u16>,
    /// A pinned host port for the app port; 0 means ephemeral.
    pub host_port: u16,
    pub init: bool,
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn describe(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => other.to_string(),
    }
}

impl Engine {
    /// Connects and checks the engine answers, before anything is changed.
    pub async fn connect(host: &str, stop_timeout: Duration) -> Result<Engine> {
        // Requests must outlive a graceful stop, which the engine answers
        // only when the container is gone.
        let timeout = 120u64.max(stop_timeout.as_secs() + 30);
        let unreachable = |e: &dyn std::fmt::Display| {
            Failure::Docker(format!("cannot reach the Docker engine at {host}: {e}"))
        };
        let docker = if host.starts_with("unix://") || host.starts_with('/') {
            let path = host.strip_prefix("unix://").unwrap_or(host);
            if !std::path::Path::new(path).exists() {
                return Err(unreachable(&format!("{path} does not exist")));
            }
            Docker::connect_with_unix(path, timeout, API_DEFAULT_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(host, timeout, API_DEFAULT_VERSION)
        } else {
            return Err(Failure::Usage(format!(
                "unsupported Docker host {host:?}: use unix:///path/to/docker.sock or tcp://HOST:PORT"
            )));
        }
        .map_err(|e| unreachable(&e))?;
        // Older engines refuse requests that name a newer API version.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(&e))?;
        docker.ping().await.map_err(|e| unreachable(&e))?;
        tracing::debug!(host, version = %docker.client_version(), "connected to docker");
        Ok(Engine {
            docker,
            host: host.to_string(),
        })
    }

    fn err(&self, doing: &str, e: BollardError) -> Failure {
        Failure::Docker(format!(
            "Docker ({}) failed to {doing}: {}",
            self.host,
            describe(&e)
        ))
    }

    /// The app's containers, found by label.
    pub async fn app_containers(&self, app: &str) -> Result<Vec<ContainerInfo>> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_APP}={app}")])]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| self.err("list containers", e))?;
        let mut out = Vec::new();
        for summary in list {
            let Some(id) = summary.id else { continue };
            if let Some(info) = self.inspect(&id).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// The app and container of another handoff app whose published port is
    /// `backend`, if any: a proxy that serves a different app must not be
    /// switched to this one.
    pub async fn other_app_at(&self, backend: &str, app: &str) -> Result<Option<(String, String)>> {
        let filters = HashMap::from([("label", vec![LABEL_APP.to_string()])]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| self.err("list containers", e))?;
        for c in list {
            let owner = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_APP))
                .cloned()
                .unwrap_or_default();
            let serves = c.ports.iter().flatten().any(|p| {
                p.ip.as_deref() == Some("127.0.0.1")
                    && p.public_port.map(|pp| format!("127.0.0.1:{pp}")).as_deref() == Some(backend)
            });
            if serves && owner != app {
                let name = c
                    .names
                    .unwrap_or_default()
                    .first()
                    .cloned()
                    .unwrap_or_default();
                return Ok(Some((owner, name.trim_start_matches('/').to_string())));
            }
        }
        Ok(None)
    }

    /// `None` when no such container exists.
    pub async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>> {
        let c = match self.docker.inspect_container(name, None).await {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.err(&format!("inspect container {name}"), e)),
        };
        let state = c.state.unwrap_or_default();
        let mut pinned = HashMap::new();
        let host_config = c.host_config.unwrap_or_default();
        // `no` is the policy of a release on trial; it becomes
        // `unless-stopped` once stable (see `keep_running`).
        let proven = host_config
            .restart_policy
            .as_ref()
            .and_then(|p| p.name)
            .is_some_and(|n| n != RestartPolicyNameEnum::NO && n != RestartPolicyNameEnum::EMPTY);
        for (key, bindings) in host_config.port_bindings.unwrap_or_default() {
            let Some(port) = key.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok()) else {
                continue;
            };
            let host = bindings
                .unwrap_or_default()
                .into_iter()
                .find_map(|b| b.host_port.and_then(|p| p.parse::<u16>().ok()));
            if let Some(host) = host {
                pinned.insert(port, host);
            }
        }
        let mut ports = HashMap::new();
        for (key, bindings) in c.network_settings.and_then(|n| n.ports).unwrap_or_default() {
            let Some(port) = key.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok()) else {
                continue;
            };
            let found = bindings.unwrap_or_default().into_iter().find_map(|b| {
                let ip = b.host_ip.unwrap_or_default();
                let hp = b.host_port.filter(|p| !p.is_empty())?;
                (ip == "127.0.0.1").then(|| format!("127.0.0.1:{hp}"))
            });
            if let Some(addr) = found {
                ports.insert(port, addr);
            }
        }
        Ok(Some(ContainerInfo {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            labels: c.config.and_then(|cfg| cfg.labels).unwrap_or_default(),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            running: state.running.unwrap_or(false),
            restarting: state.restarting.unwrap_or(false),
            restart_count: c.restart_count.unwrap_or(0),
            exit_code: state.exit_code,
            started_at: state.started_at,
            finished_at: state.finished_at,
            ports,
            pinned,
            proven,
        }))
    }

    /// Makes the image available per the pull policy.
    pub async fn ensure_image(&self, image: &str, policy: PullPolicy, out: &Output) -> Result<()> {
        let present = match self.docker.inspect_image(image).await {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(self.err(&format!("inspect image {image}"), e)),
        };
        match (policy, present) {
            (PullPolicy::Never, false) => {
                return Err(Failure::Docker(format!(
                    "image {image} is not on this host and --pull never forbids pulling it"
                )))
            }
            (PullPolicy::Never, true) | (PullPolicy::Missing, true) => {
                out.step(format!("image {image} is present, not pulling"));
                return Ok(());
            }
            _ => {}
        }
        out.step(format!("pulling {image}"));
        let (from_image, tag) = split_reference(image);
        let mut builder = CreateImageOptionsBuilder::new().from_image(&from_image);
        if let Some(tag) = &tag {
            builder = builder.tag(tag);
        }
        let creds = registry_auth::credentials_for(image);
        let mut stream = self.docker.create_image(Some(builder.build()), None, creds);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.err(&format!("pull {image}"), e))?;
            if let Some(detail) = info.error_detail {
                let msg = detail.message.unwrap_or_else(|| "unknown error".into());
                return Err(Failure::Docker(format!("failed to pull {image}: {msg}")));
            }
        }
        Ok(())
    }

    /// The registry digest (`repo@sha256:...`) of a local image, when it
    /// came from a registry; locally built images have none.
    pub async fn image_digest(&self, image: &str) -> Option<String> {
        let info = self.docker.inspect_image(image).await.ok()?;
        let digests = info.repo_digests.unwrap_or_default();
        let (repo, _) = split_reference(image);
        let repo = repo.split('@').next().unwrap_or_default().to_string();
        // Only a digest of this very repository: the same image pushed
        // elsewhere has digests under other names, which it was not pulled as.
        digests
            .into_iter()
            .find(|d| d.split('@').next() == Some(repo.as_str()))
    }

    /// Renames a container (a migrated slot, a failed release).
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let opts = bollard::query_parameters::RenameContainerOptionsBuilder::new()
            .name(to)
            .build();
        self.docker
            .rename_container(from, opts)
            .await
            .map_err(|e| self.err(&format!("rename container {from} to {to}"), e))
    }

    /// Yields once each time the container's process ends (Docker's `die`
    /// event: crash, exit, kill), so a watch reacts at once instead of at
    /// its next poll. Ends when the event stream does (e.g. the engine's
    /// request timeout); the caller then relies on polling alone.
    pub fn deaths(&self, name: &str) -> impl futures_util::Stream<Item = ()> + '_ {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("container", vec![name.to_string()]),
            ("event", vec!["die".to_string()]),
        ]);
        let opts = EventsOptionsBuilder::new().filters(&filters).build();
        self.docker
            .events(Some(opts))
            .take_while(|e| std::future::ready(e.is_ok()))
            .map(|_| ())
    }

    /// Removes a container, stopping it if needed; a missing one is fine.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.err(&format!("remove container {name}"), e)),
        }
    }

    pub async fn create_and_start(&self, spec: &ContainerSpec) -> Result<()> {
        let app_key = format!("{}/tcp", spec.container_port);
        let mut bindings = HashMap::from([(
            app_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(if spec.host_port == 0 {
                    String::new()
                } else {
                    spec.host_port.to_string()
                }),
            }]),
        )]);
        let mut exposed = vec![app_key];
        if let Some(hp) = spec.health_port.filter(|hp| *hp != spec.container_port) {
            let key = format!("{hp}/tcp");
            bindings.insert(
                key.clone(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                }]),
            );
            exposed.push(key);
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: Some(exposed),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                // `no` until it is healthy: a crash then shows as an exit with
                // its code, not as a restart loop that hides the code.
                // [`Engine::keep_running`] sets `unless-stopped` before the switch.
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                init: spec.init.then_some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| {
                self.err(
                    &format!("create container {} from {}", spec.name, spec.image),
                    e,
                )
            })?;
        self.start(&spec.name).await
    }

    /// Sets the restart policy: `unless-stopped` for a container that serves
    /// (it must come back after a crash or a reboot), `no` while it is on trial.
    pub async fn keep_running(&self, name: &str, keep: bool) -> Result<()> {
        let policy = if keep {
            RestartPolicyNameEnum::UNLESS_STOPPED
        } else {
            RestartPolicyNameEnum::NO
        };
        let body = ContainerUpdateBody {
            restart_policy: Some(RestartPolicy {
                name: Some(policy),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        self.docker
            .update_container(name, body)
            .await
            .map_err(|e| self.err(&format!("set the restart policy of {name}"), e))
    }

    pub async fn start(&self, name: &str) -> Result<()> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| self.err(&format!("start container {name}"), e))
    }

    /// Stops gracefully: the image's stop signal, then SIGKILL after `timeout`.
    pub async fn stop(&self, name: &str, timeout: Duration) -> Result<()> {
        let secs = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::new().t(secs).build();
        match self.docker.stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.err(&format!("stop container {name}"), e)),
        }
    }

    /// The last `n` lines of a container's output, for failure reports.
    pub async fn logs_tail(&self, name: &str, n: usize) -> Vec<String> {
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&n.to_string())
            .build();
        let mut stream = self.docker.logs(name, Some(opts));
        let mut text = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => text.push_str(&String::from_utf8_lossy(&chunk.into_bytes())),
                Err(e) => {
                    text.push_str(&format!("\n(could not read more logs: {})", describe(&e)));
                    break;
                }
            }
        }
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let skip = lines.len().saturating_sub(n);
        lines.into_iter().skip(skip).collect()
    }
}

/// Splits `repo[:tag]` or `repo@digest` for the pull API; a port in the
/// registry host is not a tag.
fn split_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (
            image[..last_slash + i].to_string(),
            Some(image[last_slash + i + 1..].to_string()),
        ),
        None => (image.to_string(), Some("latest".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn references() {
        let s = |a: &str, b: Option<&str>| (a.to_string(), b.map(str::to_string));
        assert_eq!(split_reference("nginx"), s("nginx", Some("latest")));
        assert_eq!(split_reference("nginx:1.25"), s("nginx", Some("1.25")));
        assert_eq!(
            split_reference("reg:5000/team/app"),
            s("reg:5000/team/app", Some("latest"))
        );
        assert_eq!(
            split_reference("reg:5000/team/app:v2"),
            s("reg:5000/team/app", Some("v2"))
        );
        assert_eq!(split_reference("app@sha256:abc"), s("app@sha256:abc", None));
    }
}
