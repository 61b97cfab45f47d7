//! End-to-end: one `handoff-proxy`, many apps (issue 14), driven by the
//! real `handoff` binary on the real Docker engine. Each app has its own
//! host (or a path prefix of a host), its own releases, switch and drain:
//! three apps switch v1 -> v2 at the same time under load with no failed
//! request, a host-routed app keeps its routes across a deploy without
//! `--host` and a rollback, a conflicting route fails the deploy and
//! changes nothing, and `handoff remove` drains one app and takes it away
//! while the others keep serving.
//!
//! Without a Docker engine these tests return early with a loud message,
//! except under CI=true, where they fail.

use handoff_tests::docker::{assert_failed, docker_available, images, App, Handoff, Outcome};
use handoff_tests::load;
use handoff_tests::proxy::Proxy;
use handoff_tests::request;
use std::time::Duration;

struct World {
    proxy: Proxy,
    handoff: Handoff,
}

async fn world() -> Option<World> {
    if !docker_available() {
        return None;
    }
    images();
    let proxy = Proxy::start(&[]).await;
    let handoff = Handoff::new(&proxy.control, &proxy.dir.join("handoff-state"));
    Some(World { proxy, handoff })
}

/// Each app's own host name, so tests in parallel never share a route.
fn host(app: &App) -> String {
    format!("{}.test", app.name)
}

fn ok(out: &Outcome) -> serde_json::Value {
    assert_eq!(out.code, 0, "{out}");
    out.json()
}

impl World {
    async fn body(&self, host: &str, path: &str) -> String {
        let reply = request::get_host(self.proxy.http, host, path).await;
        assert_eq!(reply.status, 200, "GET {host}{path}: {}", reply.body);
        reply.body
    }

    async fn list(&self) -> Vec<serde_json::Value> {
        let out = self.handoff.run(&["list", "--json"]).await;
        ok(&out)["apps"].as_array().expect("apps").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_apps_switch_at_the_same_time_under_load_with_no_failed_request() {
    let Some(w) = world().await else {
        return;
    };
    let imgs = images();
    let (a, b, c) = (App::new("apps-a"), App::new("apps-b"), App::new("apps-c"));
    let (ha, hb, hc) = (host(&a), host(&b), host(&c));
    let flags_a = ["--host", ha.as_str()];
    let flags_b = ["--host", hb.as_str()];
    // C is a path prefix of a third host, stripped before it reaches the app.
    let flags_c = [
        "--host",
        hc.as_str(),
        "--path-prefix",
        "/api",
        "--strip-prefix",
    ];

    // v1 of the three at once: three locks, three apps, one proxy.
    let (oa, ob, oc) = tokio::join!(
        w.handoff.deploy(&a.name, &imgs.v1, &flags_a),
        w.handoff.deploy(&b.name, &imgs.v1, &flags_b),
        w.handoff.deploy(&c.name, &imgs.v1, &flags_c),
    );
    for (out, app) in [(&oa, &a), (&ob, &b), (&oc, &c)] {
        let json = ok(out);
        assert_eq!(json["container"], app.release(1).as_str(), "{out}");
    }
    assert_eq!(w.body(&ha, "/").await, "v1");
    assert_eq!(w.body(&hb, "/").await, "v1");
    assert_eq!(w.body(&hc, "/api").await, "v1");
    // The prefix is C's only route on its host.
    let outside = request::get_host(w.proxy.http, &hc, "/").await;
    assert_eq!(outside.status, 404, "{}", outside.body);

    // A long request on B that B's own switch must let finish on v1.
    let slow_b = {
        let (addr, hb) = (w.proxy.http, hb.clone());
        tokio::spawn(async move { request::get_host(addr, &hb, "/slow?ms=6000").await })
    };
    let client = w.proxy.client();
    let b_name = b.name.clone();
    request::wait_for(
        "B's slow request in flight",
        Duration::from_secs(30),
        async || client.app(&b_name).await.unwrap().in_flight >= 1,
    )
    .await;
    let max = Duration::from_secs(150);
    let load_a = load::start_for_host(w.proxy.http, &ha, "/", 6, max);
    let load_b = load::start_for_host(w.proxy.http, &hb, "/", 6, max);
    let load_c = load::start_for_host(w.proxy.http, &hc, "/api", 6, max);

    // v2 of the three at once. C's deploy names no route: the proxy has
    // C's routes, and they are kept.
    let drain = ["--drain-timeout", "60s"];
    let fa: Vec<&str> = flags_a.iter().chain(&drain).copied().collect();
    let fb: Vec<&str> = flags_b.iter().chain(&drain).copied().collect();
    let (oa, ob, oc) = tokio::join!(
        w.handoff.deploy(&a.name, &imgs.v2, &fa),
        w.handoff.deploy(&b.name, &imgs.v2, &fb),
        w.handoff.deploy(&c.name, &imgs.v2, &drain),
    );
    let backends: Vec<String> = [(&oa, &a), (&ob, &b), (&oc, &c)]
        .into_iter()
        .map(|(out, app)| {
            let json = ok(out);
            assert_eq!(json["container"], app.release(2).as_str(), "{out}");
            assert_eq!(json["previous"]["container"], app.release(1).as_str());
            json["backend"].as_str().expect("backend").to_string()
        })
        .collect();
    assert_eq!(w.body(&ha, "/").await, "v2");
    assert_eq!(w.body(&hb, "/").await, "v2");
    assert_eq!(w.body(&hc, "/api").await, "v2");
    let slow = slow_b.await.unwrap();
    assert_eq!((slow.status.as_u16(), slow.body.as_str()), (200, "v1"));

    for (name, l) in [("A", load_a), ("B", load_b), ("C", load_c)] {
        let r = l.finish().await;
        println!(
            "app {name}: {} ok, {} failed, {:?}",
            r.ok, r.failed, r.by_body
        );
        assert_eq!(r.failed, 0, "app {name}: {:?}", r.errors);
        assert!(
            r.by_body.get("v1").is_some_and(|n| *n > 0)
                && r.by_body.get("v2").is_some_and(|n| *n > 0),
            "app {name}'s load saw no switch: {:?}",
            r.by_body
        );
        assert_eq!(
            r.by_body.len(),
            2,
            "app {name} got another app's answers: {:?}",
            r.by_body
        );
    }

    // `list` shows every app with its routes and the backend its deploy reported.
    let apps = w.list().await;
    for (app, hostname, backend) in [
        (&a, &ha, &backends[0]),
        (&b, &hb, &backends[1]),
        (&c, &hc, &backends[2]),
    ] {
        let row = apps
            .iter()
            .find(|r| r["name"] == app.name.as_str())
            .unwrap_or_else(|| panic!("{} not listed: {apps:?}", app.name));
        assert_eq!(row["hosts"], serde_json::json!([hostname]), "{row}");
        assert_eq!(row["backend"], backend.as_str(), "{row}");
        assert_eq!(
            row["release"]["container"],
            app.release(2).as_str(),
            "{row}"
        );
    }
    let c_row = apps.iter().find(|r| r["name"] == c.name.as_str()).unwrap();
    assert_eq!(
        c_row["path_prefixes"],
        serde_json::json!(["/api"]),
        "{c_row}"
    );
    assert_eq!(c_row["strip_prefix"], true, "{c_row}");

    // status --name for a host-routed app: its own backend, its routes.
    let st = ok(&w.handoff.status(&c.name).await);
    assert_eq!(st["serving"], true, "{st}");
    assert_eq!(st["live"]["container"], c.release(2).as_str(), "{st}");
    assert_eq!(
        st["routes"]["path_prefixes"],
        serde_json::json!(["/api"]),
        "{st}"
    );
    // Without --name, status is the listing.
    let all = ok(&w.handoff.run(&["status", "--json"]).await);
    assert_eq!(
        all["apps"].as_array().map(Vec::len),
        Some(apps.len()),
        "{all}"
    );

    // Rollback of a host-routed app: only its backend moves, its routes stay.
    let rb = ok(&w.handoff.rollback(&c.name, &[]).await);
    assert_eq!(rb["container"], c.release(1).as_str(), "{rb}");
    assert_eq!(w.body(&hc, "/api").await, "v1");
    assert_eq!(w.body(&ha, "/").await, "v2");
    let after = w.proxy.client().app(&c.name).await.unwrap();
    assert_eq!(
        (after.hosts, after.path_prefixes, after.strip_prefix),
        (vec![hc.clone()], vec!["/api".to_string()], true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_route_fails_the_deploy_with_exit_4_and_changes_nothing() {
    let Some(w) = world().await else {
        return;
    };
    let imgs = images();
    let (owner, late) = (App::new("owner"), App::new("late"));
    let h = host(&owner);
    ok(&w
        .handoff
        .deploy(&owner.name, &imgs.v1, &["--host", &h])
        .await);
    let before = w.proxy.client().apps().await.unwrap();
    let out = w
        .handoff
        .deploy(&late.name, &imgs.v2, &["--host", &h])
        .await;
    assert_failed(&out, 4);
    assert_eq!(out.json()["error_kind"], "route_conflict", "{out}");
    assert!(
        out.stdout.contains(&owner.name),
        "the error names the app that claims the host: {out}"
    );
    assert!(out.all_output().contains("Fix:"), "{out}");
    // A refusal is an answer, not a lost one: not re-read, not asked again.
    assert!(
        !out.stderr.contains("asking the proxy"),
        "a 409 was treated as a lost answer: {out}"
    );
    // The new release was health-checked, refused by the proxy, removed.
    assert!(late.containers().is_empty(), "{:?}", late.containers());
    assert!(
        out.stderr.contains("to become healthy"),
        "the route is registered only after the readiness rule: {out}"
    );
    assert_eq!(w.proxy.client().apps().await.unwrap(), before);
    assert_eq!(w.body(&h, "/").await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_drains_one_app_and_takes_it_away_while_the_others_keep_serving() {
    let Some(w) = world().await else {
        return;
    };
    let imgs = images();
    let (gone, stays) = (App::new("gone"), App::new("stays"));
    let (hg, hs) = (host(&gone), host(&stays));
    ok(&w
        .handoff
        .deploy(&gone.name, &imgs.v1, &["--host", &hg])
        .await);
    ok(&w
        .handoff
        .deploy(&gone.name, &imgs.v2, &["--host", &hg])
        .await);
    ok(&w
        .handoff
        .deploy(&stays.name, &imgs.v1, &["--host", &hs])
        .await);
    assert_eq!(gone.containers().len(), 2, "v2 live, v1 kept");

    let load = load::start_for_host(w.proxy.http, &hs, "/", 6, Duration::from_secs(120));
    // A request the removal must let finish before the container stops.
    let slow = {
        let (addr, hg) = (w.proxy.http, hg.clone());
        tokio::spawn(async move { request::get_host(addr, &hg, "/slow?ms=3000").await })
    };
    let client = w.proxy.client();
    let gone_name = gone.name.clone();
    request::wait_for(
        "the slow request in flight",
        Duration::from_secs(30),
        async || client.app(&gone_name).await.unwrap().in_flight >= 1,
    )
    .await;
    let out = w
        .handoff
        .run(&["remove", "--json", "--name", &gone.name])
        .await;
    let json = ok(&out);
    assert_eq!(json["proxy_app"], gone.name.as_str(), "{out}");
    assert_eq!(json["drain"]["drained"], true, "{out}");
    assert_eq!(json["cut"], 0, "{out}");
    assert_eq!(json["removed"].as_array().map(Vec::len), Some(2), "{out}");
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status.as_u16(), slow.body.as_str()),
        (200, "v2"),
        "drained before the stop"
    );
    assert!(gone.containers().is_empty(), "{:?}", gone.containers());
    let after = request::get_host(w.proxy.http, &hg, "/").await;
    assert_eq!(after.status, 404, "{}", after.body);
    let names: Vec<String> = w
        .list()
        .await
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        !names.contains(&gone.name) && names.contains(&stays.name),
        "{names:?}"
    );

    let r = load.finish().await;
    println!("the app that stays: {} ok, {} failed", r.ok, r.failed);
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert!(r.ok > 0);
    assert_eq!(w.body(&hs, "/").await, "v1");

    // Twice: nothing left to remove, a refusal.
    let again = w
        .handoff
        .run(&["remove", "--json", "--name", &gone.name])
        .await;
    assert_failed(&again, 1);
    assert!(again.stdout.contains("nothing to remove"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_deployed_without_host_is_the_default_app_and_remove_takes_that_app() {
    let Some(w) = world().await else {
        return;
    };
    let imgs = images();
    let app = App::new("dflt");
    ok(&w.handoff.deploy(&app.name, &imgs.v1, &[]).await);
    // PUT /v1/backend made the default app: any host reaches it.
    assert_eq!(w.body("anything.test", "/").await, "v1");
    let default = w.proxy.client().status().await.unwrap();

    // Now given --host: refused, it would stay on the default app too.
    let out = w
        .handoff
        .deploy(&app.name, &imgs.v2, &["--host", &host(&app)])
        .await;
    assert_failed(&out, 1);
    assert!(
        out.stdout.contains("served by the proxy's default app"),
        "{out}"
    );
    assert_eq!(app.containers(), vec![app.release(1)]);
    assert_eq!(w.proxy.client().status().await.unwrap(), default);

    // The proxy app `default` is not a handoff app of that name.
    let foreign = w
        .handoff
        .run(&["remove", "--json", "--name", handoff_shared::DEFAULT_APP])
        .await;
    assert_failed(&foreign, 1);
    assert!(
        foreign
            .stdout
            .contains(&format!("handoff remove --name {}", app.name)),
        "{foreign}"
    );
    assert_eq!(w.body("anything.test", "/").await, "v1");

    // Removing the app removes the default app that serves it.
    let out = w
        .handoff
        .run(&["remove", "--json", "--name", &app.name])
        .await;
    let json = ok(&out);
    assert_eq!(json["proxy_app"], handoff_shared::DEFAULT_APP, "{out}");
    assert!(app.containers().is_empty(), "{:?}", app.containers());
    // No app is left: the proxy answers itself (503 while it has no app at all).
    let after = request::get_host(w.proxy.http, "anything.test", "/").await;
    assert_eq!(after.status, 503, "{}", after.body);
}
