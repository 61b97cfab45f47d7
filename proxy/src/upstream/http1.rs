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
use super::decode::Framing;
use crate::limits::{BodyError, RequestBody};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
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
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection can carry another request once the body is read.
    pub reusable: bool,
}

/// The request head in wire form, and whether the body goes chunked.
/// `body_follows`: the body is not known to be empty, so it must be framed.
pub fn encode_head(req: &Request<RequestBody>, body_follows: bool) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(256 + req.headers().len() * 32);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut chunked = false;
    if !req.headers().contains_key(header::CONTENT_LENGTH) {
        if body_follows {
            chunked = true;
            // A chunked client body, or an HTTP/2 one without a length.
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
            // Some servers wait for a body they were not told is empty.
            out.extend_from_slice(b"content-length: 0\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    (out, chunked)
}

/// Sends the request and reads the response head. `head` and `chunked` are
/// [`encode_head`]'s output; a non-empty `body` is streamed after the head.
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
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
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
        match parse(&mut conn.buf, method, upgrade)? {
            Parsed::Final(head) => return Ok(head),
            Parsed::Interim => continue,
            Parsed::Partial => {}
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(ExchangeError::Protocol("response head too large"));
        }
        let n = poll_fn(|cx| conn.poll_fill(cx)).await?;
        if n == 0 {
            return Err(ExchangeError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

enum Parsed {
    Final(Head),
    /// An interim (1xx) response, removed from the buffer.
    Interim,
    Partial,
}

/// Parses one response head off the front of `buf`.
fn parse(buf: &mut BytesMut, method: &Method, upgrade: bool) -> Result<Parsed, ExchangeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Protocol("too many header fields"))
        }
        Err(_) => return Err(ExchangeError::Protocol("malformed response head")),
    };
    let code = resp.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::Protocol("invalid status code"))?;
    let version = if resp.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    if status.is_informational() && !(status == StatusCode::SWITCHING_PROTOCOLS && upgrade) {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ExchangeError::Protocol(
                "101 to a request that did not ask to upgrade",
            ));
        }
        let _ = buf.split_to(len);
        return Ok(Parsed::Interim);
    }
    // The head's bytes are shared by the header values, not copied.
    let base = buf.as_ptr() as usize;
    let offsets: Vec<(HeaderName, usize, usize)> = resp
        .headers
        .iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| ExchangeError::Protocol("invalid header name"))?;
            let start = h.value.as_ptr() as usize - base;
            Ok((name, start, start + h.value.len()))
        })
        .collect::<Result<_, ExchangeError>>()?;
    let raw: Bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(offsets.len());
    for (name, start, end) in offsets {
        let value = HeaderValue::from_maybe_shared(raw.slice(start..end))
            .map_err(|_| ExchangeError::Protocol("invalid header value"))?;
        headers.append(name, value);
    }
    let framing = Framing::of(method, status, &headers).map_err(ExchangeError::Protocol)?;
    let reusable = version == Version::HTTP_11
        && framing.delimited()
        && !crate::headers::connection_lists(&headers, "close");
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
