//! Where a response body ends (RFC 9112 §6.3), and taking it off the
//! connection's read buffer frame by frame.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// How the end of a response body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body whatever the headers say: HEAD, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Read until the backend closes; the connection is spent after it.
    Close,
}

impl Framing {
    /// Whether the body's end is marked in the stream, so the connection
    /// can carry another exchange after it.
    pub fn delimited(self) -> bool {
        self != Framing::Close
    }
}

/// The framing fields of a response head, gathered as it is read.
#[derive(Debug, Default)]
pub struct FramingFields {
    length: Option<u64>,
    /// `Transfer-Encoding` fields seen, and whether all said only `chunked`.
    codings: usize,
    only_chunked: bool,
}

impl FramingFields {
    /// One `Content-Length` field; every value in every field must agree.
    pub fn content_length(&mut self, value: &[u8]) -> Result<(), &'static str> {
        for part in value.split(|&b| b == b',') {
            let n = parse_decimal(part.trim_ascii()).ok_or("invalid Content-Length")?;
            if self.length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values");
            }
            self.length = Some(n);
        }
        Ok(())
    }

    pub fn transfer_encoding(&mut self, value: &[u8]) {
        self.codings += 1;
        self.only_chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
    }

    /// The framing of a final response, or why it cannot be trusted. Only
    /// unambiguous framing is accepted: a response a smuggler shaped (both
    /// length and chunking, lengths that disagree) is refused, as nginx does.
    pub fn framing(self, method: &Method, status: StatusCode) -> Result<Framing, &'static str> {
        if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        match (self.codings, self.length) {
            (0, length) => Ok(length.map_or(Framing::Close, Framing::Length)),
            (_, Some(_)) => Err("both Content-Length and Transfer-Encoding"),
            (1, None) if self.only_chunked => Ok(Framing::Chunked),
            _ => Err("unsupported Transfer-Encoding"),
        }
    }
}

fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, &c| n * 10 + u64::from(c - b'0')))
}

/// What the next call found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The body is complete, and these trailer fields (never empty, already
    /// sanitized by [`crate::trailers`]) came after it.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes must be read first.
    More,
}

/// Chunk-size and trailer lines longer than this are refused.
const MAX_LINE: usize = 4096;
/// The most trailer fields accepted after a chunked body.
const MAX_TRAILERS: usize = 32;
/// The largest trailer section accepted (hyper's limit for requests too).
const MAX_TRAILER_BYTES: usize = 16 * 1024;

#[derive(Debug)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailer,
    Close,
    Done,
}

#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Self { state }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The body ends where the connection does; a premature close of any
    /// other framing is an error.
    pub fn eof(&mut self) -> bool {
        let ok = matches!(self.state, State::Close | State::Done);
        self.state = State::Done;
        ok
    }

    /// Bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body (or framing) off `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.state {
                State::Done => return Ok(Step::End),
                State::Length(_) | State::ChunkData(_) if buf.is_empty() => {
                    return Ok(Step::More);
                }
                State::Length(n) | State::ChunkData(n) => {
                    let data = take(buf, n);
                    let left = n - data.len() as u64;
                    self.state = match (&self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Step::Data(data));
                }
                State::Close if buf.is_empty() => return Ok(Step::More),
                State::Close => return Ok(Step::Data(buf.split().freeze())),
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk not followed by CRLF");
                    }
                    let _ = buf.split_to(2);
                    self.state = State::ChunkSize;
                }
                State::ChunkSize => {
                    let Some(line) = line(buf)? else {
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::Trailer => {
                    let Some(trailers) = trailer_section(buf)? else {
                        return Ok(Step::More);
                    };
                    self.state = State::Done;
                    return Ok(match trailers {
                        Some(trailers) => Step::Trailers(trailers),
                        None => Step::End,
                    });
                }
            }
        }
    }
}

/// The trailer section after the last chunk, through its empty line, off
/// `buf`: `None` while incomplete; then the fields the proxy forwards, if
/// any. Parsed by httparse, as heads are, but with CRLF line ends only, like
/// the chunk lines: a bare LF here is where a smuggler would make the
/// backend and this proxy disagree on where the next response starts.
fn trailer_section(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    // The common case: no trailer fields at all.
    if buf.starts_with(b"\r\n") {
        let _ = buf.split_to(2);
        return Ok(Some(None));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(parsed)) => parsed,
        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILER_BYTES => {
            return Err("trailer section too large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many trailer fields"),
        Err(_) => return Err("malformed trailer section"),
    };
    if len > MAX_TRAILER_BYTES {
        return Err("trailer section too large");
    }
    let section = &buf[..len];
    if memchr::memchr_iter(b'\n', section).any(|lf| lf == 0 || section[lf - 1] != b'\r') {
        return Err("bare LF in chunked framing");
    }
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| "invalid trailer field name")?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| "invalid trailer field value")?;
        if crate::trailers::allowed(&name) {
            trailers.append(name, value);
        } else {
            tracing::debug!(field = %name, "trailer field from the backend dropped");
        }
    }
    let _ = buf.split_to(len);
    Ok(Some((!trailers.is_empty()).then_some(trailers)))
}

fn take(buf: &mut BytesMut, max: u64) -> Bytes {
    let n = usize::try_from(max).unwrap_or(usize::MAX).min(buf.len());
    buf.split_to(n).freeze()
}

/// One CRLF-terminated line off `buf`, without its CRLF.
fn line(buf: &mut BytesMut) -> Result<Option<BytesMut>, &'static str> {
    let Some(lf) = memchr::memchr(b'\n', buf) else {
        return if buf.len() > MAX_LINE {
            Err("chunk line too long")
        } else {
            Ok(None)
        };
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err("bare LF in chunked framing");
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    Ok(Some(line))
}

/// `1*HEXDIG [ BWS ";" chunk-ext ]`
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("invalid chunk size");
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return Err("invalid chunk size");
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| "invalid chunk size")?;
    u64::from_str_radix(hex, 16).map_err(|_| "invalid chunk size")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes; returns the body.
    fn run(framing: Framing, wire: &[u8], step: usize) -> Result<(Vec<u8>, usize), &'static str> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Step::Data(b) => body.extend_from_slice(&b),
                Step::End | Step::Trailers(_) => return Ok((body, buf.len())),
                Step::More if fed < wire.len() => {
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
                Step::More => return Err("incomplete"),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5;ext=1\r\nhello\r\n6 \r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (body, left) = run(Framing::Chunked, wire, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            // What follows the body stays for the next exchange.
            assert!(left <= 4);
        }
    }

    #[test]
    fn trailers_are_kept_and_sanitized_whatever_the_read_sizes() {
        let wire = b"2\r\nhi\r\n0\r\ngrpc-status: 5\r\ncontent-length: 9\r\nx-sum: a\r\n\r\nNEXT";
        for step in [1, 2, 5, 100] {
            let mut d = Decoder::new(Framing::Chunked);
            let mut buf = BytesMut::new();
            let mut fed = 0;
            let trailers = loop {
                match d.decode(&mut buf).unwrap() {
                    Step::Trailers(t) => break t,
                    Step::Data(_) => {}
                    Step::End => panic!("trailers lost (step {step})"),
                    Step::More => {
                        let n = step.min(wire.len() - fed);
                        buf.extend_from_slice(&wire[fed..fed + n]);
                        fed += n;
                    }
                }
            };
            assert_eq!(trailers.len(), 2, "step {step}: {trailers:?}");
            assert_eq!(trailers["grpc-status"], "5");
            assert_eq!(trailers["x-sum"], "a");
            assert!(d.is_done());
            assert_eq!(d.decode(&mut buf), Ok(Step::End));
            assert!(
                b"NEXT".starts_with(&buf),
                "step {step}: the next response stays"
            );
        }
    }

    #[test]
    fn bad_trailer_sections_are_errors() {
        for wire in [
            &b"0\r\nx: 1\n\r\n"[..],
            b"0\r\nx 1\r\n\r\n",
            b"0\r\nx: 1\r\n y\r\n\r\n",
        ] {
            assert!(run(Framing::Chunked, wire, 100).is_err(), "{wire:?}");
        }
        let mut many = b"0\r\n".to_vec();
        for i in 0..=MAX_TRAILERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(run(Framing::Chunked, &many, 100).is_err());
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        for wire in [
            &b"x\r\nhi\r\n0\r\n\r\n"[..],
            b"2\nhi\r\n0\r\n\r\n",
            b"2\r\nhiX\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"-2\r\nhi\r\n",
            b"2 x\r\nhi\r\n0\r\n\r\n",
        ] {
            assert!(run(Framing::Chunked, wire, 100).is_err(), "{wire:?}");
        }
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let (body, left) = run(Framing::Length(5), b"helloEXTRA", 3).unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(left, 1, "only the last read's overshoot is left");
        assert_eq!(run(Framing::Empty, b"", 1).unwrap().0, b"");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let of = |method: Method, status: u16, fields: &[(&str, &str)]| {
            let mut f = FramingFields::default();
            for (name, value) in fields {
                match *name {
                    "content-length" => f.content_length(value.as_bytes())?,
                    _ => f.transfer_encoding(value.as_bytes()),
                }
            }
            f.framing(&method, StatusCode::from_u16(status).unwrap())
        };
        let (get, head) = (Method::GET, Method::HEAD);
        assert_eq!(
            of(head, 200, &[("content-length", "9")]),
            Ok(Framing::Empty)
        );
        assert_eq!(of(get.clone(), 304, &[]), Ok(Framing::Empty));
        assert_eq!(
            of(get.clone(), 200, &[("content-length", "9")]),
            Ok(Framing::Length(9))
        );
        assert_eq!(
            of(get.clone(), 200, &[("content-length", "9, 9")]),
            Ok(Framing::Length(9))
        );
        assert_eq!(
            of(get.clone(), 200, &[("transfer-encoding", " Chunked")]),
            Ok(Framing::Chunked)
        );
        assert_eq!(of(get.clone(), 200, &[]), Ok(Framing::Close));
        for bad in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("content-length", "1"), ("transfer-encoding", "chunked")],
            &[("content-length", "1"), ("content-length", "2")],
            &[("content-length", "-1")],
        ] {
            assert!(of(get.clone(), 200, bad).is_err(), "{bad:?}");
        }
    }
}
