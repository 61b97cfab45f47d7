//! What the proxy's own HTTP/1.1 client (proxy/src/upstream) writes to a
//! backend, against scripted backends (`handoff_tests::scripted`): request
//! body framing (length, chunked, empty), the head the backend sees (`Host`
//! kept, forwarding fields set, no hop-by-hop field), `Expect: 100-continue`.
//! What it reads back is in upstream_framing.rs.

use handoff_tests::scripted::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_backend_intact_with_length_chunked_or_empty_framing() {
    let b = Scripted::start(|_| Reply::Send(OK.as_bytes().to_vec())).await;
    let p = start_proxy(&b, &[]).await;

    // Content-Length body, large enough for many writes.
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut c = open(&p).await;
    let req = post("/length", payload.clone());
    assert_eq!(send(&mut c, req).await.status, StatusCode::OK);

    // A chunked client body, with extensions and a trailer.
    let chunked = "POST /chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                   5;ext=1\r\nhello\r\n1\r\n,\r\n7\r\n world!\r\n0\r\nx-trailer: t\r\n\r\n";
    let r = raw(&p, chunked.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");

    // An empty POST without any framing, and one with Content-Length: 0.
    let r = raw(
        &p,
        b"POST /empty HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    let r = raw(
        &p,
        b"POST /empty-cl HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");

    let seen = b.seen();
    let by = |t: &str| seen.iter().find(|s| s.target == t).unwrap().clone();

    let length = by("/length");
    assert_eq!(length.one("content-length"), Some("1048576"));
    assert_eq!(length.one("transfer-encoding"), None);
    assert_eq!(length.body.len(), payload.len());
    assert!(length.body == payload, "Content-Length body differs");

    let chunked = by("/chunked");
    assert_eq!(chunked.one("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.one("content-length"), None);
    assert_eq!(String::from_utf8_lossy(&chunked.body), "hello, world!");

    for t in ["/empty", "/empty-cl"] {
        let empty = by(t);
        assert_eq!(empty.one("content-length"), Some("0"), "{t}: {empty:?}");
        assert_eq!(empty.one("transfer-encoding"), None, "{t}");
        assert!(empty.body.is_empty());
    }
    assert!(seen
        .iter()
        .all(|s| s.method == "POST" && s.version == "HTTP/1.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sees_host_kept_forwarding_headers_set_and_no_hop_by_hop_fields() {
    let b = Scripted::start(|_| Reply::Send(OK.as_bytes().to_vec())).await;
    let p = start_proxy(&b, &[]).await;
    let req = "GET /path/x?q=1&r=%20 HTTP/1.1\r\n\
               Host: shop.example:8443\r\n\
               X-Forwarded-For: 203.0.113.9\r\n\
               X-Forwarded-For: 198.51.100.2\r\n\
               X-Forwarded-Proto: gopher\r\n\
               X-Forwarded-Host: evil.test\r\n\
               Connection: keep-alive, X-Hop\r\n\
               X-Hop: secret\r\n\
               Keep-Alive: timeout=5\r\n\
               TE: trailers\r\n\
               Proxy-Authorization: Basic c2VjcmV0\r\n\
               Proxy-Connection: keep-alive\r\n\
               Upgrade: h2c\r\n\
               X-App: kept\r\n\
               X-App: twice\r\n\
               Authorization: Bearer end-to-end\r\n\
               \r\n";
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head = within("response head", read_head(&mut s, &mut buf))
        .await
        .expect("a response");
    assert!(
        head.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );

    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str(), r.version.as_str()),
        ("GET", "/path/x?q=1&r=%20", "HTTP/1.1")
    );
    assert_eq!(r.one("host"), Some("shop.example:8443"));
    assert_eq!(
        r.one("x-forwarded-for"),
        Some("203.0.113.9, 198.51.100.2, 127.0.0.1")
    );
    assert_eq!(r.one("x-forwarded-proto"), Some("http"));
    assert_eq!(r.one("x-forwarded-host"), Some("shop.example:8443"));
    assert_eq!(r.all("x-app"), ["kept", "twice"]);
    assert_eq!(r.one("authorization"), Some("Bearer end-to-end"));
    // `TE: trailers` is passed on, named in Connection as RFC 9110 §10.1.4
    // asks (issue 12.5); nothing else of either field is.
    assert_eq!(r.one("te"), Some("trailers"));
    assert_eq!(r.one("connection"), Some("te"));
    for hop in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
        "content-length",
    ] {
        assert!(r.all(hop).is_empty(), "{hop} reached the backend: {r:?}");
    }
    // Host comes first, as the request line's companion.
    assert_eq!(r.headers[0].0, "host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_expecting_100_continue_gets_one_100_and_its_body_is_delivered() {
    // The backend also sends its own 100 before the final answer.
    let b = Scripted::start(|_| {
        Reply::Send(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"
                .to_vec(),
        )
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    // The client sends its body only once told to continue.
    let interim = within("100 Continue", read_head(&mut s, &mut buf))
        .await
        .unwrap();
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    s.write_all(b"hello").await.unwrap();
    let head = within("final head", read_head(&mut s, &mut buf))
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(
        within("body", take(&mut s, &mut buf, 4)).await.unwrap(),
        b"done"
    );
    assert_eq!(b.seen()[0].body, b"hello");
}
