//! The connection pool towards one backend generation.

use crate::limits::RequestBody;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

pub type UpstreamClient = Client<HttpConnector, RequestBody>;

/// Timeouts that shape how the proxy talks to backends.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// Idle upstream connections are closed after this. Kept below common
    /// app-server keep-alive timeouts (Tomcat closes after 20 s), so the
    /// proxy closes first instead of racing a request against the backend's close.
    pub pool_idle_timeout: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(15),
        }
    }
}

/// A keep-alive HTTP/1.1 pool. Each generation gets its own so that draining a
/// generation can close exactly its connections and no others.
pub fn client(settings: &UpstreamSettings) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}
