//! Certificates made in the run, for the proxies' TLS listeners in
//! `upgrade`: a CA, one leaf for [`NAME`], the files each proxy reads, and a
//! client that trusts that CA only and offers HTTP/2.

use crate::procs::TempDir;
use anyhow::{anyhow, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// The host name the leaf is for, sent as SNI and `:authority`.
pub const NAME: &str = "bench.test";

/// The leaf's files: `cert` (leaf + CA), `key` (PKCS#8) and `combined`
/// (both in one file, as HAProxy's `crt` takes them).
#[derive(Debug)]
pub struct TlsFiles {
    _dir: TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub combined: PathBuf,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

impl TlsFiles {
    pub fn new() -> Result<TlsFiles> {
        let err = |e: rcgen::Error| anyhow!("making the bench's certificates: {e}");
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "handoff-bench CA");
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(err)?).map_err(err)?;
        let key = KeyPair::generate().map_err(err)?;
        let leaf = CertificateParams::new(vec![NAME.to_string()])
            .map_err(err)?
            .signed_by(&key, &ca)
            .map_err(err)?;
        let dir = TempDir::new("tls")?;
        let chain = format!("{}{}", leaf.pem(), ca.pem());
        let (cert, key_path, combined) = (
            dir.path().join("bench.crt"),
            dir.path().join("bench.key"),
            dir.path().join("bench.pem"),
        );
        std::fs::write(&cert, &chain)?;
        std::fs::write(&key_path, key.serialize_pem())?;
        std::fs::write(&combined, format!("{chain}{}", key.serialize_pem()))?;
        Ok(TlsFiles {
            _dir: dir,
            cert,
            key: key_path,
            combined,
            ca_der: ca.der().clone(),
        })
    }

    /// A client trusting this run's CA only, offering `h2` alone.
    pub fn h2_client(&self) -> Result<TlsConnector> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    }
}
