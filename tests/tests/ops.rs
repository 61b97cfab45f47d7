//! End-to-end: what operators rely on — metrics, access logs, config files.

use handoff_shared::SetBackend;
use handoff_tests::backend::Backend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request::{get, wait_for};
use http::StatusCode;
use std::time::Duration;

/// The value of one sample line (`name{labels} value`) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn scrape(p: &Proxy) -> String {
    let reply = get(p.admin.expect("admin listener"), "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_the_right_amounts() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    assert_eq!(get(p.admin.unwrap(), "/healthz").await.body, "ok\n");
    let before = scrape(&p).await;
    assert_eq!(
        sample(&before, r#"handoff_requests_total{class="2xx"}"#),
        Some(0.0),
        "{before}"
    );

    for _ in 0..10 {
        assert_eq!(get(p.http, "/").await.status, StatusCode::OK);
    }
    let r = p
        .client()
        .set_backend(&SetBackend {
            addr: b2.addr_string(),
            drain_timeout: None,
            protocol: Default::default(),
        })
        .await
        .unwrap();
    assert!(r.drained);
    for _ in 0..3 {
        assert_eq!(get(p.http, "/").await.body, "b2");
    }
    // Take b2 away: the next request is a 502 counted as a connect error.
    b2.stop();
    drop(b2);
    wait_for("a 502", Duration::from_secs(5), async || {
        get(p.http, "/").await.status == StatusCode::BAD_GATEWAY
    })
    .await;

    // Requests are recorded when their body is done; wait for the last one.
    let mut m = String::new();
    wait_for("counters", Duration::from_secs(5), async || {
        m = scrape(&p).await;
        sample(&m, r#"handoff_requests_total{class="2xx"}"#) == Some(13.0)
    })
    .await;
    let bad = sample(&m, r#"handoff_requests_total{class="5xx"}"#).unwrap();
    assert!(bad >= 1.0, "{m}");
    assert_eq!(
        sample(&m, r#"handoff_upstream_errors_total{kind="connect"}"#),
        Some(bad),
        "{m}"
    );
    assert_eq!(sample(&m, "handoff_switches_total"), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, r#"handoff_drains_total{outcome="drained"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "handoff_drain_duration_seconds_count"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "handoff_request_duration_seconds_count"),
        Some(13.0 + bad),
        "{m}"
    );
    assert!(
        m.contains(r#"handoff_in_flight{generation="2",backend=""#),
        "{m}"
    );

    // In flight, per generation, while a slow request runs.
    let b3 = Backend::start("b3").await;
    p.client()
        .set_backend(&SetBackend {
            addr: b3.addr_string(),
            drain_timeout: None,
            protocol: Default::default(),
        })
        .await
        .unwrap();
    let addr = p.http;
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=1500").await });
    let series = format!(
        r#"handoff_in_flight{{generation="3",backend="{}",state="active",app="default"}}"#,
        b3.addr
    );
    wait_for("in-flight gauge", Duration::from_secs(5), async || {
        sample(&scrape(&p).await, &series) == Some(1.0)
    })
    .await;
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);

    // One access-log line per request, with status, backend and generation.
    let log = p.log_text();
    let access: Vec<_> = log
        .lines()
        .filter(|l| l.contains("handoff::access"))
        .collect();
    assert!(access.len() >= 14, "{} access lines:\n{log}", access.len());
    assert!(access.iter().any(|l| l.contains("status=200")
        && l.contains(&format!("backend={}", b1.addr))
        && l.contains("generation=1")));
    assert!(access
        .iter()
        .any(|l| l.contains("path=/slow") && l.contains("generation=3")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let b1 = Backend::start("b1").await;
    let p = Proxy::start(&["--backend", &b1.addr_string(), "--log-format", "json"]).await;
    assert_eq!(get(p.http, "/hello").await.status, StatusCode::OK);
    let mut line = None;
    wait_for("access log line", Duration::from_secs(5), async || {
        line = p
            .log_text()
            .lines()
            .find(|l| l.contains("handoff::access"))
            .map(str::to_owned);
        line.is_some()
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line.unwrap()).expect("JSON log line");
    assert_eq!(v["fields"]["path"], "/hello");
    assert_eq!(v["fields"]["status"], 200);
    assert_eq!(v["fields"]["generation"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_config_is_applied_and_flags_win() {
    let b1 = Backend::start("b1").await;
    let dir = handoff_tests::TempDir::new("config");
    let file = dir.path().join("handoff.toml");
    std::fs::write(
        &file,
        format!("# handoff-proxy settings\nbackend = \"{}\"\nupstream_timeout = \"300ms\"\ndrain-timeout = \"5s\"\n", b1.addr),
    )
    .unwrap();
    let cfg = file.to_str().unwrap();

    let p = Proxy::start(&["--config", cfg]).await;
    assert_eq!(get(p.http, "/").await.body, "b1", "backend from the file");
    assert_eq!(
        get(p.http, "/slow?ms=2000").await.status,
        StatusCode::GATEWAY_TIMEOUT,
        "timeout from the file"
    );
    drop(p);

    let p = Proxy::start(&["--config", cfg, "--upstream-timeout", "10s"]).await;
    assert_eq!(
        get(p.http, "/slow?ms=600").await.status,
        StatusCode::OK,
        "the flag overrides the file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_file_names_the_key_and_line() {
    let dir = handoff_tests::TempDir::new("badconfig");
    let file = dir.path().join("bad.toml");
    let cases = [
        (
            "drain_timeout = \"5s\"\n\nbogus_key = 1\n",
            "unknown key `bogus_key`",
            ":3",
        ),
        ("drain_timeout = \"soon\"\n", "drain-timeout", "soon"),
        ("response_buffer = \"lots\"\n", "response-buffer", "lots"),
        ("backend = [1, 2\n", "bad.toml", "line 1"),
    ];
    for (text, want1, want2) in cases {
        std::fs::write(&file, text).unwrap();
        let err = Proxy::try_start_in(dir.path(), &["--config", file.to_str().unwrap()])
            .await
            .err()
            .unwrap_or_else(|| panic!("{text:?} was accepted"));
        assert!(
            err.contains(want1) && err.contains(want2),
            "{text:?}: {err}"
        );
        assert!(
            !err.contains("exit Some(ExitStatus(unix_wait_status(0)))"),
            "{err}"
        );
    }
}
