//! Issue 5, TLS and protocols: the real proxy binary with certificates made in
//! the test, real TLS clients (rustls + hyper, curl), WebSocket.

use futures_util::{SinkExt, StreamExt};
use handoff_shared::{SetBackend, StatusResponse};
use handoff_tests::backend::Backend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request::{self, wait_for};
use handoff_tests::tls::{self, start_proxy as tls_proxy, TestCa};
use handoff_tests::TempDir;
use http::{Request, StatusCode};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn resolve(host: &str, addr: SocketAddr) -> String {
    format!("{host}:{}:127.0.0.1", addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_http1_over_tls_with_forwarded_proto() {
    let (dir, ca, b1) = (
        TempDir::new("tls"),
        TestCa::new(),
        Backend::start("b1").await,
    );
    let (p, leaves) = tls_proxy(&dir, &ca, &b1, &[("app", &["app.test"])], &[]).await;
    let https = p.https.expect("ready line names the https listener");

    for (alpn, version) in [(&b"http/1.1"[..], "HTTP/1.1"), (&b"h2"[..], "HTTP/2.0")] {
        let stream = tls::connect(&ca.client(&[alpn]), https, "app.test")
            .await
            .unwrap();
        let (leaf, negotiated) = tls::session(&stream);
        assert_eq!(leaf.as_ref(), Some(&leaves[0].der));
        assert_eq!(negotiated.as_deref(), Some(alpn));
        let req = Request::get("https://app.test/headers")
            .header("host", "app.test")
            .body(Default::default())
            .unwrap();
        let reply = tls::send(stream, req).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["x-test-version"], version);
        let seen: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
        assert_eq!(seen["host"], "app.test", "{seen}");
    }

    // curl, a real client outside this process, over h2 and http/1.1.
    let ca_file = ca.write_ca(dir.path());
    let ca_arg = ca_file.to_str().unwrap();
    let url = format!("https://app.test:{}/", https.port());
    let r = resolve("app.test", https);
    let h2 = curl(&[
        "--http2",
        "--cacert",
        ca_arg,
        "--resolve",
        &r,
        "-w",
        " %{http_version} %{http_code}",
        &url,
    ]);
    assert_eq!(h2, "b1 2 200");
    let h1 = curl(&[
        "--http1.1",
        "--cacert",
        ca_arg,
        "--resolve",
        &r,
        "-w",
        " %{http_version} %{http_code}",
        &url,
    ]);
    assert_eq!(h1, "b1 1.1 200");
    // The plain listener still says http.
    let plain = request::get(p.http, "/headers").await;
    assert!(
        plain.body.contains(r#""x-forwarded-proto":"http""#),
        "{}",
        plain.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_matching_certificate() {
    let (dir, ca, b1) = (
        TempDir::new("tls"),
        TestCa::new(),
        Backend::start("b1").await,
    );
    let cert_dir = dir.path().join("certs");
    std::fs::create_dir(&cert_dir).unwrap();
    let from_dir = ca.leaf(&cert_dir, "c", &["c.test"]);
    let certs: &[(&str, &[&str])] = &[
        ("a", &["a.test", "www.a.test"]),
        ("b", &["b.test"]),
        ("wild", &["*.wild.test"]),
    ];
    let (p, leaves) = tls_proxy(
        &dir,
        &ca,
        &b1,
        certs,
        &["--tls-dir", cert_dir.to_str().unwrap()],
    )
    .await;
    let https = p.https.unwrap();
    let client = ca.client(&[b"http/1.1"]);
    for (sni, want) in [
        ("a.test", &leaves[0].der),
        ("www.a.test", &leaves[0].der),
        ("b.test", &leaves[1].der),
        ("x.wild.test", &leaves[2].der),
        ("c.test", &from_dir.der),
    ] {
        let stream = tls::connect(&client, https, sni)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(
            tls::session(&stream).0.as_ref(),
            Some(want),
            "certificate for {sni}"
        );
        let reply = tls::send(
            stream,
            Request::get("/")
                .header("host", sni)
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(reply.body, "b1");
    }
    // An unknown name gets the first certificate, which the client rejects.
    let err = tls::connect(&client, https, "other.test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // A wildcard covers one label only.
    assert!(tls::connect(&client, https, "a.b.wild.test").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_certificates_without_dropping_a_request_and_refuses_bad_ones() {
    let (dir, ca, b1) = (
        TempDir::new("tls"),
        TestCa::new(),
        Backend::start("b1").await,
    );
    let (p, leaves) = tls_proxy(&dir, &ca, &b1, &[("app", &["app.test"])], &[]).await;
    let https = p.https.unwrap();
    let client = ca.client(&[b"h2"]);
    // A fresh client each time: a resumed TLS session presents no certificate.
    let presented = |_: tokio_rustls::TlsConnector| {
        let fresh = ca.client(&[b"h2"]);
        async move {
            let stream = tls::connect(&fresh, https, "app.test").await.unwrap();
            tls::session(&stream).0.unwrap()
        }
    };
    assert_eq!(presented(client.clone()).await, leaves[0].der);

    // A 3 s request over TLS is in flight across both reloads.
    let slow_client = client.clone();
    let slow =
        tokio::spawn(
            async move { tls::get(&slow_client, https, "app.test", "/slow?ms=3000").await },
        );
    wait_for(
        "slow request at the backend",
        Duration::from_secs(10),
        async || b1.active() == 1,
    )
    .await;

    // Good new certificate, via the control API.
    let v2 = ca.leaf(dir.path(), "app", &["app.test"]);
    let r = request::control(&p.control, "POST", "/v1/tls/reload", "")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let loaded: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(loaded["certificates"], 1);
    assert_eq!(loaded["names"][0], "app.test");
    assert_eq!(presented(client.clone()).await, v2.der);

    // A bad one: the error names the file, the good certificate stays.
    std::fs::write(
        &v2.key,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let r = request::control(&p.control, "POST", "/v1/tls/reload", "")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.contains("app.key"), "{}", r.body);
    assert_eq!(presented(client.clone()).await, v2.der);
    // A certificate whose key belongs to another one is refused too.
    let other = ca.leaf(dir.path(), "other", &["other.test"]);
    std::fs::copy(&other.key, &v2.key).unwrap();
    let r = request::control(&p.control, "POST", "/v1/tls/reload", "")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.contains("does not belong"), "{}", r.body);

    // SIGHUP reloads as well.
    let v3 = ca.leaf(dir.path(), "app", &["app.test"]);
    p.signal("HUP");
    let c = client.clone();
    wait_for("SIGHUP reload", Duration::from_secs(10), async || {
        presented(c.clone()).await == v3.der
    })
    .await;

    let reply = slow.await.unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "b1"),
        "the in-flight request survived"
    );
    assert_eq!(presented(client).await, v3.der);
    // Without TLS the endpoint says so.
    let plain = Proxy::start(&[]).await;
    let r = request::control(&plain.control, "POST", "/v1/tls/reload", "")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_https_except_acme_and_https_sends_hsts() {
    let (dir, ca, b1) = (
        TempDir::new("tls"),
        TestCa::new(),
        Backend::start("b1").await,
    );
    let (p, _) = tls_proxy(
        &dir,
        &ca,
        &b1,
        &[("app", &["app.test"])],
        &["--redirect-https", "--hsts-max-age", "1day"],
    )
    .await;
    let https = p.https.unwrap();

    let req = Request::get("/shop/cart?item=1&x=%20")
        .header("host", "app.test:8080")
        .body(Default::default())
        .unwrap();
    let r = request::send(p.http, req).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.headers["location"],
        format!("https://app.test:{}/shop/cart?item=1&x=%20", https.port())
    );
    assert!(
        !r.headers.contains_key("strict-transport-security"),
        "HSTS is meaningless over plain HTTP"
    );
    assert_eq!(b1.requests(), 0, "a redirect never reaches the backend");

    let acme = request::get(p.http, "/.well-known/acme-challenge/token").await;
    assert_eq!((acme.status, acme.body.as_str()), (StatusCode::OK, "b1"));
    assert_eq!(b1.requests(), 1);

    let secure = tls::get(&ca.client(&[b"h2"]), https, "app.test", "/").await;
    assert_eq!(secure.status, StatusCode::OK);
    assert_eq!(secure.headers["strict-transport-security"], "max-age=86400");

    // curl follows the redirect to the TLS listener.
    let ca_file = ca.write_ca(dir.path());
    let url = format!("http://app.test:{}/", p.http.port());
    let out = curl(&[
        "-L",
        "--cacert",
        ca_file.to_str().unwrap(),
        "--resolve",
        &resolve("app.test", p.http),
        "--resolve",
        &resolve("app.test", https),
        "-w",
        " %{http_code} %{num_redirects}",
        &url,
    ]);
    assert_eq!(out, "b1 200 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_tls_survives_a_switch_and_holds_the_drain_until_closed() {
    let (dir, ca, b1, b2) = (
        TempDir::new("tls"),
        TestCa::new(),
        Backend::start("b1").await,
        Backend::start("b2").await,
    );
    let (p, _) = tls_proxy(&dir, &ca, &b1, &[("app", &["app.test"])], &[]).await;
    let https = p.https.unwrap();
    let stream = tls::connect(&ca.client(&[b"http/1.1"]), https, "app.test")
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://app.test/chat", stream)
        .await
        .expect("WebSocket handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));

    let status = |p: &Proxy| {
        let client = p.client();
        async move { client.status().await.unwrap() }
    };
    let s: StatusResponse = status(&p).await;
    assert_eq!(s.in_flight, 1, "the open WebSocket counts as in flight");

    // Switch while it is open: the switch waits for it.
    let client = p.client();
    let to = b2.addr_string();
    let switch = tokio::spawn(async move {
        client
            .set_backend(&SetBackend {
                addr: to,
                drain_timeout: Some("60s".into()),
                protocol: Default::default(),
            })
            .await
            .unwrap()
    });
    wait_for("switch applied", Duration::from_secs(10), async || {
        status(&p).await.backend.as_deref() == Some(b2.addr_string().as_str())
    })
    .await;
    let s = status(&p).await;
    assert_eq!(s.draining.len(), 1, "{s:?}");
    assert_eq!(
        (s.draining[0].backend.as_str(), s.draining[0].in_flight),
        (b1.addr_string().as_str(), 1)
    );
    assert_eq!(
        tls::get(&ca.client(&[b"h2"]), https, "app.test", "/")
            .await
            .body,
        "b2",
        "new requests go to b2"
    );

    // The tunnel to b1 still works after the switch.
    for i in 0..5 {
        let msg = Message::binary(vec![i; 1000]);
        ws.send(msg.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), msg);
    }
    assert!(
        !switch.is_finished(),
        "the switch must wait for the open WebSocket"
    );
    assert_eq!(b1.active(), 1);

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    // As a browser does once the closing handshake is done.
    drop(ws);
    let r = tokio::time::timeout(Duration::from_secs(30), switch)
        .await
        .expect("switch returns after close")
        .unwrap();
    assert!(r.drained, "{r:?}");
    assert_eq!(r.in_flight, 0);
    assert_eq!(b2.active(), 0);
}
