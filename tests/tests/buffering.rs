//! Slow clients must not hold backend connections (issue 12, part 3):
//! request bodies and responses are buffered by the proxy
//! (`--request-buffer`, `--response-buffer`), pinned upstream connections
//! of quiet clients go back to the pool, and streams stay streams. Against
//! scripted raw-TCP backends (`handoff_tests::scripted`), which count the
//! connections the proxy opens and record which one each request used.

use bytes::Bytes;
use handoff_tests::request;
use handoff_tests::scripted::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Reads from `s` until what arrived contains `needle`; fails the test if
/// the stream ends first or nothing comes within the scripted limit.
async fn read_until(s: &mut TcpStream, out: &mut Vec<u8>, needle: &[u8], what: &str) {
    within(what, async {
        let mut chunk = [0u8; 16 * 1024];
        while find(out, needle).is_none() {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "{what}: the proxy closed; got {:?}", lossy(out));
            out.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()
}

async fn connect(p: &handoff_tests::proxy::Proxy) -> TcpStream {
    within("connect", TcpStream::connect(p.http)).await.unwrap()
}

/// A GET on a fresh connection that completes: every request the proxy
/// took before it has been read, so what the backend has seen by its answer
/// is what it would ever see of an unfinished request.
async fn barrier(p: &handoff_tests::proxy::Proxy) {
    let r = within("barrier GET", async {
        request::get(p.http, "/barrier").await
    })
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

/// `/echo-len` answers the request's `Content-Length` as the backend saw
/// it; anything else `ok`.
fn ok_backend_routes(req: &Seen) -> Reply {
    match req.target.as_str() {
        "/echo-len" => {
            let len = req.one("content-length").unwrap_or("none");
            Reply::Send(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{len}",
                    len.len()
                )
                .into_bytes(),
            )
        }
        _ => Reply::Send(OK.as_bytes().to_vec()),
    }
}

// ---------------------------------------------------------------------------
// (a) Request bodies.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_small_body_reaches_no_backend_until_it_is_whole_then_goes_with_content_length() {
    let b = Scripted::start(ok_backend_routes).await;
    let p = start_proxy(&b, &[]).await;

    // One body with a length, one chunked: half sent, then nothing.
    let mut sized = connect(&p).await;
    sized
        .write_all(b"POST /echo-len HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    let mut chunked = connect(&p).await;
    chunked
        .write_all(
            b"POST /chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n",
        )
        .await
        .unwrap();
    barrier(&p).await;
    let seen = b.seen();
    assert!(
        seen.iter().all(|s| s.target == "/barrier"),
        "an unfinished body reached the backend: {seen:?}"
    );
    assert_eq!(
        b.counts().accepts,
        1,
        "a backend connection was opened for an unfinished body"
    );

    // The rest arrives: both are forwarded whole, framed by length.
    sized.write_all(b"world").await.unwrap();
    let mut out = Vec::new();
    read_until(
        &mut sized,
        &mut out,
        b"\r\n\r\n10",
        "answer to the sized body",
    )
    .await;
    assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", lossy(&out));
    chunked
        .write_all(b"7\r\n, world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    read_until(
        &mut chunked,
        &mut out,
        b"\r\n\r\nok",
        "answer to the chunked body",
    )
    .await;

    let seen = b.seen();
    let by = |t: &str| seen.iter().find(|s| s.target == t).unwrap().clone();
    let sized = by("/echo-len");
    assert_eq!(sized.body, b"helloworld");
    assert_eq!(sized.one("content-length"), Some("10"));
    let chunked = by("/chunked");
    assert_eq!(chunked.body, b"hello, world");
    assert_eq!(chunked.one("content-length"), Some("12"), "{chunked:?}");
    assert_eq!(chunked.one("transfer-encoding"), None, "{chunked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_request_buffer_streams_to_the_backend_before_it_is_whole() {
    let b = Scripted::start(ok_backend_routes).await;
    let p = start_proxy(&b, &["--request-buffer", "1KiB"]).await;

    // Declared longer than the buffer: streams at once.
    let mut sized = connect(&p).await;
    sized
        .write_all(b"POST /echo-len HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4000\r\n\r\n")
        .await
        .unwrap();
    sized.write_all(&[b's'; 100]).await.unwrap();
    b.wait("the streaming body's head at the backend", |c| c.heads >= 1)
        .await;
    sized.write_all(&[b's'; 3900]).await.unwrap();
    let mut out = Vec::new();
    read_until(
        &mut sized,
        &mut out,
        b"\r\n\r\n4000",
        "answer to the sized body",
    )
    .await;

    // Chunked, turning out longer than the buffer: what was read goes
    // first, the rest streams, still chunked.
    let mut chunked = connect(&p).await;
    chunked
        .write_all(
            b"POST /chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    let piece = format!("800\r\n{}\r\n", "c".repeat(0x800));
    chunked.write_all(piece.as_bytes()).await.unwrap();
    b.wait("the streaming chunked body's head at the backend", |c| {
        c.heads >= 2
    })
    .await;
    chunked.write_all(piece.as_bytes()).await.unwrap();
    chunked.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    read_until(
        &mut chunked,
        &mut out,
        b"\r\n\r\nok",
        "answer to the chunked body",
    )
    .await;

    let seen = b.seen();
    let by = |t: &str| seen.iter().find(|s| s.target == t).unwrap().clone();
    let sized = by("/echo-len");
    assert_eq!(sized.body.len(), 4000);
    assert_eq!(sized.one("content-length"), Some("4000"));
    let chunked = by("/chunked");
    assert_eq!(chunked.body, "c".repeat(0x1000).as_bytes());
    assert_eq!(chunked.one("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.one("content-length"), None);
}

// ---------------------------------------------------------------------------
// (b) Responses to clients that do not read.

/// A response of `len` bytes, all sent at once.
fn big_response(len: usize) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    r.extend(std::iter::repeat_n(b'b', len));
    r
}

const BIG: usize = 512 * 1024;

fn big_or_ok(req: &Seen) -> Reply {
    match req.target.as_str() {
        "/big" => Reply::Send(big_response(BIG)),
        _ => Reply::Send(OK.as_bytes().to_vec()),
    }
}

/// HTTP/2 streams do not pin, so this shows the buffering alone: the
/// response head reaches the client only after the whole body is off the
/// backend connection, which is then free for anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_the_client_does_not_read_frees_its_backend_connection_for_another_request() {
    let b = Scripted::start(big_or_ok).await;
    let p = start_proxy(&b, &["--response-buffer", "1MiB"]).await;

    // A client with a small window that never reads the body.
    let tcp = connect(&p).await;
    let (mut h2, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(16 * 1024)
            .initial_connection_window_size(16 * 1024)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/big", p.http))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within("h2c GET /big", h2.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(b.counts().accepts, 1);

    // Another client's request goes over the same backend connection.
    let r = request::get(p.http, "/next").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    let seen = b.seen();
    let next = seen.iter().find(|s| s.target == "/next").unwrap();
    assert_eq!(
        (next.conn, b.counts().accepts),
        (0, 1),
        "the unread response kept its backend connection: {seen:?}"
    );

    // And the slow client still gets every byte once it reads.
    let body = within(
        "the unread body",
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .unwrap()
    .to_bytes();
    assert_eq!(body.len(), BIG);
}

/// A client with a receive buffer of a few KiB that stops reading.
async fn slow_reader(p: &handoff_tests::proxy::Proxy) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    within("connect", socket.connect(p.http)).await.unwrap()
}

/// Reads the slow client's whole answer at last: nothing was lost.
async fn read_big(slow: &mut TcpStream, mut out: Vec<u8>) {
    let body_at = find(&out, b"\r\n\r\n").unwrap() + 4;
    within("the slow client's body", async {
        let mut chunk = [0u8; 64 * 1024];
        while out.len() - body_at < BIG {
            let n = slow.read(&mut chunk).await.expect("read");
            assert!(n > 0, "cut after {} body bytes", out.len() - body_at);
            out.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert_eq!(out.len() - body_at, BIG);
}

/// The first answer on an HTTP/1 connection: once its head reaches the
/// client, the whole body is off the backend connection, which is in the
/// pool for anyone, however slowly the client reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_holds_no_backend_connection() {
    let b = Scripted::start(big_or_ok).await;
    let p = start_proxy(&b, &["--response-buffer", "1MiB", "--workers", "1"]).await;
    let mut slow = slow_reader(&p).await;
    slow.write_all(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    read_until(&mut slow, &mut out, b"\r\n\r\n", "the slow client's head").await;

    let r = request::get(p.http, "/next").await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = b.seen();
    let next = seen.iter().find(|s| s.target == "/next").unwrap();
    assert_eq!(
        (next.conn, b.counts().accepts),
        (0, 1),
        "the slow client kept its backend connection: {seen:?}"
    );
    read_big(&mut slow, out).await;
}

/// From its second request on, an HTTP/1 client connection keeps its
/// upstream connection pinned for its next request, but not while it stops
/// reading: the pin goes back to the pool, and other clients use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_backend_connection_is_released_when_its_client_stops_reading() {
    let b = Scripted::start(big_or_ok).await;
    let p = start_proxy(&b, &["--response-buffer", "1MiB", "--workers", "1"]).await;
    let mut slow = slow_reader(&p).await;
    slow.write_all(b"GET /ok HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    read_until(&mut slow, &mut out, b"\r\n\r\nok", "the first answer").await;
    // The second request takes the pooled connection 0 and pins it.
    slow.write_all(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    read_until(&mut slow, &mut out, b"\r\n\r\n", "the slow client's head").await;

    // Two other clients at a time, so the pool's newest connection cannot
    // hide an older one, until a request goes over connection 0 (bounded:
    // 10 s, 200 rounds).
    let reused = within("a request on the slow client's backend connection", async {
        for _ in 0..200 {
            let (r1, r2) =
                tokio::join!(request::get(p.http, "/next"), request::get(p.http, "/next"));
            assert_eq!((r1.status, r2.status), (StatusCode::OK, StatusCode::OK));
            if b.seen().iter().any(|s| s.target == "/next" && s.conn == 0) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        reused,
        "the slow client's pinned connection was never released"
    );
    read_big(&mut slow, out).await;
}

// ---------------------------------------------------------------------------
// (c) Streams stay streams.

/// The backend sends a head and the start of a body, then nothing more until
/// the proxy closes: whatever the client gets, it got while the backend had
/// not finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_opted_out_grpc_and_large_responses_reach_the_client_before_the_backend_finishes(
) {
    let long_chunked = {
        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..20 {
            r.extend_from_slice(format!("1000\r\n{}\r\n", "L".repeat(0x1000)).as_bytes());
        }
        r.extend_from_slice(b"5\r\nLMARK\r\n");
        r
    };
    let b = Scripted::start(move |req| {
        let raw: Vec<u8> = match req.target.as_str() {
            "/sse" => b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                        Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
                .to_vec(),
            "/opted-out" => b"HTTP/1.1 200 OK\r\nX-Accel-Buffering: no\r\n\
                              Content-Length: 100\r\n\r\nfirst part"
                .to_vec(),
            "/grpc" => b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\n\
                         Transfer-Encoding: chunked\r\n\r\n5\r\ngrpc!\r\n"
                .to_vec(),
            "/large-length" => {
                let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nLARGE".to_vec();
                r.extend(std::iter::repeat_n(b'l', 1000));
                r
            }
            "/large-chunked" => long_chunked.clone(),
            _ => return Reply::Send(OK.as_bytes().to_vec()),
        };
        Reply::Hold(raw)
    })
    .await;
    let p = start_proxy(&b, &[]).await;
    for (path, mark) in [
        ("/sse", &b"data: 1"[..]),
        ("/opted-out", b"first part"),
        ("/grpc", b"grpc!"),
        ("/large-length", b"LARGE"),
        ("/large-chunked", b"LLLL"),
    ] {
        let mut s = connect(&p).await;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        read_until(&mut s, &mut out, mark, path).await;
        assert!(
            out.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{path}: {}",
            lossy(&out)
        );
    }
}
