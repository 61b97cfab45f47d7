//! A look at raw request heads for the framing tricks hyper's parser
//! resolves silently.
//!
//! hyper, given both `Content-Length` and `Transfer-Encoding`, drops the
//! length and closes after the request; given the same length twice, it keeps
//! one. Both are safe, but both are request-smuggling probes that a front door
//! should refuse with 400 before any backend sees them, and hyper hides them
//! from the service. So [`crate::wire::WireIo`] feeds this scanner request
//! heads as the bytes arrive (only heads: bodies are skipped by their length,
//! and scanning stops at the first chunked body, upgrade or HTTP/2 preface)
//! and flags the connection. Every request on a flagged connection is
//! answered 400 and the connection closes, so a request pipelined behind the
//! probe is refused too.

/// Bytes of a header line kept for matching: enough for
/// `content-length:` and a 20-digit value with some spaces.
const LINE: usize = 48;

/// A line-at-a-time request-head scanner. It only has to agree with hyper
/// on heads hyper accepts; anything hyper refuses closes the connection.
#[derive(Debug)]
pub struct HeadScan {
    state: State,
    line: [u8; LINE],
    len: usize,
    /// How many bytes of the current line are stored (see `keep`).
    cap: usize,
    request_line_seen: bool,
    content_lengths: u32,
    length: Option<u64>,
    chunked_or_te: bool,
    upgrade: bool,
    h2: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Skip(u64),
    Done,
}

impl Default for HeadScan {
    fn default() -> Self {
        Self {
            state: State::Head,
            line: [0; LINE],
            len: 0,
            cap: LINE,
            request_line_seen: false,
            content_lengths: 0,
            length: None,
            chunked_or_te: false,
            upgrade: false,
            h2: false,
        }
    }
}

impl HeadScan {
    /// Whether the connection turned out to be HTTP/2 (prior knowledge or
    /// ALPN: both start with the preface).
    pub fn saw_h2_preface(&self) -> bool {
        self.h2
    }

    /// Feeds newly read bytes; returns true once a framing conflict is seen.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self.state {
                State::Done => return false,
                State::Skip(n) => {
                    let take = n.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if take == n {
                        State::Head
                    } else {
                        State::Skip(n - take)
                    };
                }
                State::Head => {
                    // Jump to the line end instead of branching on every byte;
                    // only the first `cap` bytes of a line are ever looked at.
                    let (seg, end) = match memchr::memchr(b'\n', bytes) {
                        Some(i) => (&bytes[..i], true),
                        None => (bytes, false),
                    };
                    self.keep(seg);
                    bytes = &bytes[seg.len() + usize::from(end)..];
                    if end && self.end_line() {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Stores the part of a line segment that matching can need. A line
    /// whose first byte rules out everything matched (`content-length`,
    /// `transfer-encoding` and `upgrade`; the preface for a request line)
    /// keeps only that byte, which still makes it non-empty.
    fn keep(&mut self, seg: &[u8]) {
        if self.len == 0 {
            if let Some(first) = seg.first() {
                // A request line matters only if it is HTTP/2's preface.
                let relevant = if self.request_line_seen {
                    matches!(first.to_ascii_lowercase(), b'c' | b't' | b'u' | b'\r')
                } else {
                    first.eq_ignore_ascii_case(&b'p')
                };
                self.cap = if relevant { LINE } else { 1 };
            }
        }
        if self.len < self.cap {
            let n = (self.cap - self.len).min(seg.len());
            for (dst, src) in self.line[self.len..self.len + n].iter_mut().zip(seg) {
                *dst = src.to_ascii_lowercase();
            }
        }
        self.len += seg.len();
    }

    /// Handles one complete line; true on a framing conflict.
    fn end_line(&mut self) -> bool {
        let stored = self.len.min(self.cap);
        let mut line = &self.line[..stored];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let empty = line.is_empty() && self.len <= 1;
        self.len = 0;
        self.cap = LINE;
        if !self.request_line_seen {
            if empty {
                return false; // blank lines before a request are tolerated
            }
            self.request_line_seen = true;
            if line.starts_with(b"pri * http/2.0") {
                self.state = State::Done;
                self.h2 = true;
            }
            return false;
        }
        if !empty {
            if let Some(v) = line.strip_prefix(b"content-length:") {
                self.content_lengths += 1;
                self.length = std::str::from_utf8(v.trim_ascii())
                    .ok()
                    .and_then(|s| s.parse().ok());
            } else if line.starts_with(b"transfer-encoding:") {
                self.chunked_or_te = true;
            } else if line.starts_with(b"upgrade:") {
                self.upgrade = true;
            }
            return false;
        }
        // End of the head.
        let conflict =
            self.content_lengths > 1 || (self.content_lengths == 1 && self.chunked_or_te);
        self.state = match (conflict, self.chunked_or_te || self.upgrade, self.length) {
            (true, _, _) | (_, true, _) => State::Done,
            (_, _, Some(0)) => State::Head,
            (_, _, Some(n)) => State::Skip(n),
            // An unparsable length: hyper refuses it and closes.
            (_, _, None) if self.content_lengths > 0 => State::Done,
            (_, _, None) => State::Head,
        };
        self.request_line_seen = false;
        self.content_lengths = 0;
        self.length = None;
        self.chunked_or_te = false;
        self.upgrade = false;
        conflict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut s = HeadScan::default();
        chunks.iter().any(|c| s.feed(c))
    }

    #[test]
    fn flags_conflicts_split_anywhere() {
        let smuggle = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for cut in 0..smuggle.len() {
            assert!(scan(&[&smuggle[..cut], &smuggle[cut..]]), "cut at {cut}");
        }
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nx"
        ]));
    }

    #[test]
    fn skips_bodies_and_follows_keepalive() {
        let body_looks_like_head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\n\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(!scan(&[body_looks_like_head]));
        let mut s = HeadScan::default();
        assert!(!s.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(
            s.feed(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n")
        );
    }

    #[test]
    fn stops_at_h2_and_chunked() {
        let mut s = HeadScan::default();
        assert!(!s.feed(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"
        ));
        let mut s = HeadScan::default();
        assert!(!s.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"));
    }

    /// The byte-at-a-time scanner this one replaced, kept as the oracle: a
    /// line's first `LINE` bytes, lowercased, matched when the line ends.
    fn reference(input: &[u8], cuts: &[usize]) -> bool {
        struct Old(HeadScan);
        impl Old {
            fn feed(&mut self, mut bytes: &[u8]) -> bool {
                let s = &mut self.0;
                while !bytes.is_empty() {
                    match s.state {
                        State::Done => return false,
                        State::Skip(n) => {
                            let take = n.min(bytes.len() as u64);
                            bytes = &bytes[take as usize..];
                            s.state = if take == n {
                                State::Head
                            } else {
                                State::Skip(n - take)
                            };
                        }
                        State::Head => {
                            let b = bytes[0];
                            bytes = &bytes[1..];
                            if b == b'\n' {
                                if s.end_line() {
                                    return true;
                                }
                            } else {
                                if s.len < LINE {
                                    s.line[s.len] = b.to_ascii_lowercase();
                                }
                                s.len += 1;
                            }
                        }
                    }
                }
                false
            }
        }
        let mut old = Old(HeadScan::default());
        split(input, cuts).any(|c| old.feed(c))
    }

    fn split<'a>(input: &'a [u8], cuts: &'a [usize]) -> impl Iterator<Item = &'a [u8]> {
        let mut at = 0;
        cuts.iter()
            .copied()
            .chain(std::iter::once(input.len()))
            .map(move |c| {
                let c = c.clamp(at, input.len());
                let piece = &input[at..c];
                at = c;
                piece
            })
    }

    #[test]
    fn agrees_with_the_byte_at_a_time_scanner() {
        const PARTS: [&[u8]; 16] = [
            b"GET / HTTP/1.1\r\n",
            b"POST /x HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n",
            b"Host: a\r\n",
            b"Content-Length: 3\r\n",
            b"content-length:0\n",
            b"CONTENT-LENGTH:          \t 2\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Upgrade: websocket\r\n",
            b"\r\n",
            b"\n",
            b"abc",
            b"Content-Length: x\r\n",
            b"X-Long: 0123456789012345678901234567890123456789012345678901234\r\n",
            b"Content-Length:                                          5\r\n",
            b"\r",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..(next() % 12) {
                input.extend_from_slice(PARTS[(next() % 16) as usize]);
            }
            let mut cuts: Vec<usize> = (0..next() % 4)
                .map(|_| (next() as usize) % (input.len() + 1))
                .collect();
            cuts.sort_unstable();
            let mut new = HeadScan::default();
            let got = split(&input, &cuts).any(|c| new.feed(c));
            assert_eq!(
                got,
                reference(&input, &cuts),
                "{:?} cut at {cuts:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}
