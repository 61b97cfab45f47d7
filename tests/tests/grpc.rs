//! gRPC through the proxy (issue 12, part 5): a real gRPC server and client
//! (tonic's generic halves, messages derived by hand, so no protoc) with
//! the proxy between them speaking h2c to the backend
//! (`--backend-protocol h2c` / `"protocol": "h2c"`). Unary and
//! server-streaming calls, `grpc-status` in trailers (OK and not), deadlines
//! (`grpc-timeout` reaches the server; a client that gives up frees the
//! proxy), and a switch while a stream is open: the stream ends on the old
//! backend, new calls go to the new one, the switch reports the drain.

use handoff_shared::{BackendProtocol, SetBackend};
use handoff_tests::proxy::Proxy;
use handoff_tests::request::{self, wait_for};
use handoff_tests::scripted::within;
use handoff_tests::tls::TestCa;
use handoff_tests::TempDir;
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
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

// ---------------------------------------------------------------------------
// The service: `test.Echo` with `Say` (unary), `Count` (server streaming)
// and `Stall` (unary that never answers by itself).

#[derive(Clone, PartialEq, prost::Message)]
struct Ask {
    #[prost(string, tag = "1")]
    name: String,
    /// `Count`: how many answers; `fail_after`: then NOT_FOUND instead of OK.
    #[prost(uint32, tag = "2")]
    count: u32,
    #[prost(uint32, tag = "3")]
    fail_after: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Answer {
    #[prost(string, tag = "1")]
    text: String,
    /// Which backend answered.
    #[prost(string, tag = "2")]
    server: String,
}

const SAY: &str = "/test.Echo/Say";
const COUNT: &str = "/test.Echo/Count";
const STALL: &str = "/test.Echo/Stall";

/// What a backend saw, for assertions.
#[derive(Default)]
struct Seen {
    calls: AtomicUsize,
    /// Calls whose handler was dropped before it finished (the stream was
    /// reset by the proxy, or the deadline passed).
    cancelled: AtomicUsize,
    /// The request headers of the last call.
    headers: Mutex<Option<HeaderMap>>,
}

/// A gRPC server on 127.0.0.1:0 speaking h2c, hyper's server with tonic's
/// `server::Grpc` per call. It honours `grpc-timeout` as tonic's own
/// transport does: past it the call ends DEADLINE_EXCEEDED.
struct GrpcServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
    /// `Count` sends its first answer, then waits for this to be true.
    gate: watch::Sender<bool>,
    task: tokio::task::AbortHandle,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcServer {
    async fn start(label: &'static str) -> GrpcServer {
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

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn calls(&self) -> usize {
        self.seen.calls.load(SeqCst)
    }

    fn last_headers(&self) -> HeaderMap {
        self.seen.headers.lock().unwrap().clone().expect("a call")
    }
}

#[derive(Clone)]
struct Handler {
    label: &'static str,
    seen: Arc<Seen>,
    gate: watch::Receiver<bool>,
}

/// Counts a handler dropped before it finished.
struct Unfinished(Arc<Seen>, bool);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, SeqCst);
        }
    }
}

type GrpcResponse = http::Response<tonic::body::Body>;

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
fn grpc_timeout(v: &str) -> Option<Duration> {
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

struct Say(&'static str);

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

struct Count(&'static str, watch::Receiver<bool>);

type AnswerStream =
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
struct Channel(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

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

type Client = tonic::client::Grpc<Channel>;

async fn client_over<I>(io: I) -> Client
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
async fn client(p: &Proxy) -> Client {
    let tcp = within("connect", TcpStream::connect(p.http)).await.unwrap();
    client_over(tcp).await
}

fn ask(name: &str, count: u32) -> tonic::Request<Ask> {
    tonic::Request::new(Ask {
        name: name.into(),
        count,
        fail_after: 0,
    })
}

async fn say(c: &mut Client, req: tonic::Request<Ask>) -> Result<Answer, Status> {
    within("ready", c.ready()).await.expect("channel ready");
    let path = PathAndQuery::from_static(SAY);
    let call = c.unary(req, path, ProstCodec::<Ask, Answer>::default());
    within("unary call", call)
        .await
        .map(tonic::Response::into_inner)
}

async fn count(c: &mut Client, req: tonic::Request<Ask>) -> Streaming<Answer> {
    within("ready", c.ready()).await.expect("channel ready");
    let path = PathAndQuery::from_static(COUNT);
    let call = c.server_streaming(req, path, ProstCodec::<Ask, Answer>::default());
    within("streaming call", call)
        .await
        .expect("stream opens")
        .into_inner()
}

async fn next(s: &mut Streaming<Answer>) -> Result<Option<Answer>, Status> {
    within("next message", s.message()).await
}

async fn h2c_proxy(b: &GrpcServer, extra: &[&str]) -> Proxy {
    let addr = b.addr();
    let mut args = vec!["--backend", addr.as_str(), "--backend-protocol", "h2c"];
    args.extend_from_slice(extra);
    Proxy::start(&args).await
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_server_streaming_calls_pass_with_grpc_status_in_trailers() {
    let b = GrpcServer::start("a").await;
    let p = h2c_proxy(&b, &[]).await;
    let mut c = client(&p).await;

    let answer = say(&mut c, ask("ada", 0)).await.expect("unary OK");
    assert_eq!(
        (answer.text.as_str(), answer.server.as_str()),
        ("hello ada", "a")
    );
    // What the backend got: the client's authority, the proxy's forwarding
    // fields, and `te: trailers`, which gRPC needs.
    let h = b.last_headers();
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.test");
    assert_eq!(h["content-type"], "application/grpc");

    // An error status (trailers-only answer) with its message.
    let err = say(&mut c, ask("nobody", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such name: nobody");

    // Server streaming: every message, then OK in the trailers.
    let mut s = count(&mut c, ask("n", 5)).await;
    for i in 0..5 {
        let m = next(&mut s).await.expect("message").expect("not the end");
        assert_eq!(m.text, format!("n #{i}"));
    }
    assert_eq!(next(&mut s).await.expect("clean end"), None);
    let trailers = within("trailers", s.trailers())
        .await
        .expect("trailers")
        .expect("trailers present");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // A stream that fails after two messages: NOT_FOUND arrives in the
    // trailers, after the data.
    let mut req = ask("f", 5);
    req.get_mut().fail_after = 2;
    let mut s = count(&mut c, req).await;
    assert!(next(&mut s).await.unwrap().is_some());
    assert!(next(&mut s).await.unwrap().is_some());
    let err = next(&mut s).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "ran out at 2")
    );
    assert_eq!(b.calls(), 4);

    // The proxy reports what the backend speaks.
    let status = p.client().status().await.unwrap();
    assert_eq!(status.protocol, BackendProtocol::H2c);
    assert_eq!(status.in_flight, 0, "{status:?}");

    // Each call has its access-log line once its body is done.
    let line = format!("path={SAY} status=200");
    let backend = format!("backend={}", b.addr());
    wait_for("access-log lines", Duration::from_secs(10), async || {
        let log = p.log_text();
        let calls = log.lines().filter(|l| l.contains("handoff::access"));
        calls
            .filter(|l| l.contains(&line) && l.contains(&backend) && l.contains("generation=1"))
            .count()
            == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_alpn_h2_and_plain_http11_reach_an_h2c_backend() {
    let b = GrpcServer::start("a").await;
    let dir = TempDir::new("grpc-tls");
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "app", &["app.test"]);
    let (cert, key) = (
        leaf.cert.display().to_string(),
        leaf.key.display().to_string(),
    );
    let p = h2c_proxy(
        &b,
        &[
            "--https",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    )
    .await;
    let tls = ca.client(&[b"h2"]);
    let stream = handoff_tests::tls::connect(&tls, p.https.unwrap(), "app.test")
        .await
        .expect("TLS connect");
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN picked HTTP/2"
    );
    let mut c = client_over(stream).await;
    let answer = say(&mut c, ask("tls", 0)).await.expect("unary over TLS");
    assert_eq!(answer.text, "hello tls");
    assert_eq!(b.last_headers()["x-forwarded-proto"], "https");

    // An HTTP/1.1 client reaches the h2c backend too (here: gRPC's
    // "unimplemented" answer to a path that is no method), its hop-by-hop
    // fields left behind as on the HTTP/1.1 path.
    let req = http::Request::get("/plain")
        .header("host", "app.test")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "gzip, trailers")
        .header("x-forwarded-for", "10.0.0.1")
        .body(http_body_util::Full::default())
        .unwrap();
    let r = request::send(p.http, req).await;
    assert_eq!(r.status, http::StatusCode::OK);
    assert_eq!(r.headers["grpc-status"], "12");
    assert_eq!(b.calls(), 2);
    let h = b.last_headers();
    for gone in ["connection", "x-secret", "keep-alive", "host"] {
        assert!(!h.contains_key(gone), "{gone} reached the backend: {h:?}");
    }
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_end_the_call_and_free_the_proxy() {
    let b = GrpcServer::start("a").await;
    let p = h2c_proxy(&b, &[]).await;
    let mut c = client(&p).await;

    // grpc-timeout reaches the server, which ends the call at the deadline.
    let mut req = ask("slow", 0);
    req.set_timeout(Duration::from_millis(200));
    within("ready", c.ready()).await.unwrap();
    let call = c.unary(
        req,
        PathAndQuery::from_static(STALL),
        ProstCodec::<Ask, Answer>::default(),
    );
    let err = within("deadline call", call).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let sent = b.last_headers()["grpc-timeout"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        grpc_timeout(&sent),
        Some(Duration::from_millis(200)),
        "{sent}"
    );

    // A client that gives up on a call with no grpc-timeout (its own
    // deadline, as grpc clients enforce it locally) resets the stream: the
    // proxy passes the reset on and the call leaves the in-flight count.
    within("ready", c.ready()).await.unwrap();
    let call = c.unary(
        ask("forever", 0),
        PathAndQuery::from_static(STALL),
        ProstCodec::<Ask, Answer>::default(),
    );
    let given_up = tokio::time::timeout(Duration::from_millis(300), call).await;
    assert!(given_up.is_err(), "a stalled call cannot answer");
    let calls = b.calls();
    assert_eq!(calls, 2);
    wait_for(
        "the backend saw the stream reset",
        Duration::from_secs(10),
        async || b.seen.cancelled.load(SeqCst) == 1,
    )
    .await;
    let control = p.client();
    wait_for(
        "the proxy counts no call",
        Duration::from_secs(10),
        async || control.status().await.is_ok_and(|s| s.in_flight == 0),
    )
    .await;
    // The connection still serves.
    assert_eq!(
        say(&mut c, ask("after", 0)).await.unwrap().text,
        "hello after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_mid_stream_drains_the_stream_on_the_old_backend() {
    let old = GrpcServer::start("old").await;
    let new = GrpcServer::start("new").await;
    let p = h2c_proxy(&old, &[]).await;
    let mut c = client(&p).await;

    // A stream is open on the old backend, held after its first message.
    old.gate.send_replace(false);
    let mut s = count(&mut c, ask("s", 3)).await;
    let first = next(&mut s).await.unwrap().unwrap();
    assert_eq!(
        (first.text.as_str(), first.server.as_str()),
        ("s #0", "old")
    );

    // Switch; the control call answers once the old generation drained.
    let control = p.client();
    let to = SetBackend {
        addr: new.addr(),
        drain_timeout: Some("30s".into()),
        protocol: BackendProtocol::H2c,
    };
    let switch = tokio::spawn(async move { control.set_backend(&to).await });
    let control = p.client();
    wait_for("the switch is made", Duration::from_secs(10), async || {
        control.status().await.is_ok_and(|s| {
            s.backend.as_deref() == Some(new.addr().as_str())
                && s.draining.iter().map(|d| d.in_flight).sum::<u64>() == 1
        })
    })
    .await;

    // New calls, on the same client connection, go to the new backend.
    let answer = say(&mut c, ask("next", 0)).await.unwrap();
    assert_eq!(answer.server, "new");
    assert!(!switch.is_finished(), "the drain waits for the open stream");

    // The held stream finishes on the old backend, with OK.
    old.gate.send_replace(true);
    for i in 1..3 {
        let m = next(&mut s).await.unwrap().unwrap();
        assert_eq!((m.text, m.server.as_str()), (format!("s #{i}"), "old"));
    }
    assert_eq!(next(&mut s).await.unwrap(), None);
    let switched = within("switch returns", switch).await.unwrap().unwrap();
    assert!(switched.drained, "{switched:?}");
    assert_eq!(switched.in_flight, 0);
    assert_eq!((old.calls(), new.calls()), (1, 1));
    assert_eq!(old.seen.cancelled.load(SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_protocol_is_checked_and_survives_a_restart() {
    let b = GrpcServer::start("a").await;
    let dir = TempDir::new("grpc-state");
    let addr = b.addr();
    let mut p = Proxy::start_in(dir.path(), &[]).await;

    // An unknown protocol is a 400 with a JSON error, and changes nothing.
    let body = format!(r#"{{"addr":"{addr}","protocol":"h3"}}"#);
    let r = request::control(&p.control, "PUT", "/v1/backend", body)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(json["error"].as_str().unwrap().contains("h3"), "{json}");
    assert_eq!(p.client().status().await.unwrap().backend, None);

    let body = format!(r#"{{"addr":"{addr}","protocol":"h2c"}}"#);
    let r = request::control(&p.control, "PUT", "/v1/backend", body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let mut c = client(&p).await;
    assert_eq!(say(&mut c, ask("one", 0)).await.unwrap().server, "a");
    let saved = std::fs::read_to_string(&p.state).unwrap();
    assert!(saved.contains(r#""protocol": "h2c""#), "{saved}");

    // After a restart the state file, not a flag, says h2c.
    p.kill9();
    let p = Proxy::start_in(dir.path(), &[]).await;
    let status = p.client().status().await.unwrap();
    assert_eq!(status.protocol, BackendProtocol::H2c);
    let mut c = client(&p).await;
    assert_eq!(say(&mut c, ask("two", 0)).await.unwrap().text, "hello two");

    // A bad --backend-protocol stops the proxy at start, naming the flag.
    let bad = Proxy::try_start_in(
        TempDir::new("grpc-bad").path(),
        &["--backend", &addr, "--backend-protocol", "spdy"],
    )
    .await;
    let err = bad.err().expect("refused");
    assert!(err.contains("spdy"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_backend_silence_and_absence_answer_as_on_http1() {
    let b = GrpcServer::start("a").await;
    let p = h2c_proxy(&b, &["--upstream-timeout", "300ms"]).await;

    // No response head within --upstream-timeout: 504, counted as a timeout.
    let r = request::get(p.http, STALL).await;
    assert_eq!(r.status, http::StatusCode::GATEWAY_TIMEOUT, "{}", r.body);

    // Silent mid-stream for longer than that: the stream is cut, not held.
    b.gate.send_replace(false);
    let mut c = client(&p).await;
    let mut s = count(&mut c, ask("held", 3)).await;
    assert!(next(&mut s).await.unwrap().is_some());
    let cut = next(&mut s).await;
    assert!(cut.is_err(), "a silent stream ends in an error: {cut:?}");
    let control = p.client();
    wait_for(
        "the cut stream leaves the count",
        Duration::from_secs(10),
        async || control.status().await.is_ok_and(|s| s.in_flight == 0),
    )
    .await;
    let metrics = request::get(p.admin.unwrap(), "/metrics").await.body;
    assert!(
        metrics.contains(r#"handoff_upstream_errors_total{kind="timeout"} 1"#),
        "{metrics}"
    );

    // The backend gone: 502.
    drop(b);
    let r = request::get(p.http, SAY).await;
    assert_eq!(r.status, http::StatusCode::BAD_GATEWAY, "{}", r.body);
}
