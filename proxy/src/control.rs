//! The control API: HTTP/1.1 + JSON on a Unix socket.
//!
//! It shares nothing with the request path but the [`Apps`]: a slow or
//! hostile control client can delay other switches, never traffic. The app
//! endpoints live in [`crate::control_apps`].

use crate::apps::Apps;
use crate::body::ProxyBody;
use bytes::Bytes;
use handoff_shared::{paths, ErrorBody, Listeners, PutApp, SetBackend};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};

/// Control request bodies are tiny; anything larger is refused unread.
pub const MAX_BODY: usize = 64 * 1024;
/// A control client that sends nothing for this long is cut off, and a
/// request body must arrive whole within it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    #[error("another handoff-proxy is already listening on {0}")]
    InUse(PathBuf),
    #[error("cannot create control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Control {
    pub apps: Arc<Apps>,
    pub state_path: PathBuf,
    pub default_drain_timeout: Duration,
    pub listeners: Listeners,
    /// Serialises switches: two deploys cannot interleave check, persist and swap.
    pub switch_lock: tokio::sync::Mutex<()>,
    pub access: Access,
    /// Certificates to reload on `POST /v1/tls/reload`; none without TLS.
    pub tls: Option<Arc<crate::tls::CertResolver>>,
    pub metrics: &'static crate::metrics::Metrics,
    /// Set once a new process took over the sockets (see
    /// [`crate::upgrade`]): switches then belong to it, and this one
    /// refuses them with 503.
    pub handed_off: std::sync::atomic::AtomicBool,
}

/// Who may use the socket beyond what its file mode already enforces.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub own_uid: u32,
    pub group: Option<u32>,
}

impl Access {
    /// `pid` lets a member of `--control-group` in through a supplementary
    /// group too (a CI user is rarely in the group as its primary one).
    fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.own_uid {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        group == gid || pid.is_some_and(|pid| supplementary_groups(pid).contains(&group))
    }
}

/// The supplementary groups of a process, from `/proc/PID/status`. Read when
/// the connection is accepted, while the peer is alive and connected.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
            Some(
                line.split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// Binds the socket so it is never reachable with looser permissions: it is
/// created inside a fresh 0700 directory, given its final mode, then renamed
/// into place. A socket file left by a crash is replaced; a live one is an error.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ControlSocketError> {
    let io = |source| ControlSocketError::Io {
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlSocketError::InUse(path.into()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let private = dir.join(format!(".handoff-control.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io)?;
    let staged = private.join("sock");
    let result = (|| {
        let listener = UnixListener::bind(&staged)?;
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&staged, None, Some(gid))?;
        }
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result.map_err(io)
}

/// The uid this process runs as, read without `unsafe` from procfs.
pub fn own_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

impl Control {
    /// Marks this process as handed off (or not, when a hand-off fails at
    /// its last step). Called with `switch_lock` held.
    pub fn set_handed_off(&self, yes: bool) {
        self.handed_off
            .store(yes, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: UnixListener,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => { tracing::warn!(error = %e, "control accept failed"); continue; }
                },
                _ = shutdown.changed() => return,
            };
            tokio::spawn(Arc::clone(&self).connection(stream));
        }
    }

    async fn connection(self: Arc<Self>, stream: UnixStream) {
        let peer = stream.peer_cred().ok();
        let (uid, gid) = peer.map_or((u32::MAX, u32::MAX), |c| (c.uid(), c.gid()));
        let allowed = self.access.allows(uid, gid, peer.and_then(|c| c.pid()));
        let service = hyper::service::service_fn(move |req| {
            let this = Arc::clone(&self);
            async move {
                if !allowed {
                    tracing::warn!(uid, gid, "control client refused");
                    return Ok::<_, std::convert::Infallible>(error(
                        StatusCode::FORBIDDEN,
                        format!("uid {uid} may not use this socket"),
                    ));
                }
                Ok(this.route(req, uid).await)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(IDLE_TIMEOUT)
            .max_buf_size(MAX_BODY)
            .serve_connection(TokioIo::new(stream), service);
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "control connection ended");
        }
    }

    async fn route(&self, req: Request<Incoming>, uid: u32) -> Response<ProxyBody> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        if let Some(name) = path.strip_prefix(paths::APP_PREFIX) {
            return match method {
                Method::GET => self.get_app(name),
                Method::PUT => match read_json::<PutApp>(req).await {
                    Ok(body) => self.put_app(name, body, uid).await,
                    Err(resp) => resp,
                },
                Method::DELETE => self.delete_app(name, uid).await,
                _ => method_not_allowed("GET, PUT, DELETE"),
            };
        }
        match (path.as_str(), &method) {
            (paths::STATUS, &Method::GET) => json(StatusCode::OK, &self.status()),
            (paths::APPS, &Method::GET) => self.list_apps(),
            (paths::BACKEND, &Method::PUT) => match read_json::<SetBackend>(req).await {
                Ok(body) => self.set_backend(body, uid).await,
                Err(resp) => resp,
            },
            (paths::TLS_RELOAD, &Method::POST) => self.reload_tls(uid).await,
            (paths::STATUS | paths::APPS, _) => method_not_allowed("GET"),
            (paths::TLS_RELOAD, _) => method_not_allowed("POST"),
            (paths::BACKEND, _) => method_not_allowed("PUT"),
            _ => error(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {}", handoff_shared::clip(&path)),
            ),
        }
    }

    /// Reads the certificate files again. A bad set is refused with 422 and
    /// the error; the certificates in use stay as they were.
    async fn reload_tls(&self, uid: u32) -> Response<ProxyBody> {
        let Some(resolver) = self.tls.clone() else {
            return error(
                StatusCode::CONFLICT,
                "TLS is not enabled (no --tls-cert/--tls-key)",
            );
        };
        match tokio::task::spawn_blocking(move || resolver.reload()).await {
            Ok(Ok(loaded)) => {
                tracing::info!(uid, certificates = loaded.certificates, names = ?loaded.names, "TLS certificates reloaded");
                json(StatusCode::OK, &loaded)
            }
            Ok(Err(e)) => {
                tracing::error!(uid, error = %e, "TLS reload failed; keeping the previous certificates");
                error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// Reads a bounded JSON body; every failure is a 4xx the caller can act on.
/// The body must say it is JSON (a form post from `curl -d` without the
/// header is refused, not guessed at), and must arrive within
/// [`IDLE_TIMEOUT`]: a client that stalls mid-body is cut, not held.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<ProxyBody>> {
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON: send Content-Type: application/json",
        ));
    }
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let Ok(collected) = tokio::time::timeout(IDLE_TIMEOUT, body).await else {
        let mut resp = error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {IDLE_TIMEOUT:?}"),
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(resp);
    };
    let bytes: Bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is over {MAX_BODY} bytes"),
            ))
        }
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            ))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ProxyBody> {
    let mut body = serde_json::to_vec(value).expect("response types serialise");
    body.push(b'\n');
    let mut resp = Response::new(ProxyBody::local(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON error. Messages that quote input (a serde error quotes the
/// value it choked on) are capped, so a huge input is never echoed back.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response<ProxyBody> {
    let message = message.into();
    let error = if message.chars().count() > 2 * handoff_shared::QUOTE_LIMIT {
        let cut: String = message
            .chars()
            .take(2 * handoff_shared::QUOTE_LIMIT)
            .collect();
        format!("{cut}…")
    } else {
        message
    };
    json(status, &ErrorBody { error })
}

fn method_not_allowed(allow: &'static str) -> Response<ProxyBody> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}
