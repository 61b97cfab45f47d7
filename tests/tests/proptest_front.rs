//! Issue 5, property-based: random bytes and random request heads at the
//! HTTP listener, random bytes and random JSON at the control API. Each run
//! is bounded by its case count. The proxy must answer 4xx (or, for a head
//! that happens to be valid, forward it), never 5xx, and keep serving.

use handoff_tests::backend::Backend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::runtime::Runtime;

/// A runtime that outlives every case, with one backend and one proxy on it.
fn setup(extra: &[&str]) -> (Runtime, Backend, Proxy) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (b, p) = rt.block_on(async {
        let b = Backend::start("b1").await;
        let mut args = vec![
            "--backend".to_string(),
            b.addr_string(),
            "--header-timeout".into(),
            "1s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = Proxy::start(&args).await;
        (b, p)
    });
    (rt, b, p)
}

/// `cases` per property, or `PROPTEST_CASES` for a longer local run.
fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Sends `bytes`, half-closes, and reads whatever comes back within 5 s.
async fn exchange_tcp(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn exchange_unix(path: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).await.unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of every response in `raw` (pipelined heads may get several).
fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| raw.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

#[test]
fn random_bytes_at_the_http_listener_get_4xx_or_nothing() {
    let (rt, b, p) = setup(&[]);
    let addr = p.http;
    runner(300)
        .run(&proptest::collection::vec(any::<u8>(), 0..2048), |bytes| {
            let raw = rt.block_on(exchange_tcp(addr, &bytes));
            let codes = statuses(&raw);
            prop_assert!(
                codes.iter().all(|c| (400..500).contains(c)),
                "{codes:?} for {bytes:?}"
            );
            Ok(())
        })
        .unwrap();
    assert_eq!(b.requests(), 0, "random bytes reached the backend");
    assert_eq!(rt.block_on(request::get(addr, "/")).body, "b1");
}

/// Request heads built from parts a real attacker varies: methods, targets,
/// versions, framing headers and odd bytes in names and values.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("CONNECT".to_string()),
        Just("OPTIONS".to_string()),
        "[A-Z]{1,8}",
        "[ -~]{0,6}",
    ];
    let target = prop_oneof![
        Just("/".to_string()),
        "/[a-z0-9/?=&%.]{0,30}",
        "http://[a-z.]{1,10}/[a-z]{0,5}",
        "[ -~]{0,20}",
        Just("*".to_string()),
    ];
    let version = prop_oneof![
        Just("HTTP/1.1"),
        Just("HTTP/1.0"),
        Just("HTTP/2.0"),
        Just("HTTP/1.1 "),
        Just("")
    ];
    let name = prop_oneof![
        Just("Host".to_string()),
        Just("Content-Length".to_string()),
        Just("Transfer-Encoding".to_string()),
        Just("Connection".to_string()),
        Just("Upgrade".to_string()),
        Just("Expect".to_string()),
        "[A-Za-z-]{1,12}",
        "[ -~]{0,12}",
    ];
    let value = prop_oneof![
        "[ -~]{0,20}",
        "[0-9]{1,20}",
        Just("chunked".to_string()),
        Just("a.test".to_string()),
        "\\PC{0,10}"
    ];
    let header = (
        name,
        value,
        prop_oneof![Just("\r\n"), Just("\n"), Just("\r\n ")],
    );
    let body = proptest::collection::vec(any::<u8>(), 0..64);
    (
        method,
        target,
        version,
        proptest::collection::vec(header, 0..8),
        any::<bool>(),
        body,
    )
        .prop_map(|(m, t, v, headers, host, body)| {
            let mut out = format!("{m} {t} {v}\r\n").into_bytes();
            if host {
                out.extend_from_slice(b"Host: a.test\r\n");
            }
            for (n, v, end) in headers {
                out.extend_from_slice(format!("{n}: {v}{end}").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body);
            out
        })
}

#[test]
fn random_request_heads_get_4xx_or_are_forwarded_and_the_proxy_keeps_serving() {
    let (rt, b, p) = setup(&["--max-body", "1KiB"]);
    let addr = p.http;
    let forwarded = std::sync::atomic::AtomicU64::new(0);
    runner(400)
        .run(&head(), |bytes| {
            let before = b.requests();
            let raw = rt.block_on(exchange_tcp(addr, &bytes));
            let codes = statuses(&raw);
            let reached = b.requests() - before;
            prop_assert!(
                codes.iter().all(|c| (400..500).contains(c) || *c == 200),
                "{codes:?} for {:?}\n{raw}",
                String::from_utf8_lossy(&bytes)
            );
            // A 200 only ever comes from the backend.
            let ok = codes.iter().filter(|c| **c == 200).count() as u64;
            prop_assert!(
                ok <= reached,
                "200 without the backend for {:?}",
                String::from_utf8_lossy(&bytes)
            );
            forwarded.fetch_add(reached, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    assert_eq!(rt.block_on(request::get(addr, "/")).body, "b1");
    eprintln!(
        "random heads: {} were valid and forwarded",
        forwarded.into_inner()
    );
}

fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        "\\PC{0,20}".prop_map(Value::String),
        Just(Value::String("127.0.0.1:1".into())),
        Just(Value::String("30s".into())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("addr".to_string()),
                    Just("drain_timeout".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn random_json_and_bytes_at_the_control_api_get_4xx_and_change_nothing() {
    let (rt, b, p) = setup(&[]);
    let before = rt.block_on(p.client().status()).unwrap();
    let socket = p.control.clone();
    let paths = prop_oneof![
        Just("/v1/backend"),
        Just("/v1/status"),
        Just("/v1/tls/reload"),
        Just("/v2/x")
    ];
    let methods = prop_oneof![Just("PUT"), Just("POST"), Just("GET"), Just("DELETE")];
    runner(200)
        .run(&(json(), paths, methods), |(value, path, method)| {
            let body = serde_json::to_vec(&value).unwrap();
            let r = rt
                .block_on(request::control(&socket, method, path, body))
                .unwrap();
            let ok_status = r.status.is_client_error() || (method == "GET" && path == "/v1/status");
            prop_assert!(
                ok_status,
                "{} for {method} {path} {value}: {}",
                r.status,
                r.body
            );
            prop_assert!(
                serde_json::from_str::<serde_json::Value>(&r.body).is_ok(),
                "not JSON: {}",
                r.body
            );
            Ok(())
        })
        .unwrap();
    runner(200)
        .run(&proptest::collection::vec(any::<u8>(), 0..1024), |bytes| {
            let raw = rt.block_on(exchange_unix(&socket, &bytes));
            let codes = statuses(&raw);
            prop_assert!(codes.iter().all(|c| (400..500).contains(c)), "{codes:?}");
            Ok(())
        })
        .unwrap();
    let after = rt.block_on(p.client().status()).unwrap();
    assert_eq!(
        (after.backend, after.generation),
        (before.backend, before.generation),
        "routing changed"
    );
    assert_eq!(rt.block_on(request::get(p.http, "/")).body, "b1");
    assert_eq!(b.requests(), 1);
}
