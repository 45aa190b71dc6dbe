//! What a device should look like, and what it looks like now.

use std::net::SocketAddr;

pub use crate::proto::prefix::{Prefix, mask};
use crate::proto::{Device, DropCounters, PeerInfo, PresharedKey, PrivateKey, PublicKey};

/// The device's settings as one source wants them.
#[derive(Debug, Clone, Default)]
pub struct DesiredDevice {
    pub private_key: Option<PrivateKey>,
    /// 0: any port. The port already bound is one, so 0 never rebinds (see the module notes).
    pub listen_port: u16,
    /// SO_MARK of the UDP sockets; 0 is off.
    pub fwmark: u32,
    /// The inner MTU, which bounds padding; `None` leaves it (UAPI has no MTU).
    pub mtu: Option<usize>,
    /// In order; no two with the same public key, none with our own.
    pub peers: Vec<DesiredPeer>,
}

#[derive(Debug, Clone)]
pub struct DesiredPeer {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    /// `None` keeps the endpoint the peer has (configured before, or learned by roaming).
    pub endpoint: Option<SocketAddr>,
    /// Seconds; 0 is off.
    pub persistent_keepalive: u16,
    /// Each at most once (host bits are cleared by the plan).
    pub allowed_ips: Vec<Prefix>,
    /// Start the peer over (no sessions) even if it exists: a UAPI `set` that removes a peer
    /// and adds it again, as wireguard-go does.
    pub fresh: bool,
}

impl DesiredPeer {
    pub fn new(public_key: PublicKey) -> Self {
        DesiredPeer {
            public_key,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
            fresh: false,
        }
    }
}

/// The running device as the plan sees it: the core's keys and peers and the driver's
/// sockets. Also what a UAPI `get` reports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub private_key: Option<PrivateKey>,
    /// The port actually bound (0 before the first bind).
    pub listen_port: u16,
    pub fwmark: u32,
    pub mtu: usize,
    /// In the device's order, AllowedIPs with host bits cleared.
    pub peers: Vec<PeerInfo>,
    /// The core's drop counters, by reason (for `tandem show` and metrics; the plan ignores
    /// them).
    pub drops: DropCounters,
    /// Handshakes completed since the device was made.
    pub handshakes_completed: u64,
    /// Handshake retry series that gave up since the device was made (each peer's own count
    /// is in its stats).
    pub handshakes_failed: u64,
    /// Whether handshakes currently need a cookie (mac2): the core answers this only for a
    /// given `now`, so the driver fills it in; `of` leaves it false.
    pub under_load: bool,
}

impl Snapshot {
    /// The snapshot of `device` with the driver's socket settings.
    pub fn of(device: &Device, listen_port: u16, fwmark: u32) -> Self {
        Snapshot {
            private_key: device.private_key().cloned(),
            listen_port,
            fwmark,
            mtu: device.mtu(),
            peers: device.peers(),
            drops: device.drops().clone(),
            handshakes_completed: device.handshakes_completed(),
            handshakes_failed: device.handshakes_failed(),
            under_load: false,
        }
    }
}

/// A running peer's AllowedIPs as prefixes, host bits cleared.
pub(super) fn running_prefixes(info: &PeerInfo) -> impl Iterator<Item = Prefix> + '_ {
    info.allowed_ips.iter().map(Prefix::network)
}
