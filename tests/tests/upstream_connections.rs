//! The life of the proxy's upstream connections, against scripted backends
//! (`handoff_tests::scripted`): keep-alive reuse and pinning, no reuse after
//! a read-until-close, HTTP/1.0 or `Connection: close` answer, connections the
//! backend closed while idle, which requests are retried, early answers,
//! the WebSocket tunnel, large streamed bodies, and a switch closing the old
//! generation's pinned connections (the upstream silence timeout is in
//! upstream_timeouts.rs).

use bytes::Bytes;
use handoff_shared::SetBackend;
use handoff_tests::request;
use handoff_tests::scripted::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// 3. Bodies delimited by the backend's close.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_until_close_response_arrives_whole_and_the_next_request_gets_a_new_connection() {
    // Large enough to take many reads on the way.
    let body: Vec<u8> = (0..300 * 1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let reply = {
        let mut r = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        r.extend_from_slice(&body);
        r
    };
    let b = Scripted::start(move |req| match req.target.as_str() {
        "/until-close" => Reply::SendClose(reply.clone()),
        // An HTTP/1.0 answer and an explicit close: not reused either.
        "/http10" => Reply::Send(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nv1.0".to_vec()),
        "/close" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nclose".to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    let r = get(&mut c, "/until-close").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes.len(), body.len());
    assert!(r.bytes == body.as_slice(), "body differs");
    assert_eq!(get(&mut c, "/ok").await.body, "ok");
    assert_eq!(b.counts().accepts, 2);

    assert_eq!(get(&mut c, "/http10").await.body, "v1.0");
    assert_eq!(get(&mut c, "/ok").await.body, "ok");
    assert_eq!(get(&mut c, "/close").await.body, "close");
    assert_eq!(get(&mut c, "/ok").await.body, "ok");
    let seen = b.seen();
    let conns: Vec<_> = seen.iter().map(|s| (s.target.as_str(), s.conn)).collect();
    // /ok after /until-close is on a new connection; /http10 reuses it, and
    // after /http10 and /close the proxy connects anew.
    assert_eq!(
        conns,
        [
            ("/until-close", 0),
            ("/ok", 1),
            ("/http10", 1),
            ("/ok", 2),
            ("/close", 2),
            ("/ok", 3),
        ]
    );
}

// ---------------------------------------------------------------------------
// 5. Stale keep-alive connections.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_connection_the_backend_closed_while_idle_is_not_used_for_the_next_request() {
    let b = Scripted::start(|_| Reply::Send(OK.as_bytes().to_vec())).await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/first").await.body, "ok");
    // The backend's keep-alive timeout fires between the two requests.
    b.close_idle(1).await;
    let r = get(&mut c, "/second").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    let seen = b.seen();
    let targets: Vec<_> = seen.iter().map(|s| (s.target.as_str(), s.conn)).collect();
    // Whether the proxy saw the close before sending or retried after, the
    // backend got each request once on a live connection (a request sent
    // into the closed socket is not read by anyone).
    assert_eq!(targets, [("/first", 0), ("/second", 1)]);
    assert_eq!(b.counts().requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_a_reused_connection_swallowed_is_retried_once_on_a_new_connection() {
    // The first connection answers its first request, then takes the second
    // and closes without a word: the race of a backend's keep-alive close.
    let b = Scripted::start(|req| match (req.conn, req.nth) {
        (0, 1) => Reply::Close,
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/one").await.body, "ok");
    let r = get(&mut c, "/two").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    let seen: Vec<_> = b
        .seen()
        .iter()
        .map(|s| (s.target.clone(), s.conn, s.nth))
        .collect();
    assert_eq!(
        seen,
        [
            ("/one".to_string(), 0, 0),
            ("/two".to_string(), 0, 1),
            ("/two".to_string(), 1, 0),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_happen_once_only_for_bodiless_requests_on_reused_connections() {
    // Every request after a connection's first is swallowed; on a fresh
    // connection, requests to /drop are swallowed too.
    let b = Scripted::start(|req| {
        if req.nth > 0 || req.target == "/drop" {
            Reply::Close
        } else {
            Reply::Send(OK.as_bytes().to_vec())
        }
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let count = |b: &Scripted, target: &str| b.seen().iter().filter(|s| s.target == target).count();

    // A fresh connection failing is not retried.
    let mut c = open(&p).await;
    let r = get(&mut c, "/drop").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(count(&b, "/drop"), 1);

    // A POST on a reused connection is not retried: its body may have been
    // acted on.
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/warm").await.body, "ok");
    let post = Request::post("/post")
        .header("host", "app.test")
        .body(Full::new(Bytes::from_static(b"do it once")))
        .unwrap();
    let r = send(&mut c, post).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(count(&b, "/post"), 1);

    // Nor is an empty POST: not idempotent (RFC 9110 §9.2.2), whereas an
    // empty DELETE is, and is retried.
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/warm").await.body, "ok");
    let post = Request::post("/empty-post")
        .header("host", "app.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&mut c, post).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(count(&b, "/empty-post"), 1);
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/warm").await.body, "ok");
    let delete = Request::delete("/delete")
        .header("host", "app.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // The retry goes on a new connection, whose first request is answered.
    assert_eq!(send(&mut c, delete).await.status, StatusCode::OK);
    assert_eq!(count(&b, "/delete"), 2, "1 try + 1 retry");

    // A GET on a reused connection is retried once, and only once.
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/warm").await.body, "ok");
    let r = get(&mut c, "/drop").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(count(&b, "/drop"), 3, "1 before, then 1 try + 1 retry");

    assert_eq!(get(&mut c, "/after").await.body, "ok");
}

// ---------------------------------------------------------------------------
// 8. An answer before the body was read.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_413_before_reading_a_large_body_is_relayed_not_turned_into_502() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/upload" => Reply::EarlyClose(
            b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 9\r\n\r\ntoo large"
                .to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    // The backend closes with most of the 4 MiB unread, so its kernel sends
    // a reset, and the proxy's next write fails. Linux hands out what was
    // already queued (the 413) before it reports the reset, so this is not
    // a race: 50 runs in a row and 6 suites in parallel on 2 CPUs passed.
    let out = upload(&p, "/upload", 4 * 1024 * 1024, b"too large").await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "got {text:?}"
    );
    assert!(text.ends_with("too large"), "{text:?}");
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body.is_empty(), "the backend read no body");
    assert_eq!(request::get(p.http, "/ok").await.body, "ok");
}

// ---------------------------------------------------------------------------
// 101: a raw tunnel.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_answer_to_an_upgrade_becomes_a_tunnel_with_the_bytes_that_followed_it() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/ws" => Reply::Tunnel(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Tunnel: 1\r\n\r\nEARLY"
                .to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let head = within("101 head", read_head(&mut s, &mut buf))
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("x-tunnel: 1"), "{head}");
    // What the backend sent right behind its 101 comes first.
    let early = within("early bytes", take(&mut s, &mut buf, 5))
        .await
        .unwrap();
    assert_eq!(early, b"EARLY");
    s.write_all(b"ping").await.unwrap();
    let echo = within("echo", take(&mut s, &mut buf, 4)).await.unwrap();
    assert_eq!(echo, b"ping");

    let seen = b.seen();
    assert_eq!(seen[0].one("upgrade"), Some("websocket"));
    assert_eq!(seen[0].one("connection"), Some("upgrade"));
    drop(s);
    b.wait("the tunnel closed through to the backend", |c| {
        c.proxy_closed >= 1
    })
    .await;
    assert_eq!(request::get(p.http, "/ok").await.body, "ok");
}

// ---------------------------------------------------------------------------
// More connection edge cases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_after_part_of_an_answer_is_502_not_retried() {
    // The backend took the request and began answering: this is not an idle
    // connection closed under the proxy, and sending the request again
    // would repeat whatever it did. The proxy's own rule (forward.rs: a
    // reused connection "failed before any answer") says: no retry.
    let b = Scripted::start(|req| match (req.conn, req.nth) {
        (0, 1) => Reply::SendClose(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/one").await.body, "ok");
    let r = get(&mut c, "/two").await;
    let two = b.seen().iter().filter(|s| s.target == "/two").count();
    assert_eq!(
        (r.status, two),
        (StatusCode::BAD_GATEWAY, 1),
        "a request the backend had begun to answer was sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_length_delimited_body_streams_through_and_its_connection_is_reused() {
    let body: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let reply = {
        let mut r =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(&body);
        r
    };
    let b = Scripted::start(move |_| Reply::Send(reply.clone())).await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    for _ in 0..2 {
        let r = get(&mut c, "/big").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["content-length"], body.len().to_string().as_str());
        assert_eq!(r.bytes.len(), body.len());
        assert!(r.bytes == body.as_slice(), "body differs");
    }
    assert_eq!(b.counts().accepts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_without_host_names_the_backend_and_a_declined_upgrade_is_a_plain_answer()
{
    let b = Scripted::start(|req| match req.target.as_str() {
        "/ws" => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno".to_vec()),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let r = raw(&p, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\nok"), "{r}");

    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    within("two answers", s.read_to_end(&mut out))
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{out}");
    assert!(
        out.contains("\r\n\r\nno") && out.ends_with("\r\n\r\nok"),
        "{out}"
    );

    let seen = b.seen();
    let old = seen.iter().find(|s| s.target == "/old").unwrap();
    assert_eq!(old.version, "HTTP/1.1");
    assert_eq!(old.one("host"), Some(b.addr().as_str()));
    assert_eq!(old.one("x-forwarded-host"), None);
    let ws = seen.iter().find(|s| s.target == "/ws").unwrap();
    assert_eq!(ws.one("upgrade"), Some("websocket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switch_a_pinned_connection_of_the_old_generation_is_closed_and_never_reused() {
    let b1 = Scripted::start(|_| {
        Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nb1".to_vec())
    })
    .await;
    let b2 = Scripted::start(|_| {
        Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nb2".to_vec())
    })
    .await;
    let p = start_proxy(&b1, &[]).await;
    let switch = |addr: String| {
        let client = p.client();
        async move {
            within(
                "switch",
                client.set_backend(&SetBackend {
                    addr,
                    drain_timeout: None,
                    protocol: Default::default(),
                }),
            )
            .await
            .expect("switch")
        }
    };
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/").await.body, "b1");
    switch(b2.addr()).await;
    assert_eq!(get(&mut c, "/").await.body, "b2");
    // The first generation's connection, pinned by this client, is let go.
    b1.wait("b1's connection closed by the proxy", |c| {
        c.proxy_closed >= 1
    })
    .await;
    // Back to the same address: a new generation, a new connection.
    switch(b1.addr()).await;
    assert_eq!(get(&mut c, "/").await.body, "b1");
    assert_eq!(get(&mut c, "/").await.body, "b1");
    // (A switch first proves the backend accepts a TCP connection: that
    // probe is an accept with no request, hence no fixed numbers here.)
    let conns: Vec<_> = b1.seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns.len(), 3);
    assert_eq!(conns[0], 0);
    assert_ne!(conns[1], 0, "the old generation's connection was reused");
    assert_eq!(
        conns[1], conns[2],
        "the new generation's connection is pinned"
    );
}

/// Idle connections are handed out per connection thread; one that another
/// thread opened is moved to the taker's event loop (its wake-ups would
/// otherwise cross threads for as long as it stays pinned) and still
/// carries requests. With two threads, the proxy's first client connection
/// runs on one and its second on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_another_thread_opened_is_reused_after_moving_threads() {
    let b = Scripted::routes(&[("/", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]).await;
    let p = start_proxy(&b, &["--workers", "2"]).await;
    // HTTP/2 streams do not pin: the answer's connection goes to the pool
    // as soon as its body has been read, before the client has it all.
    let tcp = within("connect", TcpStream::connect(p.http)).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/", p.http))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within("h2c GET /", h2.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(b.counts().accepts, 1);
    // The second client connection, on the other thread, gets that one.
    let mut c = open(&p).await;
    for _ in 0..3 {
        let r = get(&mut c, "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "ok");
    }
    assert_eq!(
        b.counts().accepts,
        1,
        "the pooled connection was not reused"
    );
    assert_eq!(b.counts().requests, 4);
    assert_eq!(
        p.log_text()
            .matches("idle upstream connection moved to this thread")
            .count(),
        1,
        "{}",
        p.log_text()
    );
}
