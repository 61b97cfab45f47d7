//! One-shot HTTP/1.1 requests for assertions (status, headers, body).

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as text (lossy); `bytes` has it exactly.
    pub body: String,
    pub bytes: Bytes,
}

/// A keep-alive connection for tests that care which connection is used.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Conn { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            bytes: body,
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, hyper::Error> {
        self.send(get_req(path)).await
    }
}

pub fn get_req(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "app.test")
        .body(Full::default())
        .unwrap()
}

/// A GET with this `Host` header on a fresh connection (bounded by 30 s),
/// for a proxy that routes apps by host name.
pub async fn get_host(addr: SocketAddr, host: &str, path: &str) -> Reply {
    let req = Request::get(path)
        .header("host", host)
        .body(Full::default())
        .unwrap();
    send(addr, req).await
}

/// A GET on a fresh connection, bounded by 30 s so a hang fails the test.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, get_req(path)).await
}

pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    tokio::time::timeout(Duration::from_secs(30), async {
        Conn::open(addr).await.send(req).await
    })
    .await
    .expect("request timed out")
    .expect("request failed")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes. For states
/// that no event announces (a counter reaching a value).
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One request on the control socket, any method and path, raw body: for
/// endpoints and malformed bodies the typed `ControlClient` does not send.
pub async fn control(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
) -> Result<Reply, String> {
    let body = body.into();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    // As the typed client does: a body is JSON.
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(body)).unwrap();
    let run = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect {}: {e}", socket.display()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            bytes: body,
        })
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| "control request timed out".to_string())?
}

/// Writes `bytes` on a fresh TCP connection and reads until the server closes
/// (or 10 s pass): for requests no well-behaved client library would send.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status line of a raw response (`HTTP/1.1 400 Bad Request`), or "" if
/// the server closed without answering.
pub fn status_line(response: &str) -> &str {
    response.split("\r\n").next().unwrap_or("")
}
