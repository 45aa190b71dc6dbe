//! The UDP side: one IPv4 and one IPv6 socket on the same port (IPV6_V6ONLY), as the kernel
//! module and wireguard-go listen. Both report the local address of each datagram
//! (IP_PKTINFO / IPV6_RECVPKTINFO), so that replies leave from the address a peer contacted.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use crate::os;

/// Most segments of one GSO send: the kernel's UDP_MAX_SEGMENTS (64 before Linux 6.11, 128
/// since); the older, smaller value is safe everywhere.
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Socket buffer size asked for: thousands of full-size datagrams, so that the kernel does
/// not drop a burst that arrives while the loop is busy with the previous batch (the same
/// order as wireguard-go's 7 MiB). Past `net.core.[rw]mem_max` only with CAP_NET_ADMIN
/// (SO_RCVBUFFORCE); without it the kernel caps the request there.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Why the UDP sockets could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("cannot bind UDP {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot set fwmark {mark:#x} on the UDP sockets (needs CAP_NET_ADMIN)")]
    Mark {
        mark: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot register the UDP sockets with the event loop")]
    Register(#[source] io::Error),
}

/// The listening sockets (non-blocking; the data plane's event loop polls them). Either may be
/// missing when the kernel lacks that family (but not both).
#[derive(Debug)]
pub struct UdpSockets {
    pub v4: Option<UdpSocket>,
    pub v6: Option<UdpSocket>,
    port: u16,
    fwmark: u32,
    /// What `configure_offloads` found, and for which setting.
    offloads: Option<(bool, UdpOffloads)>,
}

/// The family is not compiled into (or is disabled in) the kernel.
fn family_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

/// Turns on the report of each datagram's local address (see [`os::set_recv_pktinfo`]). A
/// kernel that refuses leaves the source of replies to its routes, as before.
fn report_local_address(socket: UdpSocket, ipv6: bool) -> UdpSocket {
    if let Err(e) = os::set_recv_pktinfo(&socket, ipv6) {
        tracing::warn!(error = %e, "cannot learn the local address of received datagrams; replies leave from the address the routes pick");
    }
    socket
}

/// Enlarges the socket's buffers (see [`SOCKET_BUFFER_BYTES`]); a kernel that refuses keeps
/// its defaults.
fn enlarge_buffers(socket: UdpSocket) -> UdpSocket {
    if os::force_buffer_sizes(&socket, SOCKET_BUFFER_BYTES).is_err()
        && let Err(e) = os::set_buffer_sizes(&socket, SOCKET_BUFFER_BYTES)
    {
        tracing::debug!(error = %e, "cannot enlarge UDP socket buffers");
    }
    socket
}

/// The UDP offloads in force on a set of sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UdpOffloads {
    /// Most datagrams per GSO send (UDP_SEGMENT); 0 when off.
    pub gso_segments: usize,
    /// UDP_GRO is on for every socket: a receive may hold several datagrams.
    pub gro: bool,
    /// Receive and send buffer of the sockets, as the kernel reports them (the smallest
    /// over the sockets; the kernel counts twice what was asked, for its bookkeeping).
    pub rcvbuf: usize,
    pub sndbuf: usize,
}

impl UdpSockets {
    /// Binds `0.0.0.0:port` and `[::]:port`. With no port (or 0), the IPv4 socket takes a
    /// random one and the IPv6 socket the same; if that port is taken for IPv6, a few other
    /// random ports are tried.
    pub fn bind(port: Option<u16>, fwmark: u32) -> Result<UdpSockets, UdpError> {
        let wanted = port.unwrap_or(0);
        // A random port free for v4 may be taken for v6: retry a bounded number of times.
        let attempts = if wanted == 0 { 8 } else { 1 };
        let mut last_err = None;
        for _ in 0..attempts {
            match Self::bind_once(wanted, fwmark) {
                Ok(s) => return Ok(s),
                Err(e @ UdpError::Bind { .. }) if wanted == 0 => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| UdpError::Bind {
            addr: SocketAddr::from((Ipv6Addr::UNSPECIFIED, wanted)),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        }))
    }

    fn bind_once(wanted: u16, fwmark: u32) -> Result<UdpSockets, UdpError> {
        let addr4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, wanted));
        let v4 = match os::bind_udp(addr4, false) {
            Ok(s) => Some(s),
            Err(e) if family_unavailable(&e) => {
                tracing::warn!(error = %e, "no IPv4 UDP socket");
                None
            }
            Err(source) => {
                return Err(UdpError::Bind {
                    addr: addr4,
                    source,
                });
            }
        };
        let port = match &v4 {
            Some(s) => s
                .local_addr()
                .map_err(|source| UdpError::Bind {
                    addr: addr4,
                    source,
                })?
                .port(),
            None => wanted,
        };
        let addr6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        let v6 = match os::bind_udp(addr6, true) {
            Ok(s) => Some(s),
            Err(e) if family_unavailable(&e) && v4.is_some() => {
                tracing::warn!(error = %e, "no IPv6 UDP socket, IPv4 only");
                None
            }
            Err(source) => {
                return Err(UdpError::Bind {
                    addr: addr6,
                    source,
                });
            }
        };
        let port = match (&v4, &v6) {
            (Some(_), _) => port,
            (None, Some(s)) => s
                .local_addr()
                .map_err(|source| UdpError::Bind {
                    addr: addr6,
                    source,
                })?
                .port(),
            (None, None) => {
                return Err(UdpError::Bind {
                    addr: addr4,
                    source: io::Error::from_raw_os_error(libc::EAFNOSUPPORT),
                });
            }
        };
        let sockets = UdpSockets {
            v4: v4.map(|s| report_local_address(enlarge_buffers(s), false)),
            v6: v6.map(|s| report_local_address(enlarge_buffers(s), true)),
            port,
            fwmark: 0,
            offloads: None,
        };
        let mut sockets = sockets;
        sockets.set_fwmark(fwmark)?;
        Ok(sockets)
    }

    /// The port both sockets listen on.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn fwmark(&self) -> u32 {
        self.fwmark
    }

    /// Sets (or with 0 clears) SO_MARK on both sockets.
    pub fn set_fwmark(&mut self, mark: u32) -> Result<(), UdpError> {
        if mark == self.fwmark {
            return Ok(());
        }
        let sockets: Vec<&UdpSocket> = self.v4.iter().chain(self.v6.iter()).collect();
        for (done, s) in sockets.iter().enumerate() {
            if let Err(source) = os::set_mark(s, mark) {
                // All or nothing: the sockets marked already get the old mark back.
                for s in sockets.iter().take(done) {
                    let _ = os::set_mark(s, self.fwmark);
                }
                return Err(UdpError::Mark { mark, source });
            }
        }
        self.fwmark = mark;
        Ok(())
    }

    /// Turns UDP segmentation offload on (`on`) or off for these sockets and reports what is
    /// in force: GSO is a per-send option, so it is only probed; GRO is a socket option,
    /// turned on or off here. Cheap when nothing changed since the last call.
    pub fn configure_offloads(&mut self, on: bool) -> UdpOffloads {
        if let Some((was, found)) = self.offloads
            && was == on
        {
            return found;
        }
        let sockets: Vec<&UdpSocket> = self.v4.iter().chain(self.v6.iter()).collect();
        let gso = on && sockets.iter().all(|s| os::udp_gso_supported(*s));
        let mut gro = on;
        for s in &sockets {
            if let Err(e) = os::set_udp_gro(*s, on) {
                if on {
                    tracing::debug!(error = %e, "UDP GRO unavailable");
                }
                gro = false;
            }
        }
        let (mut rcvbuf, mut sndbuf) = (usize::MAX, usize::MAX);
        for s in &sockets {
            if let Ok((r, w)) = os::buffer_sizes(*s) {
                rcvbuf = rcvbuf.min(r);
                sndbuf = sndbuf.min(w);
            }
        }
        let found = UdpOffloads {
            gso_segments: if gso { GSO_MAX_SEGMENTS } else { 0 },
            gro,
            rcvbuf: if rcvbuf == usize::MAX { 0 } else { rcvbuf },
            sndbuf: if sndbuf == usize::MAX { 0 } else { sndbuf },
        };
        self.offloads = Some((on, found));
        found
    }

    /// The socket that sends to `to`: by its family. An IPv4-mapped IPv6 address goes out
    /// the IPv4 socket as the plain IPv4 address, since the IPv6 socket is V6ONLY.
    pub fn route(&self, to: SocketAddr) -> Option<(&UdpSocket, SocketAddr)> {
        match to {
            SocketAddr::V4(_) => self.v4.as_ref().map(|s| (s, to)),
            SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                Some(v4) => self
                    .v4
                    .as_ref()
                    .map(|s| (s, SocketAddr::from((v4, a.port())))),
                None => self.v6.as_ref().map(|s| (s, to)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_port_is_shared_by_both_families() {
        let s = UdpSockets::bind(None, 0).expect("bind");
        assert_ne!(s.port(), 0);
        let v4 = s.v4.as_ref().expect("IPv4 socket");
        assert_eq!(v4.local_addr().expect("addr").port(), s.port());
        if let Some(v6) = &s.v6 {
            assert_eq!(v6.local_addr().expect("addr").port(), s.port());
            assert!(os::ipv6_only(v6).expect("getsockopt"));
        }
        // The same fixed port again is refused: it is really held.
        let again = UdpSockets::bind(Some(s.port()), 0);
        assert!(matches!(again, Err(UdpError::Bind { .. })), "{again:?}");
    }

    #[test]
    fn offloads_are_probed_and_can_be_turned_off() {
        let mut s = UdpSockets::bind(None, 0).expect("bind");
        let on = s.configure_offloads(true);
        // This kernel (4.18+ / 5.0+) has both; the buffers were enlarged past the default.
        assert_eq!(on.gso_segments, GSO_MAX_SEGMENTS, "{on:?}");
        assert!(on.gro, "{on:?}");
        assert!(on.rcvbuf >= 256 * 1024 && on.sndbuf >= 256 * 1024, "{on:?}");
        let off = s.configure_offloads(false);
        assert_eq!(off.gso_segments, 0);
        assert!(!off.gro);
        assert_eq!(s.configure_offloads(false), off);
    }

    #[test]
    fn route_picks_the_family_and_unmaps_v4_mapped() {
        let s = UdpSockets::bind(None, 0).expect("bind");
        let v4: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let (sock, to) = s.route(v4).expect("v4 socket");
        assert_eq!(to, v4);
        assert!(sock.local_addr().expect("addr").is_ipv4());
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:51820".parse().expect("addr");
        let (sock, to) = s.route(mapped).expect("v4 socket");
        assert_eq!(to, v4);
        assert!(sock.local_addr().expect("addr").is_ipv4());
        if s.v6.is_some() {
            let v6: SocketAddr = "[2001:db8::1]:51820".parse().expect("addr");
            let (sock, to) = s.route(v6).expect("v6 socket");
            assert_eq!(to, v6);
            assert!(sock.local_addr().expect("addr").is_ipv6());
        }
    }
}
