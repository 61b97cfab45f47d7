//! Issue 13: the pull step against a real registry. Debian's
//! `docker-registry` (distribution 2.8) runs on 127.0.0.1 with htpasswd auth;
//! the test images are pushed to it and deployed with `--pull always`.
//!
//! - credentials from a Docker config (`DOCKER_CONFIG`, as `docker login`
//!   writes it) and from the environment (`HANDOFF_REGISTRY_USER/PASSWORD`);
//! - a wrong password is exit 3 with Docker's message, and no output ever
//!   holds a password;
//! - a missing tag and a registry that is down are exit 3 and change nothing;
//! - the pulled digest is recorded on the release (`releases`, `rollback --to`).
//!
//! Needs Docker and the `docker-registry` and `htpasswd` (apache2-utils)
//! commands; `.ci/run` installs both. Without Docker the test returns early
//! with a loud message, except under CI=true, where it fails.

use handoff_tests::docker::{assert_failed, stage, Outcome, Stage};
use handoff_tests::registry::Registry;

async fn pull(env: &Stage, image: &str, env_vars: &[(&str, &str)]) -> Outcome {
    env.handoff
        .deploy_env(&env.app.name, image, &["--pull", "always"], env_vars)
        .await
}

fn no_secret(out: &Outcome, reg: &Registry) {
    assert!(
        !out.all_output().contains(&reg.password),
        "the registry password was printed: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_registry_with_auth_and_records_the_digest() {
    let Some(env) = stage("registry").await else {
        return;
    };
    let mut reg = Registry::start();
    let repo = format!("handoff-testapp-{}", env.app.name);
    let v1 = reg.push(&env.images.v1, &format!("{repo}:v1"));
    let v2 = reg.push(&env.images.v2, &format!("{repo}:v2"));
    let config = reg.docker_config.to_str().unwrap().to_string();
    let empty = handoff_tests::TempDir::new("no-docker-config");
    let empty = empty.path().to_str().unwrap().to_string();

    // Credentials from the Docker config that `docker login` wrote.
    let out = pull(&env, &v1, &[("DOCKER_CONFIG", &config)]).await;
    assert_eq!(out.code, 0, "{out}");
    no_secret(&out, &reg);
    let digest_v1 = out.json()["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        digest_v1.starts_with(&format!("{}/{repo}@sha256:", reg.host)),
        "no pulled digest recorded: {out}"
    );
    assert_eq!(env.body("/").await, "v1");

    // Credentials from the environment, with no Docker config at all.
    let user = reg.user.clone();
    let password = reg.password.clone();
    let from_env = [
        ("DOCKER_CONFIG", empty.as_str()),
        ("HANDOFF_REGISTRY_USER", user.as_str()),
        ("HANDOFF_REGISTRY_PASSWORD", password.as_str()),
    ];
    let out = pull(&env, &v2, &from_env).await;
    assert_eq!(out.code, 0, "{out}");
    no_secret(&out, &reg);
    assert_eq!(env.body("/").await, "v2");
    let before = env.proxy.client().status().await.unwrap();
    let containers = env.app.containers();

    // A wrong password: exit 3 with Docker's own message, no secret shown.
    let wrong = format!("{}-wrong", reg.password);
    let bad_env = [
        ("DOCKER_CONFIG", empty.as_str()),
        ("HANDOFF_REGISTRY_USER", user.as_str()),
        ("HANDOFF_REGISTRY_PASSWORD", wrong.as_str()),
    ];
    let out = pull(&env, &v1, &bad_env).await;
    assert_failed(&out, 3);
    assert!(
        out.stderr.contains("failed to pull") && out.stderr.to_lowercase().contains("unauthorized")
            || out.stderr.contains("authentication required")
            || out.stderr.contains("no basic auth credentials"),
        "not Docker's auth message: {out}"
    );
    assert!(
        !out.all_output().contains(&wrong),
        "the wrong password was printed: {out}"
    );
    no_secret(&out, &reg);

    // A tag that is not there: exit 3, nothing changes.
    let missing = format!("{}/{repo}:never-pushed", reg.host);
    let out = pull(&env, &missing, &[("DOCKER_CONFIG", &config)]).await;
    assert_failed(&out, 3);
    assert!(out.stderr.contains("failed to pull"), "{out}");

    // Releases name the exact images; rollback --to a digest.
    let list = env
        .handoff
        .run(&["releases", "--json", "--name", &env.app.name])
        .await;
    assert_eq!(list.code, 0, "{list}");
    let releases = list.json()["releases"].clone();
    assert_eq!(releases[1]["digest"], digest_v1.as_str(), "{list}");
    assert!(
        releases[0]["digest"]
            .as_str()
            .is_some_and(|d| d.contains("@sha256:")),
        "{list}"
    );

    // The registry goes down: exit 3, nothing changes.
    reg.stop();
    let out = pull(&env, &v1, &[("DOCKER_CONFIG", &config)]).await;
    assert_failed(&out, 3);
    let after = env.proxy.client().status().await.unwrap();
    assert_eq!(
        (after.backend, after.generation),
        (before.backend, before.generation)
    );
    assert_eq!(env.app.containers(), containers);
    assert_eq!(env.body("/").await, "v2");

    let sha = digest_v1.split('@').nth(1).unwrap();
    let out = env.handoff.rollback(&env.app.name, &["--to", sha]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.json()["digest"], digest_v1.as_str(), "{out}");
    assert_eq!(env.body("/").await, "v1");
}
