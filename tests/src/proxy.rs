//! Starting and stopping the real `handoff-proxy` binary.

use crate::{bin_path, TempDir};
use handoff_shared::ControlClient;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

pub struct Proxy {
    pub http: SocketAddr,
    /// The admin listener (`/metrics`, `/healthz`), on its own port 0.
    pub admin: Option<SocketAddr>,
    /// The TLS listener, when the proxy was started with certificates.
    pub https: Option<SocketAddr>,
    pub control: PathBuf,
    pub state: PathBuf,
    /// Where the proxy's own log (stderr) goes; printed when a test fails.
    pub log: PathBuf,
    pub dir: PathBuf,
    /// The ready line, as printed.
    pub ready_line: String,
    /// Lines printed on stdout after the ready line.
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    child: Option<Child>,
    _tmp: Option<Arc<TempDir>>,
}

impl Proxy {
    /// Starts a proxy in a fresh temp dir on 127.0.0.1:0 with `extra` flags.
    pub async fn start(extra: &[&str]) -> Proxy {
        let tmp = Arc::new(TempDir::new("proxy"));
        let mut p = Self::start_in(tmp.path(), extra).await;
        p._tmp = Some(tmp);
        p
    }

    /// Starts a proxy whose control socket and state file live in `dir`;
    /// used to restart one on the same state.
    pub async fn start_in(dir: &Path, extra: &[&str]) -> Proxy {
        Self::try_start_in(dir, extra)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`start_in`], but returns the failure (exit status and log) instead of panicking.
    pub async fn try_start_in(dir: &Path, extra: &[&str]) -> Result<Proxy, String> {
        Self::try_start_with(dir, extra, &[]).await
    }

    /// Like [`try_start_in`], with extra environment variables.
    pub async fn try_start_with(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Proxy, String> {
        let control = dir.join("control.sock");
        let state = dir.join("state.json");
        let log = dir.join(format!(
            "proxy-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = Command::new(bin_path("handoff-proxy"))
            .arg("--http")
            .arg("127.0.0.1:0")
            .args(if extra.contains(&"--admin") {
                &[][..]
            } else {
                &["--admin", "127.0.0.1:0"][..]
            })
            .arg("--control")
            .arg(&control)
            .arg("--state")
            .arg(&state)
            .args(extra)
            .env("RUST_LOG", "info,handoff_proxy=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn handoff-proxy");
        let stdout = tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let line = match ready {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = child.kill();
                let status = child.wait().ok();
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "proxy did not become ready ({other:?}, exit {status:?}); log:\n{log_text}"
                ));
            }
        };
        // Keep draining stdout so the proxy never blocks on a full pipe.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"));
        let https = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("https="))
            .and_then(|a| a.parse().ok());
        let admin = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .and_then(|a| a.parse().ok());
        Ok(Proxy {
            http,
            admin,
            https,
            control,
            state,
            log,
            dir: dir.to_path_buf(),
            ready_line: line,
            lines: rx,
            child: Some(child),
            _tmp: None,
        })
    }

    /// Starts a new process on the same control socket and state with
    /// `--upgrade` and `extra`, which takes this one's sockets over; returns
    /// it once it printed its ready line, or how it failed.
    pub async fn upgrade(&self, extra: &[&str]) -> Result<Proxy, String> {
        self.upgrade_with(extra, &[]).await
    }

    /// Like [`upgrade`], with extra environment variables.
    pub async fn upgrade_with(
        &self,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Proxy, String> {
        let mut args = vec!["--upgrade"];
        args.extend_from_slice(extra);
        let mut next = Self::try_start_with(&self.dir, &args, env).await?;
        next._tmp = self._tmp.clone();
        Ok(next)
    }

    /// `handoff-proxy --upgrade --background` with this proxy's control
    /// socket and state plus `extra`: the command's exit code and stdout
    /// (and, when it failed, its stderr). The new process it leaves running
    /// is no child of the test: stop it with [`stop_pid`].
    pub async fn upgrade_background(&self, extra: &[&str]) -> (i32, String) {
        let log = self.dir.join("background.log");
        // Not tokio's `output()`, which pipes stderr: the proxy left running
        // would hold that pipe open, and the wait would never end.
        let mut cmd = Command::new(bin_path("handoff-proxy"));
        cmd.args([
            "--upgrade",
            "--background",
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--control")
        .arg(&self.control)
        .arg("--state")
        .arg(&self.state)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
        let run = tokio::task::spawn_blocking(move || cmd.output());
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("--background returns")
            .unwrap()
            .unwrap();
        let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            stdout += &std::fs::read_to_string(&log).unwrap_or_default();
        }
        (out.status.code().unwrap_or(-1), stdout)
    }

    /// After a hand-off, the old process's drain report (progress lines
    /// before it are skipped).
    pub async fn old_process_report(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let line = self.next_line(left).await?;
            if line.starts_with("handoff-proxy old-process ") {
                return Some(line);
            }
        }
    }

    /// The next line the proxy prints on stdout after its ready line.
    pub async fn next_line(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    pub fn client(&self) -> ControlClient {
        ControlClient::new(&self.control)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `HUP`) with the system's `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit (after a signal) and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id();
        match tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || child.wait())).await
        {
            Ok(status) => status.unwrap().expect("wait"),
            Err(_) => {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
                panic!(
                    "proxy did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                )
            }
        }
    }

    /// Kills the process hard (SIGKILL), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- handoff-proxy log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Stops a proxy the test did not start as a child (the one `--background`
/// left running) and waits for it to go.
pub async fn stop_pid(pid: u32) {
    let ok = Command::new("kill").arg(pid.to_string()).status().unwrap();
    assert!(ok.success());
    crate::request::wait_for(
        "the background proxy to exit",
        Duration::from_secs(60),
        async || !Path::new(&format!("/proc/{pid}")).exists(),
    )
    .await;
}
