//! The proxy's control socket, with errors mapped to exit code 4.

use crate::error::{Failure, Result};
use handoff_shared::{BackendProtocol, ControlClient, SetBackend, StatusResponse, SwitchResponse};
use std::path::Path;
use std::time::Duration;

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

    /// Switches and waits for the drain. If the call fails, the proxy is
    /// asked where it points now, so the caller knows whether the switch
    /// happened (e.g. the connection broke during a long drain).
    ///
    /// Without a `protocol` the new backend speaks what the live one does,
    /// so a gRPC app stays h2c across deploys and rollbacks.
    pub async fn switch(
        &self,
        addr: &str,
        drain: Duration,
        protocol: Option<BackendProtocol>,
    ) -> Result<SwitchOutcome> {
        let protocol = match protocol {
            Some(p) => p,
            None => self.status().await?.protocol,
        };
        let req = SetBackend {
            addr: addr.to_string(),
            drain_timeout: Some(humantime::format_duration(drain).to_string()),
            protocol,
        };
        match self.client.set_backend(&req).await {
            Ok(resp) => Ok(SwitchOutcome::Switched(resp)),
            Err(e) => {
                let failure = self.err(&format!("switch to {addr}"), e);
                match self.client.status().await {
                    Ok(s) if s.backend.as_deref() == Some(addr) => {
                        Ok(SwitchOutcome::SwitchedUnconfirmed(failure))
                    }
                    _ => Err(failure),
                }
            }
        }
    }
}

pub enum SwitchOutcome {
    Switched(SwitchResponse),
    /// The proxy routes to the new backend, but the drain result was lost.
    SwitchedUnconfirmed(Failure),
}
