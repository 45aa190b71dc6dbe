//! Where a peer is: its address and port, and the local address its packets arrived on.
//!
//! On a host with several addresses, a reply must leave from the address the peer contacted,
//! or a peer that dialled a secondary address sees the answer come from another one (and
//! drops it, or behind NAT or strict reverse-path filtering never gets it). The kernel keeps
//! this as `endpoint.src4`/`src6` beside the peer's address, wireguard-go as the "sticky"
//! source of its `StdNetEndpoint`; both learn it with every authenticated packet (roaming) and
//! clear it when sending from it fails or a handshake has to be retransmitted.

use std::net::{IpAddr, SocketAddr};

/// A peer's endpoint as roaming learns it: `remote` is the source of its latest authenticated
/// packet, `local` the destination address that packet was sent to (what the driver read from
/// IP_PKTINFO / IPV6_PKTINFO), used as the source of what goes back. `local` is None when it is
/// unknown (a configured endpoint, a driver that does not report it) or was forgotten: then
/// the kernel picks the source by its routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub remote: SocketAddr,
    pub local: Option<IpAddr>,
}

impl Endpoint {
    pub fn new(remote: SocketAddr, local: Option<IpAddr>) -> Self {
        Endpoint { remote, local }
    }
}

/// A bare address: no local address known, the kernel chooses.
impl From<SocketAddr> for Endpoint {
    fn from(remote: SocketAddr) -> Self {
        Endpoint {
            remote,
            local: None,
        }
    }
}
