//! Issue 5, the control socket against other local users: a client running
//! as `nobody` (via `setpriv`, so the test needs root, as CI has) is kept
//! out by the socket's mode, and, should the mode be loosened by hand, by
//! the peer-credential check; `--control-group` lets that group in, and its
//! switches are logged with the caller's uid.

use handoff_tests::backend::Backend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const NOBODY: u32 = 65534;

fn current_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

/// curl on the control socket as uid/gid 65534; returns (exit code, output).
fn curl_as_nobody(socket: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["curl", "-sS", "--max-time", "20", "--unix-socket"])
        .arg(socket)
        .args(args)
        .output()
        .expect("setpriv and curl are installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Lets `nobody` reach the socket file (not the socket itself): the test dir
/// is private to root otherwise.
fn open_dir(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_is_refused_by_mode_and_by_peer_credentials() {
    assert_eq!(
        current_uid(),
        0,
        "this test switches to uid {NOBODY} and so must run as root"
    );
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    open_dir(&p.dir);
    let mode = std::fs::metadata(&p.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The file mode alone keeps nobody out: connect() is refused.
    let (code, out) = curl_as_nobody(&p.control, &["http://localhost/v1/status"]);
    assert_eq!(code, 7, "curl could connect as nobody: {out}");
    assert!(
        out.contains("Permission denied") || out.contains("Couldn't connect"),
        "{out}"
    );

    // Loosen the mode by hand: the peer-credential check still refuses.
    std::fs::set_permissions(&p.control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let body = format!(r#"{{"addr":"{}"}}"#, b2.addr_string());
    let (code, out) = curl_as_nobody(
        &p.control,
        &[
            "-X",
            "PUT",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            "-w",
            "\n%{http_code}",
            "http://localhost/v1/backend",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("\n403"), "{out}");
    assert!(
        out.contains(&format!("uid {NOBODY} may not use this socket")),
        "{out}"
    );
    let s = p.client().status().await.unwrap();
    assert_eq!(
        s.backend.as_deref(),
        Some(b1.addr_string().as_str()),
        "a refused client changed routing"
    );
    assert!(
        p.log_text().contains("control client refused"),
        "the refusal is logged"
    );
    assert_eq!(request::get(p.http, "/").await.body, "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_group_is_let_in_and_its_switch_is_logged_with_its_uid() {
    assert_eq!(
        current_uid(),
        0,
        "this test switches to uid {NOBODY} and so must run as root"
    );
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let p = Proxy::start(&["--backend", &b1.addr_string(), "--control-group", "65534"]).await;
    open_dir(&p.dir);
    let meta = std::fs::metadata(&p.control).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), NOBODY);

    let body = format!(r#"{{"addr":"{}"}}"#, b2.addr_string());
    let (code, out) = curl_as_nobody(
        &p.control,
        &[
            "-X",
            "PUT",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            "-w",
            "\n%{http_code}",
            "http://localhost/v1/backend",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("\n200"), "{out}");
    assert_eq!(request::get(p.http, "/").await.body, "b2");
    let log = p.log_text();
    let switched = log
        .lines()
        .find(|l| l.contains("switched"))
        .unwrap_or_else(|| panic!("no switch logged:\n{log}"));
    assert!(switched.contains(&format!("uid={NOBODY}")), "{switched}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplementary_member_of_the_control_group_is_let_in() {
    assert_eq!(
        current_uid(),
        0,
        "this test switches uid and so must run as root"
    );
    let b1 = Backend::start("b1").await;
    let p = Proxy::start(&["--backend", &b1.addr_string(), "--control-group", "65534"]).await;
    open_dir(&p.dir);
    // Primary group 4242; the control group only as a supplementary one.
    let run = |groups: &str| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=4242", groups, "--"])
            .args([
                "curl",
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
            ])
            .arg(&p.control)
            .arg("http://localhost/v1/status")
            .output()
            .expect("setpriv and curl are installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let member = run("--groups=65534");
    assert!(
        member.ends_with("\n200"),
        "supplementary member refused: {member}"
    );
    // Without the group it is kept out.
    let outsider = run("--clear-groups");
    assert!(!outsider.ends_with("\n200"), "outsider let in: {outsider}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_or_oversized_control_client_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Proxy::start(&[]).await;
    // Half a request head, then silence: cut after the 10 s idle limit.
    let mut idle = tokio::net::UnixStream::connect(&p.control).await.unwrap();
    idle.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(40),
        idle.read_to_end(&mut out),
    )
    .await;
    assert!(closed.is_ok(), "an idle control client was never cut");
    // A body over 64 KiB is refused with 413 and changes nothing.
    let big = format!(
        r#"{{"addr":"127.0.0.1:1","pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let r = request::control(&p.control, "PUT", "/v1/backend", big).await;
    match r {
        Ok(reply) => assert_eq!(
            reply.status,
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            reply.body
        ),
        // hyper may close before the whole body is written; that is a refusal too.
        Err(e) => assert!(
            e.contains("connection")
                || e.contains("closed")
                || e.contains("reset")
                || e.contains("broken"),
            "{e}"
        ),
    }
    assert_eq!(p.client().status().await.unwrap().backend, None);
}
