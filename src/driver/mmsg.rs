//! The per-packet UDP fast path: batched I/O with segmentation offload, written by hand
//! against libc.
//!
//! `sendmmsg(2)` with a `UDP_SEGMENT` control message per message (GSO: the kernel cuts one
//! large send into equal datagrams, the last may be shorter), and `recvmmsg(2)` on a socket
//! with `UDP_GRO` on (the kernel hands over several datagrams of one flow back to back, with
//! their common size, the stride, in a `UDP_GRO` control message).
//!
//! Both also carry the local address of a datagram, for hosts with several: a receive reports
//! the address each datagram was sent to (`IP_PKTINFO` / `IPV6_PKTINFO`, asked for with
//! [`crate::os::set_recv_pktinfo`]), and a send may name the source address its datagrams
//! leave from in the same control messages, so that a peer gets its replies from the address
//! it contacted (the kernel module's and wireguard-go's "sticky" source).
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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

/// Most messages one [`send_mmsg`] or [`recv_mmsg`] call passes to the kernel.
pub const MAX_MMSG: usize = 64;

/// Most `iovec`s one [`send_mmsg`] call passes (over all its messages).
pub const MAX_SEND_IOV: usize = 256;

/// CMSG_SPACE as a `usize` in const context: the room a control message with `data` bytes
/// takes, padding included.
const fn cmsg_space(data: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on a length (libc marks it unsafe only because it
    // is a C macro); no memory is touched.
    unsafe { libc::CMSG_SPACE(data as u32) as usize }
}

/// CMSG_LEN as a `usize` in const context: the `cmsg_len` of a message with `data` bytes.
const fn cmsg_len(data: usize) -> usize {
    // SAFETY: as for CMSG_SPACE, arithmetic only.
    unsafe { libc::CMSG_LEN(data as u32) as usize }
}

const SEGMENT_SPACE: usize = cmsg_space(2);
const SEGMENT_LEN: usize = cmsg_len(2);
const PKTINFO4_SPACE: usize = cmsg_space(std::mem::size_of::<libc::in_pktinfo>());
const PKTINFO4_LEN: usize = cmsg_len(std::mem::size_of::<libc::in_pktinfo>());
const PKTINFO6_SPACE: usize = cmsg_space(std::mem::size_of::<libc::in6_pktinfo>());
const PKTINFO6_LEN: usize = cmsg_len(std::mem::size_of::<libc::in6_pktinfo>());
const INT_LEN: usize = cmsg_len(std::mem::size_of::<libc::c_int>());

/// Room for the control messages of one send: UDP_SEGMENT and a source address
/// (IP_PKTINFO or IPV6_PKTINFO, the larger). Zeroed on every send, so no bigger than that.
const SEND_CMSG_LEN: usize = 64;
const _: () = assert!(SEGMENT_SPACE + PKTINFO6_SPACE <= SEND_CMSG_LEN);
const _: () = assert!(PKTINFO4_SPACE <= PKTINFO6_SPACE);

/// Room for the control messages of one receive: UDP_GRO's int and IP_PKTINFO or
/// IPV6_PKTINFO (64 bytes together), with as much again in case the kernel adds one we did
/// not ask for (left uninitialised, so the margin costs nothing). A cut control area
/// (MSG_CTRUNC) still holds the messages that fitted whole.
const RECV_CMSG_LEN: usize = 128;

/// A control-message buffer aligned as `cmsghdr` requires.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf<const L: usize>([u8; L]);

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
/// possibly shorter; 0 sends it as one datagram. With a `local` address of `to`'s family,
/// the datagrams leave from it (IP_PKTINFO's `ipi_spec_dst` / IPV6_PKTINFO's `ipi6_addr`);
/// the kernel refuses the message (EINVAL, EADDRNOTAVAIL) when it is not an address of
/// this host. None lets the kernel's routes pick the source.
#[derive(Debug, Clone, Copy)]
pub struct SendMsg<'a> {
    pub to: SocketAddr,
    pub iov: &'a [io::IoSlice<'a>],
    pub segment_size: u16,
    pub local: Option<IpAddr>,
}

/// Writes the control messages of `msg` (UDP_SEGMENT when it has a segment size, then its
/// source address when it has one of `to`'s family) at the start of `buf`; returns how many
/// bytes they take (0: none, leave msg_control null).
fn build_control(buf: &mut CmsgBuf<SEND_CMSG_LEN>, msg: &SendMsg<'_>) -> usize {
    // A zeroed msghdr that only describes `buf`, for the CMSG_* macros to walk it.
    // SAFETY: msghdr is a plain C struct of integers and raw pointers, for which all-zero
    // bytes are a valid value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_control = (&raw mut *buf).cast::<libc::c_void>();
    hdr.msg_controllen = SEND_CMSG_LEN as _;
    let mut used = 0;
    // SAFETY: msg_control points at `buf`, SEND_CMSG_LEN bytes aligned for cmsghdr and
    // exclusively borrowed for this function, and msg_controllen says so. Each header is
    // placed at offset `used`, a sum of CMSG_SPACE values (so aligned), and the static
    // assertions above make `used` plus the largest message's CMSG_SPACE fit the buffer; each
    // header and its data (written unaligned) lie within that message's CMSG_LEN <= CMSG_SPACE.
    unsafe {
        let base = hdr.msg_control.cast::<u8>();
        if msg.segment_size > 0 {
            let cmsg = base.add(used).cast::<libc::cmsghdr>();
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = SEGMENT_LEN as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), msg.segment_size);
            used += SEGMENT_SPACE;
        }
        match (msg.local, msg.to) {
            (Some(IpAddr::V4(local)), SocketAddr::V4(_)) => {
                let cmsg = base.add(used).cast::<libc::cmsghdr>();
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = PKTINFO4_LEN as _;
                // ipi_spec_dst is the source of what we send; ipi_addr is ignored on a send,
                // and ipi_ifindex stays 0 so the routes still choose the way out.
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(local.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
                used += PKTINFO4_SPACE;
            }
            (Some(IpAddr::V6(local)), SocketAddr::V6(to)) => {
                let cmsg = base.add(used).cast::<libc::cmsghdr>();
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = PKTINFO6_LEN as _;
                // A link-local source only means something with its interface: the one the
                // peer's (then link-local too) address is scoped to. Otherwise 0, routes decide.
                let ifindex = if local.is_unicast_link_local() {
                    to.scope_id()
                } else {
                    0
                };
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: local.octets(),
                    },
                    ipi6_ifindex: ifindex,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
                used += PKTINFO6_SPACE;
            }
            // No source, or one of the other family (the socket could not use it).
            _ => {}
        }
    }
    used
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
    let mut names = [UNSPECIFIED; N];
    let mut controls = [CmsgBuf([0; SEND_CMSG_LEN]); N];
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
        let control_len = build_control(&mut controls[i], m);
        if control_len > 0 {
            // `controls[i]` stays alive and unmoved until the end of this function.
            hdr.msg_control = (&raw mut controls[i]).cast::<libc::c_void>();
            hdr.msg_controllen = control_len as _;
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
    /// The local address the datagrams were sent to (IP_PKTINFO's `ipi_spec_dst`, the
    /// address to answer from, or IPV6_PKTINFO's `ipi6_addr`), when the socket reports it.
    pub local: Option<IpAddr>,
}

/// What the control messages of one received message say: the UDP_GRO stride and the local
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Received {
    stride: Option<usize>,
    local: Option<IpAddr>,
}

/// Reads the control messages the kernel wrote for `hdr` (its msg_control and the
/// msg_controllen it set): UDP_GRO and IP_PKTINFO / IPV6_PKTINFO; others are skipped.
///
/// # Safety
/// `hdr.msg_control` must point at `hdr.msg_controllen` readable bytes, aligned for cmsghdr,
/// that hold whole control messages as the kernel lays them out (every header's cmsg_len
/// within the area; CMSG_NXTHDR checks that the next one fits).
unsafe fn parse_control(hdr: &libc::msghdr) -> Received {
    let mut found = Received::default();
    // SAFETY: by the caller's promise, CMSG_FIRSTHDR/CMSG_NXTHDR only return headers lying
    // whole inside the area, or null; each value is read (unaligned) at CMSG_DATA only after
    // checking that cmsg_len covers it, so it lies within the bytes the kernel wrote.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let (level, kind, len) = (
                (*cmsg).cmsg_level,
                (*cmsg).cmsg_type,
                (*cmsg).cmsg_len as usize,
            );
            let data = libc::CMSG_DATA(cmsg);
            match (level, kind) {
                (libc::SOL_UDP, libc::UDP_GRO) if len >= INT_LEN => {
                    let size = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    if let Ok(size) = usize::try_from(size)
                        && size > 0
                    {
                        found.stride = Some(size);
                    }
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) if len >= PKTINFO4_LEN => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    // ipi_spec_dst: the address the kernel itself would answer from, which
                    // for a unicast datagram is its destination (as wireguard-go takes it).
                    let local = Ipv4Addr::from(info.ipi_spec_dst.s_addr.to_ne_bytes());
                    found.local = (!local.is_unspecified()).then_some(IpAddr::V4(local));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if len >= PKTINFO6_LEN => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    let local = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                    found.local = (!local.is_unspecified()).then_some(IpAddr::V6(local));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    found
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
    let mut controls = [const { MaybeUninit::<CmsgBuf<RECV_CMSG_LEN>>::uninit() }; N];
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
        hdr.msg_controllen = RECV_CMSG_LEN as _;
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
        // SAFETY: the kernel set msg_controllen to the bytes of control data it wrote into
        // `controls[i]` (at most RECV_CMSG_LEN; it cuts at a message boundary and sets
        // MSG_CTRUNC rather than write more), whole messages in its own layout, aligned as
        // the buffer is; the uninitialised rest is never read.
        let control = unsafe { parse_control(&hdr.msg_hdr) };
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
            stride: control.stride.unwrap_or(len),
            truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            local: control.local,
        };
    }
    Ok(received)
}

#[cfg(test)]
mod tests;
