//! The upstream every scenario proxies to, run as `handoff-bench backend` in its
//! own process.
//!
//! It lives in a separate process so that a scenario can stop it the way a real
//! deploy stops a container (SIGTERM), and so that its CPU use is visible apart
//! from the load generator's. It answers as cheaply as hyper allows, because
//! the `direct` row of `steady` must show it is not the bottleneck.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::time::Duration;
use tokio::net::TcpListener;

/// Response header naming which backend answered, so a run can prove that
/// traffic really moved from one backend to the next.
pub const ID_HEADER: &str = "x-bench-backend";
/// The longest `/slow` sleep accepted; keeps every request bounded.
const MAX_SLOW_MS: u64 = 60_000;
/// The largest `/bytes?n=N` body (slow-clients' slow readers).
const MAX_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Port on 127.0.0.1 (0 picks a free one; the ready line names it).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Number put in the `x-bench-backend` header of every response.
    #[arg(long, default_value_t = 1)]
    pub id: u8,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Runs until SIGTERM or until stdin closes (the harness died): either way the
/// process exits at once, cutting whatever is in flight, like an application
/// without graceful shutdown (Spring Boot's default) under `docker stop`.
pub fn run(args: BackendArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(args: BackendArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "handoff-bench backend ready addr={addr} id={}",
            args.id
        )?;
        out.flush()?;
    }
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let id = HeaderValue::from(args.id as u16);
    loop {
        tokio::select! {
            _ = term.recv() => std::process::exit(0),
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let id = id.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, id.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    id: HeaderValue,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
        return Ok(websocket(req, &key));
    }
    let (status, body) = match req.uri().path() {
        // Reads the whole body first, as an app parsing a form does (the
        // other routes answer without reading it, and hyper then closes).
        "/upload" => {
            let limited = http_body_util::Limited::new(req.into_body(), MAX_BYTES);
            match http_body_util::BodyExt::collect(limited).await {
                Ok(body) => (
                    StatusCode::OK,
                    Bytes::from(format!("{}\n", body.to_bytes().len())),
                ),
                Err(_) => (
                    StatusCode::BAD_REQUEST,
                    Bytes::from_static(b"body unreadable or over 16 MiB\n"),
                ),
            }
        }
        "/slow" => match slow_ms(req.uri().query()) {
            Some(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                (StatusCode::OK, Bytes::from_static(b"slow\n"))
            }
            None => (
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"want /slow?ms=N, N <= 60000\n"),
            ),
        },
        "/bytes" => match query_num(req.uri().query(), "n=") {
            Some(n) if n as usize <= MAX_BYTES => {
                (StatusCode::OK, Bytes::from(vec![b'b'; n as usize]))
            }
            _ => (
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"want /bytes?n=N, N <= 16777216\n"),
            ),
        },
        _ => (StatusCode::OK, Bytes::from_static(b"ok\n")),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(ID_HEADER, id);
    Ok(resp)
}

/// A WebSocket echo (`upgrade`'s WebSocket clients): every text or binary
/// message is sent back until the client closes.
fn websocket(mut req: Request<Incoming>, key: &HeaderValue) -> Response<Full<Bytes>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
        let _ = ws.close(None).await;
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    resp
}

fn slow_ms(query: Option<&str>) -> Option<u64> {
    let ms = query_num(query, "ms=")?;
    (ms <= MAX_SLOW_MS).then_some(ms)
}

fn query_num(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::slow_ms;

    #[test]
    fn slow_query() {
        assert_eq!(slow_ms(Some("ms=2000")), Some(2000));
        assert_eq!(slow_ms(Some("a=1&ms=5")), Some(5));
        assert_eq!(slow_ms(Some("ms=999999")), None);
        assert_eq!(slow_ms(Some("ms=x")), None);
        assert_eq!(slow_ms(None), None);
    }
}
