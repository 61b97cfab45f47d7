//! Command-line interface. Every flag reads an environment variable too, so a
//! CI job can set the host-wide ones (control socket, state dir) once.

use clap::{Args, Parser, Subcommand, ValueEnum};
use handoff_shared::parse_duration;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "handoff",
    version,
    // A flag given twice takes the last value, so a wrapper script can
    // append overrides to its defaults.
    args_override_self = true,
    about = "Zero-downtime deploys of Docker apps behind handoff-proxy, one container per release; one proxy routes many apps by host",
    after_help = "Exit codes: 0 deployed; 1 bad usage, config, or refused (lock held, nothing to roll back to);\n\
        2 new release unhealthy or unstable (refused before the switch, or switched back during the watch);\n\
        3 Docker or registry error; 4 proxy control error, or the proxy refused the switch (route conflict);\n\
        5 clients are getting errors: `status` found the live backend not answering, or requests were cut\n\
        after a drain timeout with --fail-on-cut;\n\
        130/143 interrupted (SIGINT/SIGTERM) before the switch, new container removed."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands.
#[derive(Debug, Args)]
pub struct Global {
    /// Proxy control socket
    #[arg(long, global = true, help_heading = "Global options", env = handoff_shared::CONTROL_SOCKET_ENV,
          default_value = handoff_shared::DEFAULT_CONTROL_SOCKET,
          value_name = "PATH")]
    pub control: PathBuf,
    /// Docker engine: unix:///path or tcp://host:port
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock",
        value_name = "URL"
    )]
    pub docker_host: String,
    /// Where per-app lock files live
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "HANDOFF_STATE_DIR",
        default_value = "/var/lib/handoff",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
    /// Print a machine-readable JSON summary as the last line of stdout
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "HANDOFF_JSON"
    )]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start IMAGE as a new release, wait until it is stable, switch, watch, drain, stop the old one
    Deploy(DeployArgs),
    /// Switch back to the previous good release (or --to RELEASE|IMAGE)
    Rollback(RollbackArgs),
    /// Is the live release answering? Exit 5 when clients are getting errors
    Status(StatusArgs),
    /// List the app's releases, newest first, with image, digest and role
    Releases(ReleasesArgs),
    /// List every app the proxy routes: routes, backend, in flight, draining
    List(ListArgs),
    /// Take an app off the proxy (its requests drain first), then stop and remove its releases
    Remove(RemoveArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    Always,
    Missing,
    Never,
}

/// How to wait, health-check and switch; shared by deploy and rollback.
#[derive(Debug, Args, Clone)]
pub struct SwitchArgs {
    /// Give up when the container is not healthy after this long
    #[arg(long, env = "HANDOFF_DEPLOY_TIMEOUT", default_value = "120s", value_parser = parse_duration, value_name = "DUR")]
    pub deploy_timeout: Duration,
    /// Time between health checks (the first few come sooner: 100ms, 200ms, ...)
    #[arg(long, env = "HANDOFF_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_duration, value_name = "DUR")]
    pub health_interval: Duration,
    /// Timeout of one health check
    #[arg(long, env = "HANDOFF_HEALTH_TIMEOUT", default_value = "2s", value_parser = parse_duration, value_name = "DUR")]
    pub health_timeout: Duration,
    /// How long the proxy waits for old requests after the switch
    #[arg(long, env = "HANDOFF_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub drain_timeout: Duration,
    /// Grace period before the old container is killed
    #[arg(long, env = "HANDOFF_STOP_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub stop_timeout: Duration,
    /// Wait for another deploy of the same app to finish instead of failing
    #[arg(long, env = "HANDOFF_WAIT_LOCK")]
    pub wait_lock: bool,
    /// What the app speaks to the proxy: http1, or h2c (HTTP/2 cleartext, e.g. a gRPC server). Default: what the live backend speaks (http1 on a first deploy)
    #[arg(long, env = "HANDOFF_BACKEND_PROTOCOL", value_name = "PROTOCOL")]
    pub backend_protocol: Option<handoff_shared::BackendProtocol>,
    /// Consecutive good health checks before the switch (readiness rule)
    #[arg(
        long,
        env = "HANDOFF_HEALTH_SUCCESSES",
        default_value_t = 3,
        value_name = "N"
    )]
    pub health_successes: u32,
    /// The good checks must span at least this long, with no exit or restart
    #[arg(long, env = "HANDOFF_HEALTHY_FOR", default_value = "2s", value_parser = parse_duration, value_name = "DUR")]
    pub healthy_for: Duration,
    /// After the switch, keep the previous release running and watch the new one this long
    #[arg(long, env = "HANDOFF_WATCH", default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub watch: Duration,
    /// During the watch, this many failed checks in a row switch back
    #[arg(
        long,
        env = "HANDOFF_HEALTH_FAILURES",
        default_value_t = 3,
        value_name = "N"
    )]
    pub health_failures: u32,
    /// Exit 5 when a drain timed out and requests were cut when the old release stopped
    #[arg(long, env = "HANDOFF_FAIL_ON_CUT")]
    pub fail_on_cut: bool,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Image to deploy, e.g. registry.example.com/shop:1.4.2 (required)
    #[arg(long, env = "HANDOFF_IMAGE", value_name = "IMAGE")]
    pub image: String,
    /// App name; release containers are NAME-1, NAME-2, ... (required)
    #[arg(long, env = "HANDOFF_APP", value_name = "APP")]
    pub name: String,
    /// Port the app listens on inside the container
    #[arg(
        long,
        env = "HANDOFF_CONTAINER_PORT",
        default_value_t = 8080,
        value_name = "PORT"
    )]
    pub container_port: u16,
    /// Management port inside the container for health checks, if not the app port
    #[arg(long, env = "HANDOFF_HEALTH_PORT", value_name = "PORT")]
    pub health_port: Option<u16>,
    /// Health check path
    #[arg(
        long,
        env = "HANDOFF_HEALTH_PATH",
        default_value = "/health",
        value_name = "PATH"
    )]
    pub health_path: String,
    /// Two 127.0.0.1 host ports that releases alternate between (default: a free port each)
    #[arg(long, env = "HANDOFF_HOST_PORTS", value_parser = parse_host_ports,
          value_name = "PORT,PORT")]
    pub host_ports: Option<(u16, u16)>,
    /// Stopped releases kept for rollback (older ones are removed after a deploy)
    #[arg(long, env = "HANDOFF_KEEP", default_value_t = 3, value_name = "N")]
    pub keep: usize,
    /// Pull the image: always, missing or never
    #[arg(
        long,
        env = "HANDOFF_PULL",
        value_enum,
        default_value = "missing",
        hide_possible_values = true,
        value_name = "WHEN"
    )]
    pub pull: PullPolicy,
    /// Container env KEY=VALUE, or KEY to pass handoff's own value; repeatable (values are never printed)
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read container env from a file of KEY=VALUE lines; repeatable
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Extra container label KEY=VALUE; repeatable
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Run an init process as PID 1 that forwards signals (docker run --init)
    #[arg(long, env = "HANDOFF_INIT")]
    pub init: bool,
    /// Keep a release that never got stable (stopped, renamed NAME-N-failed) for debugging
    #[arg(long, env = "HANDOFF_KEEP_FAILED")]
    pub keep_failed: bool,
    /// Route requests for this host to the app (exact name or *.example.com); repeatable.
    /// Without --host the app is the proxy's default app, or keeps the routes the proxy has for it
    #[arg(
        long = "host",
        env = "HANDOFF_HOSTS",
        value_delimiter = ',',
        value_name = "HOST",
        help_heading = "Routes (one proxy, many apps)"
    )]
    pub hosts: Vec<String>,
    /// Only requests under this path (segment boundaries: /api takes /api and /api/x); repeatable; needs --host
    #[arg(
        long = "path-prefix",
        env = "HANDOFF_PATH_PREFIXES",
        value_delimiter = ',',
        value_name = "PATH",
        help_heading = "Routes (one proxy, many apps)"
    )]
    pub path_prefixes: Vec<String>,
    /// Forward the path without the matched prefix (/api/x reaches the app as /x)
    #[arg(
        long,
        env = "HANDOFF_STRIP_PREFIX",
        help_heading = "Routes (one proxy, many apps)"
    )]
    pub strip_prefix: bool,
    #[command(flatten)]
    pub switch: SwitchArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// App name (required)
    #[arg(long, env = "HANDOFF_APP", value_name = "APP")]
    pub name: String,
    /// Release number, container name, image or digest (default: the newest good release that is not live)
    #[arg(long, value_name = "RELEASE|IMAGE")]
    pub to: Option<String>,
    #[command(flatten)]
    pub switch: SwitchArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// App name; without it, every app the proxy routes is listed (as `handoff list`)
    #[arg(long, env = "HANDOFF_APP", value_name = "APP")]
    pub name: Option<String>,
    /// Timeout of the health probe of each running slot
    #[arg(long, env = "HANDOFF_HEALTH_TIMEOUT", default_value = "2s", value_parser = parse_duration,
          value_name = "DUR")]
    pub health_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ReleasesArgs {
    /// App name (required)
    #[arg(long, env = "HANDOFF_APP", value_name = "APP")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// App name (required)
    #[arg(long, env = "HANDOFF_APP", value_name = "APP")]
    pub name: String,
    /// Grace period before a release container is killed
    #[arg(long, env = "HANDOFF_STOP_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub stop_timeout: Duration,
    /// Wait for a deploy of the same app to finish instead of failing
    #[arg(long, env = "HANDOFF_WAIT_LOCK")]
    pub wait_lock: bool,
}

fn parse_host_ports(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expected two ports such as 8080,8081, got {text:?}");
    let (a, b) = text.split_once(',').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || b == 0 || a == b {
        return Err(format!(
            "host ports must be two different non-zero ports, got {text:?}"
        ));
    }
    Ok((a, b))
}

/// Checks an app name before it becomes part of container names and a lock
/// file path, so `--name ../x` can never escape the state dir.
/// The rule is the control API's own (`handoff_shared`), so a name the
/// deployer accepts is one the proxy takes as an app name.
pub fn validate_app_name(name: &str) -> Result<(), String> {
    handoff_shared::validate_app_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        assert_eq!(parse_host_ports("8080,8081").unwrap(), (8080, 8081));
        for bad in ["8080", "8080,8080", "0,1", "a,b", "8080,99999"] {
            assert!(parse_host_ports(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn app_names() {
        validate_app_name("shop").unwrap();
        validate_app_name("shop-api_2.x").unwrap();
        for bad in ["", "../x", "-x", "a b", "x/y", &"a".repeat(61)] {
            assert!(validate_app_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn route_flags_repeat_and_split_on_commas() {
        let cli = Cli::try_parse_from([
            "handoff",
            "deploy",
            "--image",
            "shop:2",
            "--name",
            "shop",
            "--host",
            "shop.example.com",
            "--host",
            "www.shop.example.com,shop.test",
            "--path-prefix",
            "/api",
            "--strip-prefix",
        ])
        .unwrap();
        let Command::Deploy(args) = cli.command else {
            panic!("not deploy");
        };
        assert_eq!(
            args.hosts,
            ["shop.example.com", "www.shop.example.com", "shop.test"]
        );
        assert_eq!(args.path_prefixes, ["/api"]);
        assert!(args.strip_prefix);
        let cli = Cli::try_parse_from(["handoff", "status"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Status(StatusArgs { name: None, .. })
        ));
        let cli = Cli::try_parse_from(["handoff", "remove", "--name", "shop"]).unwrap();
        assert!(
            matches!(cli.command, Command::Remove(RemoveArgs { ref name, .. }) if name == "shop")
        );
        assert!(Cli::try_parse_from(["handoff", "remove"]).is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
