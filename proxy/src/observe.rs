//! One record per request, finished when the response's last byte is sent
//! (or the client goes away): it feeds the metrics and writes the access log.

use crate::metrics::{AppCounters, Metrics};
use http::Method;
use std::sync::Arc;
use std::time::Instant;

/// The access log's tracing target, so it can be filtered on its own
/// (`RUST_LOG=info,handoff::access=off`).
pub const ACCESS_TARGET: &str = "handoff::access";

pub struct Exchange {
    metrics: &'static Metrics,
    start: Instant,
    method: Method,
    /// Path without the query string (queries often carry tokens); `None`
    /// when the access log is filtered out, so a quiet proxy allocates nothing.
    path: Option<String>,
    pub status: u16,
    pub bytes: u64,
    pub backend: Option<(http::uri::Authority, u64)>,
    /// The app the request was routed to; `None` when no app took it.
    pub app: Option<Arc<AppCounters>>,
}

impl Exchange {
    pub fn start(metrics: &'static Metrics, method: &Method, path: &str) -> Self {
        Exchange {
            metrics,
            start: Instant::now(),
            method: method.clone(),
            path: tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
                .then(|| path.to_owned()),
            status: 0,
            bytes: 0,
            backend: None,
            app: None,
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        self.metrics
            .request_done(self.app.as_deref(), self.status, elapsed);
        let Some(path) = &self.path else { return };
        let (backend, generation) = match &self.backend {
            Some((addr, generation)) => (addr.as_str(), *generation),
            None => ("-", 0),
        };
        tracing::info!(
            target: ACCESS_TARGET,
            method = %self.method,
            path = %path,
            status = self.status,
            bytes = self.bytes,
            duration_ms = %format_args!("{:.3}", elapsed.as_secs_f64() * 1000.0),
            app = %self.app.as_ref().map_or("-", |a| &a.name),
            backend = %backend,
            generation,
        );
    }
}
