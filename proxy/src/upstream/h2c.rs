//! HTTP/2 cleartext (h2c, prior knowledge) to a backend that declared it
//! speaks it: gRPC servers, mostly.
//!
//! Why hyper's client here when HTTP/1.1 has the proxy's own: an HTTP/2
//! connection is shared by every request in flight at once, with flow
//! control, stream resets and trailers, and needs a task of its own to read
//! frames for all of them; that is what hyper's connection task is. The
//! per-request channel hop it costs is the price of multiplexing, and the
//! HTTP/1 path never pays it.
//!
//! One connection per generation carries all its requests as streams (gRPC
//! servers allow 100 or more at once; hyper queues beyond the backend's
//! limit). A connection the backend closed or went away on is replaced by
//! the next request; a request it refused before any of it was sent is sent
//! once more on the new connection.
//!
//! The client only, as for HTTP/1.1: the response body that keeps its
//! request counted on its generation is the request path's (`H2cBody` in
//! `body`), so nothing here knows about drains.

use super::{ConnectError, UpstreamSettings};
use crate::request_body::{BodyError, RequestBody};
use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// Why an h2c exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H2cError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Handshake {
        addr: Authority,
        source: hyper::Error,
    },
    /// The backend sent no response head within the upstream timeout.
    #[error("backend sent no response within the upstream timeout")]
    Timeout,
    #[error("backend stream failed")]
    Stream(#[source] hyper::Error),
}

/// The HTTP/2 connection of one generation, made on first use.
pub struct H2Pool {
    addr: Authority,
    settings: UpstreamSettings,
    /// The connection's handle; held while a replacement is connected, so
    /// requests arriving meanwhile wait for it instead of each connecting.
    /// Numbered, so a request that saw one fail replaces only that one.
    conn: tokio::sync::Mutex<Option<(u64, SendRequest<UpstreamBody>)>>,
}

impl H2Pool {
    pub fn new(addr: Authority, settings: UpstreamSettings) -> Self {
        Self {
            addr,
            settings,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// Sends `req` and waits (bounded by the upstream timeout) for the
    /// response head. A request the connection never took (it was closing)
    /// goes once more on a new connection.
    ///
    /// The timeout runs from the send, not from the backend's last sign of
    /// life: a client-streaming call that uploads for longer than it before
    /// the backend answers gets 504 (the HTTP/1.1 path restarts its clock
    /// with every write instead).
    pub async fn send(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, H2cError> {
        let (epoch, mut sender) = self.sender(None).await?;
        let timeout = self.settings.response_timeout;
        match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
            Err(_) => Err(H2cError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(mut e)) => match e.take_message() {
                Some(req) => {
                    tracing::debug!(backend = %self.addr, error = %e.error(), "h2c connection did not take the request; sending on a new one");
                    let (_, mut sender) = self.sender(Some(epoch)).await?;
                    tokio::time::timeout(timeout, sender.send_request(req))
                        .await
                        .map_err(|_| H2cError::Timeout)?
                        .map_err(H2cError::Stream)
                }
                None => Err(H2cError::Stream(e.into_error())),
            },
        }
    }

    /// A handle on a live connection, and which connection it is. `failed`
    /// names one that just refused a request: it is replaced even if it
    /// does not know yet that it is closing (unless another request already
    /// replaced it).
    async fn sender(
        &self,
        failed: Option<u64>,
    ) -> Result<(u64, SendRequest<UpstreamBody>), H2cError> {
        let mut conn = self.conn.lock().await;
        let epoch = match conn.as_ref() {
            Some((epoch, current)) if !current.is_closed() && failed != Some(*epoch) => {
                return Ok((*epoch, current.clone()));
            }
            Some((epoch, _)) => epoch + 1,
            None => 0,
        };
        let fresh = self.connect().await?;
        *conn = Some((epoch, fresh.clone()));
        Ok((epoch, fresh))
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, H2cError> {
        let addr = &self.addr;
        let tcp = match tokio::time::timeout(
            self.settings.connect_timeout,
            TcpStream::connect(addr.as_str()),
        )
        .await
        {
            Err(_) => return Err(ConnectError::Timeout { addr: addr.clone() }.into()),
            Ok(Err(source)) => {
                return Err(ConnectError::Io {
                    addr: addr.clone(),
                    source,
                }
                .into())
            }
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(tcp));
        let (sender, connection) =
            match tokio::time::timeout(self.settings.connect_timeout, handshake).await {
                Err(_) => return Err(ConnectError::Timeout { addr: addr.clone() }.into()),
                Ok(Err(source)) => {
                    return Err(H2cError::Handshake {
                        addr: addr.clone(),
                        source,
                    })
                }
                Ok(Ok(pair)) => pair,
            };
        let backend = addr.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%backend, error = %e, "h2c connection ended");
            }
        });
        tracing::debug!(backend = %addr, "h2c connection opened");
        Ok(sender)
    }
}

/// The client's request body on its way to an h2c backend: its trailers
/// are sanitized like every other trailer section the proxy forwards.
pub struct UpstreamBody(pub RequestBody);

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.get_mut().0).poll_frame(cx);
        polled.map(|frame| frame.map(|r| r.map(crate::trailers::sanitize_frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
