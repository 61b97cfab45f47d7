//! End-to-end: the real handoff-proxy binary, real backends, real sockets.

use handoff_shared::{SetBackend, StatusResponse};
use handoff_tests::backend::Backend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request::{self, get, wait_for, Conn};
use http::{Method, Request, StatusCode};
use std::time::Duration;

fn switch_to(addr: &str) -> SetBackend {
    SetBackend {
        addr: addr.to_string(),
        drain_timeout: None,
        protocol: Default::default(),
    }
}

async fn status(p: &Proxy) -> StatusResponse {
    p.client().status().await.expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_with_proxy_headers_and_streams_bodies() {
    let b1 = Backend::start("b1").await;
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;

    let req = Request::get("/headers?x=1")
        .header("host", "shop.example")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("x-app", "kept")
        .body(Default::default())
        .unwrap();
    let reply = request::send(p.http, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(seen["host"], "shop.example");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example");
    assert_eq!(seen["x-app"], "kept");
    // `TE: trailers` is the one hop-by-hop offer passed on (issue 12.5).
    assert_eq!(seen["te"], "trailers");
    for hop in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(
            seen.get(hop).is_none(),
            "hop-by-hop header {hop} was forwarded: {seen}"
        );
    }

    // A 4 MiB body goes through both ways, byte for byte.
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = Request::post("/echo")
        .header("host", "x")
        .body(payload.clone().into())
        .unwrap();
    let reply = request::send(p.http, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.bytes.len(), payload.len());
    assert!(reply.bytes == payload.as_slice(), "echoed body differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_moves_new_requests_and_keepalive_connections_follow() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    let mut conn = Conn::open(p.http).await;
    assert_eq!(conn.get("/").await.unwrap().body, "b1");

    let r = p
        .client()
        .set_backend(&switch_to(&b2.addr_string()))
        .await
        .unwrap();
    assert_eq!(r.backend, b2.addr_string());
    assert_eq!(r.previous.as_deref(), Some(b1.addr_string().as_str()));
    assert!(r.drained);

    // The same keep-alive connection is not closed and follows the switch.
    assert_eq!(conn.get("/").await.unwrap().body, "b2");
    assert_eq!(get(p.http, "/").await.body, "b2");
    let s = status(&p).await;
    assert_eq!(s.backend.as_deref(), Some(b2.addr_string().as_str()));
    assert_eq!(s.generation, r.generation);
    assert_eq!(b1.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_waits_for_slow_requests_on_the_old_backend() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    let addr = p.http;
    let slow: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, "/slow?ms=3000").await }))
        .collect();
    wait_for(
        "5 slow requests in flight",
        Duration::from_secs(10),
        async || status(&p).await.in_flight == 5,
    )
    .await;

    let r = p
        .client()
        .set_backend(&switch_to(&b2.addr_string()))
        .await
        .unwrap();
    // The answer comes only once b1 has nothing left to do.
    assert_eq!(
        b1.active(),
        0,
        "switch returned while b1 still had requests"
    );
    assert!(r.drained, "{r:?}");
    assert_eq!(r.in_flight, 0);
    for s in slow {
        let reply = s.await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "b1"));
    }
    assert_eq!(get(p.http, "/").await.body, "b2");
    assert!(status(&p).await.draining.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_new_requests_go_to_the_new_backend_and_the_put_waits() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    let addr = p.http;
    // These requests end only when the test opens b1's gate: no timing involved.
    let held: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, "/hold").await }))
        .collect();
    wait_for(
        "5 held requests in flight",
        Duration::from_secs(10),
        async || status(&p).await.in_flight == 5,
    )
    .await;

    let client = p.client();
    let target = b2.addr_string();
    let switch = tokio::spawn(async move { client.set_backend(&switch_to(&target)).await });
    wait_for("switch to b2", Duration::from_secs(10), async || {
        status(&p).await.backend == Some(b2.addr_string())
    })
    .await;
    for _ in 0..3 {
        assert_eq!(get(p.http, "/").await.body, "b2");
    }
    let s = status(&p).await;
    assert_eq!(s.draining.len(), 1, "{s:?}");
    assert_eq!(
        (s.draining[0].backend.as_str(), s.draining[0].in_flight),
        (b1.addr_string().as_str(), 5)
    );
    assert!(
        !switch.is_finished(),
        "the PUT answered before the old generation drained"
    );
    assert!(held.iter().all(|h| !h.is_finished()));

    b1.open_gate();
    let r = switch.await.unwrap().unwrap();
    assert!(r.drained && r.in_flight == 0, "{r:?}");
    for h in held {
        let reply = h.await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "b1"));
    }
    assert_eq!(b1.active(), 0);
    assert_eq!(b2.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_returns_undrained() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    let slow = tokio::spawn(async move { get(p.http, "/slow?ms=6000").await });
    wait_for(
        "slow request in flight",
        Duration::from_secs(10),
        async || status(&p).await.in_flight == 1,
    )
    .await;

    let req = SetBackend {
        addr: b2.addr_string(),
        drain_timeout: Some("1s".into()),
        protocol: Default::default(),
    };
    let r = p.client().set_backend(&req).await.unwrap();
    assert!(!r.drained, "{r:?}");
    assert_eq!(r.in_flight, 1);
    assert!(r.drain_ms >= 1000, "{r:?}");
    assert!(
        !slow.is_finished(),
        "drain timeout should return while the slow request still runs"
    );
    // The slow request is not cut: it finishes on the old backend.
    let reply = slow.await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "b1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_control_requests_are_4xx_and_change_nothing() {
    let b1 = Backend::start("b1").await;
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    let before = status(&p).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let big = format!(r#"{{"addr":"{}"}}"#, "a".repeat(100 * 1024));
    let cases: Vec<(Method, &str, Option<String>, StatusCode)> = vec![
        (
            Method::PUT,
            "/v1/backend",
            Some("{not json".into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/backend",
            Some("".into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/backend",
            Some(r#"{"addr":"nope"}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/backend",
            Some(r#"{"addr":"127.0.0.1:0"}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/backend",
            Some(r#"{"addr":"127.0.0.1:80","extra":1}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/backend",
            Some(format!(
                r#"{{"addr":"{}","drain_timeout":"soon"}}"#,
                b1.addr
            )),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/backend",
            Some(big),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::PUT,
            "/v1/backend",
            Some(format!(r#"{{"addr":"{closed}"}}"#)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (Method::GET, "/v1/nothing", None, StatusCode::NOT_FOUND),
        (Method::GET, "/", None, StatusCode::NOT_FOUND),
        (
            Method::POST,
            "/v1/backend",
            Some("{}".into()),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::DELETE,
            "/v1/status",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, path, body, want) in cases {
        let (got, bytes) = p
            .client()
            .raw(method.clone(), path, body.map(String::into_bytes))
            .await
            .unwrap();
        assert_eq!(
            got,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let err: serde_json::Value = serde_json::from_slice(&bytes).expect("error body is JSON");
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "no error message: {err}"
        );
        let after = status(&p).await;
        assert_eq!(
            (after.backend.as_deref(), after.generation),
            (before.backend.as_deref(), before.generation)
        );
        assert_eq!(
            get(p.http, "/").await.body,
            "b1",
            "routing changed after {method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_restores_the_backend_from_state() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let dir = handoff_tests::TempDir::new("restart");
    let mut p = Proxy::start_in(dir.path(), &["--backend", &b1.addr_string()]).await;
    p.client()
        .set_backend(&switch_to(&b2.addr_string()))
        .await
        .unwrap();
    p.kill9();
    drop(p);
    // The stale socket from the crash is replaced; --backend does not override state.
    let p = Proxy::start_in(dir.path(), &["--backend", &b1.addr_string()]).await;
    assert_eq!(status(&p).await.backend, Some(b2.addr_string()));
    assert_eq!(get(p.http, "/").await.body, "b2");
    drop(p);

    // A corrupt state file is a startup error naming the file, never a reset.
    std::fs::write(dir.path().join("state.json"), b"{\"backend\": ").unwrap();
    let err = Proxy::try_start_in(dir.path(), &["--backend", &b1.addr_string()])
        .await
        .err()
        .expect("must fail");
    assert!(
        err.contains("state.json") && err.contains("corrupt"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_502_503_504_and_the_proxy_survives() {
    // No backend at all: 503.
    let p = Proxy::start(&["--upstream-timeout", "500ms"]).await;
    assert_eq!(
        get(p.http, "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(status(&p).await.backend, None);

    // A backend that dies after the switch: connection refused is 502.
    let doomed = Backend::start("doomed").await;
    p.client()
        .set_backend(&switch_to(&doomed.addr_string()))
        .await
        .unwrap();
    doomed.stop();
    drop(doomed);
    wait_for("backend gone", Duration::from_secs(5), async || {
        get(p.http, "/").await.status == StatusCode::BAD_GATEWAY
    })
    .await;

    // A backend that resets every connection: 502.
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = resetter.local_addr().unwrap().to_string();
    // It accepts (so the switch's reachability check passes), reads the
    // request, then resets the connection instead of answering.
    tokio::spawn(async move {
        while let Ok((mut s, _)) = resetter.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.set_zero_linger();
                drop(s);
            });
        }
    });
    p.client()
        .set_backend(&switch_to(&reset_addr))
        .await
        .unwrap();
    assert_eq!(get(p.http, "/").await.status, StatusCode::BAD_GATEWAY);

    // A backend slower than --upstream-timeout: 504.
    let slow = Backend::start("slow").await;
    p.client()
        .set_backend(&switch_to(&slow.addr_string()))
        .await
        .unwrap();
    let reply = get(p.http, "/slow?ms=3000").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
    // And the proxy is still fine.
    assert_eq!(get(p.http, "/").await.body, "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_is_0600_and_a_live_one_is_not_stolen() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let p = Proxy::start(&[]).await;
    let meta = std::fs::metadata(&p.control).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let err = Proxy::try_start_in(&p.dir, &[])
        .await
        .err()
        .expect("second proxy on a live socket must fail");
    assert!(err.contains("already listening"), "{err}");
    assert!(
        status(&p).await.backend.is_none(),
        "first proxy still answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish() {
    let b1 = Backend::start("b1").await;
    let mut p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    let addr = p.http;
    // SIGHUP (systemctl reload) without TLS is logged, never a way to die.
    p.signal("HUP");
    wait_for("SIGHUP logged", Duration::from_secs(10), async || {
        p.log_text().contains("SIGHUP")
    })
    .await;
    assert_eq!(get(addr, "/").await.body, "b1");
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=2000").await });
    wait_for(
        "slow request in flight",
        Duration::from_secs(10),
        async || status(&p).await.in_flight == 1,
    )
    .await;
    p.signal("TERM");
    let exit = p.wait_exit(Duration::from_secs(20)).await;
    let reply = slow.await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "b1"));
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_keepalive_clients_see_no_error_across_twenty_switches() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    let load = handoff_tests::load::start(p.http, "/", 64, Duration::from_secs(60));
    let mut drained = 0;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let target = if i % 2 == 0 { &b2 } else { &b1 };
        let r = p
            .client()
            .set_backend(&switch_to(&target.addr_string()))
            .await
            .unwrap();
        drained += r.drained as u32;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let report = load.finish().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert_eq!(report.reconnects, 0, "a switch closed client connections");
    assert_eq!(drained, 20);
    assert!(
        report.by_body.get("b1").copied().unwrap_or(0) > 0
            && report.by_body.get("b2").copied().unwrap_or(0) > 0
    );
    assert_eq!(report.ok, report.by_body.values().sum::<u64>());
    assert_eq!(
        report.ok,
        b1.requests() + b2.requests(),
        "every answer came from a backend"
    );
    eprintln!(
        "64 clients, 20 switches: {} ok, {} failed",
        report.ok, report.failed
    );
}
