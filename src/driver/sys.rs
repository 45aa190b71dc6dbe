//! Thin wrappers over the system calls the driver needs that std and tokio do not offer.
//!
//! This is the only file in the crate allowed to contain `unsafe`; every block carries a
//! `// SAFETY:` note saying why the call is sound.

use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Moves the calling thread into the network namespace at `path` (for example
/// `/run/netns/NAME` or `/proc/PID/ns/net`).
///
/// Only the calling thread changes namespace (`setns(2)` with `CLONE_NEWNET` acts per thread),
/// so sockets and TUN devices it opens afterwards live in that namespace while the rest of the
/// process stays where it was. Needs `CAP_SYS_ADMIN`.
pub fn enter_netns(path: &Path) -> io::Result<()> {
    // The file only has to stay open for the duration of the call: the thread then holds its
    // own reference to the namespace.
    let file = File::open(path)?;
    // SAFETY: `setns` takes a file descriptor and a flag, and touches no memory of ours. The
    // descriptor is valid for the whole call because `file` is borrowed until the end of this
    // function. A descriptor that is not a namespace file makes the call fail with EINVAL,
    // which is reported as an error, not undefined behaviour.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The effective user id of this process, so callers can explain a missing privilege
/// (e.g. "needs root or CAP_NET_ADMIN") before the kernel answers EPERM.
pub fn effective_uid() -> u32 {
    // SAFETY: `geteuid` has no arguments, cannot fail and reads only process credentials.
    unsafe { libc::geteuid() }
}

/// Sets an integer socket option.
fn setsockopt_int<F: AsFd>(
    fd: &F,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let fd = fd.as_fd();
    // SAFETY: `value` lives on our stack for the whole call and the length passed is exactly
    // its size; the descriptor is borrowed (so open) for the call. The kernel copies the value
    // and keeps no pointer to it. A bad level/name is reported as an error (ENOPROTOOPT).
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads an integer socket option.
fn getsockopt_int<F: AsFd>(
    fd: &F,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let fd = fd.as_fd();
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid, writable and live for the whole call; `len` tells
    // the kernel how many bytes it may write to `value` and it writes back no more than that.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates a non-blocking, close-on-exec UDP socket of `addr`'s family and binds it to `addr`.
///
/// For IPv6, `v6only` sets IPV6_V6ONLY before the bind, so that `[::]:port` and `0.0.0.0:port`
/// can be two separate sockets on the same port (std's `bind` offers no way to set an option
/// between `socket(2)` and `bind(2)`).
pub fn bind_udp(addr: SocketAddr, v6only: bool) -> io::Result<UdpSocket> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: `socket` takes only integers and touches no memory of ours; it returns a new
    // descriptor or -1.
    let raw = unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor `socket` just returned to us and nothing else owns it, so
    // `OwnedFd` may take ownership (and close it on every early return below).
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if matches!(addr, SocketAddr::V6(_)) {
        setsockopt_int(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            libc::c_int::from(v6only),
        )?;
    }
    let rc = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sin` is a fully initialised sockaddr_in that lives for the whole call,
            // and the length passed is its exact size; the kernel only reads it.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sin).cast::<libc::sockaddr>(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for a fully initialised sockaddr_in6 of the exact length.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sin6).cast::<libc::sockaddr>(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(fd))
}

/// Sets SO_MARK (the firewall mark policy routing matches on) for packets sent from this
/// socket; 0 clears it. Needs CAP_NET_ADMIN.
pub fn set_mark<F: AsFd>(fd: &F, mark: u32) -> io::Result<()> {
    // The kernel reads the option as a 32-bit value: pass the bits unchanged.
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

/// The socket's SO_MARK.
pub fn mark<F: AsFd>(fd: &F) -> io::Result<u32> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_MARK).map(|m| m as u32)
}

/// Asks for larger socket buffers (SO_RCVBUF / SO_SNDBUF) so that bursts between two event
/// loop turns are not dropped; the kernel caps the values at `net.core.[rw]mem_max`.
pub fn set_buffer_sizes<F: AsFd>(fd: &F, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes)
}

/// Whether IPV6_V6ONLY is set on an IPv6 socket.
pub fn ipv6_only<F: AsFd>(fd: &F) -> io::Result<bool> {
    getsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).map(|v| v != 0)
}

/// Sends `signal` (e.g. `libc::SIGTERM`) to process `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "process id out of range"))?;
    if pid <= 0 {
        // 0 and negative ids would signal whole process groups: never meant here.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal a process group",
        ));
    }
    // SAFETY: `kill` takes two integers and touches no memory of ours; `pid` is positive, so
    // exactly one process is signalled (or ESRCH/EPERM is returned).
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the process's file mode creation mask and returns the previous one, so a caller can
/// create one file under a strict mask (the UAPI socket under 077) and restore the old mask.
/// The mask is process-wide.
pub fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: `umask` takes an integer, cannot fail and touches no memory of ours.
    unsafe { libc::umask(mask) }
}

/// The index of network interface `name` in the calling thread's network namespace, or
/// `None` when there is no such interface (or the name holds a NUL byte).
pub fn if_nametoindex(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that lives for the whole call; the
    // function only reads it (a name longer than IFNAMSIZ is reported as 0, not read past).
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of the network interface with `index` in the calling thread's network
/// namespace, or `None` when there is none.
pub fn if_indextoname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, the size the function requires; it writes a
    // NUL-terminated name of at most that length into it, or returns NULL and writes nothing
    // we read.
    let found = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
    let name = std::ffi::CStr::from_bytes_until_nul(&bytes).ok()?;
    Some(name.to_string_lossy().into_owned())
}

/// Makes the calling process the leader of a new session without a controlling terminal
/// (`setsid(2)`), as a daemon that detached from its parent does.
pub fn new_session() -> io::Result<()> {
    // SAFETY: `setsid` takes no arguments and touches no memory of ours; failure (EPERM for a
    // process group leader) is reported through the return value.
    let rc = unsafe { libc::setsid() };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Points standard input, output and error at `/dev/null`: what a detached daemon does once
/// the parent that started it stops reading its output (writing to a closed pipe would fail,
/// and `eprintln!` panics on a failed write).
pub fn detach_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..=2 {
        // SAFETY: `dup2` takes two descriptors and touches no memory of ours. `null` is open
        // for the whole call (it is borrowed until the end of this function), and 0, 1 and 2
        // are the process's standard descriptors, which std reads and writes by number: dup2
        // replaces each atomically, so no other code ever sees it closed.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_netns_reports_a_missing_path() {
        let err = enter_netns(Path::new("/run/netns/tandem-no-such-namespace-for-test"))
            .expect_err("a missing namespace file must be an error");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn enter_netns_rejects_a_file_that_is_not_a_namespace() {
        // The kernel checks the file type before any privilege, so this holds for any user and
        // never changes this thread's namespace.
        let err =
            enter_netns(Path::new("/dev/null")).expect_err("/dev/null is not a namespace file");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn effective_uid_matches_proc_status() {
        // /proc/self/status lists "Uid: real effective saved fs".
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .expect("a Uid: line");
        let euid: u32 = line
            .split_whitespace()
            .nth(2)
            .expect("effective uid field")
            .parse()
            .expect("numeric uid");
        assert_eq!(effective_uid(), euid);
    }

    #[test]
    fn dual_stack_sockets_share_one_port() {
        let v4 = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind v4");
        let port = v4.local_addr().expect("local addr").port();
        let v6 = match bind_udp(SocketAddr::new("::1".parse().expect("addr"), port), true) {
            Ok(s) => s,
            // A kernel without IPv6 cannot run this half of the check.
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => return,
            Err(e) => panic!("bind [::1]:{port} with IPV6_V6ONLY: {e}"),
        };
        assert!(ipv6_only(&v6).expect("getsockopt"));
        assert_eq!(v6.local_addr().expect("local addr").port(), port);
        // A second v4 socket on the same port is refused: the port really is taken.
        let again = bind_udp(
            SocketAddr::new("127.0.0.1".parse().expect("addr"), port),
            false,
        );
        assert_eq!(
            again.expect_err("port in use").kind(),
            io::ErrorKind::AddrInUse
        );
    }

    #[test]
    fn bound_socket_is_nonblocking_and_works() {
        let a = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        let b = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        let mut buf = [0u8; 8];
        assert_eq!(
            a.recv_from(&mut buf).expect_err("nothing sent yet").kind(),
            io::ErrorKind::WouldBlock
        );
        b.send_to(b"ping", a.local_addr().expect("addr"))
            .expect("send");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match a.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(&buf[..n], b"ping");
                    assert_eq!(from, b.local_addr().expect("addr"));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "datagram never arrived"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    #[test]
    fn mark_round_trips_with_privilege() {
        let s = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        match set_mark(&s, 51820) {
            Ok(()) => assert_eq!(mark(&s).expect("getsockopt"), 51820),
            // Without CAP_NET_ADMIN the kernel refuses, which must surface as EPERM.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }

    #[test]
    fn send_signal_refuses_groups_and_reports_missing_processes() {
        assert_eq!(
            send_signal(0, libc::SIGTERM).expect_err("group").kind(),
            io::ErrorKind::InvalidInput
        );
        // Signal 0 only checks that the process exists: this one does.
        send_signal(std::process::id(), 0).expect("own process exists");
    }
}

// ------------------------------------------------------------------ UDP fast path
//
// Batched UDP I/O with segmentation offload: `sendmmsg(2)` with a `UDP_SEGMENT` control
// message per message (GSO: the kernel cuts one large send into equal datagrams, the last
// may be shorter), and `recvmmsg(2)` on a socket with `UDP_GRO` on (the kernel hands over
// several datagrams of one flow back to back, with their common size, the stride, in a
// `UDP_GRO` control message).

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

/// A socket address as the kernel takes it, for either family.
#[derive(Clone, Copy)]
#[repr(C)]
union RawSockAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
    storage: libc::sockaddr_storage,
}

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

/// The address the kernel wrote into `raw`, if it is IPv4 or IPv6.
fn socket_addr(raw: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(raw.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote an AF_INET address, so the storage holds a
            // sockaddr_in; sockaddr_storage is larger than and aligned for it.
            let sin =
                unsafe { &*(raw as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for an AF_INET6 address and sockaddr_in6.
            let sin6 =
                unsafe { &*(raw as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Turns UDP receive offload (UDP_GRO, Linux 5.0+) on or off for a socket.
pub fn set_udp_gro<F: AsFd>(fd: &F, on: bool) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, libc::c_int::from(on))
}

/// Whether the kernel knows UDP send offload (UDP_SEGMENT, Linux 4.18+) on this socket:
/// reading the option fails with ENOPROTOOPT where it does not.
pub fn udp_gso_supported<F: AsFd>(fd: &F) -> bool {
    getsockopt_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT).is_ok()
}

/// Waits up to `timeout` for `fd` to accept writes (POLLOUT): the data plane's sockets are
/// registered for read readiness only, so a full send buffer is waited out here. Returns
/// whether it became writable (an error or hang-up counts as writable: the next write
/// reports it).
pub fn wait_writable<F: AsFd>(fd: &F, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is a valid, initialized pollfd that outlives the call, and the count
    // passed is 1, matching the single entry; the descriptor is borrowed from `fd`, which is
    // open for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n > 0)
}

/// Sets the socket buffers to `bytes` past `net.core.[rw]mem_max` (SO_RCVBUFFORCE /
/// SO_SNDBUFFORCE); needs CAP_NET_ADMIN, and fails with EPERM without it.
pub fn force_buffer_sizes<F: AsFd>(fd: &F, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes)
}

/// The socket's receive and send buffer sizes as the kernel reports them (it doubles what
/// was asked for, to account for its bookkeeping).
pub fn buffer_sizes<F: AsFd>(fd: &F) -> io::Result<(usize, usize)> {
    let rcv = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
    let snd = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    Ok((
        usize::try_from(rcv).unwrap_or(0),
        usize::try_from(snd).unwrap_or(0),
    ))
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
    // SAFETY (CMSG_SPACE/CMSG_LEN): pure arithmetic on a length, no memory is touched.
    const SEGMENT_SPACE: usize = unsafe { libc::CMSG_SPACE(2) } as usize;
    const SEGMENT_LEN: usize = unsafe { libc::CMSG_LEN(2) } as usize;
    const _: () = assert!(SEGMENT_SPACE <= CMSG_BUF_LEN);

    let mut names = [RawSockAddr {
        storage: zeroed_storage(),
    }; N];
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

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain bytes; all zeros is a valid (AF_UNSPEC) value.
    unsafe { std::mem::zeroed() }
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
        let mut name = zeroed_storage();
        let name_len =
            (hdr.msg_hdr.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `names[i]` is a live sockaddr_storage-sized buffer whose first
        // msg_namelen bytes the kernel wrote for this received message (it never reports
        // more than the buffer's size, and the length is capped to it again); `name` is a
        // distinct local of the same size, so the copy stays in bounds and cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                names[i].as_ptr().cast::<u8>(),
                (&raw mut name).cast::<u8>(),
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
mod fastpath_tests {
    use super::*;
    use std::io::IoSlice;
    use std::time::{Duration, Instant};

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        let b = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        (a, b)
    }

    /// Receives until `want` datagrams (GRO segments counted by stride) arrived, or 5 s.
    fn recv_all(sock: &UdpSocket, want: usize) -> Vec<(Vec<u8>, RecvMeta)> {
        let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 65536]).collect();
        let mut meta = [RecvMeta::default(); 8];
        let mut got = Vec::new();
        let mut datagrams = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while datagrams < want {
            match recv_mmsg(sock, &mut bufs, &mut meta) {
                Ok(n) => {
                    for i in 0..n {
                        let m = meta[i];
                        datagrams += m.len.div_ceil(m.stride.max(1));
                        got.push((bufs[i][..m.len].to_vec(), m));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "only {datagrams} of {want} arrived"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("recvmmsg: {e}"),
            }
        }
        got
    }

    #[test]
    fn small_receives_take_what_fits_and_leave_the_rest() {
        let (a, b) = pair();
        let to = b.local_addr().expect("addr");
        for i in 0..6u8 {
            a.send_to(&[i; 10], to).expect("send");
        }
        // Loopback delivers synchronously, but allow the queue a moment anyway.
        std::thread::sleep(Duration::from_millis(20));
        let mut bufs: Vec<Vec<u8>> = (0..SMALL_MMSG).map(|_| vec![0u8; 64]).collect();
        let mut meta = [RecvMeta::default(); SMALL_MMSG];
        let first = recv_mmsg(&b, &mut bufs, &mut meta).expect("first receive");
        assert_eq!(first, SMALL_MMSG);
        for (i, (buf, m)) in bufs.iter().zip(&meta).enumerate() {
            assert_eq!((m.len, buf[0]), (10, i as u8));
        }
        let second = recv_mmsg(&b, &mut bufs, &mut meta).expect("second receive");
        assert_eq!(second, 6 - SMALL_MMSG);
        assert_eq!(bufs[0][0], SMALL_MMSG as u8);
        let empty = recv_mmsg(&b, &mut bufs, &mut meta);
        assert!(
            matches!(&empty, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "{empty:?}"
        );
    }

    #[test]
    fn sendmmsg_and_recvmmsg_carry_several_messages_in_order() {
        let (a, b) = pair();
        let to = b.local_addr().expect("addr");
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let iovs: Vec<[IoSlice<'_>; 1]> = payloads.iter().map(|p| [IoSlice::new(p)]).collect();
        let msgs: Vec<SendMsg<'_>> = iovs
            .iter()
            .map(|iov| SendMsg {
                to,
                iov,
                segment_size: 0,
            })
            .collect();
        assert_eq!(send_mmsg(&a, &msgs).expect("sendmmsg"), 5);
        let got = recv_all(&b, 5);
        let from = a.local_addr().expect("addr");
        for (i, (data, meta)) in got.iter().enumerate() {
            assert_eq!(data, &payloads[i]);
            assert_eq!(meta.src, Some(from));
            assert_eq!(meta.stride, meta.len);
            assert!(!meta.truncated);
        }
    }

    #[test]
    fn sends_of_every_scratch_size_arrive_whole_with_their_source() {
        // send_mmsg uses a small scratch array up to SMALL_MMSG messages and the full one
        // above; recv_mmsg copies each source out of an uninitialised buffer.
        let (a, b) = pair();
        let to = b.local_addr().expect("addr");
        let from = a.local_addr().expect("addr");
        for n in [1usize, SMALL_MMSG, SMALL_MMSG + 1, MAX_MMSG] {
            let payloads: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 20 + i]).collect();
            let iovs: Vec<[IoSlice<'_>; 1]> = payloads.iter().map(|p| [IoSlice::new(p)]).collect();
            let msgs: Vec<SendMsg<'_>> = iovs
                .iter()
                .map(|iov| SendMsg {
                    to,
                    iov,
                    segment_size: 0,
                })
                .collect();
            let mut sent = 0;
            while sent < n {
                sent += send_mmsg(&a, &msgs[sent..]).expect("sendmmsg");
            }
            let got = recv_all(&b, n);
            assert_eq!(got.len(), n, "{n} messages sent");
            for (i, (data, meta)) in got.iter().enumerate() {
                assert_eq!(data, &payloads[i], "message {i} of {n}");
                assert_eq!(meta.src, Some(from), "source of message {i} of {n}");
            }
        }
    }

    #[test]
    fn gso_send_arrives_as_separate_datagrams_or_a_gro_batch() {
        let (a, b) = pair();
        assert!(
            udp_gso_supported(&a),
            "this kernel lacks UDP_SEGMENT (4.18+)"
        );
        // Three 100-byte segments and a 40-byte tail, from four separate buffers.
        let parts: Vec<Vec<u8>> = vec![vec![1; 100], vec![2; 100], vec![3; 100], vec![4; 40]];
        let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let to = b.local_addr().expect("addr");
        let msg = SendMsg {
            to,
            iov: &iov,
            segment_size: 100,
        };
        // Without GRO on the receiver: four datagrams.
        assert_eq!(send_mmsg(&a, &[msg]).expect("sendmmsg with GSO"), 1);
        let got = recv_all(&b, 4);
        let lens: Vec<usize> = got.iter().map(|(d, _)| d.len()).collect();
        assert_eq!(lens, [100, 100, 100, 40]);
        for (i, (d, _)) in got.iter().enumerate() {
            assert!(d.iter().all(|&x| usize::from(x) == i + 1));
        }
        // With GRO on: the same data, possibly coalesced, split back by the stride.
        set_udp_gro(&b, true).expect("UDP_GRO");
        assert_eq!(send_mmsg(&a, &[msg]).expect("sendmmsg with GSO"), 1);
        let got = recv_all(&b, 4);
        let mut segments = Vec::new();
        for (d, m) in &got {
            assert!(m.stride > 0);
            segments.extend(d.chunks(m.stride).map(<[u8]>::to_vec));
        }
        assert_eq!(segments, parts);
    }

    #[test]
    fn truncation_is_reported() {
        let (a, b) = pair();
        a.send_to(&[7u8; 300], b.local_addr().expect("addr"))
            .expect("send");
        let mut bufs = [vec![0u8; 100]];
        let mut meta = [RecvMeta::default(); 1];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match recv_mmsg(&b, &mut bufs, &mut meta) {
                Ok(1) => break,
                Ok(n) => panic!("{n} messages"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("recvmmsg: {e}"),
            }
        }
        assert!(meta[0].truncated);
    }

    #[test]
    fn buffers_can_be_read_back() {
        let (a, _) = pair();
        set_buffer_sizes(&a, 1 << 20).expect("setsockopt");
        let (rcv, snd) = buffer_sizes(&a).expect("getsockopt");
        assert!(rcv > 0 && snd > 0);
        match force_buffer_sizes(&a, 8 << 20) {
            Ok(()) => assert!(buffer_sizes(&a).expect("getsockopt").0 >= 8 << 20),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }
}
