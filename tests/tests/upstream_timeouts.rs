//! The backend's silence, against scripted backends
//! (`handoff_tests::scripted`): a backend quiet past the upstream timeout
//! before its answer or in the middle of it is 504 or a cut response, one
//! that keeps sending slowly is not cut, and one that neither reads an
//! upload nor answers is 504. The rest of an upstream connection's life is
//! in upstream_connections.rs.

use handoff_tests::request;
use handoff_tests::scripted::*;
use http::StatusCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_silent_past_the_upstream_timeout_is_504_and_the_proxy_keeps_serving() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/silent" => Reply::Hold(Vec::new()),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &["--upstream-timeout", "300ms"]).await;
    let mut c = open(&p).await;
    let started = Instant::now();
    let r = get(&mut c, "/silent").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.body, "upstream timed out\n");
    assert!(
        took >= Duration::from_millis(250),
        "504 after only {took:?}"
    );
    assert!(took < Duration::from_secs(5), "504 only after {took:?}");
    // The proxy gave the silent connection up.
    b.wait("the silent connection closed by the proxy", |c| {
        c.proxy_closed >= 1
    })
    .await;
    // Same client connection, then a new one.
    assert_eq!(get(&mut c, "/ok").await.body, "ok");
    assert_eq!(request::get(p.http, "/ok").await.body, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_stalling_mid_body_past_the_upstream_timeout_cuts_the_response() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/stall-length" => {
            Reply::Hold(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..".to_vec())
        }
        "/stall-chunked" => Reply::Hold(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten..\r\n".to_vec(),
        ),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &["--upstream-timeout", "300ms"]).await;
    for (i, path) in ["/stall-length", "/stall-chunked"].into_iter().enumerate() {
        // Raw, to see what did arrive: the head and the first ten bytes,
        // then the connection ends without the rest.
        let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n");
        let mut s = TcpStream::connect(p.http).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        let read = within(&format!("{path}: the proxy ends the response"), async {
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => out.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n"),
            "{path}: {text:?} {read:?}"
        );
        assert!(text.contains("only ten.."), "{path}: {text:?}");
        match path {
            // Fewer bytes than the length promised.
            "/stall-length" => {
                assert!(text.contains("content-length: 100"), "{text:?}");
                let body = &out[find(&out, b"\r\n\r\n").unwrap() + 4..];
                assert_eq!(body, b"only ten..");
            }
            // No last chunk.
            _ => assert!(!text.ends_with("0\r\n\r\n"), "{text:?}"),
        }
        b.wait("the stalled connection closed by the proxy", |c| {
            c.proxy_closed > i
        })
        .await;
        assert_eq!(request::get(p.http, "/ok").await.body, "ok", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_that_keeps_sending_is_not_cut_by_the_upstream_timeout() {
    // Twelve pieces 50 ms apart: 600 ms in all, twice the timeout, but never
    // silent for long.
    let mut pieces = vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()];
    for i in 0..11 {
        pieces.push(format!("1\r\n{}\r\n", (b'a' + i) as char).into_bytes());
    }
    pieces.push(b"0\r\n\r\n".to_vec());
    let b = Scripted::start(move |_| Reply::Drip(pieces.clone(), Duration::from_millis(50))).await;
    let p = start_proxy(&b, &["--upstream-timeout", "300ms"]).await;
    let mut c = open(&p).await;
    let r = get(&mut c, "/drip").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "abcdefghijk"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_neither_reads_an_upload_nor_answers_is_504() {
    let b = Scripted::start(|req| match req.target.as_str() {
        "/stuck" => Reply::HoldUnread,
        _ => Reply::Send(OK.as_bytes().to_vec()),
    })
    .await;
    let p = start_proxy(&b, &["--upstream-timeout", "300ms"]).await;
    // Far more than the socket buffers between proxy and backend hold, so
    // the proxy's writes stall, not only its wait for an answer.
    let out = upload(&p, "/stuck", 8 * 1024 * 1024, b"upstream timed out\n").await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
        "{text:?}"
    );
    b.wait("the stuck connection closed by the proxy", |c| {
        c.proxy_closed >= 1
    })
    .await;
    assert_eq!(request::get(p.http, "/ok").await.body, "ok");
}
