//! The proxy's own HTTP/1.1 client: writes a request head (and body) to a
//! backend connection and reads the response head back.
//!
//! Why not hyper's client: it runs every connection in a task of its own and
//! hands requests and responses over channels; for a proxy that only relays,
//! those hops were the largest part of its CPU time per request (profile in
//! benches/RESULTS.md). Here the exchange runs in the client request's own
//! task. Parsing is httparse's (the parser hyper uses); framing follows
//! RFC 9112 §6.3 and refuses what a smuggler would send (both
//! `Content-Length` and `Transfer-Encoding`, disagreeing lengths, codings
//! other than chunked).

use super::conn::Conn;
use super::decode::{Framing, FramingFields};
use crate::request_body::{BodyError, RequestBody};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use std::future::poll_fn;
use std::io;

/// The most response header fields accepted (hyper's default too).
const MAX_HEADERS: usize = 100;
/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Why an exchange with the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The client's request body failed: over the limit, malformed, cut.
    #[error(transparent)]
    Body(BodyError),
    #[error("backend connection: {0}")]
    Io(#[from] io::Error),
    #[error("backend sent an invalid response: {0}")]
    Protocol(&'static str),
}

impl ExchangeError {
    /// The backend closed or reset the connection before answering: on a
    /// reused keep-alive connection that is the backend closing it while
    /// idle, and the request is worth one more try on a new connection.
    pub fn is_stale(&self) -> bool {
        matches!(self, ExchangeError::Io(e) if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ))
    }
}

/// A response head as the backend sent it, with how its body is framed.
pub struct Head {
    pub status: StatusCode,
    /// End-to-end fields only: [`parse`] leaves every hop-by-hop field out
    /// (those `Connection` names too), so the response is forwarded as is.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection can carry another request once the body is read.
    pub reusable: bool,
}

/// Sends the request and reads the response head. `head` and `chunked` are
/// [`super::encode::request_head`]'s output; a non-empty `body` is streamed after the head.
pub async fn exchange(
    conn: &mut Conn,
    head: &[u8],
    chunked: bool,
    body: Option<&mut RequestBody>,
    method: &Method,
    upgrade: bool,
) -> Result<Head, ExchangeError> {
    conn.write_all(head).await?;
    if let Some(body) = body {
        if let Err(e) = send_body(conn, body, chunked).await {
            // A backend may answer (413, 401) and close before taking the
            // whole body; that answer is what the client should see.
            return match e {
                ExchangeError::Io(_) => match read_head(conn, method, upgrade).await {
                    Ok(mut h) => {
                        h.reusable = false;
                        Ok(h)
                    }
                    Err(_) => Err(e),
                },
                e => Err(e),
            };
        }
    }
    read_head(conn, method, upgrade).await
}

async fn send_body(
    conn: &mut Conn,
    body: &mut RequestBody,
    chunked: bool,
) -> Result<(), ExchangeError> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ExchangeError::Body)?;
        let data = match frame.into_data() {
            Ok(data) => data,
            // Trailers end the body; only chunked framing can carry them.
            Err(frame) => match frame.into_trailers() {
                Ok(mut trailers) if chunked => {
                    crate::trailers::sanitize(&mut trailers);
                    conn.write_all(&crate::trailers::chunked_end(&trailers))
                        .await?;
                    return Ok(());
                }
                _ => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let mut framed = Vec::with_capacity(data.len() + 20);
            framed.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            framed.extend_from_slice(&data);
            framed.extend_from_slice(b"\r\n");
            conn.write_all(&framed).await?;
        } else {
            conn.write_all(&data).await?;
        }
    }
    if chunked {
        conn.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
}

/// Reads until a final response head is complete; interim 1xx answers
/// (100 Continue, 103 Early Hints) are skipped, as hyper's client does.
async fn read_head(conn: &mut Conn, method: &Method, upgrade: bool) -> Result<Head, ExchangeError> {
    loop {
        match parse(conn.buf(), method, upgrade)? {
            Parsed::Final(head) => return Ok(head),
            Parsed::Interim => continue,
            Parsed::Partial => {}
        }
        if conn.buf().len() > MAX_HEAD {
            return Err(ExchangeError::Protocol("response head too large"));
        }
        let n = poll_fn(|cx| conn.poll_fill(cx)).await?;
        if n == 0 {
            // Closed before answering at all: what a keep-alive connection
            // the backend closed while idle looks like (`is_stale`). Closed
            // halfway through a head is a broken answer, never retried.
            return Err(if !conn.has_unread() {
                ExchangeError::Io(io::ErrorKind::UnexpectedEof.into())
            } else {
                ExchangeError::Protocol("connection closed inside the response head")
            });
        }
    }
}

enum Parsed {
    Final(Head),
    /// An interim (1xx) response, removed from the buffer.
    Interim,
    Partial,
}

/// Parses one response head off the front of `buf`. Hop-by-hop fields are
/// left out of the map as it is built, and the framing fields are read on
/// the way, so no field is looked up twice.
fn parse(buf: &mut BytesMut, method: &Method, upgrade: bool) -> Result<Parsed, ExchangeError> {
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        // The limit holds however the head arrived, in one read or many.
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Err(ExchangeError::Protocol("response head too large"))
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Protocol("too many header fields"))
        }
        Err(_) => return Err(ExchangeError::Protocol("malformed response head")),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| ExchangeError::Protocol("invalid status code"))?;
    let tunnel = status == StatusCode::SWITCHING_PROTOCOLS;
    if status.is_informational() && !(tunnel && upgrade) {
        if tunnel {
            return Err(ExchangeError::Protocol(
                "101 to a request that did not ask to upgrade",
            ));
        }
        let _ = buf.split_to(len);
        return Ok(Parsed::Interim);
    }

    // Where each kept field's name and value lie in the head.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let mut kept = 0;
    let mut framing = FramingFields::default();
    let mut close = false;
    // `Connection` naming fields beyond the usual: those are removed after.
    let mut named = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            framing
                .content_length(value)
                .map_err(ExchangeError::Protocol)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            framing.transfer_encoding(value);
            continue;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !(token.is_empty()
                    || token.eq_ignore_ascii_case(b"keep-alive")
                    || token.eq_ignore_ascii_case(b"upgrade"))
                {
                    named = true;
                }
            }
            if !named {
                continue;
            }
        } else if crate::headers::is_hop_by_hop_name(name)
            || (name.eq_ignore_ascii_case(b"upgrade") && !tunnel)
        {
            continue;
        }
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        spans[kept] = (at(name), name.len() as u32, at(value), value.len() as u32);
        kept += 1;
    }
    let framing = framing
        .framing(method, status)
        .map_err(ExchangeError::Protocol)?;
    let reusable = resp.version == Some(1) && framing.delimited() && !close;

    // The head's bytes are shared by the header values, not copied.
    let raw: Bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(kept + usize::from(tunnel));
    for &(name_at, name_len, value_at, value_len) in &spans[..kept] {
        let (n, v) = (name_at as usize, value_at as usize);
        let name = HeaderName::from_bytes(&raw[n..n + name_len as usize])
            .map_err(|_| ExchangeError::Protocol("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(raw.slice(v..v + value_len as usize))
            .map_err(|_| ExchangeError::Protocol("invalid header value"))?;
        headers.append(name, value);
    }
    if named {
        crate::headers::strip_hop_by_hop(&mut headers, tunnel);
    } else if tunnel {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Ok(Parsed::Final(Head {
        status,
        headers,
        framing,
        reusable,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<Option<Head>, ExchangeError> {
        let mut buf = BytesMut::from(raw);
        loop {
            match parse(&mut buf, &method, false)? {
                Parsed::Partial => return Ok(None),
                Parsed::Final(h) => return Ok(Some(h)),
                Parsed::Interim => {}
            }
        }
    }

    #[test]
    fn interim_answers_are_skipped() {
        let h = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 200);
        assert!(h.reusable);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx: a\r\n b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header: x\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert!(head(raw, Method::GET).is_err(), "accepted {raw:?}");
        }
    }

    #[test]
    fn connection_reuse_follows_the_head() {
        let cases = [
            ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                false,
            ),
            ("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false),
            ("HTTP/1.1 200 OK\r\n\r\n", false),
            ("HTTP/1.1 204 No Content\r\n\r\n", true),
            ("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n", true),
        ];
        for (raw, reusable) in cases {
            let h = head(raw, Method::GET).unwrap().unwrap();
            assert_eq!(h.reusable, reusable, "{raw:?}");
        }
    }

    #[test]
    fn an_incomplete_head_waits() {
        assert!(head("HTTP/1.1 200 OK\r\ncontent-len", Method::GET)
            .unwrap()
            .is_none());
    }
}
