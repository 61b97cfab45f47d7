//! Each proxy upgraded in place, the way its operators are told to do it,
//! for the `upgrade` scenario: the same binary and configuration replace the
//! running process while clients keep coming.
//!
//! - handoff-proxy: a new process with the same flags plus `--upgrade`; it
//!   takes the listening sockets over SCM_RIGHTS, and the old process drains
//!   and exits 0.
//! - nginx: the binary upgrade of its documentation: USR2 to the master (a
//!   new master and workers on the same sockets), WINCH to the old master
//!   (its workers stop accepting and finish), QUIT (it exits).
//! - HAProxy: a new process started with `-x <stats socket>` (it receives
//!   the listening sockets from the old one) and `-sf <old pid>` (the old one
//!   finishes its connections and exits).
//!
//! Every wait is bounded; an upgrade that does not finish is an error that
//! names the step.

use crate::procs::{
    children_of, find_tool, free_port, is_alive, log_tail, signal, wait_listening, Proc, TempDir,
};
use crate::servers::{haproxy_config, nginx_args, HandoffProxy, NginxFiles, NGINX_PROXY};
use crate::tls::TlsFiles;
use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a new process to take over.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Step of the polls below (pid files, worker processes, logs).
const POLL: Duration = Duration::from_millis(5);

/// What one upgrade took, measured by the harness.
#[derive(Debug, Clone, Default)]
pub struct Upgraded {
    /// From the first step until the new process serves.
    pub ready: Duration,
    /// From the first step until the old process has exited.
    pub done: Duration,
    /// Whether the old process finished its requests before exiting, when
    /// the proxy says (handoff-proxy's drain report).
    pub drained: Option<bool>,
    /// Requests still in flight when the old process stopped waiting.
    pub in_flight: Option<u64>,
}

/// A proxy that can be upgraded in place while it serves: HTTP/1.1 and
/// WebSocket on `http`, HTTP/2 over TLS on `https`.
pub trait Upgradable: Send {
    fn http(&self) -> SocketAddr;
    fn https(&self) -> SocketAddr;
    /// One upgrade, from the first command until the old process is gone.
    /// `drain_for` bounds the wait for the old process to finish.
    fn upgrade(&mut self, drain_for: Duration) -> Result<Upgraded>;
}

/// Polls `done` every [`POLL`] until it holds, or fails naming `what`.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

impl Upgradable for HandoffProxy {
    fn http(&self) -> SocketAddr {
        self.addr
    }

    fn https(&self) -> SocketAddr {
        self.https.expect("started with start_tls")
    }

    fn upgrade(&mut self, drain_for: Duration) -> Result<Upgraded> {
        let t0 = Instant::now();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log_path())?;
        let mut args = self.args.clone();
        args.push("--upgrade".into());
        let mut cmd = HandoffProxy::command(&self.bin, &args, log);
        let mut new = Proc::spawn("handoff-proxy --upgrade", &mut cmd)?;
        new.ready_line("handoff-proxy ready ", READY_TIMEOUT)
            .map_err(|e| anyhow!("{e}; log:\n{}", self.log_tail()))?;
        let ready = t0.elapsed();
        let report = new
            .ready_line("handoff-proxy old-process ", drain_for)
            .context("the old process's drain report")?;
        let mut old = std::mem::replace(&mut self.proc, new);
        let status = old.wait_exit(Duration::from_secs(10))?;
        if !status.success() {
            bail!("the old handoff-proxy exited {status}: {report}");
        }
        Ok(Upgraded {
            ready,
            done: t0.elapsed(),
            drained: field(&report, "drained").map(|d| d == "true"),
            in_flight: field(&report, "in_flight").and_then(|n| n.parse().ok()),
        })
    }
}

/// nginx in the background (its binary upgrade is refused in the
/// foreground), stopped through its pid files when dropped.
#[derive(Debug)]
pub struct DaemonNginx {
    files: NginxFiles,
    pub addr: SocketAddr,
    pub https: SocketAddr,
}

/// The WebSocket location nginx needs spelled out (the catch-all one clears
/// `Connection` for upstream keep-alive, which would refuse the upgrade).
const NGINX_WS: &str = r#"            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 120s;
"#;

impl DaemonNginx {
    pub fn start(backend_port: u16, tls: &TlsFiles) -> Result<DaemonNginx> {
        let tls_port = free_port()?;
        let (cert, key) = (tls.cert.display(), tls.key.display());
        let servers = |port: u16| {
            format!(
                "    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n        location / {{\n{NGINX_PROXY}        }}\n        location /ws {{\n{NGINX_WS}        }}\n    }}\n\
                 \x20   server {{\n        listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;\n        ssl_certificate {cert};\n        ssl_certificate_key {key};\n        location / {{\n{NGINX_PROXY}        }}\n    }}\n"
            )
        };
        let files = NginxFiles::write(backend_port, servers, true)?;
        let out = Command::new(&files.bin)
            .args(nginx_args(&files.dir))
            .stdin(Stdio::null())
            .output()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], files.port));
        let https = SocketAddr::from(([127, 0, 0, 1], tls_port));
        let nginx = DaemonNginx { files, addr, https };
        if !out.status.success() {
            bail!(
                "nginx did not start: {}; error.log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                nginx.error_log()
            );
        }
        wait_until("nginx listening", READY_TIMEOUT, || {
            std::net::TcpStream::connect(addr).is_ok()
                && std::net::TcpStream::connect(https).is_ok()
        })
        .map_err(|e| anyhow!("{e}; error.log:\n{}", nginx.error_log()))?;
        Ok(nginx)
    }

    fn pid_file(&self, suffix: &str) -> PathBuf {
        self.files.dir.path().join(format!("nginx.pid{suffix}"))
    }

    fn error_log(&self) -> String {
        log_tail(&self.files.dir.path().join("error.log"))
    }

    pub fn master(&self) -> Option<u32> {
        read_pid(&self.pid_file(""))
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Upgradable for DaemonNginx {
    fn http(&self) -> SocketAddr {
        self.addr
    }

    fn https(&self) -> SocketAddr {
        self.https
    }

    fn upgrade(&mut self, drain_for: Duration) -> Result<Upgraded> {
        let t0 = Instant::now();
        let old = self.master().context("nginx.pid is missing")?;
        // 1. USR2: the old master renames its pid file to .oldbin and starts
        //    the new binary, which inherits the listening sockets.
        signal(old, "USR2")?;
        let oldbin = self.pid_file(".oldbin");
        let mut new = None;
        wait_until("nginx's new master and its workers", READY_TIMEOUT, || {
            new = self.master().filter(|&p| p != old && oldbin.exists());
            new.is_some_and(|p| !children_of(p).is_empty())
        })
        .map_err(|e| anyhow!("{e}; error.log:\n{}", self.error_log()))?;
        let new = new.expect("set when the wait succeeds");
        let ready = t0.elapsed();
        // 2. WINCH: the old workers stop accepting and finish what they have.
        //    (The new master is a child of the old one too.)
        signal(old, "WINCH")?;
        let drained = wait_until("the old nginx workers to finish", drain_for, || {
            children_of(old).iter().all(|&p| p == new)
        })
        .is_ok();
        // 3. QUIT: the old master exits.
        signal(old, "QUIT")?;
        wait_until("the old nginx master to exit", drain_for, || !is_alive(old))?;
        Ok(Upgraded {
            ready,
            done: t0.elapsed(),
            drained: Some(drained),
            in_flight: None,
        })
    }
}

impl Drop for DaemonNginx {
    /// TERM to every master the pid files name, KILL to what is left after
    /// 2 s: a daemon is no child of the harness, so nothing else stops it.
    fn drop(&mut self) {
        let masters: Vec<u32> = ["", ".oldbin"]
            .iter()
            .filter_map(|s| read_pid(&self.pid_file(s)))
            .collect();
        let mut all: Vec<u32> = masters.iter().flat_map(|&m| children_of(m)).collect();
        all.extend(&masters);
        for &pid in &masters {
            let _ = signal(pid, "TERM");
        }
        let _ = wait_until("nginx to stop", Duration::from_secs(2), || {
            all.iter().all(|&p| !is_alive(p))
        });
        for &pid in all.iter().filter(|&&p| is_alive(p)) {
            let _ = signal(pid, "KILL");
        }
    }
}

/// HAProxy with its stats socket exposing the listeners, so that a new
/// process can take them with `-x`.
#[derive(Debug)]
pub struct ReloadableHaproxy {
    bin: PathBuf,
    dir: TempDir,
    cfg: PathBuf,
    proc: Proc,
    /// Processes started so far, for the log files' names.
    started: u32,
    pub addr: SocketAddr,
    pub https: SocketAddr,
}

impl ReloadableHaproxy {
    pub fn start(backend: SocketAddr, tls: &TlsFiles) -> Result<ReloadableHaproxy> {
        let bin = find_tool("haproxy")
            .ok_or_else(|| anyhow!("haproxy not found (apt-get install -y haproxy)"))?;
        let dir = TempDir::new("haproxy-reload")?;
        let port = free_port()?;
        let stats = dir.path().join("admin.sock");
        let global = format!(
            "    stats socket {} mode 600 expose-fd listeners level admin\n",
            stats.display()
        );
        let tls_port = free_port()?;
        let bind = format!(
            "    bind 127.0.0.1:{tls_port} ssl crt {} alpn h2,http/1.1\n",
            tls.combined.display()
        );
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(port, backend, &global, &bind))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let https = SocketAddr::from(([127, 0, 0, 1], tls_port));
        let proc = Self::spawn(&bin, &dir, &cfg, 1, &[])?;
        let mut h = ReloadableHaproxy {
            bin,
            dir,
            cfg,
            proc,
            started: 1,
            addr,
            https,
        };
        let log = h.log(1);
        wait_listening(&mut h.proc, addr, READY_TIMEOUT)
            .map_err(|e| anyhow!("{e}; log:\n{}", log_tail(&log)))?;
        Ok(h)
    }

    fn spawn(bin: &Path, dir: &TempDir, cfg: &Path, n: u32, extra: &[String]) -> Result<Proc> {
        let log = std::fs::File::create(dir.path().join(format!("haproxy-{n}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-db")
            .arg("-f")
            .arg(cfg)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        Proc::spawn("haproxy", &mut cmd)
    }

    fn log(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("haproxy-{n}.log"))
    }
}

impl Upgradable for ReloadableHaproxy {
    fn http(&self) -> SocketAddr {
        self.addr
    }

    fn https(&self) -> SocketAddr {
        self.https
    }

    fn upgrade(&mut self, drain_for: Duration) -> Result<Upgraded> {
        let t0 = Instant::now();
        let old_log = self.log(self.started);
        self.started += 1;
        let n = self.started;
        let extra = [
            "-x".to_string(),
            self.dir.path().join("admin.sock").display().to_string(),
            "-sf".to_string(),
            self.proc.pid().to_string(),
        ];
        let new = Self::spawn(&self.bin, &self.dir, &self.cfg, n, &extra)?;
        let mut old = std::mem::replace(&mut self.proc, new);
        // The new process signals the old one (-sf) once it has bound the
        // sockets it was handed; the old one logs its proxies stopping.
        let new_log = self.log(n);
        let proc = &mut self.proc;
        wait_until("the new HAProxy to take over", READY_TIMEOUT, || {
            std::fs::read_to_string(&old_log).is_ok_and(|l| l.contains("Proxy fe stopped"))
                || proc.check_running().is_err()
        })?;
        self.proc
            .check_running()
            .map_err(|e| anyhow!("{e}; log:\n{}", log_tail(&new_log)))?;
        let ready = t0.elapsed();
        let status = old.wait_exit(drain_for)?;
        Ok(Upgraded {
            ready,
            done: t0.elapsed(),
            drained: Some(status.success()),
            in_flight: None,
        })
    }
}
