//! The proxies under test, each started as a foreground child with its config,
//! pid file and logs in its own temp dir on 127.0.0.1 high ports.

use crate::procs::{find_tool, free_port, log_tail, sibling_binary, wait_listening, Proc, TempDir};
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a proxy is unavailable, worded for the report.
pub fn missing_nginx() -> String {
    "nginx not found on PATH or in /usr/sbin (apt-get install -y nginx)".into()
}

/// nginx as a reverse proxy with upstream keep-alive, configured the way
/// bluegreen.sh does it: the upstream lives in `backend.conf`, generated from
/// `backend.template` by envsubst.
#[derive(Debug)]
pub struct Nginx {
    proc: Proc,
    bin: PathBuf,
    dir: TempDir,
    pub addr: SocketAddr,
}

const NGINX_CONF: &str = r#"worker_processes auto;
daemon @DAEMON@;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path @DIR@/tmp-body;
    proxy_temp_path @DIR@/tmp-proxy;
    fastcgi_temp_path @DIR@/tmp-fastcgi;
    uwsgi_temp_path @DIR@/tmp-uwsgi;
    scgi_temp_path @DIR@/tmp-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    include @DIR@/backend.conf;
@SERVERS@}
"#;

/// What every `location` does: the forwarding headers handoff-proxy adds,
/// so both do the same work.
pub const NGINX_PROXY: &str = r#"            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_read_timeout 120s;
"#;

/// One virtual host of nginx's `routes` configuration: a `server` block
/// named `host`, with a `location` per path prefix (the whole host when
/// there is none), as handoff-proxy's route table matches them.
#[derive(Debug, Clone)]
pub struct NginxHost {
    pub host: String,
    pub prefixes: Vec<String>,
}

/// The single catch-all server every scenario but `routes` uses.
pub fn single_server(port: u16) -> String {
    format!(
        "    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n        location / {{\n{NGINX_PROXY}        }}\n    }}\n"
    )
}

/// A `server` block per host plus a default server answering 404, the
/// way nginx is set up for many apps on one address. A prefix `/api` takes
/// `/api` and `/api/...` (two locations), as handoff-proxy's segment match does.
fn routed_servers(port: u16, hosts: &[NginxHost]) -> String {
    let mut out = format!(
        "    server {{\n        listen 127.0.0.1:{port} default_server backlog=4096;\n        return 404;\n    }}\n"
    );
    for h in hosts {
        out += &format!(
            "    server {{\n        listen 127.0.0.1:{port};\n        server_name {};\n",
            h.host
        );
        if h.prefixes.is_empty() {
            out += &format!("        location / {{\n{NGINX_PROXY}        }}\n");
        }
        for p in &h.prefixes {
            out += &format!(
                "        location = {p} {{\n{NGINX_PROXY}        }}\n        location {p}/ {{\n{NGINX_PROXY}        }}\n"
            );
        }
        out += "    }\n";
    }
    out
}

/// The upstream template, in envsubst syntax exactly as bluegreen.sh uses it.
const NGINX_UPSTREAM_TEMPLATE: &str = r#"upstream app {
    server 127.0.0.1:${BACKEND_PORT};
    keepalive 512;
    keepalive_requests 10000000;
}
"#;

/// nginx's binary, and a temp dir holding its configuration for one
/// listener on `port`.
#[derive(Debug)]
pub struct NginxFiles {
    pub bin: PathBuf,
    pub dir: TempDir,
    pub port: u16,
}

impl NginxFiles {
    /// `nginx.conf`, the upstream template and `backend.conf`. `daemon`:
    /// nginx forks into the background, which its binary upgrade needs
    /// (in the foreground it ignores USR2 and WINCH).
    pub fn write(
        backend_port: u16,
        servers: impl FnOnce(u16) -> String,
        daemon: bool,
    ) -> Result<NginxFiles> {
        let bin = find_tool("nginx").ok_or_else(|| anyhow!(missing_nginx()))?;
        let dir = TempDir::new("nginx")?;
        let port = free_port()?;
        let d = dir.path().display().to_string();
        std::fs::write(
            dir.path().join("nginx.conf"),
            NGINX_CONF
                .replace("@DIR@", &d)
                .replace("@DAEMON@", if daemon { "on" } else { "off" })
                .replace("@SERVERS@", &servers(port)),
        )?;
        std::fs::write(dir.path().join("backend.template"), NGINX_UPSTREAM_TEMPLATE)?;
        write_upstream(dir.path(), backend_port)?;
        Ok(NginxFiles { bin, dir, port })
    }
}

impl Nginx {
    /// One catch-all server (every scenario but `routes`).
    pub fn start(backend_port: u16) -> Result<Nginx> {
        Self::start_with(backend_port, single_server)
    }

    /// A `server` block per host (`routes`), all to the same upstream.
    pub fn start_routes(backend_port: u16, hosts: &[NginxHost]) -> Result<Nginx> {
        Self::start_with(backend_port, |port| routed_servers(port, hosts))
    }

    fn start_with(backend_port: u16, servers: impl FnOnce(u16) -> String) -> Result<Nginx> {
        let NginxFiles { bin, dir, port } = NginxFiles::write(backend_port, servers, false)?;
        let mut cmd = Command::new(&bin);
        cmd.args(nginx_args(&dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut proc = Proc::spawn("nginx", &mut cmd)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(&mut proc, addr, START_TIMEOUT).map_err(|e| {
            anyhow!(
                "{e}; error.log:\n{}",
                log_tail(&dir.path().join("error.log"))
            )
        })?;
        Ok(Nginx {
            proc,
            bin,
            dir,
            addr,
        })
    }

    /// bluegreen.sh step 8: regenerate the upstream and `nginx -s reload`.
    /// Returns once the reload signal was sent; nginx swaps workers
    /// asynchronously, exactly as in the script.
    pub fn switch_upstream(&self, backend_port: u16) -> Result<()> {
        write_upstream(self.dir.path(), backend_port)?;
        let out = Command::new(&self.bin)
            .args(nginx_args(&self.dir))
            .args(["-s", "reload"])
            .output()?;
        if !out.status.success() {
            bail!(
                "nginx -s reload failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn rss_kb(&self) -> u64 {
        self.proc.rss_kb()
    }

    pub fn cpu_ms(&self) -> f64 {
        self.proc.cpu_ms()
    }
}

pub fn nginx_args(dir: &TempDir) -> Vec<String> {
    let d = dir.path().display();
    vec![
        "-p".into(),
        format!("{d}/"),
        "-c".into(),
        format!("{d}/nginx.conf"),
        "-e".into(),
        format!("{d}/error.log"),
    ]
}

/// Writes `backend.conf` with envsubst when installed (as the script does),
/// else with the same substitution done here.
fn write_upstream(dir: &std::path::Path, port: u16) -> Result<()> {
    let target = dir.join("backend.conf");
    if let Some(envsubst) = find_tool("envsubst") {
        let mut child = Command::new(envsubst)
            .arg("${BACKEND_PORT}")
            .env("BACKEND_PORT", port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(NGINX_UPSTREAM_TEMPLATE.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("envsubst failed: {}", out.status);
        }
        std::fs::write(&target, out.stdout)?;
    } else {
        std::fs::write(
            &target,
            NGINX_UPSTREAM_TEMPLATE.replace("${BACKEND_PORT}", &port.to_string()),
        )?;
    }
    Ok(())
}

/// HAProxy's configuration: HTTP mode, server-side connection reuse, the
/// forwarding headers handoff-proxy adds; `global` gets `extra_global`
/// lines, the frontend `extra_bind` ones.
pub fn haproxy_config(
    port: u16,
    backend: SocketAddr,
    extra_global: &str,
    extra_bind: &str,
) -> String {
    format!(
        "global\n    maxconn 8000\n    nbthread 2\n{extra_global}\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n    \
         http-reuse always\n    option forwardfor\n\
         frontend fe\n    bind 127.0.0.1:{port}\n{extra_bind}    \
         http-request set-header X-Forwarded-Proto http\n    \
         http-request set-header X-Forwarded-Host %[req.hdr(host)]\n    \
         default_backend be\n\
         backend be\n    server app {backend}\n"
    )
}

/// HAProxy in HTTP mode with server-side connection reuse; optional.
#[derive(Debug)]
pub struct Haproxy {
    proc: Proc,
    _dir: TempDir,
    pub addr: SocketAddr,
}

impl Haproxy {
    pub fn available() -> bool {
        find_tool("haproxy").is_some()
    }

    pub fn start(backend: SocketAddr) -> Result<Haproxy> {
        let bin = find_tool("haproxy")
            .ok_or_else(|| anyhow!("haproxy not found (apt-get install -y haproxy)"))?;
        let dir = TempDir::new("haproxy")?;
        let port = free_port()?;
        let cfg = haproxy_config(port, backend, "", "");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg)?;
        let log = std::fs::File::create(dir.path().join("haproxy.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut proc = Proc::spawn("haproxy", &mut cmd)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(&mut proc, addr, START_TIMEOUT)
            .map_err(|e| anyhow!("{e}; log:\n{}", log_tail(&dir.path().join("haproxy.log"))))?;
        Ok(Haproxy {
            proc,
            _dir: dir,
            addr,
        })
    }

    pub fn rss_kb(&self) -> u64 {
        self.proc.rss_kb()
    }

    pub fn cpu_ms(&self) -> f64 {
        self.proc.cpu_ms()
    }
}

/// handoff-proxy, started per its CLI contract and ready when it says so.
#[derive(Debug)]
pub struct HandoffProxy {
    /// The process serving now (the newest after an upgrade).
    pub(crate) proc: Proc,
    pub(crate) bin: PathBuf,
    /// Its flags: an upgrade starts the new process with the same ones.
    pub(crate) args: Vec<String>,
    dir: TempDir,
    pub addr: SocketAddr,
    /// The HTTPS listener, when started with one.
    pub https: Option<SocketAddr>,
    pub control: PathBuf,
}

impl HandoffProxy {
    pub fn binary() -> Result<PathBuf> {
        sibling_binary("handoff-proxy", "HANDOFF_PROXY_BIN").ok_or_else(|| {
            anyhow!("handoff-proxy binary not found next to handoff-bench (cargo build --release -p handoff-proxy, or set HANDOFF_PROXY_BIN)")
        })
    }

    pub fn start(backend: SocketAddr, drain_timeout: &str) -> Result<HandoffProxy> {
        Self::start_with(Some(backend), drain_timeout)
    }

    /// The command for `args`, logging to `log` (the proxy's log file,
    /// appended to by every process of an upgrade).
    pub(crate) fn command(bin: &std::path::Path, args: &[String], log: std::fs::File) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("HANDOFF_BENCH_PROXY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        cmd
    }

    /// Starts the proxy with no backend at all when `backend` is `None`
    /// (the deployer's first deploy sets one).
    pub fn start_with(backend: Option<SocketAddr>, drain_timeout: &str) -> Result<HandoffProxy> {
        Self::start_args(backend, drain_timeout, &[])
    }

    /// With an HTTPS listener on a free port, serving `cert` and `key`.
    pub fn start_tls(
        backend: SocketAddr,
        drain_timeout: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<HandoffProxy> {
        let extra = [
            "--https".to_string(),
            "127.0.0.1:0".into(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ];
        Self::start_args(Some(backend), drain_timeout, &extra)
    }

    fn start_args(
        backend: Option<SocketAddr>,
        drain_timeout: &str,
        extra: &[String],
    ) -> Result<HandoffProxy> {
        let bin = Self::binary()?;
        let dir = TempDir::new("handoff")?;
        let control = dir.path().join("control.sock");
        let log = std::fs::File::create(dir.path().join("proxy.log"))?;
        let mut args: Vec<String> = Vec::new();
        if supports_flag(&bin, "--admin") {
            // Its default admin port may be taken; metrics are still kept.
            args.extend(["--admin".into(), "off".into()]);
        }
        args.extend(["--http".into(), "127.0.0.1:0".into(), "--control".into()]);
        args.push(control.display().to_string());
        args.push("--state".into());
        args.push(dir.path().join("state.json").display().to_string());
        args.extend(["--drain-timeout".into(), drain_timeout.into()]);
        if let Some(backend) = backend {
            args.extend(["--backend".into(), backend.to_string()]);
        }
        args.extend(extra.iter().cloned());
        let mut cmd = Self::command(&bin, &args, log);
        let mut proc = Proc::spawn("handoff-proxy", &mut cmd)?;
        let line = proc
            .ready_line("handoff-proxy ready ", START_TIMEOUT)
            .map_err(|e| anyhow!("{e}; log:\n{}", log_tail(&dir.path().join("proxy.log"))))?;
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        };
        let addr = field("http=")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no http=ADDR in ready line {line:?}"))?;
        let control = field("control=").map(PathBuf::from).unwrap_or(control);
        let https = field("https=").and_then(|a| a.parse().ok());
        Ok(HandoffProxy {
            proc,
            bin,
            args,
            dir,
            addr,
            https,
            control,
        })
    }

    pub fn rss_kb(&self) -> u64 {
        self.proc.rss_kb()
    }

    pub fn cpu_ms(&self) -> f64 {
        self.proc.cpu_ms()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("proxy.log")
    }
}

/// Whether `bin --help` lists `flag`, for flags newer than the CLI contract.
fn supports_flag(bin: &std::path::Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

/// `handoff-bench minproxy`: a bare hyper proxy, the floor for any hyper-based
/// proxy on this machine.
#[derive(Debug)]
pub struct MinProxy {
    proc: Proc,
    pub addr: SocketAddr,
}

impl MinProxy {
    pub fn start(upstream: SocketAddr) -> Result<MinProxy> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["minproxy", "--upstream", &upstream.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn("minproxy", &mut cmd)?;
        let line = proc.ready_line("handoff-bench minproxy ready ", START_TIMEOUT)?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("minproxy ready line without addr: {line}"))?;
        Ok(MinProxy { proc, addr })
    }

    pub fn rss_kb(&self) -> u64 {
        self.proc.rss_kb()
    }

    pub fn cpu_ms(&self) -> f64 {
        self.proc.cpu_ms()
    }
}
