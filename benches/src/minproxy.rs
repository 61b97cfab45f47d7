//! `handoff-bench minproxy`: the least a hyper reverse proxy can do, as a
//! reference point in `steady` (target `hyper-min`). It has none of
//! handoff-proxy's features (no switching, drain, headers, limits, metrics,
//! logs); each client connection gets its own upstream connection. If
//! handoff-proxy costs much more CPU per request than this, the difference is
//! handoff's own work; if this costs as much as handoff, the gap to nginx is
//! hyper's and tokio's.

use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

#[derive(Debug, Clone, clap::Args)]
pub struct MinProxyArgs {
    /// Where to forward, `127.0.0.1:PORT`.
    #[arg(long)]
    pub upstream: SocketAddr,
}

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

pub fn run(args: MinProxyArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "handoff-bench minproxy ready addr={}",
                listener.local_addr()?
            )?;
            out.flush()?;
        }
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let upstream = args.upstream;
            tokio::spawn(async move {
                let pinned: Arc<Mutex<Option<SendRequest<Incoming>>>> = Arc::new(Mutex::new(None));
                let service = service_fn(move |req| forward(req, upstream, pinned.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    pinned: Arc<Mutex<Option<SendRequest<Incoming>>>>,
) -> Result<Response<Body>, hyper::Error> {
    let mut slot = pinned.lock().await;
    if !matches!(&*slot, Some(s) if !s.is_closed()) {
        *slot = connect(upstream).await;
    }
    let Some(sender) = slot.as_mut() else {
        return Ok(bad_gateway());
    };
    if sender.ready().await.is_err() {
        *slot = None;
        return Ok(bad_gateway());
    }
    match sender.send_request(req).await {
        Ok(resp) => Ok(resp.map(|b| b.boxed())),
        Err(_) => {
            *slot = None;
            Ok(bad_gateway())
        }
    }
}

async fn connect(addr: SocketAddr) -> Option<SendRequest<Incoming>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

fn bad_gateway() -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(b"bad gateway\n"))
            .map_err(|e| match e {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}
