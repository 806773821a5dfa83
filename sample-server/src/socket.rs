// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `sendmsg`/`recvmsg` with `SCM_RIGHTS` fds, `poll` and a bounded `connect`: all of the
//! sample server's socket `unsafe`.
//!
//! vmm-sys-util's `ScmSocket` does not fit: its receive is an `unsafe fn` over raw iovecs
//! that hands back raw fds without close-on-exec, and its send allocates twice per message.
//! The server receives memfds and eventfds on threads of a test process that also spawns
//! programs, and it answers benchmarks; so this module keeps the client library's
//! receive (fds owned at once, `MSG_CMSG_CLOEXEC`) and its one-`send` path for small
//! fd-less messages.
//!
//! Every call follows the socket's own blocking mode.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::ptr;
use std::time::Duration;

/// Largest number of fds accepted in one `recvmsg`; more is a protocol violation (the
/// kernel truncates the control data, and every fd in it is closed).
pub(crate) const MAX_RECV_FDS: usize = 32;

/// Largest number of fds sent with one message.
const MAX_SEND_FDS: usize = 64;

/// Largest number of buffers gathered into one message.
const MAX_SEND_BUFS: usize = 4;

/// Room for one `SCM_RIGHTS` control message of up to `MAX_SEND_FDS` fds (more than
/// `CMSG_SPACE` needs; checked by a test), aligned for `cmsghdr`.
const CMSG_BUF_LEN: usize = 32 + MAX_SEND_FDS * mem::size_of::<RawFd>();

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

/// Messages without fds up to this size are gathered into one buffer and sent with `send`,
/// which costs the kernel less than `sendmsg`.
const SMALL_SEND: usize = 512;

/// `CMSG_SPACE` for `count` fds.
fn cmsg_space(count: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument; it dereferences nothing.
    unsafe { libc::CMSG_SPACE((count * mem::size_of::<RawFd>()) as libc::c_uint) as usize }
}

/// Retries `f` while it fails with `EINTR`.
fn retry(mut f: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn send_one(sock: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: `buf` is a valid slice for the whole call and send only reads it.
        unsafe {
            libc::send(
                sock.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        }
    })
}

/// Sends the concatenation of `bufs` (at most four) with `fds` (at most 64) attached to
/// the first byte. Returns the number of bytes written, which may be fewer than offered;
/// the fds were sent when it is non-zero. A closed peer gives `EPIPE`, not a signal.
pub(crate) fn send_with_fds(sock: &UnixStream, bufs: &[&[u8]], fds: &[RawFd]) -> io::Result<usize> {
    if bufs.len() > MAX_SEND_BUFS || fds.len() > MAX_SEND_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many buffers or fds for one message",
        ));
    }
    if fds.is_empty() {
        if let [one] = bufs {
            return send_one(sock, one);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total <= SMALL_SEND {
            let mut gathered = [0u8; SMALL_SEND];
            let mut at = 0;
            for b in bufs {
                if let Some(dst) = gathered.get_mut(at..at + b.len()) {
                    dst.copy_from_slice(b);
                }
                at += b.len();
            }
            return send_one(sock, gathered.get(..total).unwrap_or_default());
        }
    }
    let mut iov = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; MAX_SEND_BUFS];
    for (v, b) in iov.iter_mut().zip(bufs) {
        v.iov_base = b.as_ptr() as *mut libc::c_void;
        v.iov_len = b.len();
    }
    let mut cmsg = CmsgBuf([0; CMSG_BUF_LEN]);
    // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = bufs.len() as _;
    if !fds.is_empty() {
        let data_len = mem::size_of_val(fds);
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: `msg_control` points to `cmsg`, which is aligned for cmsghdr and at least
        // `msg_controllen` bytes long (`cmsg_space(MAX_SEND_FDS) <= CMSG_BUF_LEN`, tested),
        // so CMSG_FIRSTHDR returns a non-null pointer to its start, the header fields lie
        // inside it, and CMSG_DATA(c) has room for `data_len` bytes after the header.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len as libc::c_uint) as _;
            ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), data_len);
        }
    }
    retry(|| {
        // SAFETY: `msg` describes `bufs.len()` iovecs over slices borrowed for the whole
        // call and, with fds, a control buffer of `msg_controllen` initialised bytes;
        // sendmsg only reads them.
        unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) }
    })
}

/// Receives up to `buf.len()` bytes and up to `max_fds` fds (at most [`MAX_RECV_FDS`]).
///
/// Every received fd is owned by the returned vector at once (and close-on-exec), so
/// nothing leaks when the caller drops it. A message carrying more fds than `max_fds` fails
/// with `ENOBUFS` after the delivered fds were closed. `Ok((0, _))` means the peer closed
/// the connection.
pub(crate) fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let len = buf.len();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    // Not initialised: the kernel writes the control data, and only what it wrote (up to
    // the `msg_controllen` it returns) is read back.
    let mut cmsg = mem::MaybeUninit::<CmsgBuf>::uninit();
    // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_RECV_FDS) as _;
    let n = retry(|| {
        // SAFETY: the single iovec describes `buf`, exclusively borrowed for the call, and
        // the control buffer is `cmsg`, at least `msg_controllen` bytes (uninitialised
        // memory is fine: it is only written); the kernel writes only within them.
        // MSG_CMSG_CLOEXEC: received fds are close-on-exec from the start.
        unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) }
    })?
    // A stream socket returns at most the iovec's length.
    .min(len);
    let fds = take_fds(&msg);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > max_fds {
        // Dropping `fds` closes them.
        return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
    }
    Ok((n, fds))
}

/// Takes ownership of the fds of every `SCM_RIGHTS` message in `msg`'s control data.
fn take_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled in by recvmsg: `msg_control`/`msg_controllen` describe the
    // control data the kernel wrote. CMSG_FIRSTHDR and CMSG_NXTHDR return either null or a
    // pointer to a header that lies wholly within that data.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !c.is_null() {
        // SAFETY: `c` is non-null, so it points to a complete cmsghdr within the data.
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: arithmetic only.
            let head = unsafe { libc::CMSG_LEN(0) } as usize;
            // `cmsg_len` is a `usize` with glibc and a `u32` with musl.
            #[allow(clippy::unnecessary_cast)]
            let len = len as usize;
            let count = len.saturating_sub(head) / mem::size_of::<RawFd>();
            // SAFETY: the kernel wrote `count` fd numbers after this header (cmsg_len
            // covers them, and it truncates what does not fit in the control buffer).
            let data = unsafe { libc::CMSG_DATA(c) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: entry `i < count` lies within the control data (see above); it
                // may be unaligned, hence read_unaligned.
                let fd = unsafe { ptr::read_unaligned(data.add(i)) };
                // SAFETY: the kernel just installed this fd in our table for this message;
                // nothing else refers to it, so this is its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: `c` came from CMSG_FIRSTHDR/CMSG_NXTHDR on the same `msg`.
        c = unsafe { libc::CMSG_NXTHDR(msg, c) };
    }
    fds
}

/// Waits until `fd` is readable (or `writable`), for at most `timeout_ms` (negative:
/// forever). Returns whether it became ready; hang-up and errors count as ready so that the
/// next read or write reports them.
pub(crate) fn poll_fd(fd: RawFd, writable: bool, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: if writable {
            libc::POLLOUT
        } else {
            libc::POLLIN
        },
        revents: 0,
    };
    let ready = retry(|| {
        // SAFETY: `pfd` is a valid pollfd for the call and the count passed is 1.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) as isize }
    })?;
    Ok(ready > 0)
}

/// Connects a Unix stream socket to `path`, waiting at most `timeout` when the listener's
/// backlog is full (a busy or stuck server), and returns it non-blocking.
pub(crate) fn connect_with_timeout(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
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
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // A blocking connect on an AF_UNIX socket waits for room in the backlog for at most
    // SO_SNDTIMEO; without a timeout it could wait forever.
    stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let len = (mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    let connected = retry(|| {
        // SAFETY: `addr` is a fully initialised sockaddr_un and `len` does not exceed its
        // size (checked against sun_path above); `stream` owns the fd.
        unsafe {
            libc::connect(
                stream.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            ) as isize
        }
    });
    match connected {
        Ok(_) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINPROGRESS)) => {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
        }
        Err(e) => return Err(e),
    }
    stream.set_write_timeout(None)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn fds_travel_with_first_byte_and_are_cloexec() {
        let (a, b) = UnixStream::pair().unwrap();
        let efd = EventFd::new(0).unwrap();
        assert_eq!(
            send_with_fds(&a, &[b"hdr", b"body"], &[efd.as_raw_fd()]).unwrap(),
            7
        );
        let mut buf = [0u8; 7];
        let (n, fds) = recv_with_fds(&b, &mut buf, 4).unwrap();
        assert_eq!((n, &buf, fds.len()), (7, b"hdrbody", 1));
        // SAFETY: F_GETFD on an fd owned by `fds`.
        let flags = unsafe { libc::fcntl(fds[0].as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn small_and_large_gathers_arrive_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let big = vec![7u8; SMALL_SEND];
        for bufs in [&[&b"ab"[..], b"cd"][..], &[b"x", &big[..]]] {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            assert_eq!(send_with_fds(&a, bufs, &[]).unwrap(), total);
            let mut got = vec![0u8; total];
            assert_eq!(recv_with_fds(&b, &mut got, 0).unwrap().0, total);
            assert_eq!(got, bufs.concat());
        }
    }

    #[test]
    fn too_many_fds_closed_and_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let e = EventFd::new(0).unwrap();
        send_with_fds(&a, &[b"x"], &[e.as_raw_fd(), e.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 1];
        let err = recv_with_fds(&b, &mut buf, 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOBUFS));
        // Beyond what the control buffer holds: truncated by the kernel, refused too.
        let fds = vec![e.as_raw_fd(); MAX_RECV_FDS + 1];
        send_with_fds(&a, &[b"y"], &fds).unwrap();
        let err = recv_with_fds(&b, &mut buf, MAX_RECV_FDS).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOBUFS));
    }

    #[test]
    fn limits_of_one_message() {
        assert!(cmsg_space(MAX_SEND_FDS) <= CMSG_BUF_LEN);
        assert!(cmsg_space(MAX_RECV_FDS) <= CMSG_BUF_LEN);
        let (a, _b) = UnixStream::pair().unwrap();
        let five: [&[u8]; 5] = [b"a", b"b", b"c", b"d", b"e"];
        assert_eq!(
            send_with_fds(&a, &five, &[]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let fds = vec![a.as_raw_fd(); MAX_SEND_FDS + 1];
        assert_eq!(
            send_with_fds(&a, &[b"x"], &fds).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn poll_sees_data_and_hang_up() {
        let (a, b) = UnixStream::pair().unwrap();
        assert!(!poll_fd(b.as_raw_fd(), false, 0).unwrap());
        assert!(poll_fd(a.as_raw_fd(), true, 0).unwrap());
        drop(a);
        assert!(poll_fd(b.as_raw_fd(), false, 0).unwrap());
        let mut buf = [0u8; 1];
        assert_eq!(recv_with_fds(&b, &mut buf, 0).unwrap().0, 0);
    }

    #[test]
    fn connect_with_timeout_reaches_a_listener_or_says_why() {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("socket-test-")).unwrap();
        let path = dir.as_path().join("sock");
        let t = Duration::from_millis(100);
        assert_eq!(
            connect_with_timeout(&path, t).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let listener = UnixListener::bind(&path).unwrap();
        let s = connect_with_timeout(&path, t).unwrap();
        let (_server, _) = listener.accept().unwrap();
        // Non-blocking: nothing to read is WouldBlock, not a wait.
        let mut buf = [0u8; 1];
        assert_eq!(
            recv_with_fds(&s, &mut buf, 0).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let long = dir.as_path().join("x".repeat(200));
        assert_eq!(
            connect_with_timeout(&long, t).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
