//! Issue 12.6, the control API's input rules: a body must say it is JSON
//! (415), an error quotes at most about 200 characters of the input, and a
//! request whose body stalls is cut instead of held.

use handoff_tests::backend::Backend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request::get;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Writes raw bytes on the control socket and reads until it closes (or
/// `limit` passes, which fails the test).
async fn exchange(p: &Proxy, bytes: &[u8], limit: Duration) -> String {
    let mut s = UnixStream::connect(&p.control).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut out))
        .await
        .expect("the control socket held the request")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn put(content_type: Option<&str>, body: &str) -> Vec<u8> {
    let ct = content_type.map_or(String::new(), |t| format!("Content-Type: {t}\r\n"));
    format!(
        "PUT /v1/backend HTTP/1.1\r\nHost: l\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_415_and_changes_nothing() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    let body = format!(r#"{{"addr":"{}"}}"#, b2.addr_string());
    for ct in [
        None,
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        Some("application/jsonx"),
    ] {
        let out = exchange(&p, &put(ct, &body), Duration::from_secs(10)).await;
        assert!(out.starts_with("HTTP/1.1 415"), "{ct:?}: {out}");
        assert!(out.contains(r#""error":"the body must be JSON"#), "{out}");
        assert_eq!(get(p.http, "/").await.body, "b1", "{ct:?} switched");
    }
    for ct in ["application/json", "Application/JSON; charset=utf-8"] {
        let out = exchange(&p, &put(Some(ct), &body), Duration::from_secs(10)).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{ct}: {out}");
    }
    assert_eq!(get(p.http, "/").await.body, "b2");
}

#[tokio::test]
async fn errors_quote_at_most_about_200_characters_of_the_input() {
    let b1 = Backend::start("b1").await;
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    let long = "a".repeat(60_000);
    for body in [
        format!(r#"{{"addr":"{long}"}}"#),
        format!(r#"{{"addr":"{long}:80"}}"#),
        format!(r#"{{"addr":"127.0.0.1:1","drain_timeout":"{long}"}}"#),
        format!(r#"{{"addr":7,"x":"{long}"}}"#),
    ] {
        let out = exchange(
            &p,
            &put(Some("application/json"), &body),
            Duration::from_secs(10),
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 4"),
            "{}",
            &out[..80.min(out.len())]
        );
        let json = &out[out.find("\r\n\r\n").unwrap() + 4..];
        let err: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        let text = err["error"].as_str().unwrap();
        assert!(
            text.chars().filter(|c| *c == 'a').count() <= 410 && text.len() < 1000,
            "{} characters echoed: {}",
            text.len(),
            &text[..120]
        );
    }
    assert_eq!(get(p.http, "/").await.body, "b1");
}

#[tokio::test]
async fn a_control_body_that_stalls_is_cut_with_408() {
    let b1 = Backend::start("b1").await;
    let p = Proxy::start(&["--backend", &b1.addr_string()]).await;
    // The head promises 100 bytes; one comes.
    let head = b"PUT /v1/backend HTTP/1.1\r\nHost: l\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    // The control API's own limit is 10 s; 60 s means it was held.
    let out = exchange(&p, head, Duration::from_secs(60)).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert_eq!(
        p.client().status().await.unwrap().backend,
        Some(b1.addr_string())
    );
}
