//! The control API: HTTP/1.1 + JSON on a Unix socket.
//!
//! It shares nothing with the request path but the [`Router`]: a slow or
//! hostile control client can delay other switches, never traffic.

use crate::body::ProxyBody;
use crate::router::Router;
use crate::state::{self, State};
use crate::switch;
use bytes::Bytes;
use handoff_shared::{ErrorBody, Listeners, SetBackend, StatusResponse};
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
/// A control client that sends nothing for this long is cut off.
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
    pub router: Arc<Router>,
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
        match (path.as_str(), req.method()) {
            ("/v1/status", &Method::GET) => json(StatusCode::OK, &self.status()),
            ("/v1/backend", &Method::PUT) => match read_json::<SetBackend>(req).await {
                Ok(body) => self.set_backend(body, uid).await,
                Err(resp) => resp,
            },
            ("/v1/tls/reload", &Method::POST) => self.reload_tls(uid).await,
            ("/v1/status", _) => method_not_allowed("GET"),
            ("/v1/tls/reload", _) => method_not_allowed("POST"),
            ("/v1/backend", _) => method_not_allowed("PUT"),
            _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
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

    fn status(&self) -> StatusResponse {
        let active = self.router.active();
        StatusResponse {
            backend: active.as_ref().map(|g| g.addr.to_string()),
            generation: active.as_ref().map_or(0, |g| g.id),
            in_flight: active.as_ref().map_or(0, |g| g.in_flight()),
            draining: self.router.draining(),
            listeners: self.listeners.clone(),
        }
    }

    async fn set_backend(&self, req: SetBackend, uid: u32) -> Response<ProxyBody> {
        let drain_timeout = match req
            .drain_timeout
            .as_deref()
            .map(handoff_shared::parse_duration)
            .transpose()
        {
            Ok(t) => t.unwrap_or(self.default_drain_timeout),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let plan = match switch::plan(&req.addr).await {
            Ok(plan) => plan,
            Err(e) => return error(e.status(), e.to_string()),
        };
        let (new, previous) = {
            let _serial = self.switch_lock.lock().await;
            if self.handed_off.load(std::sync::atomic::Ordering::SeqCst) {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this handoff-proxy handed its sockets to a new process; send the switch again",
                );
            }
            let state = State {
                backend: Some(req.addr.clone()),
            };
            let path = self.state_path.clone();
            match tokio::task::spawn_blocking(move || state::save(&path, &state)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
            self.router.switch(plan)
        };
        tracing::info!(uid, backend = %new.addr, generation = new.id,
            previous = previous.as_ref().map(|p| p.addr.to_string()), "switched");
        self.metrics.switched();
        let outcome = crate::drain::wait_all(&self.router.retired(), drain_timeout).await;
        self.metrics.drain_done(outcome.drained, outcome.waited);
        tracing::info!(
            generation = new.id,
            drained = outcome.drained,
            in_flight = outcome.in_flight,
            waited_ms = outcome.waited.as_millis() as u64,
            "drain finished"
        );
        json(
            StatusCode::OK,
            &handoff_shared::SwitchResponse {
                backend: new.addr.to_string(),
                previous: previous.map(|p| p.addr.to_string()),
                generation: new.id,
                drained: outcome.drained,
                in_flight: outcome.in_flight,
                drain_ms: outcome.waited.as_millis() as u64,
            },
        )
    }
}

/// Reads a bounded JSON body; every failure is a 4xx the caller can act on.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<ProxyBody>> {
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
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

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ProxyBody> {
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

fn error(status: StatusCode, message: impl Into<String>) -> Response<ProxyBody> {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
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
