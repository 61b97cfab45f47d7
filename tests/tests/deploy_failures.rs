//! End-to-end failures of `handoff` on the real Docker engine: a failed
//! pull, a container kept with --keep-failed, a proxy that is down or serves
//! another app, SIGTERM before the switch, and bad usage. Each must leave the
//! proxy and the live container as they were.
//!
//! Without a Docker engine these tests return early with a loud message,
//! except under CI=true, where they fail (except the usage test, which
//! needs no engine).

use handoff_tests::docker::{assert_failed, container_state, stage, App, Handoff};
use handoff_tests::request;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_failure_is_exit_3_and_changes_nothing() {
    let Some(env) = stage("pull").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let before = env.proxy.client().status().await.unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    // A registry on a closed loopback port: the pull fails at once.
    let unpullable = format!("127.0.0.1:9/handoff-testapp:v{nanos}");
    let never_built = format!("handoff-testapp:never-built-{nanos}");
    for (image, pull, expect) in [
        (unpullable.as_str(), "always", "failed to pull"),
        (unpullable.as_str(), "missing", "failed to pull"),
        (never_built.as_str(), "never", "--pull never"),
    ] {
        let out = env
            .handoff
            .run(&[
                "deploy",
                "--json",
                "--name",
                &env.app.name,
                "--image",
                image,
                "--pull",
                pull,
            ])
            .await;
        assert_failed(&out, 3);
        assert!(out.stderr.contains(expect), "--pull {pull}: {out}");
    }
    let after = env.proxy.client().status().await.unwrap();
    assert_eq!(
        (after.backend, after.generation),
        (before.backend, before.generation)
    );
    assert_eq!(env.app.containers(), vec![env.app.release(1)]);
    assert_eq!(env.body("/").await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_failed_keeps_the_failed_container_stopped() {
    let Some(env) = stage("keep").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let out = env
        .handoff
        .deploy(&env.app.name, &env.images.v4_crash, &["--keep-failed"])
        .await;
    assert_failed(&out, 2);
    // Kept for a post-mortem, but stopped: not restarting in a loop.
    let (status, _, _) = container_state(&env.app.failed(2)).expect("kept");
    assert_eq!(status, "exited", "{out}");
    assert_eq!(env.body("/").await, "v1");
    // The next deploy replaces it.
    env.deploy_ok(&env.images.v2, &[]).await;
    assert_eq!(env.body("/").await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_down_exits_4_and_changes_nothing() {
    let Some(mut env) = stage("noproxy").await else {
        return;
    };
    let json = env.deploy_ok(&env.images.v1, &[]).await;
    let blue_addr: std::net::SocketAddr = json["backend"].as_str().unwrap().parse().unwrap();
    env.proxy.kill9();
    let out = env.handoff.deploy(&env.app.name, &env.images.v2, &[]).await;
    assert_failed(&out, 4);
    assert!(out.stderr.contains("proxy control"), "{out}");
    let out = env
        .handoff
        .run(&["rollback", "--json", "--name", &env.app.name])
        .await;
    assert_failed(&out, 4);
    assert_eq!(env.app.containers(), vec![env.app.release(1)]);
    assert_eq!(container_state(&env.app.release(1)).unwrap().0, "running");
    // The app itself, on its loopback port, still serves v1.
    assert_eq!(request::get(blue_addr, "/").await.body, "v1");
    // status still shows the releases, and says the proxy is the problem.
    let out = env
        .handoff
        .run(&["status", "--json", "--name", &env.app.name])
        .await;
    assert_eq!(out.code, 4, "{out}");
    let s = out.json();
    assert_eq!(s["releases"][0]["running"], true, "{s}");
    assert!(s["proxy"]["error"].is_string(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_serving_another_app_is_not_taken_over() {
    let Some(env) = stage("owner").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let before = env.proxy.client().status().await.unwrap();
    let intruder = App::new("intruder");
    let out = env
        .handoff
        .deploy(&intruder.name, &env.images.v2, &[])
        .await;
    assert_failed(&out, 1);
    assert!(
        out.stderr.contains(&format!("serves app {}", env.app.name)),
        "{out}"
    );
    let after = env.proxy.client().status().await.unwrap();
    assert_eq!(
        (after.backend, after.generation),
        (before.backend, before.generation)
    );
    assert!(intruder.containers().is_empty());
    assert_eq!(env.body("/").await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_before_the_switch_removes_the_new_container() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let Some(env) = stage("sigterm").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let before = env.proxy.client().status().await.unwrap();
    let mut child = env
        .handoff
        .command(&[
            "deploy",
            "--json",
            "--init",
            "--pull",
            "never",
            "--name",
            &env.app.name,
            "--image",
            &env.images.v3_unhealthy,
            "--deploy-timeout",
            "120s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn handoff");
    // Its first "waiting for ... healthy" line: the new container runs and
    // the health wait (which handles signals) has begun.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let waiting = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            let found = line.contains("to become healthy");
            seen.push(line);
            if found {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(waiting, Ok(true), "no health wait seen: {seen:#?}");
    assert!(container_state(&env.app.release(2)).is_some());
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("handoff did not exit after SIGTERM")
        .unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(143), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(json["error_kind"], "interrupted", "{json}");
    assert_eq!(
        container_state(&env.app.release(2)),
        None,
        "the interrupted deploy left its container"
    );
    let after = env.proxy.client().status().await.unwrap();
    assert_eq!(
        (after.backend, after.generation),
        (before.backend, before.generation)
    );
    assert_eq!(env.body("/").await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_exits_1_naming_the_problem() {
    // Needs neither Docker nor a proxy: validation comes first.
    let dir = handoff_tests::TempDir::new("usage");
    let h = Handoff::new(&dir.path().join("no.sock"), &dir.path().join("state"));
    let cases: &[(&[&str], &str)] = &[
        (&["deploy", "--name", "shop"], "--image"),
        (
            &["deploy", "--name", "../x", "--image", "a:1"],
            "invalid app name",
        ),
        (
            &[
                "deploy",
                "--name",
                "shop",
                "--image",
                "a:1",
                "--health-path",
                "health",
            ],
            "--health-path",
        ),
        (
            &[
                "deploy",
                "--name",
                "shop",
                "--image",
                "a:1",
                "--host-ports",
                "8080",
            ],
            "two ports",
        ),
        (
            &[
                "deploy",
                "--name",
                "shop",
                "--image",
                "a:1",
                "--deploy-timeout",
                "soon",
            ],
            "soon",
        ),
        (
            &[
                "deploy",
                "--name",
                "shop",
                "--image",
                "a:1",
                "--pull",
                "sometimes",
            ],
            "sometimes",
        ),
        (
            &["deploy", "--name", "shop", "--image", "a:1", "--bogus"],
            "--bogus",
        ),
        (
            &[
                "deploy",
                "--name",
                "shop",
                "--image",
                "a:1",
                "--label",
                "handoff.app=x",
            ],
            "reserved",
        ),
        (&["rollback"], "--name"),
        (
            &[
                "deploy",
                "--name",
                "shop",
                "--image",
                "a:1",
                "--env-file",
                "/nonexistent/app.env",
            ],
            "cannot read --env-file /nonexistent/app.env",
        ),
    ];
    for (args, expect) in cases {
        let out = h.run(args).await;
        assert_eq!(out.code, 1, "{args:?}: {out}");
        assert!(
            out.stderr.contains(expect),
            "{args:?} should name {expect:?}: {out}"
        );
    }
    // Issue 13, case 8: an env-file line that is no variable name is likely
    // a secret pasted on the wrong line: an error naming file and line,
    // never echoing the text. A bare valid name still passes through.
    let env_file = dir.path().join("app.env");
    std::fs::write(&env_file, "GOOD=1\nPASSED_THROUGH\nTop$ecret!Pw\n").unwrap();
    let env_file = env_file.to_str().unwrap();
    let out = h
        .run(&[
            "deploy",
            "--json",
            "--name",
            "shop",
            "--image",
            "a:1",
            "--env-file",
            env_file,
        ])
        .await;
    assert_failed(&out, 1);
    assert!(
        out.stderr.contains(&format!("{env_file} line 3")),
        "the file and line are not named: {out}"
    );
    assert!(
        !out.all_output().contains("Top$ecret") && !out.all_output().contains("!Pw"),
        "the secret-looking line was echoed: {out}"
    );
    let help = h.run(&["deploy", "--help"]).await;
    assert_eq!(help.code, 0);
    for flag in [
        "--drain-timeout",
        "HANDOFF_DRAIN_TIMEOUT",
        "[default: 30s]",
        "--wait-lock",
        "--env-file",
        "--health-successes",
        "--healthy-for",
        "--watch",
        "--health-failures",
        "--keep",
        "--fail-on-cut",
    ] {
        assert!(help.stdout.contains(flag), "--help lacks {flag}: {help}");
    }
}
