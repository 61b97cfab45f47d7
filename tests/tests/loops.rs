//! Issue 12.2: a backend that is the proxy itself. One request once became
//! 2,964 hops in 1.3 s. The control API refuses any backend that resolves to
//! one of the proxy's own listeners, and a request that comes back carrying
//! the proxy's own `Via` pseudonym is answered 508 without being forwarded,
//! which also stops loops through another proxy.

use handoff_shared::SetBackend;
use handoff_tests::backend::Backend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request::get;
use handoff_tests::tls::{self, TestCa};
use handoff_tests::TempDir;
use http::StatusCode;

fn switch_to(addr: &str) -> SetBackend {
    SetBackend {
        addr: addr.to_string(),
        drain_timeout: Some("1s".into()),
        ..SetBackend::default()
    }
}

#[tokio::test]
async fn a_backend_that_is_one_of_the_proxys_own_listeners_is_refused_with_422() {
    let b = Backend::start("b1").await;
    let dir = TempDir::new("loops");
    let ca = TestCa::new();
    let (p, _leaves) = tls::start_proxy(&dir, &ca, &b, &[("a", &["a.test"])], &[]).await;
    let http = p.http.port();
    let https = p.https.expect("https listener").port();
    let admin = p.admin.expect("admin listener").port();
    for addr in [
        format!("127.0.0.1:{http}"),
        format!("localhost:{http}"),
        format!("0.0.0.0:{http}"),
        format!("[::ffff:127.0.0.1]:{http}"),
        format!("127.0.0.1:{https}"),
        format!("localhost:{admin}"),
        format!("127.0.0.1:{admin}"),
    ] {
        let err = p
            .client()
            .set_backend(&switch_to(&addr))
            .await
            .expect_err(&format!("{addr} was accepted as a backend"));
        let text = err.to_string();
        assert!(text.contains("422"), "{addr}: {text}");
        assert!(text.contains("own listener"), "{addr}: {text}");
        let s = p.client().status().await.unwrap();
        assert_eq!(s.backend, Some(b.addr_string()), "{addr} changed routing");
        assert_eq!(get(p.http, "/").await.body, "b1");
    }
}

#[tokio::test]
async fn a_loop_through_another_proxy_is_cut_with_508_at_the_first_return() {
    let b = Backend::start("b1").await;
    let a = Proxy::start(&["--backend", &b.addr_string()]).await;
    let other = Proxy::start(&["--backend", &a.http.to_string()]).await;
    // a -> other -> a: neither address is a's own listener, so only the
    // wire can tell.
    a.client()
        .set_backend(&switch_to(&other.http.to_string()))
        .await
        .unwrap();
    let reply = get(a.http, "/loop").await;
    assert_eq!(reply.status, StatusCode::LOOP_DETECTED, "{}", reply.body);
    assert_eq!(b.requests(), 0, "the loop reached a backend");
    // a answered twice (the client, then itself), the other proxy once.
    let hops = |p: &Proxy| {
        p.log_text()
            .lines()
            .filter(|l| l.contains("handoff::access") && l.contains("path=/loop"))
            .count()
    };
    assert_eq!((hops(&a), hops(&other)), (2, 1));
    // Via names both proxies' pseudonyms on the way round.
    a.client()
        .set_backend(&switch_to(&b.addr_string()))
        .await
        .unwrap();
    assert_eq!(get(other.http, "/").await.body, "b1");
}
