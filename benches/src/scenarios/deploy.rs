//! `deploy`: the whole `handoff deploy` of v1 -> v2 under the same load as
//! `switch`, on the real Docker engine, with the deployer's test app
//! (tests/testapp) packed into `FROM scratch` images built here.

use super::cutover::{analyse, CutoverArgs, CutoverReport, Event, Timeline};
use super::{blocking, Common};
use crate::loadgen;
use crate::procs::{find_tool, sibling_binary, TempDir};
use crate::report::Machine;
use crate::servers::HandoffProxy;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on one `handoff deploy`; it health-checks and drains, so seconds.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

fn testapp_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/testapp/main.rs")
}

/// Why `deploy` cannot run here, or `None` when it can.
pub fn skip_reason() -> Option<String> {
    let docker = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !docker.is_ok_and(|s| s.success()) {
        return Some("skipped: no docker engine answers".into());
    }
    if sibling_binary("handoff", "HANDOFF_BIN").is_none() {
        return Some(
            "skipped: no deployer binary `handoff` next to handoff-bench (cargo build -p handoff-deployer)".into(),
        );
    }
    if !testapp_source().is_file() || find_tool("rustc").is_none() {
        return Some("skipped: the test app (tests/testapp/main.rs) or rustc is missing".into());
    }
    None
}

/// Removes every container of the app when dropped, whatever happened.
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        let filter = format!("label=handoff.app={}", self.0);
        let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
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

/// Compiles the test app statically and builds `handoff-bench-app:v1`/`v2`.
fn build_images() -> Result<[String; 2]> {
    let dir = TempDir::new("testapp")?;
    let rustc = find_tool("rustc").context("rustc not found")?;
    let out = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(dir.path().join("app"))
        .arg(testapp_source())
        .output()?;
    if !out.status.success() {
        bail!(
            "compiling the test app failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let build = |tag: &str| -> Result<String> {
        let dockerfile =
            format!("FROM scratch\nCOPY app /app\nENV APP_VERSION={tag}\nENTRYPOINT [\"/app\"]\n");
        std::fs::write(dir.path().join("Dockerfile"), dockerfile)?;
        let image = format!("handoff-bench-app:{tag}");
        let out = Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", &image])
            .arg(dir.path())
            .output()?;
        if !out.status.success() {
            bail!(
                "docker build {image} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(image)
    };
    Ok([build("v1")?, build("v2")?])
}

/// One `handoff deploy --json`, as the deployer's own tests run it.
async fn deploy(proxy: &HandoffProxy, app: &str, image: &str) -> Result<(i32, String, String)> {
    let bin = sibling_binary("handoff", "HANDOFF_BIN").context("no handoff binary")?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "deploy", "--json", "--init", "--name", app, "--image", image,
    ])
    .args(["--pull", "never", "--health-interval", "200ms"])
    .env("HANDOFF_CONTROL", &proxy.control)
    .env("HANDOFF_STATE_DIR", proxy.dir().join("handoff-state"))
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(DEPLOY_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("handoff deploy {image} ran longer than {DEPLOY_TIMEOUT:?}"))??;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    ))
}

pub async fn run(common: &Common, args: &CutoverArgs) -> Result<CutoverReport> {
    let machine = Machine::probe();
    let mut tl = Timeline::new(common, args);
    // One cut-over: the load runs on long enough for health checks and drain.
    let after = if common.smoke { 6000 } else { 12_000 };
    tl.switch_for_ms = after - 1000;
    tl.end_ms = tl.steady_ms + after;
    let [v1, v2] = blocking(build_images).await?;
    let proxy = blocking(|| HandoffProxy::start_with(None, "30s")).await?;
    let app = format!("bench-{}", std::process::id());
    let _containers = Containers(app.clone());
    let (code, _, stderr) = deploy(&proxy, &app, &v1).await?;
    if code != 0 {
        bail!("first deploy of {v1} failed ({code}):\n{stderr}");
    }

    let epoch = Instant::now();
    let load = tokio::spawn(loadgen::run(tl.load(proxy.addr, args, common), epoch));
    tokio::time::sleep_until((epoch + Duration::from_millis(tl.steady_ms)).into()).await;
    let t0 = Instant::now();
    let outcome = deploy(&proxy, &app, &v2).await;
    let mut event = Event {
        t_ms: t0.duration_since(epoch).as_secs_f64() * 1000.0,
        took_ms: t0.elapsed().as_secs_f64() * 1000.0,
        from: 0,
        to: 0,
        ..Event::default()
    };
    match outcome {
        Ok((0, stdout, _)) => {
            // One JSON document, or JSON lines: look in all of them.
            let docs: Vec<serde_json::Value> = serde_json::from_str(stdout.trim())
                .map(|v| vec![v])
                .unwrap_or_else(|_| {
                    stdout
                        .lines()
                        .filter_map(|l| serde_json::from_str(l).ok())
                        .collect()
                });
            let json = serde_json::Value::Array(docs);
            event.drained = find_key(&json, "drained").and_then(|v| v.as_bool());
            event.drain_ms = find_key(&json, "drain_ms").and_then(|v| v.as_u64());
            event.in_flight = find_key(&json, "in_flight").and_then(|v| v.as_u64());
        }
        Ok((code, _, stderr)) => event.error = Some(format!("exit {code}: {}", stderr.trim())),
        Err(e) => event.error = Some(e.to_string()),
    }
    let result = load.await?;
    let mut report = analyse("deploy", machine, tl, args, result, vec![event], 2);
    report.notes.push(format!(
        "images {v1} -> {v2} (tests/testapp, FROM scratch); app {app}"
    ));
    Ok(report)
}

fn find_key<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}
