//! Docker helpers for the deploy tests: is there an engine, the test app's
//! images (built locally, once per test process: there is no registry),
//! running the real `handoff` binary, and cleaning up containers even when a
//! test fails.

use crate::proxy::Proxy;
use crate::request;
use crate::{bin_path, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// True when a Docker engine answers. Without one, a test should return
/// early, except under CI=true where that is a failure: a CI run that
/// silently skipped the deploy tests would prove nothing.
pub fn docker_available() -> bool {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    let answer = ANSWER.get_or_init(|| {
        match Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
        {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            Err(e) => Err(format!("cannot run the docker CLI: {e}")),
        }
    });
    match answer {
        Ok(()) => true,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("CI=true but no Docker engine answers ({why}); the deploy tests need one")
        }
        Err(why) => {
            // Straight to the real stderr: libtest would swallow eprintln!
            // of a passing test, and a skip must not go unnoticed.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n######## SKIPPED: no Docker engine answers ({why}). Deploy tests did not run. ########\n"
            );
            false
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test app's image tags. Each is the same static binary with its
/// behaviour baked in by `ENV`, like a real release would be:
/// v1, v2 healthy; v3 answers `{"status":"DOWN"}`; v4 exits 3 after 0.5 s.
pub struct Images {
    pub v1: String,
    pub v2: String,
    pub v3_unhealthy: String,
    pub v4_crash: String,
}

const REPO: &str = "handoff-testapp";

/// Compiles `tests/testapp/main.rs` into a static binary and builds the
/// `FROM scratch` images, once per test process.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let ctx = TempDir::new("testapp-build");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("testapp/main.rs");
        run(
            Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
                .args([
                    "--edition",
                    "2021",
                    "-O",
                    "-C",
                    "target-feature=+crt-static",
                    "-o",
                ])
                .arg(ctx.path().join("app"))
                .arg(&src),
        );
        let build = |tag: &str, env: &str| {
            let dockerfile =
                format!("FROM scratch\nCOPY app /app\nENV {env}\nENTRYPOINT [\"/app\"]\n");
            std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
            let image = format!("{REPO}:{tag}");
            // The legacy builder needs no buildx plugin, which this host lacks.
            run(Command::new("docker")
                .env("DOCKER_BUILDKIT", "0")
                .args(["build", "-q", "-t", &image])
                .arg(ctx.path()));
            image
        };
        Images {
            v1: build("v1", "APP_VERSION=v1"),
            v2: build("v2", "APP_VERSION=v2"),
            v3_unhealthy: build("v3", "APP_VERSION=v3 MODE=unhealthy"),
            v4_crash: build("v4", "APP_VERSION=v4 MODE=crash"),
        }
    })
}

/// A unique app name; removes every container of that app when dropped, so
/// a failing test leaves nothing running.
pub struct App {
    pub name: String,
}

impl App {
    pub fn new(tag: &str) -> App {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        App {
            name: format!(
                "t-{tag}-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                nanos % 100_000
            ),
        }
    }

    /// The container of release `n`: `APP-<n>`.
    pub fn release(&self, n: u64) -> String {
        format!("{}-{n}", self.name)
    }

    /// Release `n` after it was refused or switched back from.
    pub fn failed(&self, n: u64) -> String {
        format!("{}-{n}-failed", self.name)
    }

    /// Names of this app's containers (any state), found by label.
    pub fn containers(&self) -> Vec<String> {
        let out = run(Command::new("docker").args([
            "ps",
            "-a",
            "--filter",
            &format!("label=handoff.app={}", self.name),
            "--format",
            "{{.Names}}",
        ]));
        let mut names: Vec<String> = out.lines().map(str::to_string).collect();
        names.sort();
        names
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=handoff.app={}", self.name),
            ])
            .output();
        if let Ok(out) = out {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .status();
            }
        }
    }
}

/// `docker inspect` state of a container: `(status, exit code, finished at)`,
/// or `None` when it does not exist.
pub fn container_state(name: &str) -> Option<(String, i64, String)> {
    let out = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}} {{.State.FinishedAt}}",
            name,
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    Some((
        parts.next()?.to_string(),
        parts.next()?.parse().ok()?,
        parts.next().unwrap_or("").to_string(),
    ))
}

/// The result of one `handoff` run.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Outcome {
    /// The `--json` summary: the last line of stdout.
    pub fn json(&self) -> serde_json::Value {
        let last = self
            .stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no stdout; {self}"));
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}); {self}"))
    }

    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "handoff exited {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.took, self.stdout, self.stderr
        )
    }
}

/// Runs the real `handoff` binary against one proxy's control socket with
/// its own state dir.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub control: PathBuf,
    pub state_dir: PathBuf,
}

impl Handoff {
    pub fn new(control: &Path, state_dir: &Path) -> Handoff {
        Handoff {
            control: control.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        }
    }

    pub async fn run(&self, args: &[&str]) -> Outcome {
        self.run_env(args, &[]).await
    }

    /// The command, for tests that need the running process (signals).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin_path("handoff"));
        cmd.args(args)
            .env("HANDOFF_CONTROL", &self.control)
            .env("HANDOFF_STATE_DIR", &self.state_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    pub async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        let started = Instant::now();
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Bounded: even a hung deploy ends the test instead of the CI run.
        let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
            .await
            .expect("handoff ran for more than 300 s")
            .expect("spawn handoff");
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        }
    }

    /// `handoff deploy --json` with the flags every test uses: `--init` so
    /// the std-only test app stops promptly on SIGTERM (it cannot install a
    /// signal handler, and as PID 1 it would ignore SIGTERM), quick health
    /// polling, and a short stability window and watch (1 s each) so the
    /// tests stay short; `extra` may override any of them.
    pub async fn deploy(&self, app: &str, image: &str, extra: &[&str]) -> Outcome {
        self.run(&deploy_args(app, image, extra)).await
    }

    /// [`Handoff::deploy`] with environment variables (test hooks such as
    /// `HANDOFF_TEST_ABORT_AT`, registry credentials).
    pub async fn deploy_env(
        &self,
        app: &str,
        image: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Outcome {
        self.run_env(&deploy_args(app, image, extra), env).await
    }
}

impl Handoff {
    /// `handoff rollback --json` with the same quick settings as [`Handoff::deploy`].
    pub async fn rollback(&self, app: &str, extra: &[&str]) -> Outcome {
        let mut args = vec![
            "rollback",
            "--json",
            "--name",
            app,
            "--health-interval",
            "200ms",
            "--healthy-for",
            "1s",
            "--watch",
            "1s",
        ];
        args.extend_from_slice(extra);
        self.run(&args).await
    }

    /// `handoff status --json`.
    pub async fn status(&self, app: &str) -> Outcome {
        self.run(&["status", "--json", "--name", app]).await
    }
}

/// One test's world: a fresh proxy, a `handoff` pointed at it, a unique
/// app name and the test images.
pub struct Stage {
    pub proxy: Proxy,
    pub handoff: Handoff,
    pub app: App,
    pub images: &'static Images,
}

/// `None` (after a loud message) when there is no Docker engine and CI is not set.
pub async fn stage(tag: &str) -> Option<Stage> {
    if !docker_available() {
        return None;
    }
    let images = images();
    let proxy = Proxy::start(&[]).await;
    let handoff = Handoff::new(&proxy.control, &proxy.dir.join("handoff-state"));
    Some(Stage {
        handoff,
        app: App::new(tag),
        images,
        proxy,
    })
}

impl Stage {
    /// Deploys and asserts success; returns the `--json` summary.
    pub async fn deploy_ok(&self, image: &str, extra: &[&str]) -> serde_json::Value {
        let out = self.handoff.deploy(&self.app.name, image, extra).await;
        assert_eq!(out.code, 0, "deploy of {image} failed: {out}");
        out.json()
    }

    /// GET through the proxy, asserting 200.
    pub async fn body(&self, path: &str) -> String {
        let reply = request::get(self.proxy.http, path).await;
        assert_eq!(
            reply.status, 200,
            "GET {path} via the proxy: {}",
            reply.body
        );
        reply.body
    }

    /// The proxy's current backend.
    pub async fn backend(&self) -> Option<String> {
        self.proxy
            .client()
            .status()
            .await
            .expect("proxy status")
            .backend
    }
}

/// A failed run: the exit code, and a `--json` summary that says so.
pub fn assert_failed(out: &Outcome, code: i32) {
    assert_eq!(out.code, code, "{out}");
    let json = out.json();
    assert_eq!(json["ok"], false, "{out}");
    assert_eq!(json["exit_code"], code, "{out}");
}

/// The arguments of [`Handoff::deploy`]; for a test that runs the command
/// itself ([`Handoff::command`]). A flag in `extra` overrides the same one
/// before it.
pub fn deploy_args<'a>(app: &'a str, image: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "deploy",
        "--json",
        "--init",
        "--name",
        app,
        "--image",
        image,
        "--pull",
        "never",
        "--health-interval",
        "200ms",
        "--healthy-for",
        "1s",
        "--watch",
        "1s",
    ];
    args.extend_from_slice(extra);
    args
}
