//! Trailer fields through the proxy (issue 12, part 5), against scripted
//! HTTP/1.1 backends (`handoff_tests::scripted`) so every byte of the
//! chunked framing is the test's: backend -> client over HTTP/1.1 (when the
//! client sent `TE: trailers`) and over HTTP/2; client -> backend from a
//! chunked HTTP/1.1 request and from an HTTP/2 one. Fields that would change
//! framing, routing or what the proxy vouches for never pass in a trailer.

use bytes::Bytes;
use handoff_tests::scripted::*;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A chunked answer with three trailer fields, two of which (a framing
/// field and a forwarding field) the proxy must drop.
const WITH_TRAILERS: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
     Trailer: x-checksum, grpc-status\r\n\r\n\
     5\r\nhello\r\n0\r\nx-checksum: abc\r\ngrpc-status: 0\r\n\
     content-length: 99\r\nx-forwarded-host: evil.test\r\n\r\n";

async fn trailer_backend() -> Scripted {
    Scripted::start(|_| Reply::Send(WITH_TRAILERS.as_bytes().to_vec())).await
}

/// The response bytes after the head, for a raw HTTP/1.1 request.
fn body_part(response: &str) -> &str {
    let at = response.find("\r\n\r\n").expect("a complete head") + 4;
    &response[at..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_reach_an_http11_client_that_sent_te_trailers() {
    let b = trailer_backend().await;
    let p = start_proxy(&b, &[]).await;

    let asked = raw(
        &p,
        b"GET /t HTTP/1.1\r\nHost: app.test\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(asked.starts_with("HTTP/1.1 200"), "{asked}");
    let head = asked.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{asked}");
    assert!(head.contains("trailer: x-checksum, grpc-status"), "{asked}");
    assert_eq!(
        body_part(&asked),
        "5\r\nhello\r\n0\r\nx-checksum: abc\r\ngrpc-status: 0\r\n\r\n",
        "the declared trailers follow the last chunk, nothing else does"
    );

    // Without `TE: trailers` the client gets the body and no trailer.
    let plain = raw(
        &p,
        b"GET /t HTTP/1.1\r\nHost: app.test\r\nTE: gzip\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(body_part(&plain), "5\r\nhello\r\n0\r\n\r\n", "{plain}");

    // `TE: trailers` is passed on to the backend; other TE offers are not.
    let seen = b.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].one("te"), Some("trailers"));
    assert_eq!(seen[1].one("te"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_trailers_reach_the_backend_without_forbidden_fields() {
    let b = Scripted::start(|_| Reply::Send(OK.as_bytes().to_vec())).await;
    let p = start_proxy(&b, &[]).await;

    let answer = raw(
        &p,
        b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\
          Trailer: x-sum\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\nx-forwarded-for: 6.6.6.6\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"hello world");
    assert_eq!(seen[0].one("trailer"), Some("x-sum"));
    assert_eq!(
        seen[0].trailers,
        vec![("x-sum".to_string(), "42".to_string())],
        "the trailer arrives; the forwarding field in it does not"
    );
    assert_eq!(seen[0].all("x-forwarded-for"), vec!["127.0.0.1"]);
}

/// An HTTP/2 (prior knowledge) connection to the proxy's plain listener.
async fn h2(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_both_ways_between_an_http2_client_and_an_http11_backend() {
    let b = trailer_backend().await;
    let p = start_proxy(&b, &[]).await;
    let mut client = h2(p.http).await;

    let mut sent = HeaderMap::new();
    sent.insert("x-sum", HeaderValue::from_static("42"));
    sent.insert("host", HeaderValue::from_static("evil.test"));
    // No length, as a gRPC client sends it: the backend gets it chunked,
    // the one HTTP/1.1 framing that can carry trailers.
    let frames = [
        Ok(Frame::data(Bytes::from_static(b"ping"))),
        Ok(Frame::trailers(sent)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let req = Request::post("http://app.test/rpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = within("h2 request", client.send_request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = within("h2 body", resp.into_body().collect())
        .await
        .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers over HTTP/2");
    assert_eq!(collected.to_bytes(), "hello");
    assert_eq!(trailers["x-checksum"], "abc");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        trailers.len(),
        2,
        "framing and forwarding fields dropped: {trailers:?}"
    );

    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"ping");
    assert_eq!(seen[0].one("transfer-encoding"), Some("chunked"));
    assert_eq!(seen[0].one("te"), Some("trailers"));
    assert_eq!(seen[0].one("host"), Some("app.test"));
    assert_eq!(
        seen[0].trailers,
        vec![("x-sum".to_string(), "42".to_string())]
    );
}
