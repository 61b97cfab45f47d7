//! gRPC through the proxy (issue 12, part 5): a real gRPC server and client
//! (tonic's generic halves, messages derived by hand, so no protoc) with
//! the proxy between them speaking h2c to the backend
//! (`--backend-protocol h2c` / `"protocol": "h2c"`). Unary and
//! server-streaming calls, `grpc-status` in trailers (OK and not), deadlines
//! (`grpc-timeout` reaches the server; a client that gives up frees the
//! proxy), and a switch while a stream is open: the stream ends on the old
//! backend, new calls go to the new one, the switch reports the drain.

mod grpc_support;

use grpc_support::*;
use handoff_shared::{BackendProtocol, SetBackend};
use handoff_tests::proxy::Proxy;
use handoff_tests::request::{self, wait_for};
use handoff_tests::scripted::within;
use handoff_tests::tls::TestCa;
use handoff_tests::TempDir;
use http::uri::PathAndQuery;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;
use tonic::Code;
use tonic_prost::ProstCodec;

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_server_streaming_calls_pass_with_grpc_status_in_trailers() {
    let b = GrpcServer::start("a").await;
    let p = h2c_proxy(&b, &[]).await;
    let mut c = client(&p).await;

    let answer = say(&mut c, ask("ada", 0)).await.expect("unary OK");
    assert_eq!(
        (answer.text.as_str(), answer.server.as_str()),
        ("hello ada", "a")
    );
    // What the backend got: the client's authority, the proxy's forwarding
    // fields, and `te: trailers`, which gRPC needs.
    let h = b.last_headers();
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.test");
    assert_eq!(h["content-type"], "application/grpc");

    // An error status (trailers-only answer) with its message.
    let err = say(&mut c, ask("nobody", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such name: nobody");

    // Server streaming: every message, then OK in the trailers.
    let mut s = count(&mut c, ask("n", 5)).await;
    for i in 0..5 {
        let m = next(&mut s).await.expect("message").expect("not the end");
        assert_eq!(m.text, format!("n #{i}"));
    }
    assert_eq!(next(&mut s).await.expect("clean end"), None);
    let trailers = within("trailers", s.trailers())
        .await
        .expect("trailers")
        .expect("trailers present");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // A stream that fails after two messages: NOT_FOUND arrives in the
    // trailers, after the data.
    let mut req = ask("f", 5);
    req.get_mut().fail_after = 2;
    let mut s = count(&mut c, req).await;
    assert!(next(&mut s).await.unwrap().is_some());
    assert!(next(&mut s).await.unwrap().is_some());
    let err = next(&mut s).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "ran out at 2")
    );
    assert_eq!(b.calls(), 4);

    // The proxy reports what the backend speaks.
    let status = p.client().status().await.unwrap();
    assert_eq!(status.protocol, BackendProtocol::H2c);
    assert_eq!(status.in_flight, 0, "{status:?}");

    // Each call has its access-log line once its body is done.
    let line = format!("path={SAY} status=200");
    let backend = format!("backend={}", b.addr());
    wait_for("access-log lines", Duration::from_secs(10), async || {
        let log = p.log_text();
        let calls = log.lines().filter(|l| l.contains("handoff::access"));
        calls
            .filter(|l| l.contains(&line) && l.contains(&backend) && l.contains("generation=1"))
            .count()
            == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_alpn_h2_and_plain_http11_reach_an_h2c_backend() {
    let b = GrpcServer::start("a").await;
    let dir = TempDir::new("grpc-tls");
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "app", &["app.test"]);
    let (cert, key) = (
        leaf.cert.display().to_string(),
        leaf.key.display().to_string(),
    );
    let p = h2c_proxy(
        &b,
        &[
            "--https",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    )
    .await;
    let tls = ca.client(&[b"h2"]);
    let stream = handoff_tests::tls::connect(&tls, p.https.unwrap(), "app.test")
        .await
        .expect("TLS connect");
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN picked HTTP/2"
    );
    let mut c = client_over(stream).await;
    let answer = say(&mut c, ask("tls", 0)).await.expect("unary over TLS");
    assert_eq!(answer.text, "hello tls");
    assert_eq!(b.last_headers()["x-forwarded-proto"], "https");

    // An HTTP/1.1 client reaches the h2c backend too (here: gRPC's
    // "unimplemented" answer to a path that is no method), its hop-by-hop
    // fields left behind as on the HTTP/1.1 path.
    let req = http::Request::get("/plain")
        .header("host", "app.test")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "gzip, trailers")
        .header("x-forwarded-for", "10.0.0.1")
        .body(http_body_util::Full::default())
        .unwrap();
    let r = request::send(p.http, req).await;
    assert_eq!(r.status, http::StatusCode::OK);
    assert_eq!(r.headers["grpc-status"], "12");
    assert_eq!(b.calls(), 2);
    let h = b.last_headers();
    for gone in ["connection", "x-secret", "keep-alive", "host"] {
        assert!(!h.contains_key(gone), "{gone} reached the backend: {h:?}");
    }
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_end_the_call_and_free_the_proxy() {
    let b = GrpcServer::start("a").await;
    let p = h2c_proxy(&b, &[]).await;
    let mut c = client(&p).await;

    // grpc-timeout reaches the server, which ends the call at the deadline.
    let mut req = ask("slow", 0);
    req.set_timeout(Duration::from_millis(200));
    within("ready", c.ready()).await.unwrap();
    let call = c.unary(
        req,
        PathAndQuery::from_static(STALL),
        ProstCodec::<Ask, Answer>::default(),
    );
    let err = within("deadline call", call).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let sent = b.last_headers()["grpc-timeout"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        grpc_timeout(&sent),
        Some(Duration::from_millis(200)),
        "{sent}"
    );

    // A client that gives up on a call with no grpc-timeout (its own
    // deadline, as grpc clients enforce it locally) resets the stream: the
    // proxy passes the reset on and the call leaves the in-flight count.
    within("ready", c.ready()).await.unwrap();
    let call = c.unary(
        ask("forever", 0),
        PathAndQuery::from_static(STALL),
        ProstCodec::<Ask, Answer>::default(),
    );
    let given_up = tokio::time::timeout(Duration::from_millis(300), call).await;
    assert!(given_up.is_err(), "a stalled call cannot answer");
    let calls = b.calls();
    assert_eq!(calls, 2);
    wait_for(
        "the backend saw the stream reset",
        Duration::from_secs(10),
        async || b.seen.cancelled.load(SeqCst) == 1,
    )
    .await;
    let control = p.client();
    wait_for(
        "the proxy counts no call",
        Duration::from_secs(10),
        async || control.status().await.is_ok_and(|s| s.in_flight == 0),
    )
    .await;
    // The connection still serves.
    assert_eq!(
        say(&mut c, ask("after", 0)).await.unwrap().text,
        "hello after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_mid_stream_drains_the_stream_on_the_old_backend() {
    let old = GrpcServer::start("old").await;
    let new = GrpcServer::start("new").await;
    let p = h2c_proxy(&old, &[]).await;
    let mut c = client(&p).await;

    // A stream is open on the old backend, held after its first message.
    old.gate.send_replace(false);
    let mut s = count(&mut c, ask("s", 3)).await;
    let first = next(&mut s).await.unwrap().unwrap();
    assert_eq!(
        (first.text.as_str(), first.server.as_str()),
        ("s #0", "old")
    );

    // Switch; the control call answers once the old generation drained.
    let control = p.client();
    let to = SetBackend {
        addr: new.addr(),
        drain_timeout: Some("30s".into()),
        protocol: BackendProtocol::H2c,
    };
    let switch = tokio::spawn(async move { control.set_backend(&to).await });
    let control = p.client();
    wait_for("the switch is made", Duration::from_secs(10), async || {
        control.status().await.is_ok_and(|s| {
            s.backend.as_deref() == Some(new.addr().as_str())
                && s.draining.iter().map(|d| d.in_flight).sum::<u64>() == 1
        })
    })
    .await;

    // New calls, on the same client connection, go to the new backend.
    let answer = say(&mut c, ask("next", 0)).await.unwrap();
    assert_eq!(answer.server, "new");
    assert!(!switch.is_finished(), "the drain waits for the open stream");

    // The held stream finishes on the old backend, with OK.
    old.gate.send_replace(true);
    for i in 1..3 {
        let m = next(&mut s).await.unwrap().unwrap();
        assert_eq!((m.text, m.server.as_str()), (format!("s #{i}"), "old"));
    }
    assert_eq!(next(&mut s).await.unwrap(), None);
    let switched = within("switch returns", switch).await.unwrap().unwrap();
    assert!(switched.drained, "{switched:?}");
    assert_eq!(switched.in_flight, 0);
    assert_eq!((old.calls(), new.calls()), (1, 1));
    assert_eq!(old.seen.cancelled.load(SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_protocol_is_checked_and_survives_a_restart() {
    let b = GrpcServer::start("a").await;
    let dir = TempDir::new("grpc-state");
    let addr = b.addr();
    let mut p = Proxy::start_in(dir.path(), &[]).await;

    // An unknown protocol is a 400 with a JSON error, and changes nothing.
    let body = format!(r#"{{"addr":"{addr}","protocol":"h3"}}"#);
    let r = request::control(&p.control, "PUT", "/v1/backend", body)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(json["error"].as_str().unwrap().contains("h3"), "{json}");
    assert_eq!(p.client().status().await.unwrap().backend, None);

    let body = format!(r#"{{"addr":"{addr}","protocol":"h2c"}}"#);
    let r = request::control(&p.control, "PUT", "/v1/backend", body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let mut c = client(&p).await;
    assert_eq!(say(&mut c, ask("one", 0)).await.unwrap().server, "a");
    let saved = std::fs::read_to_string(&p.state).unwrap();
    assert!(saved.contains(r#""protocol": "h2c""#), "{saved}");

    // After a restart the state file, not a flag, says h2c.
    p.kill9();
    let p = Proxy::start_in(dir.path(), &[]).await;
    let status = p.client().status().await.unwrap();
    assert_eq!(status.protocol, BackendProtocol::H2c);
    let mut c = client(&p).await;
    assert_eq!(say(&mut c, ask("two", 0)).await.unwrap().text, "hello two");

    // A bad --backend-protocol stops the proxy at start, naming the flag.
    let bad = Proxy::try_start_in(
        TempDir::new("grpc-bad").path(),
        &["--backend", &addr, "--backend-protocol", "spdy"],
    )
    .await;
    let err = bad.err().expect("refused");
    assert!(err.contains("spdy"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_backend_silence_and_absence_answer_as_on_http1() {
    let b = GrpcServer::start("a").await;
    let p = h2c_proxy(&b, &["--upstream-timeout", "300ms"]).await;

    // No response head within --upstream-timeout: 504, counted as a timeout.
    let r = request::get(p.http, STALL).await;
    assert_eq!(r.status, http::StatusCode::GATEWAY_TIMEOUT, "{}", r.body);

    // Silent mid-stream for longer than that: the stream is cut, not held.
    b.gate.send_replace(false);
    let mut c = client(&p).await;
    let mut s = count(&mut c, ask("held", 3)).await;
    assert!(next(&mut s).await.unwrap().is_some());
    let cut = next(&mut s).await;
    assert!(cut.is_err(), "a silent stream ends in an error: {cut:?}");
    let control = p.client();
    wait_for(
        "the cut stream leaves the count",
        Duration::from_secs(10),
        async || control.status().await.is_ok_and(|s| s.in_flight == 0),
    )
    .await;
    let metrics = request::get(p.admin.unwrap(), "/metrics").await.body;
    assert!(
        metrics.contains(r#"handoff_upstream_errors_total{kind="timeout"} 1"#),
        "{metrics}"
    );

    // The backend gone: 502.
    drop(b);
    let r = request::get(p.http, SAY).await;
    assert_eq!(r.status, http::StatusCode::BAD_GATEWAY, "{}", r.body);
}
