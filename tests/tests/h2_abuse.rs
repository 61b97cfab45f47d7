//! Issue 5, HTTP/2 abuse: frames written by hand over prior-knowledge h2c to
//! the real proxy (no client library would send these). The proxy must cut
//! the abuser, stay within bounded memory and keep serving everyone else.

use handoff_tests::backend::Backend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request;
use http::StatusCode;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK for `GET http://a.test{path}`: static-table indices for method,
/// scheme and path name, literals (never Huffman) for the values.
fn request_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
    b.push(0x04); // :path, literal without indexing, name index 4
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    b.push(0x01); // :authority, literal without indexing, name index 1
    b.push(6);
    b.extend_from_slice(b"a.test");
    b
}

/// One literal header `x-flood: aaaa...` of about `n` bytes.
fn filler_header(n: usize) -> Vec<u8> {
    let mut b = vec![0x00, 7];
    b.extend_from_slice(b"x-flood");
    // 7-bit prefix integer for the value length.
    let mut len = n;
    if len < 127 {
        b.push(len as u8);
    } else {
        b.push(0x7f);
        len -= 127;
        while len >= 128 {
            b.push((len % 128 + 128) as u8);
            len /= 128;
        }
        b.push(len as u8);
    }
    b.extend(std::iter::repeat_n(b'a', n));
    b
}

/// Reads and discards everything the server sends (so it never blocks on
/// writing to us) and records whether it sent GOAWAY.
fn drain_reader(
    mut r: tokio::net::tcp::OwnedReadHalf,
    goaway: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(30), r.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == GOAWAY {
                    goaway.fetch_add(1, Ordering::SeqCst);
                }
                buf.drain(..9 + len);
            }
        }
    })
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Samples the proxy's RSS every 50 ms until dropped; returns the peak.
struct RssWatch {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let p = Arc::clone(&peak);
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_kib(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssWatch { peak, task }
    }

    fn peak_mib(&self) -> u64 {
        self.peak.load(Ordering::SeqCst) / 1024
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens an h2c connection with the preface and an empty SETTINGS frame.
async fn h2c(
    addr: SocketAddr,
) -> (
    tokio::net::tcp::OwnedWriteHalf,
    Arc<AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let goaway = Arc::new(AtomicU64::new(0));
    let reader = drain_reader(r, Arc::clone(&goaway));
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    w.write_all(&hello).await.unwrap();
    (w, goaway, reader)
}

/// Keeps a normal client busy during an attack; returns (ok, failed).
fn bystander(
    addr: SocketAddr,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<(u64, u64)>,
) {
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        for _ in 0..10_000 {
            // At least 20 requests, however short the attack was.
            if *rx.borrow() && ok + failed >= 20 {
                break;
            }
            let r = tokio::time::timeout(Duration::from_secs(10), request::get(addr, "/")).await;
            match r {
                Ok(reply) if reply.status == StatusCode::OK => ok += 1,
                _ => failed += 1,
            }
            tokio::select! { _ = rx.changed() => {}, _ = tokio::time::sleep(Duration::from_millis(20)) => {} }
        }
        (ok, failed)
    });
    (stop, task)
}

const RSS_BOUND_MIB: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_bursts_are_cut_and_others_keep_being_served() {
    let b = Backend::start("b1").await;
    let p = Proxy::start(&["--backend", &b.addr_string()]).await;
    let rss = RssWatch::start(p.pid());
    let (stop, others) = bystander(p.http);

    // 20 connections, each trying 5,000 HEADERS + RST_STREAM pairs in
    // batches of 100: bounded by count, whatever the proxy does.
    let (mut cut, mut goaways, mut sent) = (0, 0, 0u64);
    for _ in 0..20 {
        let (mut w, goaway, reader) = h2c(p.http).await;
        let mut stream_id = 1u32;
        let mut closed = false;
        for _ in 0..50 {
            let mut batch = Vec::with_capacity(100 * 40);
            for _ in 0..100 {
                frame(
                    &mut batch,
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    stream_id,
                    &request_block("/slow?ms=200"),
                );
                frame(&mut batch, RST_STREAM, 0, stream_id, &8u32.to_be_bytes()); // CANCEL
                stream_id += 2;
            }
            if w.write_all(&batch).await.is_err() {
                closed = true;
                break;
            }
            sent += 100;
        }
        let _ = w.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(30), reader).await;
        cut += u64::from(closed);
        goaways += goaway.load(Ordering::SeqCst);
    }
    let _ = stop.send(true);
    let (ok, failed) = others.await.unwrap();

    assert!(
        goaways >= 20 || cut > 0,
        "the proxy never pushed back: goaways={goaways} cut={cut} sent={sent}"
    );
    assert!(
        b.requests() < sent / 10,
        "most reset streams still reached the backend: {} of {sent}",
        b.requests()
    );
    assert!(ok > 0 && failed == 0, "bystander: ok={ok} failed={failed}");
    assert!(
        rss.peak_mib() < RSS_BOUND_MIB,
        "proxy RSS peaked at {} MiB",
        rss.peak_mib()
    );
    assert_eq!(request::get(p.http, "/").await.body, "b1");
    eprintln!("rapid reset: sent {sent} streams, {goaways} GOAWAY, backend saw {}, bystander ok {ok}, peak RSS {} MiB", b.requests(), rss.peak_mib());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_with_bounded_memory() {
    let b = Backend::start("b1").await;
    let p = Proxy::start(&["--backend", &b.addr_string()]).await;
    let rss = RssWatch::start(p.pid());
    let (stop, others) = bystander(p.http);

    // Per connection: a HEADERS frame without END_HEADERS, then up to 4,000
    // CONTINUATION frames of ~16 KiB (64 MiB of header block) that never end.
    let filler = filler_header(16_000);
    let (mut cut_early, mut sent_total) = (0, 0u64);
    for _ in 0..5 {
        let (mut w, _goaway, reader) = h2c(p.http).await;
        let mut start = Vec::new();
        frame(&mut start, HEADERS, END_STREAM, 1, &request_block("/"));
        let mut sent = 0u64;
        if w.write_all(&start).await.is_ok() {
            let mut cont = Vec::new();
            frame(&mut cont, CONTINUATION, 0, 1, &filler);
            for _ in 0..4000 {
                match tokio::time::timeout(Duration::from_secs(10), w.write_all(&cont)).await {
                    Ok(Ok(())) => sent += cont.len() as u64,
                    _ => break,
                }
            }
        }
        if sent < 4000 * 16_000 {
            cut_early += 1;
        }
        sent_total += sent;
        drop(w);
        let _ = tokio::time::timeout(Duration::from_secs(30), reader).await;
    }
    let _ = stop.send(true);
    let (ok, failed) = others.await.unwrap();

    assert_eq!(
        cut_early, 5,
        "the proxy read a never-ending header block to the end"
    );
    assert_eq!(
        b.requests() - ok,
        0,
        "a flooded request reached the backend"
    );
    assert!(ok > 0 && failed == 0, "bystander: ok={ok} failed={failed}");
    assert!(
        rss.peak_mib() < RSS_BOUND_MIB,
        "proxy RSS peaked at {} MiB",
        rss.peak_mib()
    );
    assert_eq!(request::get(p.http, "/").await.body, "b1");
    eprintln!(
        "CONTINUATION flood: {} KiB accepted over 5 connections, peak RSS {} MiB",
        sent_total / 1024,
        rss.peak_mib()
    );
}

/// Issue 12.6: once ALPN chose `h2`, bytes that are not the connection
/// preface are a connection error of type PROTOCOL_ERROR (RFC 9113 §3.4):
/// the answer is SETTINGS then GOAWAY(PROTOCOL_ERROR), never a plaintext
/// `HTTP/1.1 400`. A real h2 client on the same listener is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_preface_after_alpn_h2_gets_goaway_protocol_error() {
    use handoff_tests::tls::{self, TestCa};
    let b = Backend::start("b1").await;
    let dir = handoff_tests::TempDir::new("h2-preface");
    let ca = TestCa::new();
    let (p, _) = tls::start_proxy(&dir, &ca, &b, &[("a", &["a.test"])], &[]).await;
    let addr = p.https.expect("https listener");
    let h2 = ca.client(&[b"h2"]);
    let mut s = tls::connect(&h2, addr, "a.test").await.unwrap();
    assert_eq!(tls::session(&s).1.as_deref(), Some(&b"h2"[..]));
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy neither answered nor closed")
        .ok();
    assert!(
        !out.starts_with(b"HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    // SETTINGS (9-byte header, no parameters), then GOAWAY with error code 1.
    assert!(out.len() >= 9 + 17, "{out:?}");
    assert_eq!(out[3], SETTINGS, "{out:?}");
    let goaway = &out[9..];
    assert_eq!(goaway[3], GOAWAY, "{out:?}");
    assert_eq!(
        &goaway[13..17],
        &1u32.to_be_bytes(),
        "not PROTOCOL_ERROR: {out:?}"
    );

    let reply = tls::get(&h2, addr, "a.test", "/").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "b1"));
    assert_eq!(reply.headers["x-test-version"], "HTTP/2.0");
}
