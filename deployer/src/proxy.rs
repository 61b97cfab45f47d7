//! The proxy's control socket, with errors mapped to exit code 4.
//!
//! A control call whose answer is lost (the proxy crashed, the connection
//! dropped, a timeout) says nothing about whether the proxy acted on it.
//! [`Proxy::status_within`] re-reads `/v1/status`, waiting a bounded time for
//! a restarting proxy, so callers act on what the proxy says is true.

use crate::error::{Failure, Result};
use handoff_shared::{BackendProtocol, ControlClient, SetBackend, StatusResponse, SwitchResponse};
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Proxy {
    client: ControlClient,
}

impl Proxy {
    pub fn new(socket: &Path) -> Self {
        Self {
            client: ControlClient::new(socket),
        }
    }

    fn err(&self, doing: &str, e: handoff_shared::ControlError) -> Failure {
        Failure::Proxy(format!(
            "proxy control ({}) failed to {doing}: {e}",
            self.client.path().display()
        ))
    }

    pub async fn status(&self) -> Result<StatusResponse> {
        self.client
            .status()
            .await
            .map_err(|e| self.err("report its status", e))
    }

    /// The proxy's status, retried every 250 ms for up to `wait` (a proxy
    /// that is restarting answers again within seconds).
    pub async fn status_within(&self, wait: Duration) -> Result<StatusResponse> {
        let started = Instant::now();
        loop {
            match self.status().await {
                Ok(s) => return Ok(s),
                Err(e) if started.elapsed() >= wait => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// `PUT /v1/backend`: switches and answers after the drain.
    ///
    /// Without a `protocol` the new backend speaks what the live one does,
    /// so a gRPC app stays h2c across deploys and rollbacks.
    pub async fn switch(
        &self,
        addr: &str,
        drain: Duration,
        protocol: Option<BackendProtocol>,
    ) -> Result<SwitchResponse> {
        let protocol = match protocol {
            Some(p) => p,
            None => self.status().await?.protocol,
        };
        let req = SetBackend {
            addr: addr.to_string(),
            drain_timeout: Some(humantime::format_duration(drain).to_string()),
            protocol,
        };
        self.client
            .set_backend(&req)
            .await
            .map_err(|e| self.err(&format!("switch to {addr}"), e))
    }

    /// Waits until the proxy no longer drains `backend`, for at most `wait`.
    /// Returns the requests still in flight there when it gave up (0 when
    /// drained, or when the proxy cannot be asked: a restarted proxy has
    /// no requests from before).
    pub async fn wait_drained(&self, backend: &str, wait: Duration) -> u64 {
        let started = Instant::now();
        loop {
            let in_flight = match self.status().await {
                Ok(s) => s
                    .draining
                    .iter()
                    .filter(|d| d.backend == backend)
                    .map(|d| d.in_flight)
                    .sum(),
                Err(_) => 0,
            };
            if in_flight == 0 || started.elapsed() >= wait {
                return in_flight;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
