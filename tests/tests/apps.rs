//! Issue 14: one front door for many apps. Real proxy, real backends on
//! 127.0.0.1: routing by Host and path (raw bytes, every Host variant and
//! traversal trick), each app's own switch and drain under load, conflicts,
//! removal, and a state file that brings every app back.

use handoff_shared::{ControlClient, PutApp, PutAppResponse};
use handoff_tests::backend::Backend;
use handoff_tests::load;
use handoff_tests::proxy::Proxy;
use handoff_tests::request::{self, raw};
use handoff_tests::scripted::{Reply, Scripted};
use handoff_tests::tls::{self, TestCa};
use handoff_tests::TempDir;
use http::{Request, StatusCode};
use http_body_util::Full;
use std::time::Duration;

fn app(hosts: &[&str], prefixes: &[&str], backend: &str) -> PutApp {
    PutApp {
        hosts: Some(hosts.iter().map(|s| s.to_string()).collect()),
        path_prefixes: Some(prefixes.iter().map(|s| s.to_string()).collect()),
        backend: Some(backend.to_string()),
        drain_timeout: Some("5s".into()),
        ..PutApp::default()
    }
}

async fn put(c: &ControlClient, name: &str, req: PutApp) -> PutAppResponse {
    c.put_app(name, &req)
        .await
        .unwrap_or_else(|e| panic!("PUT app {name}: {e}"))
}

/// The body of a raw response (after the head), and its status code.
fn answer(raw: &str) -> (u16, &str) {
    let code = raw.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body)
}

/// A backend that answers with its name and the target it received.
async fn named(name: &'static str) -> Scripted {
    Scripted::start(move |seen| {
        let body = format!("{name} {}", seen.target);
        Reply::Send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_prefixes_reach_their_app_and_no_other() {
    let (site, shop, api, admin) = (
        named("site").await,
        named("shop").await,
        named("api").await,
        named("admin").await,
    );
    let p = Proxy::start(&[]).await;
    let c = p.client();
    let mut default = app(&[], &[], &site.addr());
    default.default = Some(true);
    put(&c, "site", default).await;
    put(
        &c,
        "shop",
        app(&["shop.test", "www.shop.test"], &[], &shop.addr()),
    )
    .await;
    let mut stripped = app(&["c.test"], &["/api"], &api.addr());
    stripped.strip_prefix = Some(true);
    put(&c, "api", stripped).await;
    put(&c, "admin", app(&["c.test"], &["/admin"], &admin.addr())).await;

    // (request line target, Host, expected body: app and the path it got)
    let cases: &[(&str, &str, &str)] = &[
        ("/", "shop.test", "shop /"),
        ("/", "SHOP.Test", "shop /"),
        ("/", "shop.test:8080", "shop /"),
        ("/", "shop.test.", "shop /"),
        ("/x", "www.shop.test", "shop /x"),
        ("http://shop.test/abs", "shop.test", "shop /abs"),
        ("/", "other.test", "site /"),
        ("/", "shop.test.evil", "site /"),
        ("/api", "c.test", "api /"),
        ("/api/v1/x?q=1", "c.test", "api /v1/x?q=1"),
        ("/apix", "c.test", "site /apix"),
        ("/api/../admin/x", "c.test", "admin /api/../admin/x"),
        ("/api/%2e%2e/admin", "c.test", "admin /api/%2e%2e/admin"),
        ("/api/%2E%2E/admin", "c.test", "admin /api/%2E%2E/admin"),
        ("//admin", "c.test", "admin //admin"),
        ("/admin/../api/y", "c.test", "api /y"),
        ("/./admin", "c.test", "admin /./admin"),
        ("/%61dmin", "c.test", "admin /%61dmin"),
        ("/../../admin", "c.test", "admin /../../admin"),
        ("/ADMIN", "c.test", "site /ADMIN"),
        ("/admin/", "c.test", "admin /admin/"),
        ("/adminx/../x", "c.test", "site /adminx/../x"),
    ];
    let mut wrong = Vec::new();
    for (target, host, want) in cases {
        let out = raw(
            p.http,
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let (code, body) = answer(&out);
        if (code, body) != (200, *want) {
            wrong.push(format!(
                "GET {target} Host: {host}: got {code} {body:?}, want {want:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_app_an_unknown_host_is_404_from_the_proxy() {
    let shop = named("shop").await;
    let p = Proxy::start(&[]).await;
    put(
        &p.client(),
        "shop",
        app(&["shop.test"], &["/shop"], &shop.addr()),
    )
    .await;
    for (target, host) in [
        ("/", "nope.test"),
        ("/", "shop.test"),
        ("/shopx", "shop.test"),
    ] {
        let out = raw(
            p.http,
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(answer(&out).0, 404, "{target} {host}: {out}");
    }
    assert_eq!(shop.counts().requests, 0, "a backend was contacted");
    let out = raw(
        p.http,
        b"GET /shop/a HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer(&out), (200, "shop /shop/a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_h2_authority_routes_and_a_host_the_certificate_does_not_cover_is_421() {
    let (shop, api) = (Backend::start("shop").await, Backend::start("api").await);
    let dir = TempDir::new("apps-tls");
    let ca = TestCa::new();
    let (p, _) = tls::start_proxy(
        &dir,
        &ca,
        &shop,
        &[("shop", &["shop.test"]), ("api", &["api.test"])],
        &[],
    )
    .await;
    let c = p.client();
    // The default app `--backend` made stays; two host apps beside it.
    put(&c, "shop", app(&["shop.test"], &[], &shop.addr_string())).await;
    put(&c, "api", app(&["api.test"], &[], &api.addr_string())).await;
    let addr = p.https.expect("https listener");
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let client = ca.client(&[alpn]);
        let reply = tls::get(&client, addr, "shop.test", "/").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "shop")
        );
        let reply = tls::get(&client, addr, "api.test", "/").await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "api"));
        // A connection for shop.test asked for api.test: 421, nothing forwarded.
        let before = api.requests();
        let stream = tls::connect(&client, addr, "shop.test").await.unwrap();
        let req = Request::get("https://api.test/")
            .header("host", "api.test")
            .body(Full::default())
            .unwrap();
        let reply = tls::send(stream, req).await.unwrap();
        assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{alpn:?}");
        assert_eq!(api.requests(), before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_route_is_409_and_delete_drains_then_removes() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let p = Proxy::start(&[]).await;
    let c = p.client();
    put(&c, "a", app(&["x.test"], &["/"], &a.addr_string())).await;
    for (hosts, prefixes) in [(&["x.test"][..], &["/"][..]), (&["X.TEST."][..], &[][..])] {
        let err = c
            .put_app("b", &app(hosts, prefixes, &b.addr_string()))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("409") && err.contains("\"a\""), "{err}");
    }
    let apps = c.apps().await.unwrap().apps;
    assert_eq!(
        apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    // Same host, another prefix: fine.
    put(&c, "b", app(&["x.test"], &["/b"], &b.addr_string())).await;

    // A request held on a while a is deleted: the DELETE answers once it
    // finished, and it finished with 200.
    let http = p.http;
    let held = tokio::spawn(async move {
        request::send(
            http,
            Request::get("/hold")
                .header("host", "x.test")
                .body(Full::default())
                .unwrap(),
        )
        .await
    });
    request::wait_for(
        "the held request at a",
        Duration::from_secs(10),
        async || a.active() == 1,
    )
    .await;
    let delete = tokio::spawn({
        let c = c.clone();
        async move { c.remove_app("a").await }
    });
    request::wait_for(
        "a is no longer routed",
        Duration::from_secs(10),
        async || c.apps().await.unwrap().apps.len() == 1,
    )
    .await;
    assert!(!delete.is_finished(), "DELETE answered before the drain");
    let out = raw(
        http,
        b"GET / HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer(&out).0, 404, "{out}");
    a.open_gate();
    let held = held.await.unwrap();
    assert_eq!((held.status, held.body.as_str()), (StatusCode::OK, "a"));
    let removed = delete.await.unwrap().unwrap();
    assert!(removed.drained, "{removed:?}");
    let err = c.remove_app("a").await.unwrap_err().to_string();
    assert!(err.contains("404"), "{err}");
    let out = raw(
        http,
        b"GET /b HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer(&out), (200, "b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_apps_come_back_after_kill_9_and_a_single_backend_state_file_is_migrated() {
    let (a, b, d) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("d").await,
    );
    let dir = TempDir::new("apps-state");
    let mut p = Proxy::start_in(dir.path(), &[]).await;
    let c = p.client();
    put(&c, "a", app(&["a.test"], &[], &a.addr_string())).await;
    put(&c, "b", app(&["b.test"], &["/b"], &b.addr_string())).await;
    let mut default = app(&[], &[], &d.addr_string());
    default.default = Some(true);
    put(&c, "d", default).await;
    let before = c.apps().await.unwrap();
    p.kill9();
    drop(p);
    let p = Proxy::start_in(dir.path(), &[]).await;
    let after = p.client().apps().await.unwrap();
    let shape = |r: &handoff_shared::AppsResponse| {
        r.apps
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    a.hosts.clone(),
                    a.path_prefixes.clone(),
                    a.default,
                    a.backend.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&after), shape(&before));
    for (host, target, want) in [
        ("a.test", "/", "a"),
        ("b.test", "/b/x", "b"),
        ("z.test", "/", "d"),
    ] {
        let out = raw(
            p.http,
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(answer(&out), (200, want), "{host}{target}");
    }
    drop(p);

    // A state file from before apps: its backend is the default app.
    let old = TempDir::new("apps-v1");
    std::fs::write(
        old.path().join("state.json"),
        format!(r#"{{"backend":"{}"}}"#, a.addr),
    )
    .unwrap();
    let p = Proxy::start_in(old.path(), &[]).await;
    let apps = p.client().apps().await.unwrap().apps;
    assert_eq!(apps.len(), 1);
    assert_eq!((apps[0].name.as_str(), apps[0].default), ("default", true));
    assert_eq!(
        p.client().status().await.unwrap().backend,
        Some(a.addr_string())
    );
    assert_eq!(request::get(p.http, "/").await.body, "a");
}

/// Three apps switched v1 -> v2 at the same time under load: two on their
/// own hosts, one on a path prefix of a third host. No app's clients see an
/// error, and a long request of app B during app A's switch finishes
/// untouched on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_apps_switch_at_once_under_load_without_a_failed_request() {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for n in ["a", "b", "c"] {
        v1.push(Backend::start(&format!("{n}1")).await);
        v2.push(Backend::start(&format!("{n}2")).await);
    }
    let p = Proxy::start(&[]).await;
    let c = p.client();
    let routes: [(&str, &[&str], &[&str], &str); 3] = [
        ("a", &["a.test"], &[], "/"),
        ("b", &["b.test"], &[], "/"),
        ("c", &["c.test"], &["/c"], "/c/x"),
    ];
    for (i, (name, hosts, prefixes, _)) in routes.iter().enumerate() {
        put(&c, name, app(hosts, prefixes, &v1[i].addr_string())).await;
    }
    let loads: Vec<_> = routes
        .iter()
        .map(|(_, hosts, _, path)| {
            load::start_for_host(p.http, hosts[0], path, 8, Duration::from_secs(60))
        })
        .collect();
    // A long request of app b, in flight through a's switch.
    let http = p.http;
    let long = tokio::spawn(async move {
        request::send(
            http,
            Request::get("/hold")
                .header("host", "b.test")
                .body(Full::default())
                .unwrap(),
        )
        .await
    });
    request::wait_for("b's long request", Duration::from_secs(10), async || {
        v1[1].active() == 1
    })
    .await;
    let to_a2 = PutApp {
        backend: Some(v2[0].addr_string()),
        ..PutApp::default()
    };
    let a_done = c.put_app("a", &to_a2).await.unwrap();
    let switched = a_done.switch.expect("a switched");
    assert!(
        switched.drained,
        "a's drain waited on another app: {switched:?}"
    );
    assert_eq!(v1[1].active(), 1, "b's long request was touched");
    // b (whose drain waits for its long request) and c at the same time.
    let to_b2 = PutApp {
        backend: Some(v2[1].addr_string()),
        drain_timeout: Some("20s".into()),
        ..PutApp::default()
    };
    let b_switch = tokio::spawn({
        let c = c.clone();
        async move { c.put_app("b", &to_b2).await }
    });
    let to_c2 = PutApp {
        backend: Some(v2[2].addr_string()),
        ..PutApp::default()
    };
    let c_done = c.put_app("c", &to_c2).await.unwrap();
    assert!(c_done.switch.unwrap().drained);
    assert!(
        !b_switch.is_finished(),
        "b's switch did not wait for its long request"
    );
    v1[1].open_gate();
    let b_done = b_switch.await.unwrap().unwrap();
    assert!(b_done.switch.unwrap().drained);
    let long = long.await.unwrap();
    assert_eq!((long.status, long.body.as_str()), (StatusCode::OK, "b1"));
    request::wait_for(
        "every app's load reaches its v2",
        Duration::from_secs(20),
        async || v2.iter().all(|b| b.requests() >= 20),
    )
    .await;
    // Each app's routes are what they were.
    let apps = c.apps().await.unwrap().apps;
    assert_eq!(
        apps.iter().find(|a| a.name == "c").unwrap().path_prefixes,
        ["/c"]
    );
    for (i, l) in loads.into_iter().enumerate() {
        let report = l.finish().await;
        let (name, ..) = routes[i];
        println!(
            "app {name}: {} ok, {} failed, by backend {:?}",
            report.ok, report.failed, report.by_body
        );
        assert_eq!(report.failed, 0, "app {name}: {:?}", report.errors);
        assert!(report.ok > 0, "app {name} got no load");
        let new = format!("{name}2");
        assert!(
            report.by_body.get(&new).copied().unwrap_or(0) > 0,
            "app {name} never reached v2: {:?}",
            report.by_body
        );
        assert!(
            report.by_body.keys().all(|k| k.starts_with(name)),
            "app {name} got another app's answer: {:?}",
            report.by_body
        );
    }
}
