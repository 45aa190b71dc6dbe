//! Thin wrappers over the system calls the driver needs that std and tokio do not offer.
//!
//! This is the only file in the crate allowed to contain `unsafe`; every block carries a
//! `// SAFETY:` note saying why the call is sound.

use std::fs::File;
use std::io;
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
