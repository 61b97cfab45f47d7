//! What the proxy's own HTTP/1.1 client (proxy/src/upstream) reads back,
//! against scripted backends (`handoff_tests::scripted`): interim answers,
//! chunked bodies and answers that arrive in pieces, refusal of ambiguous,
//! malformed or oversized answers, bodiless statuses, bytes beyond an
//! answer, hop-by-hop fields of answers. What it writes to a backend is in
//! upstream_requests.rs.

use handoff_tests::request;
use handoff_tests::scripted::*;
use http::StatusCode;
use std::time::Duration;

// ---------------------------------------------------------------------------
// 1. Interim answers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_100_and_103_answers_are_skipped_and_the_final_200_arrives_with_its_body() {
    let b = Scripted::routes(&[
        (
            "/interim",
            "HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Final: yes\r\n\r\nhello world",
        ),
        (
            "/post",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated",
        ),
    ])
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;

    let r = get(&mut c, "/interim").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "hello world");
    assert_eq!(r.headers["x-final"], "yes");

    let r = send(&mut c, post("/post", "payload")).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::CREATED, "created")
    );

    // Nothing of the interim answers was left behind on the connection.
    let r = get(&mut c, "/interim").await;
    assert_eq!(r.body, "hello world");
    assert_eq!(b.counts().accepts, 1);
    let seen = b.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].body, b"payload");
}

// ---------------------------------------------------------------------------
// 2. Chunked responses.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_with_extensions_and_trailers_is_decoded_and_its_connection_reused() {
    let b = Scripted::routes(&[(
        "/chunked",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
         5;name=value\r\nhello\r\n\
         1 ; quoted=\"a;b\"\r\n,\r\n\
         A\r\n chunked b\r\n\
         3;last\r\node\r\n\
         0;end=1\r\nx-checksum: abc\r\nx-other: 1\r\n\r\n",
    )])
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    for _ in 0..2 {
        let r = get(&mut c, "/chunked").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "hello, chunked bode");
        // The trailer is no header; `Trailer` itself is end-to-end (RFC 9110
        // §6.6.2), and this client did not ask for trailers (trailers.rs).
        assert!(r.headers.get("x-checksum").is_none(), "{:?}", r.headers);
        assert_eq!(r.headers["trailer"], "x-checksum");
    }
    let seen = b.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        b.counts().accepts,
        1,
        "two requests, one upstream connection"
    );
    assert_eq!((seen[0].conn, seen[1].conn), (0, 0));
    assert_eq!((seen[0].nth, seen[1].nth), (0, 1));
}

// ---------------------------------------------------------------------------
// 4. Ambiguous and malformed responses.

#[rustfmt::skip]
const AMBIGUOUS: &[(&str, &str)] = &[
    ("/cl-and-te", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("/te-and-cl", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("/two-lengths", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("/length-list", "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!"),
    ("/signed-length", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"),
    ("/te-gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello"),
    ("/te-gzip-chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("/te-twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("/bad-status", "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n"),
    ("/no-status-line", "hello there\r\n\r\n"),
    ("/obs-fold", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
    ("/unasked-101", "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_malformed_responses_are_502_and_the_proxy_keeps_serving() {
    let b = Scripted::start(|req| {
        let raw = AMBIGUOUS
            .iter()
            .find(|(path, _)| *path == req.target)
            .map_or(OK, |(_, raw)| *raw);
        // Kept open: the proxy, not the backend, must give the connection up.
        Reply::Send(raw.as_bytes().to_vec())
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    let mut wrong = Vec::new();
    for (path, _) in AMBIGUOUS {
        let r = get(&mut c, path).await;
        if r.status != StatusCode::BAD_GATEWAY {
            wrong.push(format!("{path}: {} {:?}", r.status, r.body));
        }
        // The same client connection goes on being served.
        let r = get(&mut c, "/ok").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "ok"),
            "{path}"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    let seen = b.seen();
    assert_eq!(seen.len(), 2 * AMBIGUOUS.len(), "a request was retried");
    // A connection that gave an ambiguous answer never carries another request.
    for pair in seen.chunks(2) {
        let (bad, next) = (&pair[0], &pair[1]);
        assert_eq!(next.target, "/ok");
        assert_ne!(
            bad.conn, next.conn,
            "{} was followed on its connection",
            bad.target
        );
    }
    b.wait("the proxy closed every refused connection", |c| {
        c.proxy_closed >= AMBIGUOUS.len()
    })
    .await;
    // And from a fresh client too.
    assert_eq!(request::get(p.http, "/ok").await.body, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_or_a_short_one_cuts_the_response_and_its_connection_is_dropped() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/bad-chunk" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n"
                .to_vec(),
        ),
        "/short" => Reply::SendClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..".to_vec(),
        ),
        "/short-chunked" => Reply::SendClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    for path in ["/bad-chunk", "/short", "/short-chunked"] {
        let mut c = open(&p).await;
        let r = within(path, c.get(path)).await;
        assert!(r.is_err(), "{path}: a cut body arrived as complete: {r:?}");
        assert_eq!(request::get(p.http, "/ok").await.body, "ok", "{path}");
    }
    let seen = b.seen();
    let bad_chunk = seen.iter().find(|s| s.target == "/bad-chunk").unwrap();
    assert!(
        seen.iter()
            .filter(|s| s.conn == bad_chunk.conn)
            .all(|s| s.target == "/bad-chunk"),
        "the connection with broken framing was reused: {seen:?}"
    );
}

// ---------------------------------------------------------------------------
// 6. Responses without a body whatever their headers say.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_have_no_body_despite_their_length_and_the_connection_is_reused() {
    let b = Scripted::start(|req| {
        let raw = match (req.method.as_str(), req.target.as_str()) {
            ("HEAD", "/head") => {
                "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Mark: head\r\n\r\n"
            }
            ("HEAD", "/head-chunked") => {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Mark: head-chunked\r\n\r\n"
            }
            (_, "/204") => "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Mark: 204\r\n\r\n",
            (_, "/304") => {
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nETag: \"v1\"\r\nX-Mark: 304\r\n\r\n"
            }
            _ => OK,
        };
        Reply::Send(raw.as_bytes().to_vec())
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;

    let r = send(&mut c, head("/head")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-mark"], "head");
    assert_eq!(r.headers["content-length"], "1234", "{:?}", r.headers);
    assert!(r.bytes.is_empty());

    let r = send(&mut c, head("/head-chunked")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-mark"], "head-chunked");
    assert!(r.bytes.is_empty());

    let r = get(&mut c, "/204").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.headers["x-mark"], "204");
    assert!(r.bytes.is_empty());

    let r = get(&mut c, "/304").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers["x-mark"], "304");
    assert_eq!(r.headers["etag"], "\"v1\"");
    assert!(r.bytes.is_empty());

    // Had the proxy waited for those bodies, this would hang or be garbled.
    assert_eq!(get(&mut c, "/ok").await.body, "ok");
    assert_eq!(
        b.counts().accepts,
        1,
        "five requests, one upstream connection"
    );
    assert!(b.seen().iter().all(|s| s.conn == 0));
}

// ---------------------------------------------------------------------------
// 10. Hop-by-hop fields of answers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_hop_by_hop_fields_are_not_relayed_and_end_to_end_ones_are() {
    let b = Scripted::routes(&[
        (
            "/connection-first",
            "HTTP/1.1 200 OK\r\nConnection: x-foo, keep-alive\r\nX-Foo: secret\r\nKeep-Alive: timeout=5\r\n\
             X-End: kept\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nProxy-Authenticate: Basic\r\n\
             Trailer: x-t\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "/connection-last",
            "HTTP/1.1 200 OK\r\nX-Foo: secret\r\nX-Bar: secret too\r\nX-End: kept\r\nKeep-Alive: max=9\r\n\
             Connection: X-Foo\r\nConnection: x-bar\r\nContent-Length: 2\r\n\r\nok",
        ),
    ])
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    for path in ["/connection-first", "/connection-last"] {
        let r = get(&mut c, path).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "ok"),
            "{path}"
        );
        assert_eq!(r.headers["x-end"], "kept", "{path}");
        for hop in [
            "x-foo",
            "x-bar",
            "keep-alive",
            "proxy-authenticate",
            "upgrade",
        ] {
            assert!(
                r.headers.get(hop).is_none(),
                "{path}: {hop} was relayed: {:?}",
                r.headers
            );
        }
        for v in r.headers.get_all("connection") {
            let v = v.to_str().unwrap().to_ascii_lowercase();
            assert!(!v.contains("x-foo") && !v.contains("x-bar"), "{path}: {v}");
        }
        if path == "/connection-first" {
            let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
            assert_eq!(cookies, ["a=1", "b=2"]);
        }
    }
    // `Connection` naming fields is no reason to close.
    assert_eq!(b.counts().accepts, 1);
}

// ---------------------------------------------------------------------------
// More framing edge cases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_backend_sends_beyond_its_answer_are_never_taken_for_the_next_answer() {
    let b = Scripted::start(|req| match (req.conn, req.target.as_str()) {
        // A second, unasked response right behind the first.
        (_, "/extra") => Reply::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
                .to_vec(),
        ),
        // A body behind an answer to HEAD.
        (_, "/head-with-body") => Reply::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled".to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    assert_eq!(get(&mut c, "/extra").await.body, "ok");
    let r = get(&mut c, "/next").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));

    let r = send(&mut c, head("/head-with-body")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.bytes.is_empty());
    let r = get(&mut c, "/next").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));

    // Each request after a dirty answer went on another connection.
    let seen: Vec<_> = b
        .seen()
        .iter()
        .map(|s| (s.target.clone(), s.conn))
        .collect();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for pair in seen.chunks(2) {
        assert_eq!(pair[1].0, "/next");
        assert_ne!(pair[0].1, pair[1].1, "reused after unread bytes: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_heads_are_502() {
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 2\r\n\r\nok");
    let huge = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(200 * 1024)
    );
    let b = Scripted::start(move |req| {
        Reply::Send(
            match req.target.as_str() {
                "/many" => many.as_str(),
                "/huge" => huge.as_str(),
                _ => OK,
            }
            .as_bytes()
            .to_vec(),
        )
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    for path in ["/many", "/huge"] {
        let r = get(&mut c, path).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path}");
        assert_eq!(get(&mut c, "/ok").await.body, "ok", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_just_over_64_kib_is_502() {
    // http1.rs: `MAX_HEAD` "the largest response head accepted" is 64 KiB.
    let head = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(66 * 1024)
    );
    let b = Scripted::start(move |req| match req.target.as_str() {
        "/big" => Reply::Send(head.as_bytes().to_vec()),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    let r = get(&mut c, "/big").await;
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "a 66 KiB response head was relayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_arriving_in_awkward_pieces_is_put_back_together() {
    // Split inside the status line, a field, the blank line, an interim
    // answer, a chunk-size line, chunk data and the CRLFs around them.
    let pieces: Vec<Vec<u8>> = [
        "HTTP/1.1 10",
        "3 Early Hints\r\nLink: </a>\r",
        "\n\r",
        "\nHTTP/1.1 200 OK\r\nTransfer-Enc",
        "oding: chunked\r\nX-Y: z\r\n\r",
        "\n5",
        ";e=1\r",
        "\nhel",
        "lo\r",
        "\n0\r\n",
        "x-trailer: 1\r\n",
        "\r\n",
    ]
    .iter()
    .map(|p| p.as_bytes().to_vec())
    .collect();
    let b = Scripted::start(move |_| Reply::Drip(pieces.clone(), Duration::from_millis(15))).await;
    let p = start_proxy(&b, &[]).await;
    let mut c = open(&p).await;
    for _ in 0..2 {
        let r = get(&mut c, "/pieces").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "hello"));
        assert_eq!(r.headers["x-y"], "z");
    }
    assert_eq!(b.counts().accepts, 1);
}
