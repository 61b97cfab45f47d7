//! The HTTP/2 connection preface on TLS connections whose ALPN chose `h2`.
//!
//! Why this exists: hyper-util's auto builder sniffs the first bytes of every
//! connection and serves HTTP/1.1 when they are not HTTP/2's preface, so a
//! client that negotiated `h2` and then sent garbage got a plaintext
//! `HTTP/1.1 400`. Once ALPN chose `h2`, an invalid preface is a connection
//! error of type PROTOCOL_ERROR (RFC 9113 §3.4): the proxy answers with its
//! own (empty) SETTINGS, as every server connection starts, then
//! GOAWAY(PROTOCOL_ERROR), and closes. The h2 crate itself closes without a
//! GOAWAY in that case.

use bytes::{Buf, Bytes};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty SETTINGS frame, then GOAWAY(last stream 0, PROTOCOL_ERROR).
const SETTINGS_THEN_GOAWAY: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, no parameters, stream 0
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream id 0
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// Why a connection was not served.
#[derive(Debug, thiserror::Error)]
pub enum PrefaceError {
    #[error("invalid HTTP/2 connection preface after ALPN chose h2 (answered GOAWAY)")]
    Invalid,
    #[error("no HTTP/2 connection preface within {0:?}")]
    Timeout(Duration),
    #[error("reading the HTTP/2 connection preface: {0}")]
    Io(#[from] io::Error),
}

/// Reads the preface off `io` within `within`. A valid one is given back in
/// front of the stream for hyper to read again; an invalid one is answered
/// with GOAWAY(PROTOCOL_ERROR).
pub async fn expect_h2<I>(mut io: I, within: Duration) -> Result<Prefixed<I>, PrefaceError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut got = [0u8; PREFACE.len()];
    let mut n = 0;
    let read = async {
        while n < got.len() {
            let more = io.read(&mut got[n..]).await?;
            if more == 0 {
                break;
            }
            n += more;
            if got[..n] != PREFACE[..n] {
                break;
            }
        }
        Ok::<_, io::Error>(())
    };
    match tokio::time::timeout(within, read).await {
        Err(_) => return Err(PrefaceError::Timeout(within)),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(())) => {}
    }
    if got[..n] != PREFACE[..] {
        // Best effort: the client may already be gone.
        let _ = tokio::time::timeout(within, async {
            io.write_all(&SETTINGS_THEN_GOAWAY).await?;
            io.shutdown().await
        })
        .await;
        return Err(PrefaceError::Invalid);
    }
    Ok(Prefixed {
        prefix: Bytes::from_static(PREFACE),
        inner: io,
    })
}

/// A stream with bytes already read off it put back in front.
pub struct Prefixed<I> {
    prefix: Bytes,
    inner: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_valid_preface_is_read_again_and_garbage_gets_goaway() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(PREFACE).await.unwrap();
        client.write_all(b"rest").await.unwrap();
        let mut io = expect_h2(server, Duration::from_secs(5)).await.unwrap();
        let mut all = vec![0u8; 28];
        io.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..24], PREFACE);
        assert_eq!(&all[24..], b"rest");

        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(matches!(
            expect_h2(server, Duration::from_secs(5)).await,
            Err(PrefaceError::Invalid)
        ));
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, SETTINGS_THEN_GOAWAY);
    }
}
