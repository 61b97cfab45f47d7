//! A real registry for the pull tests: Debian's `docker-registry`
//! (distribution 2.8) on 127.0.0.1 with htpasswd auth, its own storage in a
//! temp dir, and a private Docker client config for pushing, so the host's
//! `~/.docker/config.json` is never touched.

use crate::TempDir;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    /// `127.0.0.1:PORT`
    pub host: String,
    pub user: String,
    pub password: String,
    /// A Docker client config dir logged in to this registry (`DOCKER_CONFIG`).
    pub docker_config: PathBuf,
    child: Option<Child>,
    dir: TempDir,
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Registry {
    /// Starts the registry and waits until it answers `/v2/` with 401.
    pub fn start() -> Registry {
        let dir = TempDir::new("registry");
        let user = "ci".to_string();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let password = format!("S3cret!{}x{nanos}", std::process::id());
        let htpasswd = run(Command::new("htpasswd").args(["-Bbn", &user, &password]));
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {host}\nauth:\n  htpasswd:\n    realm: handoff-test\n    path: {}\n",
            dir.path().join("data").display(),
            dir.path().join("htpasswd").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run docker-registry (Debian package docker-registry)");
        let docker_config = dir.path().join("docker-config");
        std::fs::create_dir_all(&docker_config).unwrap();
        let mut registry = Registry {
            host,
            user,
            password,
            docker_config,
            child: Some(child),
            dir,
        };
        registry.wait_ready();
        registry.login();
        registry
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            let answer = std::net::TcpStream::connect(&self.host)
                .ok()
                .and_then(|mut s| {
                    use std::io::{Read, Write};
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                    s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").ok()?;
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).ok()?;
                    Some(String::from_utf8_lossy(&buf[..n]).to_string())
                });
            if answer.is_some_and(|a| a.contains(" 401 ")) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("docker-registry exited ({status}): {}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "docker-registry did not answer within 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("--config").arg(&self.docker_config);
        cmd
    }

    fn login(&self) {
        use std::io::Write;
        let mut child = self
            .docker()
            .args(["login", &self.host, "-u", &self.user, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.password.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker login {}: {}",
            self.host,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pushes a local image as `HOST/REPO:TAG` and removes that tag again
    /// locally, so a deploy of it must pull. Returns the reference.
    pub fn push(&self, local: &str, repo_tag: &str) -> String {
        let remote = format!("{}/{repo_tag}", self.host);
        run(self.docker().args(["tag", local, &remote]));
        run(self.docker().args(["push", "-q", &remote]));
        run(self.docker().args(["rmi", &remote]));
        remote
    }

    /// Stops the registry (a registry that is down).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
