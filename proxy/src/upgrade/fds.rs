//! Passing file descriptors between processes over a Unix stream socket
//! (`SCM_RIGHTS`), for the hand-off.
//!
//! Why rustix: its `sendmsg`/`recvmsg` with `SendAncillaryBuffer` and
//! `RecvAncillaryBuffer` are safe functions over `BorrowedFd`/`OwnedFd`, so
//! this crate keeps `#![forbid(unsafe_code)]`; it is maintained (it backs
//! std-adjacent crates such as tempfile and the Bytecode Alliance's
//! tooling), and with only its `net` feature it adds nothing else to the
//! tree (bitflags, errno and libc were already there). nix would do the
//! same with a larger API surface; Cloudflare's shellflip brings its own
//! restart protocol and runtime assumptions that do not fit `run`'s steps.
//!
//! One message carries a short JSON text and every descriptor at once, so
//! the receiver never has to match descriptors to later messages.

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Most descriptors one hand-off message carries (http, https, admin,
/// control, upgrade).
pub const MAX_FDS: usize = 8;
/// Largest text part of a message.
pub const MAX_TEXT: usize = 16 * 1024;

/// Sends `text` with `fds` attached, in one `sendmsg`.
pub fn send(stream: &UnixStream, text: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "too many descriptors for one message");
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "descriptors do not fit the control buffer",
        ));
    }
    let sent = sendmsg(
        stream.as_fd(),
        &[IoSlice::new(text)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != text.len() {
        // The descriptors went with the first byte; the rest follows plainly.
        std::io::Write::write_all(&mut &*stream, &text[sent..])?;
    }
    Ok(())
}

/// One end of the hand-off connection: whole messages out, whole messages
/// in. A stream socket keeps no message boundaries (two messages sent
/// quickly arrive in one read), so what was read past a message's newline
/// is kept for the next [`Channel::recv`].
pub struct Channel {
    stream: UnixStream,
    pending: Vec<u8>,
}

impl Channel {
    pub fn new(stream: UnixStream) -> Self {
        Channel {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends one message (`text` must end with a newline) with `fds`.
    pub fn send(&self, text: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        send(&self.stream, text, fds)
    }

    /// Receives the next message: its text without the newline, and the
    /// descriptors that came with it (opened close-on-exec).
    pub fn recv(&mut self) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        let mut fds = Vec::new();
        let mut buf = vec![0u8; MAX_TEXT];
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                return Ok((line, fds));
            }
            if self.pending.len() > MAX_TEXT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "hand-off message too long",
                ));
            }
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = recvmsg(
                self.stream.as_fd(),
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            for msg in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = msg {
                    fds.extend(received);
                }
            }
            if got.bytes == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the other process closed the hand-off socket",
                ));
            }
            self.pending.extend_from_slice(&buf[..got.bytes]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn descriptors_arrive_usable() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut left, right) = UnixStream::pair().unwrap();
        send(&a, b"hello\n", &[right.as_fd()]).unwrap();
        drop(right);
        let (text, mut fds) = Channel::new(b).recv().unwrap();
        assert_eq!(text, b"hello");
        assert_eq!(fds.len(), 1);
        let mut passed = UnixStream::from(fds.pop().unwrap());
        left.write_all(b"x").unwrap();
        let mut byte = [0];
        passed.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }

    #[test]
    fn closed_peer_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let e = Channel::new(b).recv().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Two messages that arrive in one read are still two messages (the
    /// giver's `accepted` and, when it has nothing to drain, its `report`).
    #[test]
    fn messages_read_together_stay_apart() {
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, b"one\ntwo\n", &[]).unwrap();
        let mut channel = Channel::new(b);
        assert_eq!(channel.recv().unwrap().0, b"one");
        assert_eq!(channel.recv().unwrap().0, b"two");
        drop(a);
        assert!(channel.recv().is_err());
    }
}
