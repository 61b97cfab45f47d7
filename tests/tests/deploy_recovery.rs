//! Issue 13: acting on the truth after a lost answer, and a way back when
//! it matters. Real Docker, the real `handoff` and `handoff-proxy`.
//!
//! - cases 5 and 6: the live release is stopped or removed: `status` exits 5
//!   saying clients get errors and how to fix it, and `rollback` works;
//! - case 4: the deployer dies during a drain; the next deploy waits for the
//!   release the proxy still drains before it stops it;
//! - case 3: the proxy dies during the drain and is restarted; the deploy
//!   re-reads `/v1/status` and finishes on what the proxy says;
//! - the deployer killed (`HANDOFF_TEST_ABORT_AT`, an abort as abrupt as
//!   `kill -9`) at each step: the site serves, status says what is live,
//!   the next deploy works.
//!
//! Without a Docker engine these tests return early with a loud message,
//! except under CI=true, where they fail.

use handoff_tests::docker::{container_state, deploy_args, stage};
use handoff_tests::proxy::Proxy;
use handoff_tests::request::{self, wait_for};
use std::process::Command;
use std::time::Duration;

fn docker(args: &[&str]) {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case5_6_status_exits_5_and_rollback_works_when_the_live_release_is_dead_or_gone() {
    let Some(env) = stage("dead").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    env.deploy_ok(&env.images.v2, &[]).await;
    let out = env.handoff.status(&env.app.name).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.json()["serving"], true, "{out}");

    // The live release stops: every client gets an error, and status says so.
    docker(&["stop", "-t", "1", &env.app.release(2)]);
    assert_eq!(request::get(env.proxy.http, "/").await.status, 502);
    let out = env.handoff.status(&env.app.name).await;
    assert_eq!(
        out.code, 5,
        "status must not say ok while clients get errors: {out}"
    );
    let json = out.json();
    assert_eq!(json["serving"], false, "{out}");
    assert_eq!(
        json["live"]["container"],
        env.app.release(2).as_str(),
        "{out}"
    );
    let fix = format!("handoff rollback --name {}", env.app.name);
    assert_eq!(json["fix"], fix.as_str(), "{out}");
    assert!(
        out.stderr.contains("clients are getting errors") && out.stderr.contains(&fix),
        "{out}"
    );
    let text = env.handoff.run(&["status", "--name", &env.app.name]).await;
    assert_eq!(text.code, 5, "{text}");
    assert!(text.stdout.contains("CLIENTS ARE GETTING ERRORS"), "{text}");

    let out = env.handoff.rollback(&env.app.name, &[]).await;
    assert_eq!(out.code, 0, "rollback from a stopped live release: {out}");
    assert_eq!(env.body("/").await, "v1");
    assert_eq!(env.handoff.status(&env.app.name).await.code, 0);

    // The live release is removed altogether: rollback to the newest kept one.
    docker(&["rm", "-f", &env.app.release(1)]);
    let out = env.handoff.status(&env.app.name).await;
    assert_eq!(out.code, 5, "{out}");
    let out = env.handoff.rollback(&env.app.name, &[]).await;
    assert_eq!(out.code, 0, "rollback from a removed live release: {out}");
    assert_eq!(
        out.json()["container"],
        env.app.release(2).as_str(),
        "{out}"
    );
    assert_eq!(env.body("/").await, "v2");
    env.deploy_ok(&env.images.v1, &[]).await;
    assert_eq!(env.body("/").await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case4_deployer_killed_during_drain_next_deploy_waits_for_the_draining_release() {
    let Some(env) = stage("killdrain").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let slow = {
        let addr = env.proxy.http;
        tokio::spawn(async move { request::get(addr, "/slow?ms=10000").await })
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
        .deploy_env(
            &env.app.name,
            &env.images.v2,
            &["--drain-timeout", "60s"],
            &[("HANDOFF_TEST_ABORT_AT", "during-drain")],
        )
        .await;
    assert!(out.stderr.contains("aborting here"), "{out}");
    assert_ne!(out.code, 0, "{out}");
    let s = client.status().await.unwrap();
    assert_eq!(s.draining.len(), 1, "{s:?}");
    assert!(!slow.is_finished());

    // Status names the truth: release 2 is live.
    let st = env.handoff.status(&env.app.name).await;
    assert_eq!(st.code, 0, "{st}");
    assert_eq!(st.json()["live"]["container"], env.app.release(2).as_str());

    // The next deploy must not cut release 1's request.
    env.deploy_ok(&env.images.v1, &["--drain-timeout", "60s"])
        .await;
    let reply = slow.await.unwrap();
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_str()),
        (200, "v1"),
        "the draining release was stopped under its request"
    );
    assert_eq!(container_state(&env.app.release(1)).unwrap().0, "exited");
    assert_eq!(container_state(&env.app.release(2)).unwrap().0, "exited");
    assert_eq!(container_state(&env.app.release(3)).unwrap().0, "running");
    assert_eq!(env.body("/").await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case3_proxy_killed_during_the_drain_and_restarted_the_deploy_acts_on_its_status() {
    let Some(mut env) = stage("proxydrain").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let v1 = env.backend().await;
    // In flight when the proxy dies, so it fails then: not asserted.
    let mut conn = request::Conn::open(env.proxy.http).await;
    let _slow = tokio::spawn(async move { conn.get("/slow?ms=30000").await.is_ok() });
    let client = env.proxy.client();
    wait_for(
        "a slow request in flight",
        Duration::from_secs(30),
        async || client.status().await.unwrap().in_flight >= 1,
    )
    .await;
    let handoff = env.handoff.clone();
    let (app, v2) = (env.app.name.clone(), env.images.v2.clone());
    let deploy =
        tokio::spawn(async move { handoff.deploy(&app, &v2, &["--drain-timeout", "60s"]).await });
    wait_for("the switch to v2", Duration::from_secs(60), async || {
        client
            .status()
            .await
            .is_ok_and(|s| s.backend != v1 && !s.draining.is_empty())
    })
    .await;
    env.proxy.kill9();
    let dir = env.proxy.dir.clone();
    let restarted = Proxy::start_in(&dir, &[]).await;
    // Keep the old one (it owns the temp dir) until the end of the test.
    let _old = std::mem::replace(&mut env.proxy, restarted);

    let out = deploy.await.unwrap();
    assert_eq!(out.code, 0, "{out}");
    let json = out.json();
    assert!(json["drain"]["drained"].is_null(), "{out}");
    assert!(out.stderr.contains("the drain result was lost"), "{out}");
    assert_eq!(json["container"], env.app.release(2).as_str(), "{out}");
    assert_eq!(container_state(&env.app.release(2)).unwrap().0, "running");
    assert_eq!(env.body("/").await, "v2");
    let st = env.handoff.status(&env.app.name).await;
    assert_eq!(st.code, 0, "{st}");
    assert_eq!(st.json()["live"]["container"], env.app.release(2).as_str());
    let out = env.handoff.rollback(&env.app.name, &[]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(env.body("/").await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployer_killed_at_each_step_leaves_a_serving_site_and_the_next_deploy_works() {
    let Some(env) = stage("killsteps").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    for step in [
        "after-start",
        "after-first-health",
        "after-switch",
        "during-stop",
    ] {
        let out = env
            .handoff
            .deploy_env(
                &env.app.name,
                &env.images.v2,
                &[],
                &[("HANDOFF_TEST_ABORT_AT", step)],
            )
            .await;
        assert!(out.stderr.contains("aborting here"), "{step}: {out}");
        let reply = request::get(env.proxy.http, "/").await;
        assert_eq!(
            reply.status, 200,
            "{step}: the site does not serve: {}",
            reply.body
        );
        let st = env.handoff.status(&env.app.name).await;
        assert_eq!(st.code, 0, "{step}: {st}");
        let live = st.json()["live"]["container"].clone();
        assert!(
            live.is_string(),
            "{step}: status names no live release: {st}"
        );
        // The next deploy works with no manual cleanup.
        let json = env.deploy_ok(&env.images.v1, &[]).await;
        assert_eq!(env.body("/").await, "v1", "{step}: {json}");
        eprintln!(
            "killed {step}: live was {live} (serving {}), the next deploy made {}",
            reply.body, json["container"]
        );
    }
    // Only the live release runs; kept: --keep (3) good stopped releases
    // plus the newest unproven one (killed before it was stable).
    let running = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=handoff.app={}", env.app.name),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&running.stdout).lines().count(), 1);
    assert_eq!(env.app.containers().len(), 5, "{:?}", env.app.containers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_killed_during_the_health_wait_and_restarted_the_deploy_switches_after_all() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let Some(mut env) = stage("proxyhealth").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let mut cmd = env
        .handoff
        .command(&deploy_args(&env.app.name, &env.images.v2, &[]));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The health wait has begun: the proxy dies.
    let next = async |lines: &mut tokio::io::Lines<_>, seen: &mut Vec<String>, what: &str| {
        tokio::time::timeout(Duration::from_secs(90), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let found = line.contains(what);
                seen.push(line);
                if found {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false)
    };
    assert!(
        next(&mut lines, &mut seen, "to become healthy").await,
        "{seen:#?}"
    );
    env.proxy.kill9();
    // The deployer finds the proxy gone when it switches, and asks again.
    assert!(
        next(&mut lines, &mut seen, "asking the proxy what it routes to").await,
        "{seen:#?}"
    );
    let dir = env.proxy.dir.clone();
    let restarted = Proxy::start_in(&dir, &[]).await;
    let _old = std::mem::replace(&mut env.proxy, restarted);
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line);
    }
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0), "{seen:#?}");
    assert!(
        seen.iter().any(|l| l.contains("asking the proxy again")),
        "{seen:#?}"
    );
    assert_eq!(env.body("/").await, "v2");
    let st = env.handoff.status(&env.app.name).await;
    assert_eq!(st.code, 0, "{st}");
    assert_eq!(st.json()["live"]["container"], env.app.release(2).as_str());
}
