//! The giver's side: the running process hands its sockets to a new one.

use super::{fds, Accepted, Message, Offer, Progress, Report, Role, UpgradeError};
use crate::control::Control;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::sync::watch;

/// What the running process offers, and what it consults while it does.
pub struct Giver {
    /// The upgrade socket.
    pub listener: UnixListener,
    /// Duplicates of the listening sockets (same kernel socket, so the same
    /// backlog), in the order they are offered.
    pub sockets: Vec<(Role, OwnedFd)>,
    pub control: Arc<Control>,
    pub generation: u64,
    pub control_path: PathBuf,
    pub upgrade_path: PathBuf,
    pub retire: Arc<crate::retire::Retire>,
    pub metrics: &'static crate::metrics::Metrics,
}

/// A finished hand-off: the taker accepts now; this process drains and
/// sends the [`Report`] before it exits.
pub struct HandedOff {
    channel: fds::Channel,
    pub taker_pid: u32,
    pub kept: Vec<Role>,
    pub connections: u64,
}

impl HandedOff {
    /// Sends the drain outcome to the taker; it may be gone, which is fine.
    pub fn report(self, report: Report) {
        let _ = self.channel.send(&Message::Report(report).encode(), &[]);
    }

    /// A second handle on the channel, for [`Progress`] while draining.
    /// Stop using it before [`HandedOff::report`]: the two must not write
    /// at once.
    pub fn progress(&self) -> Option<ProgressSender> {
        self.channel.stream().try_clone().ok().map(ProgressSender)
    }
}

/// Sends [`Progress`] to the taker (see [`HandedOff::progress`]).
pub struct ProgressSender(std::os::unix::net::UnixStream);

impl ProgressSender {
    /// A few dozen bytes on a socket the taker reads: never blocks for
    /// long. A taker that is gone is no error here.
    pub fn send(&self, progress: Progress) {
        let _ = fds::send(&self.0, &Message::Progress(progress).encode(), &[]);
    }
}

impl Giver {
    /// Serves hand-off requests one at a time until one succeeds (then
    /// returns it) or `stop` flips (then returns `None`).
    pub async fn serve(self, mut stop: watch::Receiver<bool>) -> Option<HandedOff> {
        let own_uid = crate::control::own_uid();
        loop {
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => { tracing::warn!(error = %e, "upgrade accept failed"); continue; }
                },
                _ = stop.changed() => return None,
            };
            // The socket file is 0600 already; a root-owned proxy still
            // gives its sockets only to root or its own user.
            let uid = stream.peer_cred().map_or(u32::MAX, |c| c.uid());
            if uid != 0 && uid != own_uid {
                tracing::warn!(uid, "hand-off refused: not root or the proxy's own user");
                continue;
            }
            let stream = match stream.into_std().and_then(|s| {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(super::READY_TIMEOUT))?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade connection unusable");
                    continue;
                }
            };
            // No switch may change the state file between the taker reading
            // it and this process stopping.
            let serial = self.control.switch_lock.lock().await;
            match self.hand_off(stream, &stop).await {
                Ok(done) => {
                    drop(serial);
                    self.metrics.handoff("completed");
                    return Some(done);
                }
                Err(e) => {
                    self.metrics.handoff("abandoned");
                    tracing::warn!(error = %e, "hand-off abandoned; this process keeps every socket and keeps serving");
                }
            }
        }
    }

    /// Steps 1 to 3 of the module doc. Blocking I/O runs off the runtime.
    async fn hand_off(
        &self,
        stream: UnixStream,
        stop: &watch::Receiver<bool>,
    ) -> Result<HandedOff, UpgradeError> {
        let offer = Message::Offer(Offer {
            pid: std::process::id(),
            generation: self.generation,
            backend_generation: crate::router::last_generation(),
            sockets: self.sockets.iter().map(|(r, _)| *r).collect(),
            control: self.control_path.clone(),
            upgrade: self.upgrade_path.clone(),
        });
        let dups = self
            .sockets
            .iter()
            .map(|(_, fd)| fd.as_fd().try_clone_to_owned())
            .collect::<Result<Vec<_>, _>>()?;
        let (channel, ready) = tokio::task::spawn_blocking(move || {
            let mut channel = fds::Channel::new(stream);
            let borrowed: Vec<_> = dups.iter().map(|fd| fd.as_fd()).collect();
            channel.send(&offer.encode(), &borrowed)?;
            let (text, _) = channel.recv()?;
            Ok::<_, UpgradeError>((channel, Message::decode(&text)?))
        })
        .await
        .map_err(|e| UpgradeError::Protocol(e.to_string()))??;
        let Message::Ready(ready) = ready else {
            return Err(UpgradeError::Protocol(format!(
                "expected ready, got {ready:?}"
            )));
        };
        if *stop.borrow() {
            return Err(UpgradeError::Protocol(
                "this process is shutting down".into(),
            ));
        }
        // From here on this process refuses switches: the taker owns the state.
        self.control.set_handed_off(true);
        let connections = self.retire.open() as u64;
        let accepted = Message::Accepted(Accepted { connections });
        let sent = tokio::task::spawn_blocking(move || {
            channel.send(&accepted.encode(), &[]).map(|()| channel)
        })
        .await
        .map_err(|e| UpgradeError::Protocol(e.to_string()))
        .and_then(|r| r.map_err(UpgradeError::from));
        let channel = match sent {
            Ok(channel) => channel,
            Err(e) => {
                self.control.set_handed_off(false);
                return Err(e);
            }
        };
        tracing::info!(taker_pid = ready.pid, kept = ?ready.kept, connections, "sockets handed over; this process stops accepting and drains");
        Ok(HandedOff {
            channel,
            taker_pid: ready.pid,
            kept: ready.kept,
            connections,
        })
    }
}
