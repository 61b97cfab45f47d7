//! A keep-alive load generator for correctness (not speed): every client owns
//! one HTTP/1.1 connection and counts every request that did not end in 200.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// 200 responses by body (the backend's name).
    pub by_body: HashMap<String, u64>,
    /// Connections the client had to open again after an error.
    pub reconnects: u64,
    /// The first few failures, for the assertion message.
    pub errors: Vec<String>,
}

impl LoadReport {
    fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.reconnects += other.reconnects;
        for (k, v) in other.by_body {
            *self.by_body.entry(k).or_default() += v;
        }
        self.errors.extend(
            other
                .errors
                .into_iter()
                .take(10usize.saturating_sub(self.errors.len())),
        );
    }
}

/// Load that runs until [`Load::finish`] or until `max` passes, whichever is first.
pub struct Load {
    stop: watch::Sender<bool>,
    tasks: JoinSet<LoadReport>,
}

/// Starts `clients` keep-alive clients sending `GET path` to `addr` in a loop.
pub fn start(addr: SocketAddr, path: &str, clients: usize, max: Duration) -> Load {
    start_for_host(addr, "test.local", path, clients, max)
}

/// [`start`] with `Host: host`, for a proxy that routes by host.
pub fn start_for_host(
    addr: SocketAddr,
    host: &str,
    path: &str,
    clients: usize,
    max: Duration,
) -> Load {
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let deadline = Instant::now() + max;
    for _ in 0..clients {
        tasks.spawn(client(
            addr,
            host.to_string(),
            path.to_string(),
            deadline,
            stop_rx.clone(),
        ));
    }
    Load { stop, tasks }
}

/// Runs load for `duration` and returns the report.
pub async fn run(addr: SocketAddr, path: &str, clients: usize, duration: Duration) -> LoadReport {
    let load = start(addr, path, clients, duration);
    tokio::time::sleep(duration).await;
    load.finish().await
}

impl Load {
    pub async fn finish(mut self) -> LoadReport {
        let _ = self.stop.send(true);
        let mut report = LoadReport::default();
        while let Some(r) = self.tasks.join_next().await {
            report.merge(r.expect("load client panicked"));
        }
        report
    }
}

/// Upper bound on requests per client, so the loop ends even if time stalls.
const MAX_REQUESTS_PER_CLIENT: u64 = 2_000_000;

async fn client(
    addr: SocketAddr,
    host: String,
    path: String,
    deadline: Instant,
    stop: watch::Receiver<bool>,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut sender = None;
    let mut sent = 0;
    while !*stop.borrow() && Instant::now() < deadline && sent < MAX_REQUESTS_PER_CLIENT {
        sent += 1;
        if sender.is_none() {
            match connect(addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    fail(&mut report, format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>> =
            sender.as_mut().unwrap();
        let req = http::Request::get(path.as_str())
            .header("host", host.as_str())
            .body(Empty::new())
            .unwrap();
        let outcome = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        match outcome {
            Ok((status, body)) if status == 200 => {
                report.ok += 1;
                *report
                    .by_body
                    .entry(String::from_utf8_lossy(&body).into_owned())
                    .or_default() += 1;
            }
            Ok((status, body)) => fail(
                &mut report,
                format!("{status}: {}", String::from_utf8_lossy(&body)),
            ),
            Err(e) => {
                fail(&mut report, format!("request: {e}"));
                sender = None;
                report.reconnects += 1;
            }
        }
    }
    report
}

fn fail(report: &mut LoadReport, why: String) {
    report.failed += 1;
    if report.errors.len() < 10 {
        report.errors.push(why);
    }
}

async fn connect(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}
