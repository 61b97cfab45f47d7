//! Real HTTP backends on 127.0.0.1:0, run inside the test process.
//!
//! Routes: `/` answers the backend's name; `/slow?ms=N` answers it after N ms;
//! `/hold` answers it once the test calls [`Backend::open_gate`];
//! `/headers` answers the request headers as JSON; `/echo` streams the request
//! body back; any request with `Upgrade` gets 101 and its bytes echoed.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
}

struct Stats {
    requests: AtomicU64,
    active: AtomicU64,
    /// `/hold` requests wait until this is true: requests that end exactly
    /// when the test says so, whatever the machine's speed.
    gate: watch::Sender<bool>,
}

type Body = BoxBody<Bytes, hyper::Error>;

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats {
            requests: AtomicU64::new(0),
            active: AtomicU64::new(0),
            gate: watch::Sender::new(false),
        });
        let (stop, stop_rx) = watch::channel(false);
        let name = name.to_string();
        tokio::spawn(accept_loop(
            listener,
            name.clone(),
            Arc::clone(&stats),
            stop_rx,
        ));
        Backend {
            addr,
            name,
            stats,
            stop,
        }
    }

    /// Lets every `/hold` request (waiting or still to come) answer.
    pub fn open_gate(&self) {
        self.stats.gate.send_replace(true);
    }

    /// `127.0.0.1:PORT`, as the control API wants it.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// Requests this backend has received (counted when the head arrives).
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// Requests currently being answered.
    pub fn active(&self) -> u64 {
        self.stats.active.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: String,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let name = name.clone();
        let stats = Arc::clone(&stats);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                handle(req, name.clone(), Arc::clone(&stats))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        });
    }
}

struct ActiveGuard(Arc<Stats>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    mut req: Request<Incoming>,
    name: String,
    stats: Arc<Stats>,
) -> Result<Response<Body>, hyper::Error> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    stats.active.fetch_add(1, Ordering::SeqCst);
    let _guard = ActiveGuard(Arc::clone(&stats));
    if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
        return Ok(websocket(req, key, stats));
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let guard = ActiveGuard(Arc::clone(&stats));
        stats.active.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _guard = guard;
            if let Ok(upgraded) = on_upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", req.headers()["upgrade"].clone())
            .body(full(""))
            .unwrap());
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    match path.as_str() {
        "/hold" => {
            let mut gate = stats.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            Ok(Response::new(full(name)))
        }
        "/slow" => {
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Response::new(full(name)))
        }
        "/headers" => {
            let map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .keys()
                .map(|k| {
                    let all: Vec<_> = req
                        .headers()
                        .get_all(k)
                        .iter()
                        .map(|v| v.to_str().unwrap_or("").to_string())
                        .collect();
                    (
                        k.as_str().to_string(),
                        serde_json::Value::String(all.join(" | ")),
                    )
                })
                .collect();
            Ok(Response::new(full(serde_json::to_string(&map).unwrap())))
        }
        "/echo" => Ok(Response::new(req.into_body().boxed())),
        _ => Ok(Response::new(full(name))),
    }
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// A real WebSocket endpoint: handshake, then every text or binary message
/// echoed back, until the client closes. Counted as active while open.
fn websocket(
    mut req: Request<Incoming>,
    key: http::HeaderValue,
    stats: Arc<Stats>,
) -> Response<Body> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let on_upgrade = hyper::upgrade::on(&mut req);
    stats.active.fetch_add(1, Ordering::SeqCst);
    let guard = ActiveGuard(Arc::clone(&stats));
    tokio::spawn(async move {
        let _guard = guard;
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
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(""))
        .unwrap()
}
