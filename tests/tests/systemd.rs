//! End-to-end: what handoff-proxy tells systemd (`sd_notify`) and the
//! listeners systemd can hand it (socket activation), with systemd's own
//! `systemd-socket-activate` and a notify socket of the test's. Not a live
//! systemd: the units under one are checked by deploy/systemd/check-live.sh
//! (manual, Docker).

use handoff_tests::backend::Backend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request::get;
use handoff_tests::{bin_path, TempDir};
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

fn notify_socket(dir: &TempDir) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    (sock, path)
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification within 30 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_the_new_main_pid_are_told_to_systemd() {
    let (dir, b1) = (TempDir::new("notify"), Backend::start("b1").await);
    let (sock, path) = notify_socket(&dir);
    let env = [("NOTIFY_SOCKET", path.as_os_str())];
    let backend = b1.addr_string();
    let flags = ["--backend", backend.as_str()];
    let mut old = Proxy::try_start_with(dir.path(), &flags, &env)
        .await
        .unwrap();
    assert_eq!(recv(&sock), format!("MAINPID={}\nREADY=1", old.pid()));

    let mut new = old.upgrade_with(&flags, &env).await.unwrap();
    // Both name the new pid: the new process with READY=1, the old one
    // before it drains (so that systemd never sees the main process exit).
    // They race; either order is fine.
    let mut told = [recv(&sock), recv(&sock)];
    told.sort();
    assert_eq!(
        told,
        [
            format!("MAINPID={}", new.pid()),
            format!("MAINPID={}\nREADY=1", new.pid())
        ]
    );
    assert!(old.wait_exit(Duration::from_secs(60)).await.success());
    assert_eq!(get(new.http, "/").await.body, "b1");

    new.signal("TERM");
    assert_eq!(recv(&sock), "STOPPING=1");
    assert!(new.wait_exit(Duration::from_secs(60)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_passed_by_systemd_is_served_and_handed_over() {
    let (dir, b1) = (TempDir::new("activate"), Backend::start("b1").await);
    // systemd-socket-activate binds the address it is given; a port the
    // system just had free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("127.0.0.1:{port}");
    let control = dir.path().join("control.sock");
    let state = dir.path().join("state.json");
    let common = |cmd: &mut tokio::process::Command| {
        cmd.args([
            "--http",
            &http,
            "--admin",
            "off",
            "--backend",
            &b1.addr_string(),
        ])
        .arg("--control")
        .arg(&control)
        .arg("--state")
        .arg(&state);
    };
    let mut activate = tokio::process::Command::new("systemd-socket-activate");
    activate
        .args(["--listen", &http, "--fdname=http"])
        .arg(bin_path("handoff-proxy"));
    common(&mut activate);
    let mut old = activate
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd)");
    // Its stderr, then the proxy's (it execs the proxy), line by line.
    let (tx, mut stderr) = tokio::sync::mpsc::unbounded_channel();
    let mut err_lines = BufReader::new(old.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = err_lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    let mut wait_stderr = async |what: &str| loop {
        let line = tokio::time::timeout(Duration::from_secs(30), stderr.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what:?} on stderr"))
            .unwrap_or_else(|| panic!("stderr closed before {what:?}"));
        if line.contains(what) {
            return line;
        }
    };
    wait_stderr("Listening on").await;
    // It starts the proxy on the first connection, which then waits in the
    // backlog of the socket it passes: that request is the proxy's first.
    let first = tokio::spawn(get(http.parse().unwrap(), "/"));
    let mut lines = BufReader::new(old.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ready.contains(&format!("http={http} ")), "{ready}");
    assert_eq!(first.await.unwrap().body, "b1");
    wait_stderr("listener from systemd").await;

    // The hand-off passes it on like any other listener. (std's `output()`:
    // tokio's would pipe stderr, which the proxy left running keeps open.)
    let mut upgrade = std::process::Command::new(bin_path("handoff-proxy"));
    upgrade
        .args([
            "--upgrade",
            "--background",
            "--http",
            &http,
            "--admin",
            "off",
        ])
        .args(["--backend", &b1.addr_string()])
        .arg("--control")
        .arg(&control)
        .arg("--state")
        .arg(&state)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || upgrade.output()),
    )
    .await
    .expect("--background returns")
    .unwrap()
    .unwrap();
    let out_text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out_text}");
    assert!(out_text.contains("drained=true"), "{out_text}");
    assert!(old.wait().await.unwrap().success());
    assert_eq!(get(http.parse().unwrap(), "/").await.body, "b1");
    let new_pid: u32 = out_text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .expect("the new pid in the ready line");
    let _ = std::process::Command::new("kill")
        .arg(new_pid.to_string())
        .status();
}
