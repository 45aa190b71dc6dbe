//! The process and socket calls tandem needs that std and tokio do not offer, as safe
//! functions over `nix`.
//!
//! This module holds no `unsafe`: `nix` (already built for tun-rs and rtnetlink) wraps each
//! call soundly, so the crate's own `unsafe` stays in the per-packet fast path
//! ([`crate::driver::mmsg`]), where no crate batches datagrams the way the data plane needs.
//! Nothing here imports the rest of the crate: it is the bottom layer, usable from the
//! driver, the daemon, the control server and the command line alike.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::Duration;

use nix::net::if_;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{self, Signal};
use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, sockopt,
};
use nix::sys::stat::Mode;
use nix::unistd::{self, Pid};

pub mod privilege;

// ------------------------------------------------------------------ process

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
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// Creates a new, anonymous network namespace and returns it as an open file: what `ip netns
/// add` does without the name in /run/netns. A short-lived thread unshares its network
/// namespace (`unshare(2)` with `CLONE_NEWNET` acts on the calling thread only) and opens
/// its `/proc/thread-self/ns/net`; the namespace lives as long as the file is open or
/// something (a process, a socket) is inside it. Needs `CAP_SYS_ADMIN`.
pub fn new_netns() -> io::Result<File> {
    std::thread::spawn(|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// The effective user id of this process, so callers can explain a missing privilege
/// (e.g. "needs root or CAP_NET_ADMIN") before the kernel answers EPERM.
pub fn effective_uid() -> u32 {
    unistd::geteuid().as_raw()
}

/// Sends `signal` (e.g. `libc::SIGTERM`; 0 only checks that the process exists) to process
/// `pid`.
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
    let signal = match signal {
        0 => None,
        n => Some(Signal::try_from(n)?),
    };
    signal::kill(Pid::from_raw(pid), signal)?;
    Ok(())
}

/// Sets the process's file mode creation mask and returns the previous one, so a caller can
/// create one file under a strict mask (the UAPI socket under 077) and restore the old mask.
/// The mask is process-wide.
pub fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    nix::sys::stat::umask(Mode::from_bits_truncate(mask)).bits()
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): set against wall time,
/// it tells work from time spent preempted. Zero if the clock cannot be read.
pub fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Makes the calling process the leader of a new session without a controlling terminal
/// (`setsid(2)`), as a daemon that detached from its parent does.
pub fn new_session() -> io::Result<()> {
    unistd::setsid()?;
    Ok(())
}

/// Points standard input, output and error at `/dev/null`: what a detached daemon does once
/// the parent that started it stops reading its output (writing to a closed pipe would fail,
/// and `eprintln!` panics on a failed write).
pub fn detach_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // dup2 replaces each standard descriptor atomically, so no other thread ever sees one
    // closed (std reads and writes them by number).
    unistd::dup2_stdin(&null)?;
    unistd::dup2_stdout(&null)?;
    unistd::dup2_stderr(&null)?;
    Ok(())
}

// ------------------------------------------------------------------ interfaces

/// The index of network interface `name` in the calling thread's network namespace, or
/// `None` when there is no such interface (or the name holds a NUL byte).
pub fn if_nametoindex(name: &str) -> Option<u32> {
    if_::if_nametoindex(name).ok()
}

/// The name of the network interface with `index` in the calling thread's network
/// namespace, or `None` when there is none.
pub fn if_indextoname(index: u32) -> Option<String> {
    let name = if_::if_indextoname(index).ok()?;
    // nix 0.31 checks the C function's result against -1 rather than NULL, so an unknown
    // index comes back as Ok with its zeroed buffer: an empty name. No interface has one.
    (!name.is_empty()).then(|| name.to_string_lossy().into_owned())
}

// ------------------------------------------------------------------ sockets

/// Creates a non-blocking, close-on-exec UDP socket of `addr`'s family and binds it to `addr`.
///
/// For IPv6, `v6only` sets IPV6_V6ONLY before the bind, so that `[::]:port` and `0.0.0.0:port`
/// can be two separate sockets on the same port (std's `bind` offers no way to set an option
/// between `socket(2)` and `bind(2)`).
pub fn bind_udp(addr: SocketAddr, v6only: bool) -> io::Result<UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    // The descriptor is owned from here on, so every early return below closes it.
    let fd = socket::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Udp,
    )?;
    match addr {
        SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => {
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &v6only)?;
            socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?;
        }
    }
    Ok(UdpSocket::from(fd))
}

/// Sets SO_MARK (the firewall mark policy routing matches on) for packets sent from this
/// socket; 0 clears it. Needs CAP_NET_ADMIN.
pub fn set_mark<F: AsFd>(fd: &F, mark: u32) -> io::Result<()> {
    socket::setsockopt(fd, sockopt::Mark, &mark)?;
    Ok(())
}

/// The socket's SO_MARK.
pub fn mark<F: AsFd>(fd: &F) -> io::Result<u32> {
    Ok(socket::getsockopt(fd, sockopt::Mark)?)
}

/// Whether IPV6_V6ONLY is set on an IPv6 socket.
pub fn ipv6_only<F: AsFd>(fd: &F) -> io::Result<bool> {
    Ok(socket::getsockopt(fd, sockopt::Ipv6V6Only)?)
}

/// A buffer size as the kernel's `int` option takes it: nix passes a `usize` on as a C int
/// unchecked, so a larger request is capped here instead of wrapping to a negative size.
fn buffer_request(bytes: usize) -> usize {
    bytes.min(libc::c_int::MAX as usize)
}

/// Asks for larger socket buffers (SO_RCVBUF / SO_SNDBUF) so that bursts between two event
/// loop turns are not dropped; the kernel caps the values at `net.core.[rw]mem_max`.
pub fn set_buffer_sizes<F: AsFd>(fd: &F, bytes: usize) -> io::Result<()> {
    let bytes = buffer_request(bytes);
    socket::setsockopt(fd, sockopt::RcvBuf, &bytes)?;
    socket::setsockopt(fd, sockopt::SndBuf, &bytes)?;
    Ok(())
}

/// Sets the socket buffers to `bytes` past `net.core.[rw]mem_max` (SO_RCVBUFFORCE /
/// SO_SNDBUFFORCE); needs CAP_NET_ADMIN, and fails with EPERM without it.
pub fn force_buffer_sizes<F: AsFd>(fd: &F, bytes: usize) -> io::Result<()> {
    let bytes = buffer_request(bytes);
    socket::setsockopt(fd, sockopt::RcvBufForce, &bytes)?;
    socket::setsockopt(fd, sockopt::SndBufForce, &bytes)?;
    Ok(())
}

/// The socket's receive and send buffer sizes as the kernel reports them (it doubles what
/// was asked for, to account for its bookkeeping).
pub fn buffer_sizes<F: AsFd>(fd: &F) -> io::Result<(usize, usize)> {
    let rcv = socket::getsockopt(fd, sockopt::RcvBuf)?;
    let snd = socket::getsockopt(fd, sockopt::SndBuf)?;
    Ok((rcv, snd))
}

/// Asks the kernel to report, with each datagram received on this socket, the local
/// address it was sent to: IP_PKTINFO on an IPv4 socket, IPV6_RECVPKTINFO on an IPv6 one
/// (the control messages `driver::mmsg` reads), so replies can leave from that address.
pub fn set_recv_pktinfo<F: AsFd>(fd: &F, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        socket::setsockopt(fd, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        socket::setsockopt(fd, sockopt::Ipv4PacketInfo, &true)?;
    }
    Ok(())
}

/// Turns UDP receive offload (UDP_GRO, Linux 5.0+) on or off for a socket.
pub fn set_udp_gro<F: AsFd>(fd: &F, on: bool) -> io::Result<()> {
    socket::setsockopt(fd, sockopt::UdpGroSegment, &on)?;
    Ok(())
}

/// Whether the kernel knows UDP send offload (UDP_SEGMENT, Linux 4.18+) on this socket:
/// reading the option fails with ENOPROTOOPT where it does not.
pub fn udp_gso_supported<F: AsFd>(fd: &F) -> bool {
    socket::getsockopt(fd, sockopt::UdpGsoSegment).is_ok()
}

/// Waits up to `timeout` for `fd` to accept writes (POLLOUT): the data plane's sockets are
/// registered for read readiness only, so a full send buffer is waited out here. Returns
/// whether it became writable (an error or hang-up counts as writable: the next write
/// reports it).
pub fn wait_writable<F: AsFd>(fd: &F, timeout: Duration) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    // A timeout too long for poll's int of milliseconds waits as long as poll can.
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    let ready = nix::poll::poll(&mut fds, timeout)?;
    Ok(ready > 0)
}

#[cfg(test)]
mod tests;
