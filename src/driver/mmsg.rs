//! The per-packet UDP fast path: batched I/O with segmentation offload, written by hand
//! against libc.
//!
//! `sendmmsg(2)` with a `UDP_SEGMENT` control message per message (GSO: the kernel cuts one
//! large send into equal datagrams, the last may be shorter), and `recvmmsg(2)` on a socket
//! with `UDP_GRO` on (the kernel hands over several datagrams of one flow back to back, with
//! their common size, the stride, in a `UDP_GRO` control message).
//!
//! This is the only module allowed `unsafe` (the crate denies it everywhere else, and
//! `clippy::undocumented_unsafe_blocks` wants a `// SAFETY:` note on every block). It is
//! hand-written because no maintained crate batches the way the data plane needs: several
//! messages per call, each with its own iovec list, destination and GSO size (or none), on
//! stack scratch arrays sized to the batch, with one system call per batch and no allocation.
//! nix's `sendmmsg` shares one set of control messages across all messages of a call (so one
//! batch could not mix GSO sizes) and needs a heap-allocated `MultiHeaders`; quinn-udp sends
//! one message per call. Process calls and socket options, which are not per packet, are in
//! [`crate::os`], over nix.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

/// Most messages one [`send_mmsg`] or [`recv_mmsg`] call passes to the kernel.
pub const MAX_MMSG: usize = 64;

/// Most `iovec`s one [`send_mmsg`] call passes (over all its messages).
pub const MAX_SEND_IOV: usize = 256;

/// Room for one control message carrying an integer (UDP_GRO's stride, UDP_SEGMENT's size),
/// with margin for the kernel adding another one we did not ask for.
const CMSG_BUF_LEN: usize = 64;

/// A control-message buffer aligned as `cmsghdr` requires.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

/// A socket address as the kernel takes it, for either family. Only ever written here (the
/// kernel reads it), so no field is read back and no `unsafe` is needed to use it.
#[derive(Clone, Copy)]
#[repr(C)]
union RawSockAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

/// A placeholder for the unused entries of the send scratch array.
const UNSPECIFIED: RawSockAddr = RawSockAddr {
    v6: libc::sockaddr_in6 {
        sin6_family: libc::AF_UNSPEC as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
        sin6_scope_id: 0,
    },
};

/// Bytes of a `sockaddr_storage`, the room [`recv_mmsg`] gives the kernel for a source.
const STORAGE_LEN: usize = std::mem::size_of::<libc::sockaddr_storage>();

fn raw_sockaddr(addr: SocketAddr) -> (RawSockAddr, libc::socklen_t) {
    match addr {
        SocketAddr::V4(a) => (
            RawSockAddr {
                v4: libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                },
            },
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ),
        SocketAddr::V6(a) => (
            RawSockAddr {
                v6: libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                },
            },
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        ),
    }
}

/// The source address the kernel wrote at the start of `raw` (zeros after it), if it is IPv4
/// or IPv6. Read field by field at the C structs' offsets, in safe code: the fields keep the
/// byte order the kernel gave them, as std's own conversion does.
fn socket_addr(raw: &[u8; STORAGE_LEN]) -> Option<SocketAddr> {
    use std::mem::offset_of;
    let family = libc::sa_family_t::from_ne_bytes(field(
        raw,
        offset_of!(libc::sockaddr_storage, ss_family),
    )?);
    match libc::c_int::from(family) {
        libc::AF_INET => {
            let port = field(raw, offset_of!(libc::sockaddr_in, sin_port))?;
            let ip: [u8; 4] = field(raw, offset_of!(libc::sockaddr_in, sin_addr))?;
            Some(SocketAddr::from((ip, u16::from_be_bytes(port))))
        }
        libc::AF_INET6 => {
            let port = field(raw, offset_of!(libc::sockaddr_in6, sin6_port))?;
            let flowinfo = field(raw, offset_of!(libc::sockaddr_in6, sin6_flowinfo))?;
            let ip: [u8; 16] = field(raw, offset_of!(libc::sockaddr_in6, sin6_addr))?;
            let scope_id = field(raw, offset_of!(libc::sockaddr_in6, sin6_scope_id))?;
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip.into(),
                u16::from_be_bytes(port),
                u32::from_ne_bytes(flowinfo),
                u32::from_ne_bytes(scope_id),
            )))
        }
        _ => None,
    }
}

/// The `N` bytes of `raw` at offset `at` (the offsets are constants inside the buffer, so
/// this never fails in practice and compiles to plain loads).
fn field<const N: usize>(raw: &[u8], at: usize) -> Option<[u8; N]> {
    raw.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// One message for [`send_mmsg`]: the concatenation of `iov` goes to `to`. With a
/// `segment_size` (GSO), the kernel sends it as datagrams of that size, the last one
/// possibly shorter; 0 sends it as one datagram.
#[derive(Debug, Clone, Copy)]
pub struct SendMsg<'a> {
    pub to: SocketAddr,
    pub iov: &'a [io::IoSlice<'a>],
    pub segment_size: u16,
}

/// Sends up to [`MAX_MMSG`] messages (and [`MAX_SEND_IOV`] iovecs in all) with one
/// `sendmmsg(2)`; returns how many the kernel took, in order. An error means the first
/// message failed (later ones were not tried); a count short of `msgs.len()` means the one
/// after the last taken failed or the socket buffer is full, which the caller finds out by
/// trying it again.
pub fn send_mmsg<F: AsFd>(fd: &F, msgs: &[SendMsg<'_>]) -> io::Result<usize> {
    let mut count = 0;
    let mut iovs_used = 0;
    for m in msgs.iter().take(MAX_MMSG) {
        if iovs_used + m.iov.len() > MAX_SEND_IOV {
            break;
        }
        iovs_used += m.iov.len();
        count += 1;
    }
    if count == 0 {
        return if msgs.is_empty() {
            Ok(0)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a message with too many iovecs",
            ))
        };
    }
    // The scratch arrays live on the stack and are zeroed on every call: sized for the
    // common small send (one datagram when idle), they cost a few hundred bytes instead of
    // 16 KiB of memset, which also evicted much of the L1 cache on each packet.
    if count <= SMALL_MMSG {
        send_mmsg_n::<SMALL_MMSG, F>(fd, &msgs[..count])
    } else {
        send_mmsg_n::<MAX_MMSG, F>(fd, &msgs[..count])
    }
}

/// Scratch size of [`send_mmsg`] and [`recv_mmsg`] for small batches.
pub const SMALL_MMSG: usize = 4;

/// [`send_mmsg`] with scratch room for `N` messages; `msgs` holds at most `N` messages and
/// [`MAX_SEND_IOV`] iovecs in all.
fn send_mmsg_n<const N: usize, F: AsFd>(fd: &F, msgs: &[SendMsg<'_>]) -> io::Result<usize> {
    let count = msgs.len().min(N);
    // SAFETY: CMSG_SPACE is pure arithmetic on a length (libc marks it unsafe only because it
    // is a C macro); no memory is touched.
    const SEGMENT_SPACE: usize = unsafe { libc::CMSG_SPACE(2) } as usize;
    // SAFETY: as above, for CMSG_LEN.
    const SEGMENT_LEN: usize = unsafe { libc::CMSG_LEN(2) } as usize;
    const _: () = assert!(SEGMENT_SPACE <= CMSG_BUF_LEN);

    let mut names = [UNSPECIFIED; N];
    let mut controls = [CmsgBuf([0; CMSG_BUF_LEN]); N];
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers, for which all-zero
    // bytes are a valid value (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
    for (i, m) in msgs.iter().take(count).enumerate() {
        let (name, name_len) = raw_sockaddr(m.to);
        names[i] = name;
        let hdr = &mut hdrs[i].msg_hdr;
        hdr.msg_name = (&raw mut names[i]).cast::<libc::c_void>();
        hdr.msg_namelen = name_len;
        // IoSlice is documented to be ABI compatible with iovec on Unix; the kernel only
        // reads through this pointer for a send.
        hdr.msg_iov = m.iov.as_ptr().cast::<libc::iovec>().cast_mut();
        hdr.msg_iovlen = m.iov.len() as _;
        if m.segment_size > 0 {
            hdr.msg_control = (&raw mut controls[i]).cast::<libc::c_void>();
            hdr.msg_controllen = SEGMENT_SPACE as _;
            // SAFETY: msg_control points at `controls[i]`, which is CMSG_BUF_LEN >=
            // SEGMENT_SPACE bytes, aligned for cmsghdr and alive until the end of this
            // function, and msg_controllen says so; CMSG_FIRSTHDR therefore returns a pointer
            // to its start (never null, since the buffer holds a whole cmsghdr), and the u16
            // written at CMSG_DATA lies within SEGMENT_LEN <= SEGMENT_SPACE bytes of it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(hdr);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = SEGMENT_LEN as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), m.segment_size);
            }
        }
    }
    // SAFETY: `hdrs[..count]` are initialised above; every pointer in them (names, iovecs
    // borrowed from `msgs`, control buffers) points at memory that stays alive and unmoved
    // for the whole call, with the lengths given; the kernel only reads them (and writes
    // `msg_len` into the headers, which we own mutably). The descriptor is borrowed.
    let rc = unsafe {
        libc::sendmmsg(
            fd.as_fd().as_raw_fd(),
            hdrs.as_mut_ptr(),
            count as libc::c_uint,
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// What [`recv_mmsg`] learnt about one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecvMeta {
    /// Bytes written into the buffer.
    pub len: usize,
    /// Sender; None for an address family other than IPv4/IPv6.
    pub src: Option<SocketAddr>,
    /// With UDP_GRO, the size of each coalesced datagram (the last may be shorter);
    /// otherwise `len`.
    pub stride: usize,
    /// The message did not fit the buffer (its tail was cut off).
    pub truncated: bool,
}

/// Receives up to `min(bufs.len(), meta.len(), MAX_MMSG)` messages with one `recvmmsg(2)`
/// without waiting (WouldBlock when there is none); returns how many, each described in
/// `meta[i]` and stored at the start of `bufs[i]`.
pub fn recv_mmsg<F: AsFd, B: AsMut<[u8]>>(
    fd: &F,
    bufs: &mut [B],
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let count = bufs.len().min(meta.len()).min(MAX_MMSG);
    if count == 0 {
        return Ok(0);
    }
    // As in `send_mmsg`: the scratch headers are zeroed on every call, so a small receive
    // (an idle socket is asked for a few messages, see the event loop) gets small ones.
    if count <= SMALL_MMSG {
        recv_mmsg_n::<SMALL_MMSG, F, B>(fd, &mut bufs[..count], &mut meta[..count])
    } else {
        recv_mmsg_n::<MAX_MMSG, F, B>(fd, &mut bufs[..count], &mut meta[..count])
    }
}

/// [`recv_mmsg`] with scratch room for `N` messages; receives up to `min(bufs.len(), N)`.
fn recv_mmsg_n<const N: usize, F: AsFd, B: AsMut<[u8]>>(
    fd: &F,
    bufs: &mut [B],
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let count = bufs.len().min(meta.len()).min(N);
    // Address and control buffers are left uninitialised: the kernel fills those of the
    // messages it returns, and only those bytes are read. Zeroing them (12 KiB per call, most
    // calls returning one message or none) cost more than the receive itself when idle.
    let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; N];
    let mut controls = [const { MaybeUninit::<CmsgBuf>::uninit() }; N];
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; N];
    // SAFETY: as in `send_mmsg`, all-zero bytes are a valid mmsghdr.
    let mut hdrs: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
    for (i, buf) in bufs.iter_mut().take(count).enumerate() {
        let buf = buf.as_mut();
        iovs[i] = libc::iovec {
            iov_base: buf.as_mut_ptr().cast::<libc::c_void>(),
            iov_len: buf.len(),
        };
        let hdr = &mut hdrs[i].msg_hdr;
        hdr.msg_name = names[i].as_mut_ptr().cast::<libc::c_void>();
        hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = &raw mut iovs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = controls[i].as_mut_ptr().cast::<libc::c_void>();
        hdr.msg_controllen = CMSG_BUF_LEN as _;
    }
    // SAFETY: `hdrs[..count]` point at name storage, one iovec each (covering exactly the
    // caller's buffer `bufs[i]`, mutably borrowed for this whole call) and control buffers,
    // all alive and unmoved during the call, with their true lengths; the kernel writes at
    // most those lengths into them. MSG_DONTWAIT keeps the call from blocking; the null
    // timeout is allowed.
    let rc = unsafe {
        libc::recvmmsg(
            fd.as_fd().as_raw_fd(),
            hdrs.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let received = (rc as usize).min(count);
    for (i, m) in meta.iter_mut().take(received).enumerate() {
        let hdr = &hdrs[i];
        let len = hdr.msg_len as usize;
        let mut stride = len;
        // SAFETY: the kernel set msg_controllen to the bytes of control data it wrote into
        // `controls[i]` (at most CMSG_BUF_LEN, or it would have set MSG_CTRUNC and cut it);
        // CMSG_FIRSTHDR/CMSG_NXTHDR only return headers lying whole inside that range, or
        // null, so each header and the int read at its CMSG_DATA are within the buffer and
        // were written by the kernel (the uninitialised rest is never read).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr.msg_hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_UDP
                    && (*cmsg).cmsg_type == libc::UDP_GRO
                    && (*cmsg).cmsg_len as usize
                        >= libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize
                {
                    let size =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                    if let Ok(size) = usize::try_from(size)
                        && size > 0
                    {
                        stride = size;
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&hdr.msg_hdr, cmsg);
            }
        }
        // Only the msg_namelen bytes the kernel wrote are copied out of the uninitialised
        // buffer, over a zeroed address.
        let mut name = [0u8; STORAGE_LEN];
        let name_len = (hdr.msg_hdr.msg_namelen as usize).min(STORAGE_LEN);
        // SAFETY: `names[i]` is a live sockaddr_storage-sized buffer whose first
        // msg_namelen bytes the kernel wrote for this received message (it never reports
        // more than the buffer's size, and the length is capped to it again); `name` is a
        // distinct local of the same size, so the copy stays in bounds and cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                names[i].as_ptr().cast::<u8>(),
                name.as_mut_ptr(),
                name_len,
            );
        }
        *m = RecvMeta {
            len,
            src: socket_addr(&name),
            stride,
            truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    Ok(received)
}

#[cfg(test)]
mod tests;
