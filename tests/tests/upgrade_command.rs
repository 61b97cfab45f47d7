//! `handoff-proxy --upgrade --background`, the one command (and systemd's
//! `ExecReload`): what it shows while it waits.

use handoff_tests::backend::Backend;
use handoff_tests::proxy::{stop_pid, Proxy};
use handoff_tests::request::{get, wait_for};
use http::StatusCode;
use std::time::Duration;

/// The lines `--background` prints while the old process finishes.
const WAITING: &str = "handoff-proxy draining old-process ";

/// A reload can wait for the whole drain timeout (30 s under systemd): it
/// must say so while it waits, not only at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_command_upgrade_shows_progress_while_the_old_process_drains() {
    let b = Backend::start("b1").await;
    let p = Proxy::start(&["--backend", &b.addr_string(), "--drain-timeout", "30s"]).await;
    // A request the old process must finish: 12 s at the backend, two
    // progress intervals and some to spare for a slow start.
    let http = p.http;
    let slow = tokio::spawn(async move { get(http, "/slow?ms=12000").await });
    wait_for(
        "the slow request at the backend",
        Duration::from_secs(10),
        async || b.active() == 1,
    )
    .await;

    let (code, out) = p.upgrade_background(&["--backend", &b.addr_string()]).await;
    assert_eq!(code, 0, "{out}");
    let waiting: Vec<&str> = out.lines().filter(|l| l.starts_with(WAITING)).collect();
    assert!(
        !waiting.is_empty(),
        "no progress line while draining:\n{out}"
    );
    assert!(
        waiting
            .iter()
            .all(|l| l.contains(&format!("pid={} in_flight=1 ", p.pid()))),
        "progress names the old process and the request it waits for:\n{out}"
    );
    let summary = out.lines().last().unwrap_or_default();
    assert!(summary.contains("drained=true"), "{out}");

    let reply = slow.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "the slow request finished");
    let new_pid: u32 = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .expect("the ready line names the new pid");
    assert_eq!(get(http, "/").await.status, StatusCode::OK);
    stop_pid(new_pid).await;
}
