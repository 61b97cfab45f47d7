//! Child processes that are always stopped, temp dirs that are always removed,
//! and the small probes (free ports, RSS, tools on PATH) scenarios need.
//!
//! Everything here is blocking; scenarios call it from `spawn_blocking` when
//! load is running so the load generator's threads never stall on it.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A directory under the system temp dir, removed with everything in it on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("handoff-bench-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that is killed and reaped when dropped, so no scenario,
/// error path or panic leaves one behind.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    /// Stdout, a line at a time, once a caller waited for a line.
    /// (In a mutex only so that a `Proc` can be shared between threads.)
    lines: Option<std::sync::Mutex<std::sync::mpsc::Receiver<String>>>,
}

impl Proc {
    /// Starts the child in a process group of its own, so that stopping it
    /// also stops whatever it forked (nginx's workers outlive a killed master).
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            lines: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, naming the exit status, if the process is gone already.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("{} exited early: {status}", self.name),
            None => Ok(()),
        }
    }

    /// Sends SIGTERM (what `docker stop` sends first) and waits up to 5 s
    /// for the exit before falling back to SIGKILL.
    pub fn terminate(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn cpu_ms(&self) -> f64 {
        cpu_ms_tree(self.pid())
    }

    /// Resident memory of the process and all its descendants (nginx's
    /// workers), in KiB.
    pub fn rss_kb(&self) -> u64 {
        let mut total = 0;
        let mut todo = vec![self.pid()];
        while let Some(pid) = todo.pop() {
            total += status_field(pid, "VmRSS:").unwrap_or(0);
            todo.extend(children_of(pid));
        }
        total
    }

    /// Reads stdout lines until one starts with `prefix` and returns it. The
    /// rest of stdout keeps being drained so the child never blocks on a
    /// full pipe; later lines wait for the next call.
    pub fn ready_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        if self.lines.is_none() {
            let stdout = self
                .child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("{}: stdout not captured", self.name))?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // A receiver that is gone only means nobody waits for
                    // lines any more; the pipe is still drained.
                    let _ = tx.send(line);
                }
            });
            self.lines = Some(std::sync::Mutex::new(rx));
        }
        let found = {
            let lines = self
                .lines
                .as_ref()
                .expect("set above")
                .lock()
                .map_err(|_| anyhow!("{}: stdout reader poisoned", self.name))?;
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match lines.recv_timeout(left) {
                    Ok(line) if line.starts_with(prefix) => break Some(line),
                    Ok(_) => continue,
                    Err(_) => break None,
                }
            }
        };
        if let Some(line) = found {
            return Ok(line);
        }
        let status = self
            .check_running()
            .err()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        bail!(
            "{} printed no line starting {prefix:?} within {timeout:?}{status}",
            self.name
        )
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Sends `signal` (a name such as `USR2`) to `pid`.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed: {status}");
    }
    Ok(())
}

/// Whether `pid` is a live process: a zombie (exited, not yet reaped by
/// whoever adopted it) counts as gone.
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

impl Drop for Proc {
    /// SIGTERM to the whole group, up to 2 s for a clean exit, then SIGKILL
    /// to the group: no worker process survives its harness.
    fn drop(&mut self) {
        let group = format!("-{}", self.pid());
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &group])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) a process and its live descendants have used,
/// in ms. Per request, this is robust where req/s is not: it does not depend
/// on what else the shared machine runs at the same time.
pub fn cpu_ms_tree(pid: u32) -> f64 {
    let mut total = 0;
    let mut todo = vec![pid];
    while let Some(pid) = todo.pop() {
        total += cpu_ticks(pid).unwrap_or(0);
        todo.extend(children_of(pid));
    }
    total as f64 * 1000.0 / CLOCK_TICKS
}

/// `sysconf(_SC_CLK_TCK)`; 100 on every Linux this runs on.
const CLOCK_TICKS: f64 = 100.0;

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces: state is the
    // first, utime and stime the 12th and 13th.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// The children of `pid` (nginx's workers of one master).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// A port on 127.0.0.1 that was free a moment ago (for servers such as nginx
/// that cannot be told to bind port 0 and report it).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` accepts TCP connections, failing early if `proc` died.
pub fn wait_listening(proc: &mut Proc, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        proc.check_running()?;
        if Instant::now() > deadline {
            bail!("{} did not listen on {addr} within {timeout:?}", proc.name);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Looks `name` up on PATH and in the sbin directories where distributions
/// put nginx and haproxy (often not on a non-root PATH).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A binary built next to this one (same cargo target dir), e.g.
/// `handoff-proxy`; `env` overrides the location.
pub fn sibling_binary(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// The bench backend as a child process.
#[derive(Debug)]
pub struct Backend {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub id: u8,
}

impl Backend {
    /// Starts `handoff-bench backend` on `port` (0 for any) and waits for its
    /// ready line.
    pub fn start(id: u8, port: u16) -> Result<Backend> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "backend",
            "--port",
            &port.to_string(),
            "--id",
            &id.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut proc = Proc::spawn(&format!("backend {id}"), &mut cmd)?;
        let line = proc.ready_line("handoff-bench backend ready ", Duration::from_secs(10))?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("backend ready line without addr: {line}"))?;
        Ok(Backend { proc, addr, id })
    }
}
