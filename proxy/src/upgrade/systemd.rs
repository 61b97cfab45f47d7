//! systemd integration: readiness notification (`Type=notify`) and socket
//! activation (`LISTEN_FDS`), as another way to receive the listeners.
//!
//! `sd_notify` is one datagram to `$NOTIFY_SOCKET`; written here with std's
//! `UnixDatagram` rather than a crate. A process that took over by hand-off
//! sends `MAINPID=` with its own pid along with `READY=1`, so systemd
//! follows it (the unit needs `NotifyAccess=all`, since the new process is
//! not yet the main one when it speaks). The process that handed over also
//! sends `MAINPID=` with the taker's pid, before it drains: its own exit
//! may otherwise reach systemd first and read as the service's end.
//!
//! Socket activation uses the `listenfd` crate: turning the inherited
//! descriptor numbers 3.. into sockets needs `unsafe` (`FromRawFd`), which
//! this crate forbids; listenfd does it after checking that each one is a
//! socket of the right kind, and honours `LISTEN_PID`.

use super::Role;
use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to systemd; does nothing outside systemd
/// (no `$NOTIFY_SOCKET`). Errors are logged, never fatal: the proxy serves
/// either way.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!(error = %e, socket = ?path, "sd_notify failed");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

/// Listening sockets passed by systemd (`LISTEN_FDS`, `LISTEN_PID`,
/// `LISTEN_FDNAMES`). A socket named `http`, `https`, `admin`, `control`
/// or `upgrade` (`FileDescriptorName=` in the .socket unit) serves that
/// role; an unnamed TCP socket is the HTTP listener, an unnamed Unix socket
/// the control socket. A role with no socket is bound from the flags.
#[derive(Default)]
pub struct Activated {
    tcp: Vec<(Role, std::net::TcpListener)>,
    unix: Vec<(Role, std::os::unix::net::UnixListener)>,
}

impl Activated {
    /// Reads the environment (and removes `LISTEN_FDS`/`LISTEN_PID`, so
    /// child processes do not take the sockets again). Call before any
    /// thread is started.
    pub fn from_env() -> io::Result<Activated> {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let mut out = Activated::default();
        for i in 0..fds.len() {
            let role = names.get(i).and_then(|n| role_named(n));
            if let Ok(Some(l)) = fds.take_tcp_listener(i) {
                let role = role.unwrap_or(Role::Http);
                tracing::info!(?role, addr = ?l.local_addr().ok(), "listener from systemd");
                out.tcp.push((role, l));
            } else if let Some(l) = fds.take_unix_listener(i)? {
                let role = role.unwrap_or(Role::Control);
                tracing::info!(?role, "Unix socket from systemd");
                out.unix.push((role, l));
            } else {
                return Err(io::Error::other(format!(
                    "LISTEN_FDS: descriptor {} is neither a TCP nor a Unix listening socket",
                    i + 3
                )));
            }
        }
        Ok(out)
    }

    pub fn tcp(&mut self, role: Role) -> Option<std::net::TcpListener> {
        let i = self.tcp.iter().position(|(r, _)| *r == role)?;
        Some(self.tcp.remove(i).1)
    }

    pub fn unix(&mut self, role: Role) -> Option<std::os::unix::net::UnixListener> {
        let i = self.unix.iter().position(|(r, _)| *r == role)?;
        Some(self.unix.remove(i).1)
    }

    /// Whether systemd passed the socket for `role` (its file is systemd's
    /// to remove, not this process's).
    pub fn has_unix(&self, role: Role) -> bool {
        self.unix.iter().any(|(r, _)| *r == role)
    }
}

fn role_named(name: &str) -> Option<Role> {
    match name {
        "http" => Some(Role::Http),
        "https" => Some(Role::Https),
        "admin" => Some(Role::Admin),
        "control" => Some(Role::Control),
        "upgrade" => Some(Role::Upgrade),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_the_socket() {
        let dir = std::env::temp_dir().join(format!("handoff-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nMAINPID=42").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
