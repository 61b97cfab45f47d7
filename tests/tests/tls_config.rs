//! Issue 5, TLS configuration edges: key formats, TLS versions, bad flags
//! and files, stalled or non-TLS handshakes.

use handoff_tests::backend::Backend;
use handoff_tests::proxy::Proxy;
use handoff_tests::request;
use handoff_tests::tls::{self, start_proxy as tls_proxy, TestCa};
use handoff_tests::TempDir;
use http::Request;
use std::process::Command;
use std::time::Duration;

/// `openssl` with `args`; the key formats below are what certbot, cloud
/// consoles and older tooling hand out.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ec_keys_in_pkcs1_pkcs8_and_sec1_over_tls_1_2_and_1_3() {
    let (dir, ca, b1) = (
        TempDir::new("tls"),
        TestCa::new(),
        Backend::start("b1").await,
    );
    let d = dir.path();
    let path = |name: &str| d.join(name).to_str().unwrap().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &path("rsa.p8"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &path("rsa.p8"),
        "-traditional",
        "-out",
        &path("rsa.p1"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &path("ec.p8"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &path("ec.p8"),
        "-traditional",
        "-out",
        &path("ec.sec1"),
    ]);
    let label = |file: &str| {
        std::fs::read_to_string(d.join(file))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(label("rsa.p1"), "-----BEGIN RSA PRIVATE KEY-----");
    assert_eq!(label("ec.sec1"), "-----BEGIN EC PRIVATE KEY-----");
    assert_eq!(label("rsa.p8"), "-----BEGIN PRIVATE KEY-----");

    let cases = [
        ("rsa8.test", "rsa.p8", "rsa.p8"),
        ("rsa1.test", "rsa.p8", "rsa.p1"),
        ("ec1.test", "ec.p8", "ec.sec1"),
    ];
    let mut args = vec![
        "--backend".to_string(),
        b1.addr_string(),
        "--https".into(),
        "127.0.0.1:0".into(),
    ];
    let mut ders = Vec::new();
    for (name, pkcs8, key_file) in cases {
        let (cert, der) = ca.leaf_for_key(
            d,
            name,
            &[name],
            &std::fs::read_to_string(d.join(pkcs8)).unwrap(),
        );
        args.extend([
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            path(key_file),
        ]);
        ders.push(der);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proxy::start(&args).await;
    let https = p.https.unwrap();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let client = ca.client_with_versions(&[b"h2"], &[version]);
        for ((name, _, key), der) in cases.iter().zip(&ders) {
            let stream = tls::connect(&client, https, name)
                .await
                .unwrap_or_else(|e| panic!("{name} ({key}) {version:?}: {e}"));
            assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
            assert_eq!(tls::session(&stream).0.as_ref(), Some(der), "{name}");
            let req = Request::get(format!("https://{name}/"))
                .body(Default::default())
                .unwrap();
            assert_eq!(tls::send(stream, req).await.unwrap().body, "b1");
        }
    }

    // A key that is not PEM at all is a startup error naming the file.
    std::fs::write(d.join("junk.key"), "not a key").unwrap();
    std::fs::create_dir(d.join("second")).unwrap();
    let leaf = ca.leaf(d, "junk-cert", &["j.test"]);
    let err = Proxy::try_start_in(
        &d.join("second"),
        &[
            "--https",
            "127.0.0.1:0",
            "--tls-cert",
            leaf.cert.to_str().unwrap(),
            "--tls-key",
            &path("junk.key"),
        ],
    )
    .await
    .err()
    .expect("a bad key must stop startup");
    assert!(err.contains("junk.key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_garbage_handshakes_are_cut_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (dir, ca, b1) = (
        TempDir::new("tls"),
        TestCa::new(),
        Backend::start("b1").await,
    );
    let (p, _) = tls_proxy(
        &dir,
        &ca,
        &b1,
        &[("app", &["app.test"])],
        &["--tls-handshake-timeout", "1s"],
    )
    .await;
    let https = p.https.unwrap();
    // Says nothing at all: cut at the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(https).await.unwrap();
    // Speaks plain HTTP to the TLS port: refused at once.
    let mut plain = tokio::net::TcpStream::connect(https).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    // A real client is served meanwhile.
    assert_eq!(
        tls::get(&ca.client(&[b"h2"]), https, "app.test", "/")
            .await
            .body,
        "b1"
    );
    for s in [&mut silent, &mut plain] {
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "a stalled or garbage TLS client was never cut"
        );
    }
    assert_eq!(b1.requests(), 1);
    // The count moves on the connection's thread right after the socket
    // is dropped, so a client can see the close first: wait for it.
    let admin = p.admin.expect("admin listener");
    let count = |metrics: &str, result: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("handoff_tls_handshakes_total")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    request::wait_for(
        "TLS handshake counts",
        Duration::from_secs(10),
        async || {
            let metrics = request::get(admin, "/metrics").await.body;
            (count(&metrics, "ok"), count(&metrics, "error")) == (1, 2)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_and_limit_flags_stop_startup_naming_the_problem() {
    let dir = TempDir::new("flags");
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "app", &["app.test"]);
    let cert = leaf.cert.to_str().unwrap();
    let missing = dir.path().join("missing.crt");
    let nope = dir.path().join("nope");
    let cases: &[(&[&str], &str)] = &[
        (&["--tls-cert", cert], "--tls-key"),
        (&["--redirect-https"], "--redirect-https needs TLS"),
        (&["--max-header-size", "1KiB"], "--max-header-size"),
        (&["--max-body", "ten"], "invalid size"),
        (&["--request-buffer", "1TiB"], "--request-buffer"),
        (&["--response-buffer", "64 apples"], "--response-buffer"),
        (&["--max-connections", "0"], "--max-connections"),
        (
            &[
                "--https",
                "127.0.0.1:0",
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                leaf.key.to_str().unwrap(),
            ],
            "missing.crt",
        ),
        (
            &[
                "--https",
                "127.0.0.1:0",
                "--tls-dir",
                nope.to_str().unwrap(),
            ],
            "nope",
        ),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let run = dir.path().join(format!("run{i}"));
        std::fs::create_dir(&run).unwrap();
        let err = Proxy::try_start_in(&run, args)
            .await
            .err()
            .unwrap_or_else(|| panic!("{args:?} started"));
        assert!(err.contains(want), "{args:?}: want {want:?} in:\n{err}");
    }
}
