//! Issue 13: a deploy that fails never leaves the site worse than before.
//! Real Docker, the real `handoff` and `handoff-proxy`, load on 127.0.0.1.
//!
//! - case 1: a release that answers at once and exits 1 s later is refused
//!   before the switch (the readiness rule wants a stable streak);
//! - case 2: a failed deploy keeps the rollback target;
//! - the watched switch: a release that crashes once it gets traffic is
//!   switched back from within the watch;
//! - case 7: a drain that times out reports the requests it cut.
//!
//! Without a Docker engine these tests return early with a loud message,
//! except under CI=true, where they fail.

use handoff_tests::docker::{assert_failed, container_state, stage};
use handoff_tests::load;
use handoff_tests::request::{self, wait_for};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case1_release_that_exits_1s_after_start_is_refused_before_the_switch() {
    let Some(env) = stage("unstable").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let before = env.proxy.client().status().await.unwrap();

    let load = load::start(env.proxy.http, "/", 8, Duration::from_secs(60));
    // Listens at once, passes its first checks, exits 3 after 1 s. The
    // default rule wants 3 good checks over 2 s with no exit in between.
    let out = env
        .handoff
        .deploy(
            &env.app.name,
            &env.images.v2,
            &["-e", "EXIT_AFTER_MS=1000", "--healthy-for", "2s"],
        )
        .await;
    let report = load.finish().await;

    assert_failed(&out, 2);
    let json = out.json();
    assert_eq!(json["error_kind"], "unhealthy", "{out}");
    assert_eq!(json["container_exit_code"], 3, "{out}");
    assert!(out.stderr.contains("exiting on purpose"), "{out}");
    let after = env.proxy.client().status().await.unwrap();
    assert_eq!(
        (after.backend, after.generation),
        (before.backend, before.generation),
        "the proxy was switched to the unstable release: {out}"
    );
    assert_eq!(container_state(&env.app.release(2)), None, "{out}");
    assert_eq!(container_state(&env.app.release(1)).unwrap().0, "running");
    eprintln!(
        "case 1 (exit 1 s after start): {} ok, {} failed",
        report.ok, report.failed
    );
    assert_eq!(
        report.failed, 0,
        "requests failed although v1 stayed live: {:?}",
        report.errors
    );
    assert_eq!(
        report.by_body.keys().collect::<Vec<_>>(),
        vec!["v1"],
        "{:?}",
        report.by_body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case2_failed_deploys_keep_the_rollback_target() {
    let Some(env) = stage("keeptarget").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    env.deploy_ok(&env.images.v2, &[]).await;
    // An unhealthy release and a crashing one: both fail, v1 stays kept.
    let out = env
        .handoff
        .deploy(
            &env.app.name,
            &env.images.v3_unhealthy,
            &["--deploy-timeout", "3s"],
        )
        .await;
    assert_failed(&out, 2);
    let out = env
        .handoff
        .deploy(&env.app.name, &env.images.v4_crash, &[])
        .await;
    assert_failed(&out, 2);
    assert_eq!(
        container_state(&env.app.release(1)).map(|s| s.0).as_deref(),
        Some("exited"),
        "the kept v1 release is gone after failed deploys"
    );
    let releases = env
        .handoff
        .run(&["releases", "--json", "--name", &env.app.name])
        .await;
    assert_eq!(releases.code, 0, "{releases}");
    let list = releases.json()["releases"].clone();
    let roles: Vec<(u64, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["release"].as_u64().unwrap(), r["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, vec![(2, "live"), (1, "kept")], "{releases}");

    let out = env.handoff.rollback(&env.app.name, &[]).await;
    assert_eq!(out.code, 0, "rollback after failed deploys: {out}");
    assert_eq!(out.json()["image"], env.images.v1.as_str(), "{out}");
    assert_eq!(env.body("/").await, "v1");
    // And a later deploy works with no manual cleanup.
    env.deploy_ok(&env.images.v2, &[]).await;
    assert_eq!(env.body("/").await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_crashing_after_the_switch_is_switched_back_within_the_watch() {
    let Some(env) = stage("watch").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let v1_backend = env.backend().await;

    let load = load::start(env.proxy.http, "/", 8, Duration::from_secs(90));
    // Healthy and stable, then it exits 1 s after its first real request,
    // i.e. right after the switch, whatever the health checks' timing.
    let out = env
        .handoff
        .deploy(
            &env.app.name,
            &env.images.v2,
            &["-e", "CRASH_AFTER_SERVING_MS=1000", "--watch", "15s"],
        )
        .await;
    // The site serves v1 again before the load stops.
    wait_for("v1 to serve again", Duration::from_secs(30), async || {
        request::get(env.proxy.http, "/").await.body == "v1"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.finish().await;

    assert_failed(&out, 2);
    assert!(out.stderr.contains("failed the watch"), "{out}");
    assert!(out.stderr.contains("switching back to"), "{out}");
    assert_eq!(out.json()["switched_back_to"], env.app.release(1).as_str());
    assert_eq!(env.backend().await, v1_backend, "{out}");
    // The failed release is stopped and kept under its -failed name.
    let (state, _, _) = container_state(&env.app.failed(2)).expect("kept as -failed");
    assert_eq!(state, "exited", "{out}");
    eprintln!(
        "crash after the switch: {} ok, {} failed (the failures are on v2 between its crash \
         and the switch back), by body {:?}, errors {:?}",
        report.ok, report.failed, report.by_body, report.errors
    );
    assert!(
        report.by_body.get("v2").copied().unwrap_or(0) > 0,
        "v2 never served: {out}"
    );
    assert_eq!(env.body("/").await, "v1");
    // The failed release is no rollback target; the next deploy works.
    env.deploy_ok(&env.images.v2, &[]).await;
    assert_eq!(env.body("/").await, "v2");
    let out = env.handoff.rollback(&env.app.name, &[]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.json()["container"],
        env.app.release(1).as_str(),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case7_drain_timeout_reports_cut_requests_and_fail_on_cut_exits_5() {
    let Some(env) = stage("cut").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let slow = {
        let addr = env.proxy.http;
        tokio::spawn(async move { request::get(addr, "/slow?ms=20000").await })
    };
    let client = env.proxy.client();
    wait_for(
        "a slow request in flight",
        Duration::from_secs(30),
        async || client.status().await.unwrap().in_flight >= 1,
    )
    .await;
    let out = env
        .handoff
        .deploy(
            &env.app.name,
            &env.images.v2,
            &["--drain-timeout", "1s", "--fail-on-cut"],
        )
        .await;
    assert_failed(&out, 5);
    let json = out.json();
    assert_eq!(json["cut"], 1, "{out}");
    assert_eq!(json["drain"]["drained"], false, "{out}");
    assert_eq!(json["error_kind"], "clients_failing", "{out}");
    assert!(
        out.stderr.contains("requests still running there are cut"),
        "{out}"
    );
    // It is live all the same; the cut request was cut.
    assert_eq!(env.body("/").await, "v2");
    assert_ne!(slow.await.unwrap().status.as_u16(), 200);

    // Without --fail-on-cut: exit 0, and the summary still says so.
    let slow = {
        let addr = env.proxy.http;
        tokio::spawn(async move { request::get(addr, "/slow?ms=20000").await })
    };
    wait_for(
        "a slow request in flight",
        Duration::from_secs(30),
        async || client.status().await.unwrap().in_flight >= 1,
    )
    .await;
    let out = env
        .handoff
        .run(&[
            "deploy",
            "--init",
            "--name",
            &env.app.name,
            "--image",
            &env.images.v1,
            "--pull",
            "never",
            "--health-interval",
            "200ms",
            "--healthy-for",
            "1s",
            "--watch",
            "1s",
            "--drain-timeout",
            "1s",
        ])
        .await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains("cut: 1 requests were still running on the old release when it was stopped"),
        "{out}"
    );
    drop(slow);
}
