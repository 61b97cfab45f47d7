//! The taker's side: the new process asks the running one for its sockets.

use super::{fds, Accepted, Message, Offer, OldProcess, Ready, Role, UpgradeError, TEST_PAUSE_ENV};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// A hand-off in progress, from the taker's side: the giver's sockets, not
/// yet accepted on.
pub struct Taker {
    channel: fds::Channel,
    pub offer: Offer,
    sockets: Vec<(Role, OwnedFd)>,
    kept: Vec<Role>,
}

/// Connects to the giver's upgrade socket and receives its sockets.
/// Blocking; the giver answers at once unless a switch is under way.
pub fn connect(path: &Path) -> Result<Taker, UpgradeError> {
    let stream = UnixStream::connect(path).map_err(|source| UpgradeError::Connect {
        path: path.into(),
        source,
    })?;
    stream.set_read_timeout(Some(super::READY_TIMEOUT))?;
    let mut channel = fds::Channel::new(stream);
    let (text, received) = channel.recv()?;
    let offer = match Message::decode(&text)? {
        Message::Offer(offer) => offer,
        other => {
            return Err(UpgradeError::Protocol(format!(
                "expected an offer, got {other:?}"
            )))
        }
    };
    if offer.sockets.len() != received.len() {
        return Err(UpgradeError::Protocol(format!(
            "the offer names {} sockets but {} arrived",
            offer.sockets.len(),
            received.len()
        )));
    }
    tracing::info!(giver_pid = offer.pid, giver_generation = offer.generation, sockets = ?offer.sockets, "received the running process's sockets");
    test_pause("after-fds-received");
    let sockets = offer.sockets.iter().copied().zip(received).collect();
    Ok(Taker {
        channel,
        offer,
        sockets,
        kept: Vec::new(),
    })
}

/// The test-only hook (see [`TEST_PAUSE_ENV`]): stops here for good.
fn test_pause(point: &str) {
    if std::env::var(TEST_PAUSE_ENV).is_ok_and(|p| p == point) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "handoff-proxy test-pause {point}");
        let _ = out.flush();
        loop {
            std::thread::park();
        }
    }
}

/// Whether a socket bound to `have` serves the address `want` asks for:
/// same IP, and the same port unless `want` leaves it to the system (0).
fn same_address(have: SocketAddr, want: SocketAddr) -> bool {
    have.ip() == want.ip() && (want.port() == 0 || have.port() == want.port())
}

impl Taker {
    /// The giver's TCP socket for `role`, if it listens where `want` says.
    pub fn tcp(&mut self, role: Role, want: SocketAddr) -> Option<std::net::TcpListener> {
        let i = self.sockets.iter().position(|(r, _)| *r == role)?;
        let listener = std::net::TcpListener::from(self.sockets.remove(i).1);
        match listener.local_addr() {
            Ok(have) if same_address(have, want) => {
                self.kept.push(role);
                Some(listener)
            }
            Ok(have) => {
                tracing::info!(?role, %have, %want, "address changed: binding afresh; the old process closes its socket when it exits");
                None
            }
            Err(e) => {
                tracing::warn!(?role, error = %e, "passed socket unusable; binding afresh");
                None
            }
        }
    }

    /// The giver's Unix socket for `role`, if it is at the same path.
    pub fn unix(&mut self, role: Role, want: &Path) -> Option<UnixListener> {
        let i = self.sockets.iter().position(|(r, _)| *r == role)?;
        let fd = self.sockets.remove(i).1;
        let at = match role {
            Role::Upgrade => &self.offer.upgrade,
            _ => &self.offer.control,
        };
        if at != want {
            tracing::info!(?role, old = %at.display(), new = %want.display(), "path changed: binding afresh");
            return None;
        }
        self.kept.push(role);
        Some(UnixListener::from(fd))
    }

    /// Tells the giver this process is ready; on its `accepted`, this
    /// process owns the sockets. Blocking.
    pub fn ready(&mut self) -> Result<Accepted, UpgradeError> {
        self.sockets.clear();
        let ready = Message::Ready(Ready {
            pid: std::process::id(),
            kept: self.kept.clone(),
        });
        self.channel.send(&ready.encode(), &[])?;
        let (text, _) = self.channel.recv()?;
        match Message::decode(&text)? {
            Message::Accepted(accepted) => Ok(accepted),
            other => Err(UpgradeError::Protocol(format!(
                "expected accepted, got {other:?}"
            ))),
        }
    }

    /// Follows (blocking) the giver's drain: `on` hears each progress
    /// message, then the report sent just before it exits (or why none
    /// came).
    pub fn follow(mut self, mut on: impl FnMut(OldProcess)) {
        let finished = self.drain(&mut on);
        on(OldProcess::Finished(finished));
    }

    fn drain(&mut self, on: &mut impl FnMut(OldProcess)) -> Result<super::Report, UpgradeError> {
        // The giver drains for up to its drain timeout, which this process
        // does not know; the socket closing without a report ends the wait.
        self.channel.stream().set_read_timeout(None)?;
        loop {
            let (text, _) = self.channel.recv()?;
            match Message::decode(&text)? {
                Message::Progress(progress) => on(OldProcess::Draining(progress)),
                Message::Report(report) => return Ok(report),
                other => {
                    return Err(UpgradeError::Protocol(format!(
                        "expected a report, got {other:?}"
                    )))
                }
            }
        }
    }
}

/// A passed (blocking) std listener as a tokio one.
pub fn into_tokio(listener: std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Same for the Unix sockets.
pub fn into_tokio_unix(listener: UnixListener) -> std::io::Result<tokio::net::UnixListener> {
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}
