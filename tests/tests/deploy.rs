//! End-to-end: the real `handoff` binary deploying real containers on the
//! real Docker engine behind the real `handoff-proxy`: the release path
//! (first deploy, v1 -> v2 under load, unhealthy and crashing releases,
//! rollback). Images are built locally from `tests/testapp`; every app name
//! is unique and its containers are removed when the test ends, pass or fail.
//!
//! Without a Docker engine these tests return early with a loud message,
//! except under CI=true, where they fail.

use handoff_tests::docker::{assert_failed, container_state, stage};
use handoff_tests::load;
use handoff_tests::request::{self, wait_for};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_deploy_is_release_1_and_serves_through_the_proxy() {
    let Some(env) = stage("first").await else {
        return;
    };
    let out = env.handoff.deploy(&env.app.name, &env.images.v1, &[]).await;
    assert_eq!(out.code, 0, "{out}");
    let json = out.json();
    assert_eq!(
        (json["ok"].as_bool(), json["release"].as_u64()),
        (Some(true), Some(1)),
        "{out}"
    );
    assert_eq!(json["container"], env.app.release(1));
    assert!(json["previous"].is_null(), "{json}");
    let backend = json["backend"].as_str().expect("backend").to_string();
    assert!(backend.starts_with("127.0.0.1:"), "{backend}");
    assert_eq!(env.backend().await.as_deref(), Some(backend.as_str()));
    assert_eq!(env.body("/").await, "v1");
    // Published on loopback only.
    let ports = std::process::Command::new("docker")
        .args(["port", &env.app.release(1)])
        .output()
        .unwrap();
    let ports = String::from_utf8_lossy(&ports.stdout);
    assert!(
        !ports.trim().is_empty() && ports.lines().all(|l| l.contains("-> 127.0.0.1:")),
        "{ports}"
    );
    // Live, it restarts after a crash or a reboot (on trial it did not).
    let policy = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.HostConfig.RestartPolicy.Name}}",
            &env.app.release(1),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&policy.stdout).trim(),
        "unless-stopped"
    );
    // No TTY here: plain, timestamped progress lines on stderr.
    for line in out.stderr.lines() {
        let ts = line.split_whitespace().next().unwrap_or("");
        assert!(
            ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
            "untimestamped line {line:?}"
        );
    }
    let status = env
        .handoff
        .run(&["status", "--json", "--name", &env.app.name])
        .await;
    assert_eq!(status.code, 0, "{status}");
    let s = status.json();
    assert_eq!(s["live"]["container"], env.app.release(1).as_str(), "{s}");
    assert_eq!(s["serving"], true, "{s}");
    assert_eq!(s["releases"][0]["image"], env.images.v1.as_str(), "{s}");
    assert_eq!(s["releases"][0]["role"], "live", "{s}");
    assert_eq!(s["releases"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["proxy"]["backend"], backend.as_str(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_to_v2_under_64_clients_has_zero_failures_and_v1_stops_after_its_requests() {
    let Some(env) = stage("v1v2").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let blue_backend = env.backend().await.unwrap();

    // Five long requests that v1 must finish although it is switched away from.
    let slow: Vec<_> = (0..5)
        .map(|_| {
            let addr = env.proxy.http;
            tokio::spawn(async move { request::get(addr, "/slow?ms=8000").await })
        })
        .collect();
    let client = env.proxy.client();
    wait_for(
        "5 slow requests in flight",
        Duration::from_secs(30),
        async || client.status().await.unwrap().in_flight >= 5,
    )
    .await;
    let load = load::start(env.proxy.http, "/", 64, Duration::from_secs(90));

    let handoff = env.handoff.clone();
    let (app_name, v2) = (env.app.name.clone(), env.images.v2.clone());
    let deploy = tokio::spawn(async move {
        handoff
            .deploy(&app_name, &v2, &["--drain-timeout", "60s"])
            .await
    });
    // The switch is visible to new requests while the slow ones still run on v1.
    wait_for(
        "v2 to serve new requests",
        Duration::from_secs(60),
        async || request::get(env.proxy.http, "/").await.body == "v2",
    )
    .await;
    assert!(
        slow.iter().all(|h| !h.is_finished()),
        "slow requests ended before the switch; the test proves nothing"
    );
    assert_eq!(
        container_state(&env.app.release(1)).unwrap().0,
        "running",
        "v1 stopped while it still had requests"
    );

    let out = deploy.await.unwrap();
    assert_eq!(out.code, 0, "{out}");
    let json = out.json();
    assert_eq!(json["release"], 2, "{json}");
    assert_eq!(json["drain"]["drained"], true, "{json}");
    assert_eq!(json["previous"]["backend"], blue_backend.as_str(), "{json}");
    for h in slow {
        let reply = h.await.unwrap();
        assert_eq!(
            (reply.status.as_u16(), reply.body.as_str()),
            (200, "v1"),
            "a drained request failed"
        );
    }
    let report = load.finish().await;
    assert_eq!(
        report.failed, 0,
        "failed requests during v1 -> v2: {:?}",
        report.errors
    );
    assert!(
        report.by_body.get("v1").copied().unwrap_or(0) > 0,
        "{:?}",
        report.by_body
    );
    assert!(
        report.by_body.get("v2").copied().unwrap_or(0) > 0,
        "{:?}",
        report.by_body
    );
    eprintln!(
        "v1 -> v2 under 64 clients: {} ok, {} failed, by body {:?}, deploy {:?}, steps {}",
        report.ok, report.failed, report.by_body, out.took, json["steps_ms"]
    );
    // v1 is stopped, not removed: it is the rollback target.
    assert_eq!(container_state(&env.app.release(1)).unwrap().0, "exited");
    assert_eq!(container_state(&env.app.release(2)).unwrap().0, "running");
    assert_eq!(env.body("/").await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_v3_exits_2_leaves_v2_live_and_is_removed() {
    let Some(env) = stage("unhealthy").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    env.deploy_ok(&env.images.v2, &[]).await;
    let before = env.proxy.client().status().await.unwrap();

    let load = load::start(env.proxy.http, "/", 64, Duration::from_secs(60));
    let out = env
        .handoff
        .deploy(
            &env.app.name,
            &env.images.v3_unhealthy,
            &["--deploy-timeout", "4s"],
        )
        .await;
    let report = load.finish().await;

    assert_failed(&out, 2);
    assert_eq!(out.json()["error_kind"], "unhealthy");
    assert!(out.stderr.contains("status is \"DOWN\""), "{out}");
    assert!(
        out.stderr.contains("log lines of") && out.stderr.contains("testapp v3 starting"),
        "{out}"
    );
    let after = env.proxy.client().status().await.unwrap();
    assert_eq!(
        (after.backend, after.generation),
        (before.backend, before.generation)
    );
    assert_eq!(
        container_state(&env.app.release(3)),
        None,
        "the unhealthy v3 container was not removed"
    );
    assert_eq!(container_state(&env.app.release(2)).unwrap().0, "running");
    assert_eq!(env.body("/").await, "v2");
    assert_eq!(
        report.failed, 0,
        "failed requests during the v3 attempt: {:?}",
        report.errors
    );
    assert_eq!(
        report.by_body.keys().collect::<Vec<_>>(),
        vec!["v2"],
        "{:?}",
        report.by_body
    );
    eprintln!(
        "unhealthy v3: {} ok, {} failed, handoff took {:?}",
        report.ok, report.failed, out.took
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_v4_fails_in_seconds_with_its_exit_code() {
    let Some(env) = stage("crash").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let before = env.backend().await;
    let out = env
        .handoff
        .deploy(
            &env.app.name,
            &env.images.v4_crash,
            &["--deploy-timeout", "120s"],
        )
        .await;
    assert_failed(&out, 2);
    let json = out.json();
    assert_eq!(json["container_exit_code"], 3, "{out}");
    assert!(out.stderr.contains("exit code 3"), "{out}");
    assert!(
        out.stderr.contains("crashing on purpose"),
        "the crash log was not shown: {out}"
    );
    // Not waiting for the deploy timeout: a fraction of it is plenty.
    assert!(
        out.took < Duration::from_secs(60),
        "crash noticed only after {:?}",
        out.took
    );
    eprintln!("crashing v4 reported after {:?}", out.took);
    assert_eq!(env.backend().await, before);
    assert_eq!(container_state(&env.app.release(2)), None);
    assert_eq!(env.body("/").await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_previous_release_and_refuses_without_one() {
    let Some(env) = stage("rollback").await else {
        return;
    };
    let rollback = async || {
        env.handoff
            .run(&[
                "rollback",
                "--json",
                "--name",
                &env.app.name,
                "--health-interval",
                "200ms",
            ])
            .await
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let before = env.proxy.client().status().await.unwrap();
    let out = rollback().await;
    assert_failed(&out, 1);
    assert!(out.stderr.contains("nothing to roll back to"), "{out}");
    assert_eq!(
        env.proxy.client().status().await.unwrap().generation,
        before.generation
    );

    env.deploy_ok(&env.images.v2, &[]).await;
    assert_eq!(env.body("/").await, "v2");
    let out = rollback().await;
    assert_eq!(out.code, 0, "{out}");
    let json = out.json();
    assert_eq!(
        (json["release"].as_u64(), json["image"].as_str()),
        (Some(1), Some(env.images.v1.as_str()))
    );
    assert_eq!(json["drain"]["drained"], true, "{json}");
    assert_eq!(env.body("/").await, "v1");
    assert_eq!(container_state(&env.app.release(1)).unwrap().0, "running");
    assert_eq!(container_state(&env.app.release(2)).unwrap().0, "exited");
    // And forward again.
    let out = rollback().await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(env.body("/").await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_protocol_reaches_the_proxy_and_carries_over_to_the_next_deploy() {
    let Some(env) = stage("protocol").await else {
        return;
    };
    let protocol = async || env.proxy.client().status().await.unwrap().protocol;
    // Declared h2c (the test app speaks HTTP/1.1, so no traffic is sent
    // while the proxy is told otherwise; health checks go to the container).
    env.deploy_ok(&env.images.v1, &["--backend-protocol", "h2c"])
        .await;
    assert_eq!(protocol().await, handoff_shared::BackendProtocol::H2c);
    // Not named again: the app keeps what the live backend speaks.
    env.deploy_ok(&env.images.v2, &[]).await;
    assert_eq!(protocol().await, handoff_shared::BackendProtocol::H2c);
    // Named back to http1, and traffic flows.
    env.deploy_ok(&env.images.v1, &["--backend-protocol", "http1"])
        .await;
    assert_eq!(protocol().await, handoff_shared::BackendProtocol::Http1);
    assert_eq!(env.body("/").await, "v1");
    // An unknown protocol is bad usage: exit 1, nothing deployed.
    let out = env
        .handoff
        .deploy(&env.app.name, &env.images.v2, &["--backend-protocol", "h3"])
        .await;
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(env.body("/").await, "v1");
}
