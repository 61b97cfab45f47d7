//! TLS termination: PEM certificates picked by SNI, reloadable in place.
//!
//! The `ServerConfig` is built once and never replaced; what changes on a
//! reload is the certificate set behind its resolver, held in an `ArcSwap`.
//! A handshake reads whichever set is current at that instant, and a
//! connection already established keeps the keys it negotiated, so a reload
//! never drops or stalls a connection. A reload that fails to load leaves the
//! current set untouched.

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where certificates come from; read again on every reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Explicit pairs (`--tls-cert`/`--tls-key`), in order: the first is the
    /// default for clients that send no SNI or an unknown name.
    pub pairs: Vec<CertPair>,
    /// A directory of `NAME.crt` + `NAME.key` pairs, loaded after `pairs`.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {source}")]
    Cert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCert { path: PathBuf },
    #[error("cannot read private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("private key {path} is not usable: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("private key {key} does not belong to certificate {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("certificate {path} cannot be parsed: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("cannot list certificate directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate {cert} has no key file {key} beside it")]
    MissingKey { cert: PathBuf, key: PathBuf },
    #[error("no certificate configured (give --tls-cert/--tls-key or a non-empty --tls-dir)")]
    Empty,
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// What a load or reload produced, for logs and the control API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Loaded {
    pub certificates: usize,
    /// DNS names served, in load order; `*.` names match one label.
    pub names: Vec<String>,
}

/// One immutable certificate set. Lookups are a hash probe or two: the
/// handshake path never scans the list.
#[derive(Debug)]
struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`, e.g. `example.com` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    loaded: Loaded,
}

impl CertSet {
    fn load(settings: &TlsSettings) -> Result<CertSet, TlsError> {
        let mut pairs = settings.pairs.clone();
        if let Some(dir) = &settings.dir {
            pairs.extend(dir_pairs(dir)?);
        }
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        let mut names = Vec::new();
        for pair in &pairs {
            let (key, dns) = load_pair(pair)?;
            let key = Arc::new(key);
            default.get_or_insert_with(|| Arc::clone(&key));
            // The first certificate naming a host wins, as in load order.
            for name in dns {
                let name = name.to_ascii_lowercase();
                let slot = match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(name.clone()),
                };
                slot.or_insert_with(|| Arc::clone(&key));
                names.push(name);
            }
        }
        let default = default.ok_or(TlsError::Empty)?;
        Ok(CertSet {
            exact,
            wildcard,
            default,
            loaded: Loaded {
                certificates: pairs.len(),
                names,
            },
        })
    }

    /// Exact name, then a one-label wildcard, then the default certificate:
    /// a client asking for an unknown name still completes the handshake
    /// (like nginx's default server) and its own name check decides.
    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(sni) = sni else {
            return Arc::clone(&self.default);
        };
        // rustls hands SNI over already lowercased and validated.
        if let Some(k) = self.exact.get(sni) {
            return Arc::clone(k);
        }
        let parent = sni.split_once('.').map(|(_, p)| p);
        parent
            .and_then(|p| self.wildcard.get(p))
            .map_or_else(|| Arc::clone(&self.default), Arc::clone)
    }
}

/// The `ResolvesServerCert` the one `ServerConfig` points at.
#[derive(Debug)]
pub struct CertResolver {
    settings: TlsSettings,
    current: ArcSwap<CertSet>,
}

impl CertResolver {
    /// Loads every certificate now, so a bad one stops startup with its name.
    pub fn new(settings: TlsSettings) -> Result<CertResolver, TlsError> {
        let set = CertSet::load(&settings)?;
        Ok(CertResolver {
            settings,
            current: ArcSwap::from_pointee(set),
        })
    }

    /// Reads the files again and swaps the set in. Blocking file I/O: run it
    /// off the async workers. On any error the current set stays in use.
    pub fn reload(&self) -> Result<Loaded, TlsError> {
        let set = CertSet::load(&self.settings)?;
        let loaded = set.loaded.clone();
        self.current.store(Arc::new(set));
        Ok(loaded)
    }

    /// Whether a request for `host` on a connection whose client asked for
    /// `sni` is one the connection's certificate serves: the name is the
    /// SNI, or picks the very certificate the SNI picked.
    pub fn covers(&self, sni: Option<&str>, host: &str) -> bool {
        if sni.is_some_and(|s| s.eq_ignore_ascii_case(host)) {
            return true;
        }
        let set = self.current.load();
        Arc::ptr_eq(&set.pick(sni), &set.pick(Some(host)))
    }

    pub fn loaded(&self) -> Loaded {
        self.current.load().loaded.clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().pick(hello.server_name()))
    }
}

/// TLS 1.2 and 1.3 with ring, ALPN `h2` then `http/1.1`, certificates from
/// `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads one pair and returns it with the DNS names its leaf certificate is for.
fn load_pair(pair: &CertPair) -> Result<(CertifiedKey, Vec<String>), TlsError> {
    let cert_err = |source| TlsError::Cert {
        path: pair.cert.clone(),
        source,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(cert_err)?
        .collect::<Result<_, _>>()
        .map_err(cert_err)?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCert {
        path: pair.cert.clone(),
    })?;
    // PKCS#8, PKCS#1 (RSA) and SEC1 (EC) are all recognised by their PEM label.
    let key_der = PrivateKeyDer::from_pem_file(&pair.key).map_err(|source| TlsError::Key {
        path: pair.key.clone(),
        source,
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|source| {
        TlsError::BadKey {
            path: pair.key.clone(),
            source,
        }
    })?;
    let names = {
        let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| TlsError::Parse {
            path: pair.cert.clone(),
            why: format!("{e:?}"),
        })?;
        parsed.valid_dns_names().map(str::to_owned).collect()
    };
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|source| TlsError::Mismatch {
            cert: pair.cert.clone(),
            key: pair.key.clone(),
            source,
        })?;
    Ok((certified, names))
}

/// `NAME.crt` + `NAME.key` pairs in `dir`, sorted by name so the default
/// certificate does not depend on directory order.
fn dir_pairs(dir: &Path) -> Result<Vec<CertPair>, TlsError> {
    let io = |source| TlsError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let mut certs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    certs.sort();
    certs
        .into_iter()
        .map(|cert| {
            let key = cert.with_extension("key");
            if key.is_file() {
                Ok(CertPair { cert, key })
            } else {
                Err(TlsError::MissingKey { cert, key })
            }
        })
        .collect()
}

/// Reloads on every SIGHUP until the process ends; failures are logged and
/// the previous certificates stay in use.
pub fn reload_on_sighup(
    resolver: Arc<CertResolver>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let r = Arc::clone(&resolver);
            match tokio::task::spawn_blocking(move || r.reload()).await {
                Ok(Ok(loaded)) => {
                    tracing::info!(certificates = loaded.certificates, names = ?loaded.names, "TLS certificates reloaded (SIGHUP)")
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates")
                }
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
    }))
}
