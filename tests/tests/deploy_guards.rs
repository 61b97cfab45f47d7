//! End-to-end guard rails of `handoff` on the real Docker engine: the
//! per-app lock, an unreachable engine, secrets in env, a separate health
//! port, pinned and taken host ports, blue/green containers of earlier
//! versions migrated to releases (failures: deploy_failures.rs).
//!
//! Without a Docker engine these tests return early with a loud message,
//! except under CI=true, where they fail (except the usage test, which
//! needs no engine).

use handoff_tests::docker::{assert_failed, container_state, stage};
use handoff_tests::request::{self, wait_for};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploy_is_refused_naming_the_holder_or_waits() {
    let Some(env) = stage("lock").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let lock_file = env
        .handoff
        .state_dir
        .join("locks")
        .join(format!("{}.lock", env.app.name));
    // The first deploy holds the lock for its whole health wait (~3 s).
    let first = {
        let (h, name, img) = (
            env.handoff.clone(),
            env.app.name.clone(),
            env.images.v3_unhealthy.clone(),
        );
        tokio::spawn(async move { h.deploy(&name, &img, &["--deploy-timeout", "3s"]).await })
    };
    let mut holder = String::new();
    wait_for(
        "the first deploy to take the lock",
        Duration::from_secs(30),
        async || {
            holder = std::fs::read_to_string(&lock_file).unwrap_or_default();
            holder.contains(&format!("deploy {}", env.images.v3_unhealthy))
        },
    )
    .await;
    let second = env.handoff.deploy(&env.app.name, &env.images.v2, &[]).await;
    assert_failed(&second, 1);
    assert!(
        second.stderr.contains("another deploy") && second.stderr.contains(holder.trim()),
        "{second}"
    );
    assert!(
        !first.is_finished(),
        "the refusal waited for the first deploy instead of failing at once"
    );
    let waiting = env
        .handoff
        .deploy(&env.app.name, &env.images.v2, &["--wait-lock"])
        .await;
    let first = first.await.unwrap();
    assert_eq!(first.code, 2, "{first}");
    assert_eq!(waiting.code, 0, "{waiting}");
    assert!(waiting.stderr.contains("waiting for the lock"), "{waiting}");
    assert_eq!(env.body("/").await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_engine_exits_3_and_leaves_the_proxy_untouched() {
    let Some(env) = stage("noengine").await else {
        return;
    };
    env.deploy_ok(&env.images.v1, &[]).await;
    let before = env.proxy.client().status().await.unwrap();
    for host in ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:9"] {
        let out = env
            .handoff
            .deploy(&env.app.name, &env.images.v2, &["--docker-host", host])
            .await;
        assert_failed(&out, 3);
        assert!(
            out.stderr
                .contains(&format!("cannot reach the Docker engine at {host}")),
            "{out}"
        );
        let out = env
            .handoff
            .run_env(
                &["deploy", "--name", &env.app.name, "--image", &env.images.v2],
                &[("DOCKER_HOST", host)],
            )
            .await;
        assert_eq!(out.code, 3, "DOCKER_HOST={host}: {out}");
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
async fn secrets_passed_by_env_reach_the_container_and_are_never_printed() {
    let Some(env) = stage("secret").await else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (flag, host, file) = (
        format!("flag-s3cr3t-{nanos}"),
        format!("host-s3cr3t-{nanos}"),
        format!("file-s3cr3t-{nanos}"),
    );
    let env_file = env.proxy.dir.join("app.env");
    std::fs::write(&env_file, format!("# app secrets\nFILE_SECRET={file}\n")).unwrap();
    let flag_arg = format!("API_TOKEN={flag}");
    let env_path = env_file.to_str().unwrap();
    let mut outputs = Vec::new();
    let deploy = async |image: &str| {
        let args = [
            "deploy",
            "--json",
            "--init",
            "--pull",
            "never",
            "--health-interval",
            "200ms",
            "--deploy-timeout",
            "3s",
            "--name",
            &env.app.name,
            "--image",
            image,
            "-e",
            &flag_arg,
            "-e",
            "HOST_SECRET",
            "--env-file",
            env_path,
        ];
        // Even with handoff's most verbose logging.
        env.handoff
            .run_env(&args, &[("HOST_SECRET", &host), ("HANDOFF_LOG", "trace")])
            .await
    };
    let ok = deploy(&env.images.v1).await;
    assert_eq!(ok.code, 0, "{ok}");
    assert_eq!(env.body("/env/API_TOKEN").await, flag);
    assert_eq!(env.body("/env/HOST_SECRET").await, host);
    assert_eq!(env.body("/env/FILE_SECRET").await, file);
    // A failed deploy prints logs and errors: still no values.
    let failed = deploy(&env.images.v3_unhealthy).await;
    assert_eq!(failed.code, 2, "{failed}");
    outputs.push(ok.all_output());
    outputs.push(failed.all_output());
    outputs.push(
        env.handoff
            .run(&["status", "--json", "--name", &env.app.name])
            .await
            .all_output(),
    );
    let bad = env
        .handoff
        .deploy(
            &env.app.name,
            &env.images.v2,
            &["-e", &format!("BAD KEY={flag}")],
        )
        .await;
    assert_eq!(bad.code, 1, "{bad}");
    assert!(bad.stderr.contains("invalid variable name"), "{bad}");
    outputs.push(bad.all_output());
    for text in &outputs {
        for secret in [&flag, &host, &file] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret value was printed:\n{text}"
            );
        }
    }
    assert!(
        outputs[0].contains("API_TOKEN=***"),
        "env keys are listed, values masked: {}",
        outputs[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_health_port_and_lowercase_up_are_understood() {
    let Some(env) = stage("mgmt").await else {
        return;
    };
    // The app port answers /health with 404 here, so success proves the
    // management port was checked; "up" proves the case-insensitive compare.
    let json = env
        .deploy_ok(
            &env.images.v1,
            &[
                "--health-port",
                "9090",
                "-e",
                "HEALTH_PORT=9090",
                "-e",
                "HEALTH_STATUS=up",
            ],
        )
        .await;
    assert_eq!(json["ok"], true);
    assert_eq!(env.body("/").await, "v1");
    let reply = request::get(env.proxy.http, "/health").await;
    assert_eq!(
        reply.status, 404,
        "health should live on the management port only"
    );
    // Health says "DOWN" with 200 on the management port: not healthy.
    let out = env
        .handoff
        .deploy(
            &env.app.name,
            &env.images.v2,
            &[
                "--health-port",
                "9090",
                "-e",
                "HEALTH_PORT=9090",
                "-e",
                "HEALTH_STATUS=DOWN",
                "--deploy-timeout",
                "2s",
            ],
        )
        .await;
    assert_failed(&out, 2);
    assert_eq!(env.body("/").await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_host_ports_and_a_taken_port_is_a_docker_error() {
    let Some(env) = stage("ports").await else {
        return;
    };
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (blue, green) = (free(), free());
    let pins = format!("{blue},{green}");
    let json = env
        .deploy_ok(&env.images.v1, &["--host-ports", &pins])
        .await;
    assert_eq!(json["backend"], format!("127.0.0.1:{blue}"));
    // Someone else holds the other port: the deploy fails before anything changes.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", green)).unwrap();
    let out = env
        .handoff
        .deploy(&env.app.name, &env.images.v2, &["--host-ports", &pins])
        .await;
    assert_failed(&out, 3);
    assert_eq!(
        env.app.containers(),
        vec![env.app.release(1)],
        "the container that could not start was left behind"
    );
    assert_eq!(env.body("/").await, "v1");
    drop(squatter);
    let json = env
        .deploy_ok(&env.images.v2, &["--host-ports", &pins])
        .await;
    assert_eq!(json["backend"], format!("127.0.0.1:{green}"));
    assert_eq!(env.body("/").await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_containers_of_earlier_versions_become_releases() {
    let Some(env) = stage("migrate").await else {
        return;
    };
    // What the blue/green handoff left: blue stopped and kept, green live.
    let app = &env.app.name;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let make = |slot: &str, image: &str, port: u16| {
        let out = std::process::Command::new("docker")
            .args(["run", "-d", "--init", "--restart", "unless-stopped"])
            .args(["--name", &format!("{app}-{slot}")])
            .args(["--label", &format!("handoff.app={app}")])
            .args(["--label", &format!("handoff.slot={slot}")])
            .args(["--label", &format!("handoff.image={image}")])
            .args(["--label", "handoff.container-port=8080"])
            .args(["--label", "handoff.health-path=/health"])
            .args(["-p", &format!("127.0.0.1:{port}:8080"), image])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let (blue_port, green_port) = (free(), free());
    make("blue", &env.images.v1, blue_port);
    make("green", &env.images.v2, green_port);
    let green = format!("127.0.0.1:{green_port}");
    wait_for("green to answer", Duration::from_secs(30), async || {
        std::net::TcpStream::connect(&green).is_ok()
    })
    .await;
    let out = std::process::Command::new("docker")
        .args(["stop", "-t", "1", &format!("{app}-blue")])
        .output()
        .unwrap();
    assert!(out.status.success());
    env.proxy
        .client()
        .set_backend(&handoff_shared::SetBackend {
            addr: green.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(env.body("/").await, "v2");

    // The next deploy renames them (blue, not live, first) and goes on.
    let json = env.deploy_ok(&env.images.v1, &[]).await;
    assert_eq!(json["release"], 3, "{json}");
    assert_eq!(
        json["previous"]["container"],
        env.app.release(2).as_str(),
        "{json}"
    );
    assert_eq!(env.body("/").await, "v1");
    assert_eq!(
        env.app.containers(),
        vec![env.app.release(1), env.app.release(2), env.app.release(3)]
    );
    assert_eq!(container_state(&env.app.release(2)).unwrap().0, "exited");
    // The old green (v2) is the rollback target.
    let out = env.handoff.rollback(app, &[]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.json()["container"],
        env.app.release(2).as_str(),
        "{out}"
    );
    assert_eq!(env.body("/").await, "v2");
}
