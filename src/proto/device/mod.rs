//! The whole WireGuard device as a pure state machine: our identity, the peers, the
//! receiver-index table, AllowedIPs, the cookie checker and the rate limiter.
//!
//! Three inputs drive it, each with the caller's `Now`:
//! - [`Device::encapsulate`]: an IP packet from the TUN side;
//! - [`Device::decapsulate`]: a UDP datagram and its source address;
//! - [`Device::update_timers`]: time passing ([`Device::next_deadline`] says when).
//!
//! Output that is not the direct answer to a call (handshake messages, cookie replies,
//! keepalives, packets that waited for a handshake) is drained with
//! [`Device::poll_transmit`] after every batch. Packets are processed in the caller's buffers
//! with [`HEADROOM`] and [`TAILROOM`]: no allocation per packet on the data path.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::allowedips::{AllowedIps, PrefixError};
use super::error::{DropCounters, DropReason};
use super::handshake::Identity;
use super::index::IndexTable;
use super::keys::{PresharedKey, PrivateKey, PublicKey};
use super::messages::MAX_HANDSHAKE_LEN;
use super::noise::Protocol;
use super::peer::{MAX_STAGED_PACKETS, Peer, PeerConfig, PeerId, PeerStats};
use super::ratelimiter::RateLimiter;
use super::time::Now;
use super::timers::UNDER_LOAD_HOLD;
use super::transport::{OpenJob, SealJob};

// One `impl Device` block per concern, as the kernel splits its files.
mod handshake;
mod receive;
mod send;
mod timers;

pub use super::transport::{HEADROOM, TAILROOM};

/// Staging buffers kept for reuse.
const MAX_SPARE_BUFFERS: usize = 2 * MAX_STAGED_PACKETS;

/// Default inner MTU, as wg-quick uses.
pub const DEFAULT_MTU: usize = 1420;

/// What became of an outbound IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulated {
    /// `buf[..len]` is a transport message for `endpoint`.
    Send {
        endpoint: SocketAddr,
        len: usize,
    },
    /// Kept until a handshake completes (drain `poll_transmit`: an initiation may be waiting).
    Queued,
    Dropped(DropReason),
}

/// What became of an inbound datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decapsulated {
    /// `buf[range]` is an IP packet from `peer` for the TUN device.
    Deliver {
        peer: PeerId,
        range: Range<usize>,
    },
    /// Consumed (handshake message, cookie reply or keepalive); drain `poll_transmit`.
    Done,
    Dropped(DropReason),
}

/// The sequential half of an outbound packet (see [`Device::prepare_encapsulate`]).
#[derive(Debug)]
pub enum PreparedSend {
    /// Run `job.seal(buf)`, then send `buf[..len]` to `endpoint`.
    Seal {
        endpoint: SocketAddr,
        job: SealJob,
    },
    Queued,
    Dropped(DropReason),
}

/// The sequential half of an inbound datagram (see [`Device::prepare_decapsulate`]).
#[derive(Debug)]
pub enum PreparedReceive {
    /// Run `job.open(datagram)`, then [`Device::finish_decapsulate`].
    Open(ReceiveJob),
    /// A handshake message or cookie reply, fully handled (drain `poll_transmit`).
    Done,
    Dropped(DropReason),
}

/// Decryption of one transport message; `Send`, so it can run on any core.
#[derive(Debug, Clone)]
pub struct ReceiveJob {
    open: OpenJob,
    peer: PeerId,
    receiver: u32,
    src: SocketAddr,
}

impl ReceiveJob {
    /// Decrypts the whole transport message in place; the padded plaintext length.
    pub fn open(&self, datagram: &mut [u8]) -> Option<usize> {
        self.open.open(datagram)
    }
}

/// Something the driver may want to know (and log), drained with [`Device::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A handshake completed: as initiator when the response arrived, as responder when the
    /// initiator's first packet confirmed the session.
    HandshakeCompleted {
        peer: PeerId,
        public_key: PublicKey,
        endpoint: Option<SocketAddr>,
    },
}

/// Events kept for the driver; beyond this the oldest is dropped (they are informational).
const MAX_EVENTS: usize = 256;

/// A datagram `poll_transmit` wrote: `out[..len]` goes to `endpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub endpoint: SocketAddr,
    pub len: usize,
}

/// What users see of a peer (`wg show`, UAPI `get`).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub id: PeerId,
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<(IpAddr, u8)>,
    pub stats: PeerStats,
}

/// A handshake message or keepalive waiting for `poll_transmit`.
struct Control {
    to: SocketAddr,
    peer: Option<PeerId>,
    len: usize,
    bytes: [u8; MAX_HANDSHAKE_LEN],
}

pub struct Device {
    protocol: Protocol,
    identity: Option<Identity>,
    peers: Vec<Option<Peer>>,
    by_key: HashMap<PublicKey, PeerId>,
    index: IndexTable,
    allowed_ips: AllowedIps<PeerId>,
    rate_limiter: RateLimiter,
    under_load_until: Option<Duration>,
    mtu: usize,
    control: VecDeque<Control>,
    /// Peers whose staged packets can go now that they have a session.
    flush: VecDeque<PeerId>,
    /// Recycled staging buffers.
    spare: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    drops: DropCounters,
    rng: StdRng,
}

impl Device {
    /// A device with our private key (or none yet: `wg`-style bare start) and a seed for its
    /// CSPRNG (ephemeral keys, indices, cookie secrets, jitter). The driver seeds it from the
    /// OS; tests from a constant, which makes every scenario reproducible byte for byte.
    pub fn new(private_key: Option<PrivateKey>, rng_seed: [u8; 32]) -> Self {
        let protocol = Protocol::wireguard();
        let mut rng = StdRng::from_seed(rng_seed);
        let mut limiter_seed = [0u8; 16];
        rng.fill_bytes(&mut limiter_seed);
        Device {
            identity: private_key.map(|k| Identity::new(k, &protocol)),
            protocol,
            peers: Vec::new(),
            by_key: HashMap::new(),
            index: IndexTable::default(),
            allowed_ips: AllowedIps::new(),
            rate_limiter: RateLimiter::new(limiter_seed),
            under_load_until: None,
            mtu: DEFAULT_MTU,
            control: VecDeque::new(),
            flush: VecDeque::new(),
            spare: Vec::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
            rng,
        }
    }

    pub fn public_key(&self) -> Option<PublicKey> {
        self.identity.as_ref().map(|i| i.public)
    }

    pub fn private_key(&self) -> Option<&PrivateKey> {
        self.identity.as_ref().map(|i| &i.private)
    }

    /// Sets (or clears) our static key. Every session and handshake ends, since they were
    /// bound to the old key; a peer carrying the new public key is removed (as wireguard-go
    /// does: we cannot be our own peer).
    pub fn set_private_key(&mut self, key: Option<PrivateKey>) {
        if self.identity.as_ref().map(|i| &i.private) == key.as_ref() {
            return;
        }
        self.identity = key.map(|k| Identity::new(k, &self.protocol));
        if let Some(own) = self.public_key() {
            self.remove_peer(&own);
        }
        let private = self.identity.as_ref().map(|i| &i.private);
        for peer in self.peers.iter_mut().flatten() {
            peer.set_own_private_key(private);
        }
        for slot in 0..self.peers.len() {
            self.clear_sessions(PeerId(slot as u32));
            // The old handshakes are void: a new one may start at once.
            if let Some(peer) = self.peers[slot].as_mut() {
                peer.timers.last_sent_handshake = None;
            }
        }
    }

    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// The inner MTU bounds the padding of transport packets.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }

    /// Adds a peer, or updates the one with this public key (keeping its sessions).
    /// Refuses our own public key and over-long prefixes; nothing changes on error.
    pub fn upsert_peer(&mut self, config: &PeerConfig) -> Result<PeerId, ConfigureError> {
        if Some(config.public_key) == self.public_key() {
            return Err(ConfigureError::OwnPublicKey);
        }
        for &(addr, cidr) in &config.allowed_ips {
            check_prefix(addr, cidr)?;
        }
        let id = match self.by_key.get(&config.public_key) {
            Some(&id) => {
                let peer = self.peer_mut(id).ok_or(ConfigureError::UnknownPeer)?;
                if let Some(psk) = &config.preshared_key {
                    peer.preshared_key = psk.clone();
                }
                if config.endpoint.is_some() {
                    peer.endpoint = config.endpoint;
                }
                id
            }
            None => {
                let peer = Peer::new(config, self.private_key(), &self.protocol);
                let id = match self.peers.iter().position(Option::is_none) {
                    Some(free) => {
                        self.peers[free] = Some(peer);
                        PeerId(free as u32)
                    }
                    None => {
                        self.peers.push(Some(peer));
                        PeerId((self.peers.len() - 1) as u32)
                    }
                };
                self.by_key.insert(config.public_key, id);
                id
            }
        };
        for &(addr, cidr) in &config.allowed_ips {
            self.allowed_ips.insert(addr, cidr, id)?;
        }
        Ok(id)
    }

    /// Sets a peer's persistent keepalive; turning it on sends a keepalive at once (which
    /// starts a handshake when there is no session), as the kernel does.
    pub fn set_persistent_keepalive(&mut self, id: PeerId, seconds: u16, now: Now) {
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        let was = peer.persistent_keepalive;
        peer.persistent_keepalive = seconds;
        if seconds == 0 {
            peer.timers.persistent_keepalive = None;
        } else if was == 0 {
            // Only when turned on (0 -> N), as the kernel and wireguard-go do.
            self.send_keepalive(id, now);
        }
    }

    pub fn set_endpoint(&mut self, id: PeerId, endpoint: Option<SocketAddr>) {
        if let Some(peer) = self.peer_mut(id) {
            peer.endpoint = endpoint;
        }
    }

    pub fn set_preshared_key(&mut self, id: PeerId, psk: Option<PresharedKey>) {
        if let Some(peer) = self.peer_mut(id) {
            peer.preshared_key = psk.unwrap_or_default();
        }
    }

    /// Removes every AllowedIP of a peer (UAPI `replace_allowed_ips`).
    pub fn clear_allowed_ips(&mut self, id: PeerId) {
        self.allowed_ips.remove_value(id);
    }

    pub fn add_allowed_ip(
        &mut self,
        id: PeerId,
        addr: IpAddr,
        cidr: u8,
    ) -> Result<(), ConfigureError> {
        self.allowed_ips.insert(addr, cidr, id)?;
        Ok(())
    }

    /// Removes one AllowedIP if it belongs to `id`.
    pub fn remove_allowed_ip(&mut self, id: PeerId, addr: IpAddr, cidr: u8) {
        if let Some(owner) = self.allowed_ips.remove(addr, cidr)
            && owner != id
        {
            // Not this peer's: put it back where it was.
            let _ = self.allowed_ips.insert(addr, cidr, owner);
        }
    }

    /// Removes a peer with its sessions, indices, AllowedIPs and waiting packets.
    pub fn remove_peer(&mut self, key: &PublicKey) -> bool {
        let Some(id) = self.by_key.remove(key) else {
            return false;
        };
        self.clear_sessions(id);
        self.allowed_ips.remove_value(id);
        self.peers[id.0 as usize] = None;
        self.control.retain(|c| c.peer != Some(id));
        self.flush.retain(|&p| p != id);
        true
    }

    pub fn peer_id(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    pub fn peer_info(&self, id: PeerId) -> Option<PeerInfo> {
        let peer = self.peer(id)?;
        Some(PeerInfo {
            id,
            public_key: peer.public_key,
            preshared_key: (!peer.preshared_key.is_zero()).then(|| peer.preshared_key.clone()),
            endpoint: peer.endpoint,
            persistent_keepalive: peer.persistent_keepalive,
            allowed_ips: self.allowed_ips.prefixes_of(id),
            stats: peer.stats.clone(),
        })
    }

    /// Every peer, in the order they were added (slot order).
    pub fn peers(&self) -> Vec<PeerInfo> {
        (0..self.peers.len() as u32)
            .filter_map(|i| self.peer_info(PeerId(i)))
            .collect()
    }

    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// The driver reports a backlog of handshake messages: for the next second, handshakes
    /// need a valid mac2 (else they get a cookie reply) and are rate limited per source.
    pub fn set_under_load(&mut self, now: Now) {
        self.under_load_until = Some(now.monotonic + UNDER_LOAD_HOLD);
    }

    pub fn is_under_load(&self, now: Now) -> bool {
        self.under_load_until.is_some_and(|t| now.monotonic < t)
    }

    /// How many receiver indices are in use (handshakes and sessions): for leak checks.
    pub fn index_count(&self) -> usize {
        self.index.len()
    }

    pub(super) fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id.0 as usize)?.as_ref()
    }

    pub(super) fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id.0 as usize)?.as_mut()
    }

    pub(super) fn drop_reason(&mut self, reason: DropReason) -> DropReason {
        self.drops.count(reason);
        tracing::debug!(%reason, "dropped");
        reason
    }

    pub(super) fn push_event(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The next event (handshakes completed), oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// Why a configuration change was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigureError {
    #[error("a peer cannot have our own public key")]
    OwnPublicKey,
    #[error("no such peer")]
    UnknownPeer,
    #[error(transparent)]
    Prefix(#[from] PrefixError),
}

fn check_prefix(addr: IpAddr, cidr: u8) -> Result<(), ConfigureError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if cidr > max {
        let mut probe = AllowedIps::<u8>::new();
        probe.insert(addr, cidr, 0)?;
    }
    Ok(())
}
