// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Safe wrappers over `sendmsg`/`recvmsg` with `SCM_RIGHTS` fd passing.
//!
//! This file holds the crate's fd-ownership `unsafe`; everything above it deals in
//! [`OwnedFd`] and byte slices. The sockets are expected to be non-blocking: both calls
//! return `WouldBlock` instead of waiting.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Largest number of fds accepted in one `recvmsg`; more than this is a protocol violation
/// (the kernel truncates the control data, and every fd in it is closed).
pub const MAX_RECV_FDS: usize = 32;

/// Sends the concatenation of `bufs` with `fds` attached to the first byte.
///
/// Returns the number of bytes written, which may be fewer than offered; the fds were sent
/// when the return value is non-zero. `MSG_NOSIGNAL` is used: a closed peer gives `EPIPE`,
/// not a signal.
pub fn send_with_fds(sock: &UnixStream, bufs: &[&[u8]], fds: &[RawFd]) -> io::Result<usize> {
    loop {
        match sock.send_with_fds(bufs, fds) {
            Ok(n) => return Ok(n),
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    }
}

/// Sends `prefix` followed by the guest memory behind `slices`, in one non-blocking
/// `sendmsg` (`MSG_NOSIGNAL`), so that large data goes from guest memory to the socket
/// without a copy in between. Returns the number of bytes written, which may be fewer than
/// offered.
pub fn send_volatile<B: BitmapSlice>(
    sock: &UnixStream,
    prefix: &[&[u8]],
    slices: &[VolatileSlice<'_, B>],
) -> io::Result<usize> {
    // The guards keep the memory mapped (Xen foreign mappings) until the call returns.
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(prefix.len() + guards.len());
    iov.extend(
        prefix
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            }),
    );
    iov.extend(guards.iter().filter(|g| g.len() > 0).map(|g| libc::iovec {
        iov_base: g.as_ptr() as *mut libc::c_void,
        iov_len: g.len(),
    }));
    // SAFETY: msghdr is plain old data; all-zero is a valid value (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: `msg` points at `iov`, whose entries describe the `prefix` slices (borrowed
        // for the call) and the guest memory of `slices`, each kept mapped by its guard for the
        // call; `ptr_guard` reports exactly the slice's address and length. sendmsg only
        // reads those ranges (the guest may change them meanwhile; the bytes are plain data
        // and a torn read is what DMA from live memory means anyway) and writes nothing.
        let r = unsafe {
            libc::sendmsg(
                std::os::fd::AsRawFd::as_raw_fd(sock),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives up to `buf.len()` bytes and up to `max_fds` fds (at most [`MAX_RECV_FDS`]).
///
/// Every received fd is owned by the returned vector at once, so nothing leaks when the
/// caller drops it. A message carrying more fds than `max_fds` fails with `ENOBUFS` after
/// the kernel-delivered fds were closed. `Ok((0, _))` means the peer closed the connection.
pub fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    // Always offer room for exactly MAX_RECV_FDS (an even count, so the control buffer has
    // no alignment slack): with an odd count the kernel can deliver one fd more than
    // vmm-sys-util reports, and that fd would leak.
    let mut raw = [-1 as RawFd; MAX_RECV_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    let (n, nfds) = loop {
        // SAFETY: the single iovec describes `buf`, which is exclusively borrowed for the
        // duration of the call, so the kernel may write any bytes into it; `raw` is a
        // valid, writable array of fds that `recv_with_fds` fills and reports the count of.
        match unsafe { sock.recv_with_fds(&mut iov, &mut raw) } {
            Ok(r) => break r,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    };
    let fds: Vec<OwnedFd> = raw[..nfds.min(MAX_RECV_FDS)]
        .iter()
        .map(|&fd| {
            // SAFETY: `recv_with_fds` reported these `nfds` entries as fds the kernel just
            // installed in our table for us; nothing else refers to them, so taking ownership
            // here is the only owner they will have.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // vmm-sys-util's recvmsg does not pass MSG_CMSG_CLOEXEC; keep the server's fds
            // out of programs the VMM executes (a concurrent exec can still race this).
            // SAFETY: F_SETFD on an fd we own; the result only matters as best effort.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            owned
        })
        .collect();
    if fds.len() > max_fds {
        return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
    }
    Ok((n, fds))
}

/// Receives into `buf` without fds (`recv` with `MSG_DONTWAIT`). `Ok(0)` means EOF.
pub fn recv(sock: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    loop {
        match (&*sock).read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Waits until `sock` is readable (or `writable`), for at most `timeout_ms` (negative:
/// forever). Returns whether it became ready; hang-up and errors count as ready so that the
/// next read reports them.
pub fn poll_fd(fd: RawFd, writable: bool, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: if writable {
            libc::POLLOUT
        } else {
            libc::POLLIN
        },
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is a valid pollfd and the count passed is 1.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Connects a Unix stream socket to `path`, waiting at most `timeout` when the server's
/// listen backlog is full (a busy or stuck server), and returns it non-blocking.
pub fn connect_with_timeout(
    path: &std::path::Path,
    timeout: std::time::Duration,
) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;

    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or contains NUL",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let stream = UnixStream::from(owned);
    // A blocking connect on an AF_UNIX socket waits for room in the backlog for at most
    // SO_SNDTIMEO; without a timeout it could wait forever.
    let timeout = if timeout.is_zero() {
        std::time::Duration::from_millis(1)
    } else {
        timeout
    };
    stream.set_write_timeout(Some(timeout))?;
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    loop {
        // SAFETY: `addr` is a fully initialised sockaddr_un and `len` does not exceed its
        // size (checked against sun_path above); `stream` owns the fd.
        let r = unsafe {
            libc::connect(
                std::os::fd::AsRawFd::as_raw_fd(&stream),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if r == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            }
            _ => return Err(e),
        }
    }
    stream.set_write_timeout(None)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// Duplicates borrowed fds (close-on-exec) so that a queued message owns what it will send.
pub fn dup_fds(fds: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    fds.iter()
        .map(|&fd| {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) only reads the fd number; an invalid number
            // yields EBADF, which is returned.
            let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if new < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `new` is a fresh fd from fcntl that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(new) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn fds_travel_with_first_byte() {
        let (a, b) = UnixStream::pair().unwrap();
        let efd = EventFd::new(0).unwrap();
        assert_eq!(
            send_with_fds(&a, &[b"hdr", b"body"], &[efd.as_raw_fd()]).unwrap(),
            7
        );
        let mut buf = [0u8; 7];
        let (n, fds) = recv_with_fds(&b, &mut buf, 4).unwrap();
        assert_eq!(n, 7);
        assert_eq!(&buf, b"hdrbody");
        assert_eq!(fds.len(), 1);
        // SAFETY: F_GETFD on an fd owned by `fds`.
        let flags = unsafe { libc::fcntl(fds[0].as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn too_many_fds_closed_and_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let e1 = EventFd::new(0).unwrap();
        let e2 = EventFd::new(0).unwrap();
        send_with_fds(&a, &[b"x"], &[e1.as_raw_fd(), e2.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 1];
        let err = recv_with_fds(&b, &mut buf, 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOBUFS));
    }

    #[test]
    fn eof_and_would_block() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            recv(&b, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(!poll_fd(b.as_raw_fd(), false, 0).unwrap());
        drop(a);
        assert!(poll_fd(b.as_raw_fd(), false, 0).unwrap());
        assert_eq!(recv(&b, &mut buf).unwrap(), 0);
    }
}
