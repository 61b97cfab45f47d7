//! Replacing a running handoff-proxy with a new process (a new release, or
//! new flags) without refusing or cutting a connection.
//!
//! The running process (the *giver*) listens on the upgrade socket
//! (`--upgrade-socket`, by default the control socket's path plus
//! `.upgrade`, mode 0600, root or the proxy's own uid only). A process
//! started with `--upgrade` (the *taker*) connects to it and the two speak
//! one JSON line each way, in this order:
//!
//! 1. giver → taker, `offer`, with its listening sockets attached
//!    (`SCM_RIGHTS`, see [`fds`]): HTTP, HTTPS, admin, control and this
//!    upgrade socket. Before sending it, the giver takes the switch lock and
//!    keeps it until the hand-off ends, so no switch changes the state file
//!    while the taker reads it.
//! 2. The taker loads the state file and its certificates and starts its
//!    threads, but accepts nothing yet; then taker → giver, `ready`, naming
//!    the sockets it kept (a socket whose address changed in the new flags
//!    is bound afresh, and the giver's is closed when it exits).
//! 3. The giver marks itself handed off (from then on its control API
//!    refuses switches with 503), then giver → taker, `accepted`, with the
//!    client connections it still holds. The taker starts accepting on the
//!    same sockets, and the giver stops. The kernel's queue of each listening
//!    socket is shared, so a connection waiting in the backlog is accepted by
//!    the taker; none is refused, because a listening socket is never closed
//!    while a process still accepts on it.
//! 4. The giver retires its connections (see [`crate::retire`]), waits for
//!    requests, streams and tunnels up to the drain timeout, sends `report`
//!    (drained or not) and exits 0 without unlinking the sockets the taker
//!    kept.
//!
//! Anything that goes wrong before step 3 (the taker exits, is killed,
//! sends garbage, or stays silent for [`READY_TIMEOUT`]) abandons the
//! hand-off: the giver releases the switch lock and keeps serving as if
//! nothing happened. The only control requests both processes may answer at
//! once are reads; switches belong to the giver until step 3 and to the
//! taker after it.

pub mod fds;
pub mod give;
pub mod launch;
pub mod systemd;
pub mod take;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the giver waits between sending the sockets and the taker's
/// `ready`; loading certificates and starting threads takes milliseconds.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The test-only hook: `HANDOFF_TEST_PAUSE_AT=after-fds-received` makes a
/// taker stop right after it received the sockets (printing
/// `handoff-proxy test-pause after-fds-received` on stdout) and wait there
/// forever, so a test can kill it at that exact point. Never set it in
/// production.
pub const TEST_PAUSE_ENV: &str = "HANDOFF_TEST_PAUSE_AT";

/// The upgrade socket's default path, next to the control socket.
pub fn default_socket(control: &Path) -> PathBuf {
    let mut name = control.as_os_str().to_owned();
    name.push(".upgrade");
    PathBuf::from(name)
}

/// Which listening socket a passed descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Http,
    Https,
    Admin,
    Control,
    Upgrade,
}

/// The messages, one JSON line each.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    Offer(Offer),
    Ready(Ready),
    Accepted(Accepted),
    Progress(Progress),
    Report(Report),
}

/// The giver's sockets, in the order of the attached descriptors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Offer {
    pub pid: u32,
    /// The giver's process generation; the taker's is one more.
    pub generation: u64,
    /// The last backend generation the giver made, so the taker's numbering
    /// continues instead of starting again at 1.
    pub backend_generation: u64,
    pub sockets: Vec<Role>,
    /// Paths of the control and upgrade sockets, to compare with the taker's.
    pub control: PathBuf,
    pub upgrade: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub pid: u32,
    /// The sockets the taker uses; the giver leaves their files in place.
    pub kept: Vec<Role>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    /// Client connections the giver still held when it stopped accepting;
    /// it finishes them itself.
    pub connections: u64,
}

/// How often the giver says where its drain stands, until its report: a
/// reload waiting for the drain timeout shows what it waits for.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the giver's drain stands, sent every [`PROGRESS_EVERY`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Progress {
    /// Requests and tunnels still running.
    pub in_flight: u64,
    /// Client connections still open.
    pub connections: u64,
    pub waited_ms: u64,
}

/// What the taker hears of the old process after the hand-off.
#[derive(Debug)]
pub enum OldProcess {
    /// Still draining (every [`PROGRESS_EVERY`]).
    Draining(Progress),
    /// Done, or gone without saying ([`UpgradeError`]).
    Finished(Result<Report, UpgradeError>),
}

/// How the giver's drain ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Report {
    /// Every client connection ended before the drain timeout.
    pub connections_closed: bool,
    /// Every request and tunnel finished before the drain timeout.
    pub drained: bool,
    /// Requests still running when it gave up (0 when drained).
    pub in_flight: u64,
    pub waited_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot reach the running handoff-proxy on {path}: {source} (is it running, with the same --control or --upgrade-socket?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hand-off with the running handoff-proxy failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("hand-off protocol: {0}")]
    Protocol(String),
    #[error("cannot bind the upgrade socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("messages serialise");
        line.push(b'\n');
        line
    }

    pub fn decode(line: &[u8]) -> Result<Message, UpgradeError> {
        serde_json::from_slice(line).map_err(|e| {
            UpgradeError::Protocol(format!(
                "unexpected message {:?}: {e}",
                String::from_utf8_lossy(line)
            ))
        })
    }
}
