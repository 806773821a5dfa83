// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Safe wrappers over `sendmsg`/`recvmsg` with `SCM_RIGHTS` fd passing.
//!
//! This file holds the crate's `unsafe` (fd ownership, and the host page size query);
//! everything above it deals in [`OwnedFd`] and byte slices. `recv_with_fds` (and, for tests, `send_with_fds`) follow the
//! socket's own blocking mode; the `try_` forms never block (`MSG_DONTWAIT`), whatever the
//! mode. (The connection keeps its socket blocking, with a receive timeout, so that a caller
//! waiting for its reply can sleep in `recvmsg` itself instead of in `poll` first.) The
//! sample server keeps its own copy of these wrappers: this module is the client's only.
//!
//! They are our own rather than vmm-sys-util's `ScmSocket` because that takes no flags, and
//! the connection needs them per call: `MSG_DONTWAIT` on a blocking socket, `MSG_NOSIGNAL`
//! on every send (a closed peer is `EPIPE`, not a signal), and `MSG_CMSG_CLOEXEC` on every
//! receive (received fds are close-on-exec from the start, with no window for an `exec`).

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Largest number of fds accepted in one `recvmsg`; more than this is a protocol violation
/// (the kernel truncates the control data, and every fd in it is closed).
pub(crate) const MAX_RECV_FDS: usize = 32;

/// Largest number of fds sent with one message.
pub(crate) const MAX_SEND_FDS: usize = 64;

/// Largest number of buffers gathered into one message.
pub(crate) const MAX_SEND_BUFS: usize = 4;

/// Room for one `SCM_RIGHTS` control message of up to `MAX_SEND_FDS` fds (more than
/// `CMSG_SPACE` needs; checked by a test), aligned for `cmsghdr`.
const CMSG_BUF_LEN: usize = 32 + MAX_SEND_FDS * mem::size_of::<RawFd>();

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

/// The host's page size from `sysconf`, `None` if the system will not say.
pub(crate) fn sysconf_page_size() -> Option<u64> {
    // SAFETY: sysconf takes no pointers and only reads a system constant; any return value,
    // including -1 for an error, is handled below.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0)
}

/// `CMSG_SPACE` for `count` fds.
fn cmsg_space(count: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument; it dereferences nothing.
    unsafe { libc::CMSG_SPACE((count * mem::size_of::<RawFd>()) as libc::c_uint) as usize }
}

/// Messages without fds up to this size are gathered into one buffer and sent with `send`,
/// which costs the kernel less than `sendmsg` (no `msghdr` and iovec array to copy in).
const SMALL_SEND: usize = 512;

fn send_one(sock: &UnixStream, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // The raw system call rather than libc's `send`, a thread-cancellation point whose
        // wrapper costs two more calls per message (nothing here cancels threads).
        // SAFETY: `buf` is a valid slice for the whole call and sendto only reads it; no
        // address is passed (a null pointer of length 0). Every argument is widened to the
        // register width the system call reads.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                libc::c_long::from(sock.as_raw_fd()),
                buf.as_ptr(),
                buf.len(),
                libc::c_long::from(flags | libc::MSG_NOSIGNAL),
                ptr::null::<libc::sockaddr>(),
                0 as libc::c_long,
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

fn sendmsg_fds(
    sock: &UnixStream,
    bufs: &[&[u8]],
    fds: &[RawFd],
    flags: libc::c_int,
) -> io::Result<usize> {
    if bufs.len() > MAX_SEND_BUFS || fds.len() > MAX_SEND_FDS {
        return Err(too_many_for_one_message());
    }
    if fds.is_empty() {
        if let Some(sent) = send_gathered(sock, bufs, flags) {
            return sent;
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
        attach_rights(&mut msg, &mut cmsg, fds)?;
    }
    loop {
        // SAFETY: `msg` describes `bufs.len()` iovecs over slices borrowed for the whole
        // call and, with fds, a control buffer (`cmsg`, alive until we return) of
        // `msg_controllen` initialised bytes; sendmsg only reads them.
        let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags | libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn too_many_for_one_message() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "too many buffers or fds for one message",
    )
}

/// Without fds, sends one buffer, or several small ones gathered into one, with `send`;
/// `None` for anything larger, which needs `sendmsg`. A small request (a header and a
/// region access head) is gathered without clearing the whole 512-byte buffer first.
fn send_gathered(
    sock: &UnixStream,
    bufs: &[&[u8]],
    flags: libc::c_int,
) -> Option<io::Result<usize>> {
    if let [one] = bufs {
        return Some(send_one(sock, one, flags));
    }
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if total <= SMALL_GATHER {
        Some(gather_and_send::<SMALL_GATHER>(sock, bufs, total, flags))
    } else if total <= SMALL_SEND {
        Some(gather_and_send::<SMALL_SEND>(sock, bufs, total, flags))
    } else {
        None
    }
}

/// The smaller of the two gathering buffers of [`send_gathered`].
const SMALL_GATHER: usize = 64;

/// Sends the concatenation of `bufs` (`total` bytes, at most `N`) with `send`, gathered in a
/// buffer of `N` bytes on the stack.
fn gather_and_send<const N: usize>(
    sock: &UnixStream,
    bufs: &[&[u8]],
    total: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    let mut gathered = [0u8; N];
    let mut at = 0;
    for b in bufs {
        if let Some(dst) = gathered.get_mut(at..at + b.len()) {
            dst.copy_from_slice(b);
        }
        at += b.len();
    }
    send_one(sock, gathered.get(..total).unwrap_or_default(), flags)
}

/// Points `msg`'s control data at `cmsg` and writes into it one `SCM_RIGHTS` message
/// carrying `fds` (at most [`MAX_SEND_FDS`]).
fn attach_rights(msg: &mut libc::msghdr, cmsg: &mut CmsgBuf, fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_SEND_FDS {
        return Err(too_many_for_one_message());
    }
    let data_len = mem::size_of_val(fds);
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(fds.len()) as _;
    // SAFETY: `msg_control` points to `cmsg`, which is aligned for cmsghdr and at least
    // `msg_controllen` bytes long (`fds.len() <= MAX_SEND_FDS`, checked above, and
    // `cmsg_space(MAX_SEND_FDS) <= CMSG_BUF_LEN`, tested), so CMSG_FIRSTHDR returns a
    // non-null pointer to its start, the header fields lie inside it, and CMSG_DATA(c) has
    // room for `data_len` bytes after the header.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(data_len as libc::c_uint) as _;
        ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), data_len);
    }
    Ok(())
}

/// Like [`try_send_with_fds`], but blocking or not as the socket does (tests write with it
/// to blocking sockets).
#[cfg(test)]
pub(crate) fn send_with_fds(sock: &UnixStream, bufs: &[&[u8]], fds: &[RawFd]) -> io::Result<usize> {
    sendmsg_fds(sock, bufs, fds, 0)
}

/// Sends `prefix` followed by the guest memory behind `slices`, in one non-blocking
/// `sendmsg` (`MSG_NOSIGNAL`), so that large data goes from guest memory to the socket
/// without a copy in between. Returns the number of bytes written, which may be fewer than
/// offered.
pub(crate) fn send_volatile<B: BitmapSlice>(
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

/// Sends the concatenation of `bufs` (at most `MAX_SEND_BUFS`) with `fds` (at most
/// `MAX_SEND_FDS`) attached to the first byte, without waiting: a full socket gives
/// `WouldBlock`, whatever the socket's mode.
///
/// Returns the number of bytes written, which may be fewer than offered; the fds were sent
/// when the return value is non-zero. `MSG_NOSIGNAL` is used: a closed peer gives `EPIPE`,
/// not a signal.
pub(crate) fn try_send_with_fds(
    sock: &UnixStream,
    bufs: &[&[u8]],
    fds: &[RawFd],
) -> io::Result<usize> {
    sendmsg_fds(sock, bufs, fds, libc::MSG_DONTWAIT)
}

/// `recvmsg` of at most `len` bytes to `dst` and up to `max_fds` fds; returns the number of
/// bytes written to `dst[..n]` (`n <= len`).
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes (initialised or not) for the duration of
/// the call, and nothing else may access that memory meanwhile.
unsafe fn recvmsg_fds(
    sock: &UnixStream,
    dst: *mut u8,
    len: usize,
    max_fds: usize,
    flags: libc::c_int,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: dst.cast(),
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
    let n = loop {
        // The raw system call, not libc's cancellation-point wrapper (see `send_one`).
        // SAFETY: the single iovec describes `dst..dst + len`, which the caller guarantees
        // is writable and ours alone for the call (it may be uninitialised: it is only
        // written), and the control buffer is `cmsg`, at least `msg_controllen` bytes
        // (uninitialised memory is fine: it is only written); the kernel writes only within
        // them. MSG_CMSG_CLOEXEC: received fds are close-on-exec from the start.
        let r = unsafe {
            libc::syscall(
                libc::SYS_recvmsg,
                libc::c_long::from(sock.as_raw_fd()),
                &mut msg as *mut libc::msghdr,
                libc::c_long::from(flags | libc::MSG_CMSG_CLOEXEC),
            )
        };
        if r >= 0 {
            // A stream socket returns at most the iovec's length.
            break (r as usize).min(len);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: `msg` was just filled in by a successful recvmsg.
    let fds = unsafe { take_rights(&msg) };
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > max_fds {
        // Dropping `fds` closes them.
        return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
    }
    Ok((n, fds))
}

/// Takes ownership of the fds in `msg`'s control data.
///
/// # Safety
///
/// `msg` must have just been filled in by a successful `recvmsg`: `msg_control` and
/// `msg_controllen` then describe the control data the kernel wrote, and every fd in it
/// was installed for that call and is owned by nobody else.
unsafe fn take_rights(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: per the caller, `msg_control`/`msg_controllen` describe the control data the
    // kernel wrote. CMSG_FIRSTHDR and CMSG_NXTHDR return either null or a pointer to a
    // header that lies wholly within that data.
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
                // SAFETY: per the caller, the kernel just installed this fd in our table
                // for this message; nothing else refers to it, so this is its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: `c` came from CMSG_FIRSTHDR/CMSG_NXTHDR on the same `msg`.
        c = unsafe { libc::CMSG_NXTHDR(msg, c) };
    }
    fds
}

/// Receives up to `buf.len()` bytes and up to `max_fds` fds (at most [`MAX_RECV_FDS`]),
/// blocking or not as the socket does (a blocking socket's receive timeout gives
/// `WouldBlock`).
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
    // SAFETY: `buf` is exclusively borrowed for the call and `buf.len()` bytes long.
    unsafe { recvmsg_fds(sock, buf.as_mut_ptr(), buf.len(), max_fds, 0) }
}

/// Receives up to `buf.len()` bytes with `recvfrom`, which costs the kernel less than
/// `recvmsg` (no `msghdr` to copy in and out), and no fds: any that came with the bytes are
/// closed by the kernel. Only for a read where no message may legitimately carry fds.
/// Blocking as [`recv_with_fds`] is (the receive timeout gives `WouldBlock`), or not with
/// `block` false. A blocking read interrupted by a signal returns `Interrupted` rather than
/// starting another receive timeout. `Ok(0)` means the peer closed the connection.
pub(crate) fn recv_plain(sock: &UnixStream, buf: &mut [u8], block: bool) -> io::Result<usize> {
    let flags = if block { 0 } else { libc::MSG_DONTWAIT };
    loop {
        // The raw system call, not libc's cancellation-point wrapper (see `send_one`).
        // SAFETY: `buf` is exclusively borrowed for the call and `buf.len()` bytes long; the
        // kernel writes only within it. No address is asked for (null pointers). Every
        // argument is widened to the register width the system call reads.
        let r = unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                libc::c_long::from(sock.as_raw_fd()),
                buf.as_mut_ptr(),
                buf.len(),
                libc::c_long::from(flags),
                ptr::null_mut::<libc::sockaddr>(),
                ptr::null_mut::<libc::socklen_t>(),
            )
        };
        if r >= 0 {
            // A stream socket returns at most the buffer's length.
            return Ok((r as usize).min(buf.len()));
        }
        let e = io::Error::last_os_error();
        if block || e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Like [`recv_with_fds`], but never waits: no data gives `WouldBlock`.
pub(crate) fn try_recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: `buf` is exclusively borrowed for the call and `buf.len()` bytes long.
    unsafe {
        recvmsg_fds(
            sock,
            buf.as_mut_ptr(),
            buf.len(),
            max_fds,
            libc::MSG_DONTWAIT,
        )
    }
}

/// Like [`recv_with_fds`] (or [`try_recv_with_fds`] unless `block`), but appends the bytes
/// to `buf`, reading at most `limit` of them into its spare capacity, which need not be
/// zeroed first: a large message's buffer is allocated once at its final size and filled
/// by the kernel alone. Returns the number of bytes appended (`buf.len()` grows by it).
pub(crate) fn recv_into_spare(
    sock: &UnixStream,
    buf: &mut Vec<u8>,
    limit: usize,
    max_fds: usize,
    block: bool,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let flags = if block { 0 } else { libc::MSG_DONTWAIT };
    let spare = buf.spare_capacity_mut();
    let room = spare.len().min(limit);
    // SAFETY: the spare capacity is `spare.len() >= room` bytes of the vector's allocation
    // past its length, writable (possibly uninitialised) and exclusively borrowed through
    // `buf` for the call.
    let (n, fds) = unsafe { recvmsg_fds(sock, spare.as_mut_ptr().cast(), room, max_fds, flags)? };
    // SAFETY: `recvmsg_fds` wrote (initialised) the first `n <= room` bytes of the spare
    // capacity, which start at `buf.len()`: so `buf.len() + n <= capacity` and every byte
    // below the new length is initialised.
    unsafe { buf.set_len(buf.len() + n) };
    Ok((n, fds))
}

/// Waits until `sock` is readable (or `writable`), for at most `timeout_ms` (negative:
/// forever). Returns whether it became ready; hang-up and errors count as ready so that the
/// next read reports them.
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
pub(crate) fn connect_with_timeout(
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
pub(crate) fn dup_fds(fds: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
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
    fn plain_receive_closes_fds_that_came_along() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            recv_plain(&b, &mut buf, false).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let (mut read_end, write_end) = std::io::pipe().unwrap();
        send_with_fds(&a, &[b"data"], &[write_end.as_raw_fd()]).unwrap();
        drop(write_end);
        assert_eq!(recv_plain(&b, &mut buf, true).unwrap(), 4);
        assert_eq!(&buf[..4], b"data");
        // The only other write end travelled with the bytes: the kernel closed it.
        let mut rest = Vec::new();
        assert_eq!(
            std::io::Read::read_to_end(&mut read_end, &mut rest).unwrap(),
            0
        );
        drop(a);
        assert_eq!(recv_plain(&b, &mut buf, true).unwrap(), 0);
    }

    #[test]
    fn eof_and_would_block() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 4];
        // The socket blocks; the try_ forms do not.
        assert_eq!(
            try_recv_with_fds(&b, &mut buf, 0).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(!poll_fd(b.as_raw_fd(), false, 0).unwrap());
        drop(a);
        assert!(poll_fd(b.as_raw_fd(), false, 0).unwrap());
        assert_eq!(try_recv_with_fds(&b, &mut buf, 0).unwrap().0, 0);
    }

    #[test]
    fn receive_timeout_and_full_socket_would_block() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_millis(1)))
            .unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            recv_with_fds(&b, &mut buf, 0).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let big = vec![0u8; 1 << 16];
        let mut sent = 0;
        loop {
            match try_send_with_fds(&a, &[&big], &[]) {
                Ok(n) => sent += n,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
            }
        }
        assert!(sent > 0);
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
    fn many_fds_in_one_message_all_owned() {
        let (a, b) = UnixStream::pair().unwrap();
        let e = EventFd::new(0).unwrap();
        let fds = vec![e.as_raw_fd(); MAX_RECV_FDS];
        send_with_fds(&a, &[b"x"], &fds).unwrap();
        let mut buf = [0u8; 1];
        let (n, got) = recv_with_fds(&b, &mut buf, MAX_RECV_FDS).unwrap();
        assert_eq!((n, got.len()), (1, MAX_RECV_FDS));
        // More than the receive buffer holds: refused, and nothing leaks.
        let fds = vec![e.as_raw_fd(); MAX_RECV_FDS + 1];
        send_with_fds(&a, &[b"y"], &fds).unwrap();
        let err = recv_with_fds(&b, &mut buf, MAX_RECV_FDS).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOBUFS));
    }

    #[test]
    fn recv_into_spare_appends_at_most_limit() {
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fds(&a, &[b"0123456789"], &[]).unwrap();
        let mut v = Vec::with_capacity(8);
        v.extend_from_slice(b"ab");
        assert_eq!(recv_into_spare(&b, &mut v, 3, 0, true).unwrap().0, 3);
        assert_eq!(v, b"ab012");
        // Never past the capacity, whatever the limit.
        let room = v.capacity() - v.len();
        assert_eq!(recv_into_spare(&b, &mut v, 100, 0, false).unwrap().0, room);
        assert_eq!(v.len(), v.capacity());
        assert_eq!(&v[..5 + room], &b"ab0123456789"[..5 + room]);
        let mut w = Vec::with_capacity(16);
        assert_eq!(
            recv_into_spare(&b, &mut w, 16, 0, false).unwrap().0,
            7 - room
        );
        assert_eq!(
            recv_into_spare(&b, &mut w, 16, 0, false)
                .unwrap_err()
                .kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
