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

/// Receives one message sent by [`send`]: its text (up to the first
/// newline, which the sender ends every message with) and its descriptors,
/// opened close-on-exec.
pub fn recv(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut text = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; MAX_TEXT];
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        // One byte at a time past the first read would be slow; the
        // sender's messages are small and end with '\n', and nothing is
        // sent after a message until the receiver answers it.
        let got = recvmsg(
            stream.as_fd(),
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
        text.extend_from_slice(&buf[..got.bytes]);
        if text.ends_with(b"\n") {
            text.pop();
            return Ok((text, fds));
        }
        if text.len() > MAX_TEXT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "hand-off message too long",
            ));
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
        let (text, mut fds) = recv(&b).unwrap();
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
        let e = recv(&b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
