//! A certificate authority made in the test, and TLS clients that trust only
//! it: real handshakes against the real proxy, nothing skipped or mocked.

use crate::backend::Backend;
use crate::proxy::Proxy;
use crate::request::Reply;
use crate::TempDir;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate written to disk, with its DER to compare against what
/// a handshake presented.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "handoff test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate (for curl's `--cacert`).
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.crt");
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    /// Issues a leaf for `names` and writes `STEM.crt` (leaf + CA chain) and
    /// `STEM.key` (PKCS#8) into `dir`.
    pub fn leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> Leaf {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    /// Issues a leaf for `names` over an existing PKCS#8 key (RSA or EC, as
    /// made by `openssl genpkey`) and writes `STEM.crt` into `dir`.
    pub fn leaf_for_key(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        pkcs8_pem: &str,
    ) -> (PathBuf, CertificateDer<'static>) {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::from_pem(pkcs8_pem).expect("PKCS#8 key rcgen can sign with");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let path = dir.join(format!("{stem}.crt"));
        std::fs::write(&path, format!("{}{}", cert.pem(), self.pem())).unwrap();
        (path, cert.der().clone())
    }

    /// A client that trusts this CA only, speaks only `versions` and offers `alpn`.
    pub fn client_with_versions(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// A client that trusts this CA only and offers `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// A TLS connection to `addr` asking for `sni`, bounded by 10 s.
pub async fn connect(
    tls: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        let tcp = TcpStream::connect(addr).await?;
        tls.connect(name, tcp).await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect timed out"))?
}

/// What the server presented and agreed on.
pub fn session(
    stream: &TlsStream<TcpStream>,
) -> (Option<CertificateDer<'static>>, Option<Vec<u8>>) {
    let conn = stream.get_ref().1;
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    (leaf, conn.alpn_protocol().map(<[u8]>::to_vec))
}

/// One request over an established TLS stream, HTTP/2 when ALPN chose `h2`.
pub async fn send(
    stream: TlsStream<TcpStream>,
    req: Request<Full<Bytes>>,
) -> Result<Reply, hyper::Error> {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    };
    let status = resp.status();
    let version = resp.version();
    let mut headers = resp.headers().clone();
    // Tests read the protocol from here; the proxy never sends this header.
    headers.insert("x-test-version", format!("{version:?}").parse().unwrap());
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        bytes: body,
    })
}

/// A GET over TLS with SNI `host`, on a fresh connection.
pub async fn get(tls: &TlsConnector, addr: SocketAddr, host: &str, path: &str) -> Reply {
    let stream = connect(tls, addr, host).await.expect("TLS connect");
    let uri = format!("https://{host}{path}");
    let req = Request::get(uri)
        .header("host", host)
        .body(Full::default())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), send(stream, req))
        .await
        .expect("request timed out")
        .expect("request failed")
}

/// Starts the real proxy on TLS (127.0.0.1:0) with one certificate per `(stem, names)`.
pub async fn start_proxy(
    dir: &TempDir,
    ca: &TestCa,
    backend: &Backend,
    certs: &[(&str, &[&str])],
    extra: &[&str],
) -> (Proxy, Vec<Leaf>) {
    let leaves: Vec<_> = certs
        .iter()
        .map(|(stem, names)| ca.leaf(dir.path(), stem, names))
        .collect();
    let mut args: Vec<String> = vec![
        "--backend".into(),
        backend.addr_string(),
        "--https".into(),
        "127.0.0.1:0".into(),
    ];
    for leaf in &leaves {
        args.extend([
            "--tls-cert".into(),
            leaf.cert.display().to_string(),
            "--tls-key".into(),
            leaf.key.display().to_string(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Proxy::start(&args).await, leaves)
}
