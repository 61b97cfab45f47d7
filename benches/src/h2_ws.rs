//! The clients of `upgrade`'s load that the HTTP/1.1 load generator does not
//! have: HTTP/2 streams over TLS, and WebSocket echo sessions.
//!
//! Both count as the test behind issue 15 does. A connection the server
//! closes cleanly (HTTP/2 GOAWAY, a WebSocket close frame) is not a failure:
//! the client opens another, as real clients do. A stream the server's
//! GOAWAY says it never processed is sent again, and counted apart. A
//! request or message not answered, or a WebSocket cut without a close
//! frame, is failed; a connection that could not be made is refused.

use crate::stats::Summary;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// Upper bound on requests or messages per client, whatever the time.
const MAX_PER_CLIENT: u64 = 2_000_000;
/// Longest wait for one answer (a long request's time is not involved).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two HTTP/2 requests of one client, and between two
/// WebSocket messages: a steady trickle, not a second full load.
const PACE: Duration = Duration::from_millis(5);
const WS_PACE: Duration = Duration::from_millis(50);

/// What one kind of client saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    pub refused: u64,
    /// Connections the server closed cleanly; the client opened another.
    pub closed_cleanly: u64,
    /// HTTP/2 streams a GOAWAY said were never processed, sent again.
    pub resent: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    fn fail(&mut self, kind: &str) {
        self.failed += 1;
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    fn refuse(&mut self) {
        self.refused += 1;
        *self.errors.entry("connect".into()).or_default() += 1;
    }

    fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.refused += o.refused;
        self.closed_cleanly += o.closed_cleanly;
        self.resent += o.resent;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// As a `Summary`'s error column reads.
    pub fn errors_text(&self) -> String {
        crate::report::errors(&self.errors)
    }
}

impl From<&Tally> for Summary {
    fn from(t: &Tally) -> Summary {
        Summary {
            requests: t.ok + t.failed + t.refused,
            ok: t.ok,
            failed: t.failed + t.refused,
            errors: t.errors.clone(),
            ..Summary::default()
        }
    }
}

/// `clients` HTTP/2-over-TLS clients on `addr`, each one stream at a time,
/// until `deadline`.
pub async fn h2(addr: SocketAddr, tls: TlsConnector, clients: usize, deadline: Instant) -> Tally {
    let runs: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(h2_client(addr, tls.clone(), deadline)))
        .collect();
    let mut total = Tally::default();
    for r in runs {
        total.merge(r.await.unwrap_or_default());
    }
    total
}

type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2_client(addr: SocketAddr, tls: TlsConnector, deadline: Instant) -> Tally {
    let mut t = Tally::default();
    let mut conn: Option<H2> = None;
    let mut sent = 0;
    while Instant::now() < deadline && sent < MAX_PER_CLIENT {
        let sender = match &mut conn {
            Some(s) => s,
            None => match connect_h2(addr, &tls).await {
                Some(s) => conn.insert(s),
                None => {
                    t.refuse();
                    tokio::time::sleep(PACE).await;
                    continue;
                }
            },
        };
        if sender.ready().await.is_err() {
            // GOAWAY (or a close) while nothing was in flight.
            conn = None;
            t.closed_cleanly += 1;
            continue;
        }
        sent += 1;
        let req = http::Request::get(format!("https://{}/", crate::tls::NAME))
            .body(Empty::new())
            .expect("static request parts are valid");
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        })
        .await;
        match answer {
            Ok(Ok(status)) if status.is_success() => t.ok += 1,
            Ok(Ok(status)) => t.fail(&format!("http_{}", status.as_u16())),
            Ok(Err(e)) if never_processed(&e) => {
                t.resent += 1;
                conn = None;
            }
            Ok(Err(_)) => {
                t.fail("h2_stream_broken");
                conn = None;
            }
            Err(_) => {
                t.fail("timeout");
                conn = None;
            }
        }
        tokio::time::sleep(PACE).await;
    }
    t
}

/// A stream above a GOAWAY's last stream id, or a request hyper never sent.
fn never_processed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR)
        })
}

async fn connect_h2(addr: SocketAddr, tls: &TlsConnector) -> Option<H2> {
    let tcp = tokio::time::timeout(ANSWER_TIMEOUT, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(crate::tls::NAME).ok()?;
    let stream = tokio::time::timeout(ANSWER_TIMEOUT, tls.connect(name, tcp))
        .await
        .ok()?
        .ok()?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// `clients` WebSocket clients on `addr` (`ws://bench.test/ws`), each in
/// sessions of `session` (one message every 50 ms, each echo awaited, then
/// a close), until `deadline`.
pub async fn websocket(
    addr: SocketAddr,
    clients: usize,
    session: Duration,
    deadline: Instant,
) -> Tally {
    let runs: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(ws_client(addr, session, deadline)))
        .collect();
    let mut total = Tally::default();
    for r in runs {
        total.merge(r.await.unwrap_or_default());
    }
    total
}

async fn ws_client(addr: SocketAddr, session: Duration, deadline: Instant) -> Tally {
    let mut t = Tally::default();
    let mut sent = 0;
    while Instant::now() < deadline && sent < MAX_PER_CLIENT {
        let Ok(Ok(tcp)) = tokio::time::timeout(ANSWER_TIMEOUT, TcpStream::connect(addr)).await
        else {
            t.refuse();
            tokio::time::sleep(WS_PACE).await;
            continue;
        };
        let url = format!("ws://{}/ws", crate::tls::NAME);
        let mut ws =
            match tokio::time::timeout(ANSWER_TIMEOUT, tokio_tungstenite::client_async(url, tcp))
                .await
            {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(_)) => {
                    t.fail("ws_handshake");
                    tokio::time::sleep(WS_PACE).await;
                    continue;
                }
                Err(_) => {
                    t.fail("timeout");
                    continue;
                }
            };
        let end = (Instant::now() + session).min(deadline);
        let mut clean = true;
        while Instant::now() < end && sent < MAX_PER_CLIENT {
            sent += 1;
            let text = format!("m{sent}");
            if ws.send(Message::text(text.clone())).await.is_err() {
                t.fail("ws_cut");
                clean = false;
                break;
            }
            match tokio::time::timeout(ANSWER_TIMEOUT, ws.next()).await {
                Ok(Some(Ok(Message::Text(echo)))) if echo.as_str() == text => t.ok += 1,
                Ok(Some(Ok(Message::Close(_)))) => {
                    // The server ended the session with a close frame: the
                    // message was not echoed, so it is failed, but the
                    // connection was closed properly.
                    t.fail("ws_closed_unanswered");
                    t.closed_cleanly += 1;
                    clean = false;
                    break;
                }
                Ok(Some(Ok(_))) => t.fail("ws_wrong_echo"),
                Ok(_) => {
                    t.fail("ws_cut");
                    clean = false;
                    break;
                }
                Err(_) => {
                    t.fail("timeout");
                    clean = false;
                    break;
                }
            }
            tokio::time::sleep(WS_PACE).await;
        }
        if clean {
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, ws.close(None)).await;
            // Read to the server's answering close, so the session ends as
            // the protocol says before the next one starts.
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
    }
    t
}
