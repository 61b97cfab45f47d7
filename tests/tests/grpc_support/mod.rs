//! The gRPC test service (`test.Echo`: `Say` unary, `Count` server
//! streaming, `Stall` that never answers by itself) on hyper's h2c server
//! with tonic's `server::Grpc`, and a tonic `client::Grpc` over an HTTP/2
//! connection the test makes: real gRPC on both sides, messages derived by
//! hand so no protoc is needed. Kept apart so `grpc.rs` holds the tests.

use handoff_tests::proxy::Proxy;
use handoff_tests::scripted::within;
use http::uri::PathAndQuery;
use http::{HeaderMap, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::codec::Streaming;
use tonic::Status;
use tonic_prost::ProstCodec;

// ---------------------------------------------------------------------------
// The service: `test.Echo` with `Say` (unary), `Count` (server streaming)
// and `Stall` (unary that never answers by itself).

#[derive(Clone, PartialEq, prost::Message)]
pub struct Ask {
    #[prost(string, tag = "1")]
    pub name: String,
    /// `Count`: how many answers; `fail_after`: then NOT_FOUND instead of OK.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    #[prost(uint32, tag = "3")]
    pub fail_after: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Answer {
    #[prost(string, tag = "1")]
    pub text: String,
    /// Which backend answered.
    #[prost(string, tag = "2")]
    pub server: String,
}

pub const SAY: &str = "/test.Echo/Say";
pub const COUNT: &str = "/test.Echo/Count";
pub const STALL: &str = "/test.Echo/Stall";

/// What a backend saw, for assertions.
#[derive(Default)]
pub struct Seen {
    pub calls: AtomicUsize,
    /// Calls whose handler was dropped before it finished (the stream was
    /// reset by the proxy, or the deadline passed).
    pub cancelled: AtomicUsize,
    /// The request headers of the last call.
    pub headers: Mutex<Option<HeaderMap>>,
}

/// A gRPC server on 127.0.0.1:0 speaking h2c, hyper's server with tonic's
/// `server::Grpc` per call. It honours `grpc-timeout` as tonic's own
/// transport does: past it the call ends DEADLINE_EXCEEDED.
pub struct GrpcServer {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    /// `Count` sends its first answer, then waits for this to be true.
    pub gate: watch::Sender<bool>,
    pub task: tokio::task::AbortHandle,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcServer {
    pub async fn start(label: &'static str) -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let (gate, gate_rx) = watch::channel(true);
        let handler = Handler {
            label,
            seen: Arc::clone(&seen),
            gate: gate_rx,
        };
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler.dispatch(req).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        })
        .abort_handle();
        GrpcServer {
            addr,
            seen,
            gate,
            task,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn calls(&self) -> usize {
        self.seen.calls.load(SeqCst)
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.seen.headers.lock().unwrap().clone().expect("a call")
    }
}

#[derive(Clone)]
pub struct Handler {
    pub label: &'static str,
    pub seen: Arc<Seen>,
    pub gate: watch::Receiver<bool>,
}

/// Counts a handler dropped before it finished.
pub struct Unfinished(Arc<Seen>, bool);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, SeqCst);
        }
    }
}

pub type GrpcResponse = http::Response<tonic::body::Body>;

impl Handler {
    async fn dispatch(self, req: http::Request<Incoming>) -> GrpcResponse {
        self.seen.calls.fetch_add(1, SeqCst);
        *self.seen.headers.lock().unwrap() = Some(req.headers().clone());
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| grpc_timeout(v.to_str().ok()?));
        let mut guard = Unfinished(Arc::clone(&self.seen), false);
        let call = self.call(req);
        let resp = match deadline {
            Some(d) => match tokio::time::timeout(d, call).await {
                Ok(resp) => resp,
                Err(_) => Status::deadline_exceeded("deadline passed on the server").into_http(),
            },
            None => call.await,
        };
        guard.1 = true;
        resp
    }

    async fn call(&self, req: http::Request<Incoming>) -> GrpcResponse {
        let codec = ProstCodec::<Answer, Ask>::default();
        let mut grpc = tonic::server::Grpc::new(codec);
        match req.uri().path() {
            SAY => grpc.unary(Say(self.label), req).await,
            COUNT => {
                let svc = Count(self.label, self.gate.clone());
                grpc.server_streaming(svc, req).await
            }
            STALL => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            _ => Status::unimplemented("no such method").into_http(),
        }
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn grpc_timeout(v: &str) -> Option<Duration> {
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub struct Say(&'static str);

impl tonic::server::UnaryService<Ask> for Say {
    type Response = Answer;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<Answer>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<Ask>) -> Self::Future {
        let server = self.0.to_string();
        Box::pin(async move {
            let ask = req.into_inner();
            if ask.name == "nobody" {
                return Err(Status::not_found("no such name: nobody"));
            }
            Ok(tonic::Response::new(Answer {
                text: format!("hello {}", ask.name),
                server,
            }))
        })
    }
}

pub struct Count(&'static str, watch::Receiver<bool>);

pub type AnswerStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<Answer, Status>> + Send + 'static>>;

impl tonic::server::ServerStreamingService<Ask> for Count {
    type Response = Answer;
    type ResponseStream = AnswerStream;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<AnswerStream>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<Ask>) -> Self::Future {
        let (server, mut gate) = (self.0, self.1.clone());
        let ask = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for i in 0..ask.count {
                if i == 1 && gate.wait_for(|open| *open).await.is_err() {
                    return;
                }
                if ask.fail_after > 0 && i == ask.fail_after {
                    let _ = tx.send(Err(Status::not_found("ran out at 2"))).await;
                    return;
                }
                let answer = Answer {
                    text: format!("{} #{i}", ask.name),
                    server: server.to_string(),
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Box::pin(async move { Ok(tonic::Response::new(Box::pin(stream) as AnswerStream)) })
    }
}

// ---------------------------------------------------------------------------
// The client: tonic's generic `client::Grpc` over an HTTP/2 connection to
// the proxy that the test makes itself (prior knowledge, or TLS with ALPN).

#[derive(Clone)]
pub struct Channel(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

pub type Client = tonic::client::Grpc<Channel>;

pub async fn client_over<I>(io: I) -> Client
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake with the proxy");
    tokio::spawn(conn);
    tonic::client::Grpc::with_origin(Channel(send), Uri::from_static("http://app.test"))
}

/// h2c with prior knowledge on the proxy's plain listener, as gRPC clients
/// commonly speak to a plain port.
pub async fn client(p: &Proxy) -> Client {
    let tcp = within("connect", TcpStream::connect(p.http)).await.unwrap();
    client_over(tcp).await
}

pub fn ask(name: &str, count: u32) -> tonic::Request<Ask> {
    tonic::Request::new(Ask {
        name: name.into(),
        count,
        fail_after: 0,
    })
}

pub async fn say(c: &mut Client, req: tonic::Request<Ask>) -> Result<Answer, Status> {
    within("ready", c.ready()).await.expect("channel ready");
    let path = PathAndQuery::from_static(SAY);
    let call = c.unary(req, path, ProstCodec::<Ask, Answer>::default());
    within("unary call", call)
        .await
        .map(tonic::Response::into_inner)
}

pub async fn count(c: &mut Client, req: tonic::Request<Ask>) -> Streaming<Answer> {
    within("ready", c.ready()).await.expect("channel ready");
    let path = PathAndQuery::from_static(COUNT);
    let call = c.server_streaming(req, path, ProstCodec::<Ask, Answer>::default());
    within("streaming call", call)
        .await
        .expect("stream opens")
        .into_inner()
}

pub async fn next(s: &mut Streaming<Answer>) -> Result<Option<Answer>, Status> {
    within("next message", s.message()).await
}

pub async fn h2c_proxy(b: &GrpcServer, extra: &[&str]) -> Proxy {
    let addr = b.addr();
    let mut args = vec!["--backend", addr.as_str(), "--backend-protocol", "h2c"];
    args.extend_from_slice(extra);
    Proxy::start(&args).await
}
