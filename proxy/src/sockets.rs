//! Where the listening sockets come from: bound here, handed over by the
//! running process (`--upgrade`, see [`crate::upgrade`]), or passed by
//! systemd (socket activation, see [`crate::upgrade::systemd`]).

use crate::config::Config;
use crate::listener::TlsBound;
use crate::upgrade::{systemd::Activated, take::Taker, Role};
use crate::ProxyError;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use tokio::net::{TcpListener, UnixListener};

/// Every listening socket of the process.
pub struct Sockets {
    pub http: TcpListener,
    pub tls: Option<TlsBound>,
    pub admin: Option<TcpListener>,
    pub control: UnixListener,
    pub upgrade: UnixListener,
}

/// Sockets received from elsewhere, by role.
#[derive(Default)]
struct Given<'a> {
    taker: Option<&'a mut Taker>,
    activated: Option<&'a mut Activated>,
}

impl Given<'_> {
    fn tcp(&mut self, role: Role, want: SocketAddr) -> Option<std::net::TcpListener> {
        if let Some(l) = self.taker.as_deref_mut().and_then(|t| t.tcp(role, want)) {
            return Some(l);
        }
        self.activated.as_deref_mut().and_then(|a| a.tcp(role))
    }

    fn unix(
        &mut self,
        role: Role,
        want: &std::path::Path,
    ) -> Option<std::os::unix::net::UnixListener> {
        if let Some(l) = self.taker.as_deref_mut().and_then(|t| t.unix(role, want)) {
            return Some(l);
        }
        self.activated.as_deref_mut().and_then(|a| a.unix(role))
    }
}

impl Sockets {
    /// Takes what `taker` or `activated` hold for each listener and binds
    /// the rest as configured.
    pub async fn open(
        config: &Config,
        taker: Option<&mut Taker>,
        activated: Option<&mut Activated>,
    ) -> Result<Sockets, ProxyError> {
        let mut given = Given { taker, activated };
        let http = tcp(given.tcp(Role::Http, config.http), config.http).await?;
        let tls = match &config.tls {
            Some(settings) => Some(
                crate::listener::bind_tls(settings, given.tcp(Role::Https, settings.addr)).await?,
            ),
            None => None,
        };
        let admin = match config.admin {
            Some(addr) => Some(tcp(given.tcp(Role::Admin, addr), addr).await?),
            None => None,
        };
        let control = match given.unix(Role::Control, &config.control) {
            Some(l) => unix(l, &config.control)?,
            None => crate::control::bind(&config.control, config.control_group)?,
        };
        let upgrade = match given.unix(Role::Upgrade, &config.upgrade_socket) {
            Some(l) => unix(l, &config.upgrade_socket)?,
            None => crate::control::bind(&config.upgrade_socket, None)?,
        };
        Ok(Sockets {
            http,
            tls,
            admin,
            control,
            upgrade,
        })
    }

    /// Duplicates of every socket, for a later hand-off.
    pub fn duplicates(&self) -> std::io::Result<Vec<(Role, OwnedFd)>> {
        let mut out = vec![(Role::Http, self.http.as_fd().try_clone_to_owned()?)];
        if let Some(t) = &self.tls {
            out.push((Role::Https, t.listener.as_fd().try_clone_to_owned()?));
        }
        if let Some(a) = &self.admin {
            out.push((Role::Admin, a.as_fd().try_clone_to_owned()?));
        }
        out.push((Role::Control, self.control.as_fd().try_clone_to_owned()?));
        out.push((Role::Upgrade, self.upgrade.as_fd().try_clone_to_owned()?));
        Ok(out)
    }
}

async fn tcp(
    given: Option<std::net::TcpListener>,
    addr: SocketAddr,
) -> Result<TcpListener, ProxyError> {
    let bind_err = |source| ProxyError::Bind { addr, source };
    match given {
        Some(l) => crate::upgrade::take::into_tokio(l).map_err(bind_err),
        None => TcpListener::bind(addr).await.map_err(bind_err),
    }
}

fn unix(
    given: std::os::unix::net::UnixListener,
    path: &std::path::Path,
) -> Result<UnixListener, ProxyError> {
    crate::upgrade::take::into_tokio_unix(given).map_err(|source| {
        ProxyError::Control(crate::control::ControlSocketError::Io {
            path: path.into(),
            source,
        })
    })
}
