//! A small client for the control socket, used by `handoff` and by the tests.
//!
//! One connection per call: control traffic is rare, and a fresh connection
//! means a proxy restart between two calls is never seen as a broken pipe.

use crate::api::{ErrorBody, SetBackend, StatusResponse, SwitchResponse};
use crate::apps::{paths, AppStatus, AppsResponse, PutApp, PutAppResponse, RemoveAppResponse};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect to the proxy's control socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control request failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the proxy answered {status}: {message}")]
    Api { status: StatusCode, message: String },
    #[error("the proxy sent a response that is not the expected JSON: {0}")]
    Decode(#[from] serde_json::Error),
}

#[derive(Debug, Clone)]
pub struct ControlClient {
    path: PathBuf,
}

impl ControlClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The default app's backend (`GET /v1/status`).
    pub async fn status(&self) -> Result<StatusResponse, ControlError> {
        self.call(Method::GET, paths::STATUS, None).await
    }

    /// Switches the default app to `req.addr` and returns once the drain is over.
    pub async fn set_backend(&self, req: &SetBackend) -> Result<SwitchResponse, ControlError> {
        let body = serde_json::to_vec(req)?;
        self.call(Method::PUT, paths::BACKEND, Some(body)).await
    }

    /// Every app the proxy routes.
    pub async fn apps(&self) -> Result<AppsResponse, ControlError> {
        self.call(Method::GET, paths::APPS, None).await
    }

    /// One app; `Api` with 404 when there is none of that name.
    pub async fn app(&self, name: &str) -> Result<AppStatus, ControlError> {
        self.call(Method::GET, &paths::app(name), None).await
    }

    /// Creates or updates an app; with a backend, returns once the drain is over.
    pub async fn put_app(&self, name: &str, req: &PutApp) -> Result<PutAppResponse, ControlError> {
        let body = serde_json::to_vec(req)?;
        self.call(Method::PUT, &paths::app(name), Some(body)).await
    }

    /// Stops routing to an app, waits for its drain, then forgets it.
    pub async fn remove_app(&self, name: &str) -> Result<RemoveAppResponse, ControlError> {
        self.call(Method::DELETE, &paths::app(name), None).await
    }

    /// Sends any request and returns the raw status and body; for tests and
    /// for calls this client has no typed helper for.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ControlError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| ControlError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("static request parts are valid");
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlError> {
        let (status, bytes) = self.raw(method, path, body).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ControlError::Api { status, message });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}
