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
use rand::{Rng, RngCore, SeedableRng};

use super::allowedips::{AllowedIps, PrefixError};
use super::error::{DropCounters, DropReason};
use super::handshake::{self, Identity};
use super::index::IndexTable;
use super::ip::{self, Addr};
use super::keys::{PresharedKey, PrivateKey, PublicKey};
use super::messages::{
    COOKIE_REPLY_LEN, INITIATION_LEN, MAX_HANDSHAKE_LEN, MessageKind, RESPONSE_LEN, classify,
    cookie_reply, read_u32, response,
};
use super::noise::Protocol;
use super::peer::{Handshake, MAX_STAGED_PACKETS, Peer, PeerConfig, PeerId, PeerStats};
use super::ratelimiter::RateLimiter;
use super::time::Now;
use super::timers::{
    INITIATION_MIN_INTERVAL, KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX, TimerEvent, UNDER_LOAD_HOLD,
};
use super::transport::{Keypair, OpenJob, SealJob};

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

    // ----------------------------------------------------------------- configuration

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

    fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id.0 as usize)?.as_ref()
    }

    fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id.0 as usize)?.as_mut()
    }

    fn drop_reason(&mut self, reason: DropReason) -> DropReason {
        self.drops.count(reason);
        tracing::debug!(%reason, "dropped");
        reason
    }

    fn jitter(&mut self) -> Duration {
        let max = REKEY_TIMEOUT_JITTER_MAX.as_micros() as u64;
        Duration::from_micros(self.rng.random_range(0..=max))
    }

    // ----------------------------------------------------------------- TUN -> UDP

    /// Encrypts the IP packet at `buf[HEADROOM..HEADROOM + len]` for the peer whose
    /// AllowedIPs hold its destination. `buf` needs `TAILROOM` bytes after the packet.
    pub fn encapsulate(&mut self, buf: &mut [u8], len: usize, now: Now) -> Encapsulated {
        match self.prepare_encapsulate(buf, len, now) {
            PreparedSend::Seal { endpoint, job } => match job.seal(buf) {
                Some(len) => Encapsulated::Send { endpoint, len },
                None => Encapsulated::Dropped(self.drop_reason(DropReason::BufferTooSmall)),
            },
            PreparedSend::Queued => Encapsulated::Queued,
            PreparedSend::Dropped(reason) => Encapsulated::Dropped(reason),
        }
    }

    /// The sequential half of [`Device::encapsulate`]: routing, session choice, counter and
    /// timers. The returned [`SealJob`] does the encryption and may run on another core;
    /// jobs of one peer carry increasing counters, so order within a batch is kept by
    /// sending the sealed messages in the order they were prepared.
    pub fn prepare_encapsulate(&mut self, buf: &[u8], len: usize, now: Now) -> PreparedSend {
        let Some(packet) = buf.get(HEADROOM..HEADROOM + len) else {
            return PreparedSend::Dropped(self.drop_reason(DropReason::BufferTooSmall));
        };
        let peer_id = match ip::destination(packet) {
            Some(Addr::V4(a)) => self.allowed_ips.lookup_v4(a),
            Some(Addr::V6(a)) => self.allowed_ips.lookup_v6(&a),
            None => return PreparedSend::Dropped(self.drop_reason(DropReason::InvalidInnerPacket)),
        };
        let Some(id) = peer_id else {
            return PreparedSend::Dropped(self.drop_reason(DropReason::NoRoute));
        };
        let mtu = self.mtu;
        let Some(peer) = self.peer_mut(id) else {
            return PreparedSend::Dropped(self.drop_reason(DropReason::NoRoute));
        };
        let Some(endpoint) = peer.endpoint else {
            return PreparedSend::Dropped(self.drop_reason(DropReason::NoEndpoint));
        };
        if peer.staged.is_empty() && peer.sendable(now.monotonic) {
            let Some(keypair) = peer.current.as_deref_mut() else {
                return PreparedSend::Dropped(self.drop_reason(DropReason::NoEndpoint));
            };
            let Some(job) = keypair.prepare_seal(buf.len(), len, mtu) else {
                return PreparedSend::Dropped(self.drop_reason(DropReason::BufferTooSmall));
            };
            let rekey = keypair.wants_rekey_on_send(now.monotonic);
            self.after_data_sent(id, job.message_len(), rekey, now);
            return PreparedSend::Seal { endpoint, job };
        }
        // No usable session (or packets already waiting: keep their order): stage a copy,
        // dropping the oldest when full as the kernel does, and start a handshake.
        let oldest = if peer.staged.len() >= MAX_STAGED_PACKETS {
            peer.staged.pop_front()
        } else {
            None
        };
        if let Some(oldest) = oldest {
            self.drops.count(DropReason::QueueFull);
            self.recycle(oldest);
        }
        // Staging buffers are recycled, so a long handshake wait allocates only once.
        let mut copy = self.spare.pop().unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(packet);
        let Some(peer) = self.peer_mut(id) else {
            return PreparedSend::Queued;
        };
        peer.staged.push_back(copy);
        if peer.sendable(now.monotonic) {
            self.schedule_flush(id);
        } else {
            self.send_initiation(id, false, now);
        }
        PreparedSend::Queued
    }

    fn after_data_sent(&mut self, id: PeerId, bytes: usize, rekey: bool, now: Now) {
        // Draw jitter only when the timer will be armed (not on every packet).
        let needs_jitter = self
            .peer(id)
            .is_some_and(|p| p.timers.new_handshake.is_none());
        let jitter = if needs_jitter {
            self.jitter()
        } else {
            Duration::ZERO
        };
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        peer.stats.tx_bytes += bytes as u64;
        let ka = peer.persistent_keepalive;
        peer.timers.on_authenticated_traversal(now.monotonic, ka);
        peer.timers.on_authenticated_sent();
        peer.timers.on_data_sent(now.monotonic, jitter);
        if rekey {
            self.send_initiation(id, false, now);
        }
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The next event (handshakes completed), oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn recycle(&mut self, buffer: Vec<u8>) {
        if self.spare.len() < MAX_SPARE_BUFFERS {
            self.spare.push(buffer);
        }
    }

    fn schedule_flush(&mut self, id: PeerId) {
        if !self.flush.contains(&id) {
            self.flush.push_back(id);
        }
    }

    // ----------------------------------------------------------------- UDP -> TUN

    /// Handles the datagram `buf[..len]` from `src`. A transport packet is decrypted in place
    /// (`buf` needs no extra room); the IP packet is then `buf[range]`.
    pub fn decapsulate(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Now,
    ) -> Decapsulated {
        let Some(datagram) = buf.get_mut(..len) else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::BufferTooSmall));
        };
        let result = match classify(datagram) {
            Err(reason) => Err(reason),
            Ok(MessageKind::Transport { receiver, counter }) => {
                return self.consume_transport(src, datagram, receiver, counter, now);
            }
            Ok(MessageKind::Initiation) => match (&*datagram).try_into() {
                Ok(msg) => self.consume_initiation(src, msg, now),
                Err(_) => Err(DropReason::Truncated),
            },
            Ok(MessageKind::Response) => match (&*datagram).try_into() {
                Ok(msg) => self.consume_response(src, msg, now),
                Err(_) => Err(DropReason::Truncated),
            },
            Ok(MessageKind::CookieReply) => match (&*datagram).try_into() {
                Ok(msg) => self.consume_cookie_reply(msg, now),
                Err(_) => Err(DropReason::Truncated),
            },
        };
        match result {
            Ok(()) => Decapsulated::Done,
            Err(reason) => Decapsulated::Dropped(self.drop_reason(reason)),
        }
    }

    /// mac1 always, then under load: mac2 (else a cookie reply) and the per-source limit.
    fn check_handshake_macs(
        &mut self,
        src: SocketAddr,
        msg: &[u8],
        sender: u32,
        now: Now,
    ) -> Result<(), DropReason> {
        let identity = self.identity.as_mut().ok_or(DropReason::NoPrivateKey)?;
        if !identity.checker.check_mac1(msg) {
            return Err(DropReason::InvalidMac1);
        }
        if self.under_load_until.is_some_and(|t| now.monotonic < t) {
            if !identity.checker.check_mac2(msg, src, now.monotonic) {
                let reply =
                    identity
                        .checker
                        .create_reply(msg, sender, src, now.monotonic, &mut self.rng);
                self.push_control(src, None, &reply);
                return Err(DropReason::CookieRequired);
            }
            if !self.rate_limiter.allow(src.ip(), now.monotonic) {
                return Err(DropReason::RateLimited);
            }
        }
        Ok(())
    }

    fn consume_initiation(
        &mut self,
        src: SocketAddr,
        msg: &[u8; INITIATION_LEN],
        now: Now,
    ) -> Result<(), DropReason> {
        let sender = handshake::sender_index(msg);
        self.check_handshake_macs(src, msg, sender, now)?;
        let identity = self.identity.as_ref().ok_or(DropReason::NoPrivateKey)?;
        let partial = handshake::read_initiation_static(&self.protocol, identity, msg)?;
        let key = PublicKey::from_bytes(partial.initiator_static);
        let id = *self.by_key.get(&key).ok_or(DropReason::UnknownPeer)?;
        let peer = self.peer(id).ok_or(DropReason::UnknownPeer)?;
        let (state, timestamp) = handshake::read_initiation_payload(partial, peer, msg)?;
        if timestamp <= peer.latest_timestamp {
            return Err(DropReason::ReplayedInitiation);
        }
        if peer
            .last_initiation_consumed
            .is_some_and(|t| now.monotonic.saturating_sub(t) < INITIATION_MIN_INTERVAL)
        {
            return Err(DropReason::InitiationFlood);
        }

        // Authenticated and fresh: from here on the state changes.
        let local_index = self.index.allocate(id, &mut self.rng);
        let mut ephemeral = [0u8; 32];
        self.rng.fill_bytes(&mut ephemeral);
        let mut out = [0u8; RESPONSE_LEN];
        let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            self.index.remove(local_index);
            return Err(DropReason::UnknownPeer);
        };
        let keys = match handshake::create_response(
            state,
            peer,
            local_index,
            sender,
            ephemeral,
            now,
            &mut out,
        ) {
            Ok(keys) => keys,
            Err(reason) => {
                self.index.remove(local_index);
                return Err(reason);
            }
        };
        peer.latest_timestamp = timestamp;
        peer.last_initiation_consumed = Some(now.monotonic);
        peer.endpoint = Some(src);
        peer.stats.rx_bytes += INITIATION_LEN as u64;
        peer.stats.tx_bytes += RESPONSE_LEN as u64;
        // Our own initiation in flight, if any, is superseded.
        if let Some(h) = peer.handshake.take() {
            self.index.remove(h.local_index);
        }
        // As responder we wait for the initiator's first data packet before using the session:
        // it goes to `next`, and `previous` is let go.
        let keypair = Box::new(Keypair::new(
            &keys,
            local_index,
            sender,
            false,
            now.monotonic,
        ));
        let old_next = peer.next.replace(keypair);
        let old_previous = peer.previous.take();
        let ka = peer.persistent_keepalive;
        peer.timers.on_authenticated_received();
        peer.timers.on_authenticated_traversal(now.monotonic, ka);
        peer.timers.on_session_derived(now.monotonic);
        peer.timers.on_authenticated_sent();
        tracing::debug!(peer = %key, "handshake initiation consumed, response sent");
        for k in [old_next, old_previous].into_iter().flatten() {
            self.index.remove(k.local_index);
        }
        self.push_control(src, Some(id), &out);
        Ok(())
    }

    fn consume_response(
        &mut self,
        src: SocketAddr,
        msg: &[u8; RESPONSE_LEN],
        now: Now,
    ) -> Result<(), DropReason> {
        let sender = handshake::sender_index(msg);
        self.check_handshake_macs(src, msg, sender, now)?;
        let receiver = read_u32(msg, response::RECEIVER);
        let id = self
            .index
            .get(receiver)
            .ok_or(DropReason::UnknownReceiverIndex)?;
        let identity = self.identity.as_ref().ok_or(DropReason::NoPrivateKey)?;
        let peer = self
            .peers
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(DropReason::UnknownPeer)?;
        let handshake = match &peer.handshake {
            Some(h) if h.local_index == receiver => h,
            _ => return Err(DropReason::UnexpectedHandshakeMessage),
        };
        let keys = handshake::consume_response(identity, peer, &handshake.state, msg)?;

        // Authenticated: the session is ours to use at once, as initiator.
        peer.handshake = None;
        let keypair = Box::new(Keypair::new(&keys, receiver, sender, true, now.monotonic));
        // As the kernel does: an unconfirmed `next` (we answered the peer's initiation) is
        // demoted to previous and the old current goes; else current becomes previous.
        let old_current = peer.current.replace(keypair);
        let dropped = if let Some(next) = peer.next.take() {
            [peer.previous.replace(next), old_current]
        } else {
            [std::mem::replace(&mut peer.previous, old_current), None]
        };
        peer.endpoint = Some(src);
        peer.stats.rx_bytes += RESPONSE_LEN as u64;
        peer.stats.last_handshake = Some(now.unix);
        let ka = peer.persistent_keepalive;
        peer.timers.on_handshake_complete();
        peer.timers.on_session_derived(now.monotonic);
        peer.timers.on_authenticated_received();
        peer.timers.on_authenticated_traversal(now.monotonic, ka);
        tracing::debug!(peer = %peer.public_key, "handshake complete (initiator)");
        let completed = Event::HandshakeCompleted {
            peer: id,
            public_key: peer.public_key,
            endpoint: peer.endpoint,
        };
        let has_staged = !peer.staged.is_empty();
        for k in dropped.into_iter().flatten() {
            self.index.remove(k.local_index);
        }
        self.push_event(completed);
        // Confirm the session at once: send what waited, or else a keepalive.
        if has_staged {
            self.schedule_flush(id);
        } else {
            self.send_keepalive(id, now);
        }
        Ok(())
    }

    fn consume_cookie_reply(
        &mut self,
        msg: &[u8; COOKIE_REPLY_LEN],
        now: Now,
    ) -> Result<(), DropReason> {
        let receiver = read_u32(msg, cookie_reply::RECEIVER);
        let id = self
            .index
            .get(receiver)
            .ok_or(DropReason::UnknownReceiverIndex)?;
        let peer = self.peer_mut(id).ok_or(DropReason::UnknownPeer)?;
        peer.cookie.consume_reply(msg, now.monotonic)
    }

    fn consume_transport(
        &mut self,
        src: SocketAddr,
        datagram: &mut [u8],
        receiver: u32,
        counter: u64,
        now: Now,
    ) -> Decapsulated {
        let job = match self.prepare_transport(src, receiver, counter, now) {
            Ok(job) => job,
            Err(reason) => return Decapsulated::Dropped(self.drop_reason(reason)),
        };
        let opened = job.open(datagram);
        self.finish_decapsulate(&job, opened, datagram, now)
    }

    fn prepare_transport(
        &mut self,
        src: SocketAddr,
        receiver: u32,
        counter: u64,
        now: Now,
    ) -> Result<ReceiveJob, DropReason> {
        let id = self
            .index
            .get(receiver)
            .ok_or(DropReason::UnknownReceiverIndex)?;
        let keypair = self
            .peers
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut)
            .and_then(|p| p.keypair_mut(receiver))
            .ok_or(DropReason::UnknownReceiverIndex)?;
        if !keypair.can_receive(now.monotonic) {
            return Err(DropReason::KeypairExpired);
        }
        let open = keypair
            .prepare_open(counter)
            .map_err(|_| DropReason::ReplayedCounter)?;
        Ok(ReceiveJob {
            open,
            peer: id,
            receiver,
            src,
        })
    }

    /// The sequential half of [`Device::decapsulate`]: frames and handshake messages are
    /// handled here entirely; a transport message yields a [`ReceiveJob`] whose decryption
    /// may run on another core, followed by [`Device::finish_decapsulate`] in arrival order.
    pub fn prepare_decapsulate(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Now,
    ) -> PreparedReceive {
        let Some(datagram) = buf.get(..len) else {
            return PreparedReceive::Dropped(self.drop_reason(DropReason::BufferTooSmall));
        };
        match classify(datagram) {
            Ok(MessageKind::Transport { receiver, counter }) => {
                match self.prepare_transport(src, receiver, counter, now) {
                    Ok(job) => PreparedReceive::Open(job),
                    Err(reason) => PreparedReceive::Dropped(self.drop_reason(reason)),
                }
            }
            _ => match self.decapsulate(src, buf, len, now) {
                Decapsulated::Dropped(reason) => PreparedReceive::Dropped(reason),
                _ => PreparedReceive::Done,
            },
        }
    }

    /// Completes a transport message after its [`ReceiveJob`] ran (`opened` is what
    /// `job.open` returned): replay marking, session confirmation, roaming, timers and the
    /// cryptokey-routing check, exactly as [`Device::decapsulate`] does.
    pub fn finish_decapsulate(
        &mut self,
        job: &ReceiveJob,
        opened: Option<usize>,
        datagram: &[u8],
        now: Now,
    ) -> Decapsulated {
        let Some(len) = opened else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::DecryptFailed));
        };
        let (src, receiver, id) = (job.src, job.receiver, job.peer);
        let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::UnknownReceiverIndex));
        };
        let Some(keypair) = peer.keypair_mut(receiver) else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::UnknownReceiverIndex));
        };
        // Marked only after authentication, so a forged packet cannot move the window.
        if !keypair.mark(job.open.counter()) {
            return Decapsulated::Dropped(self.drop_reason(DropReason::ReplayedCounter));
        }

        // Authenticated.
        let is_initiator = keypair.i_am_initiator;
        let birth = keypair.birth;
        peer.endpoint = Some(src);
        peer.stats.rx_bytes += datagram.len() as u64;
        let ka = peer.persistent_keepalive;
        peer.timers.on_authenticated_received();
        peer.timers.on_authenticated_traversal(now.monotonic, ka);
        // The first packet under `next` confirms it: it becomes current.
        let mut confirmed = false;
        let mut dropped = None;
        if peer
            .next
            .as_ref()
            .is_some_and(|k| k.local_index == receiver)
        {
            let next = peer.next.take();
            let old_current = std::mem::replace(&mut peer.current, next);
            dropped = std::mem::replace(&mut peer.previous, old_current);
            peer.timers.on_handshake_complete();
            peer.stats.last_handshake = Some(now.unix);
            confirmed = true;
            tracing::debug!(peer = %peer.public_key, "handshake complete (responder)");
        }
        // An initiator rekeys before its session could expire under a peer that only receives.
        let rekey = is_initiator
            && !peer.timers.sent_lastminute_handshake
            && now.monotonic.saturating_sub(birth) > REKEY_ON_RECEIVE_AGE
            && peer
                .current
                .as_ref()
                .is_some_and(|k| k.local_index == receiver);
        if rekey {
            peer.timers.sent_lastminute_handshake = true;
        }
        let has_staged = !peer.staged.is_empty();
        let peer_key = peer.public_key;
        if let Some(k) = dropped {
            self.index.remove(k.local_index);
        }
        if confirmed {
            self.push_event(Event::HandshakeCompleted {
                peer: id,
                public_key: peer_key,
                endpoint: Some(src),
            });
            if has_staged {
                self.schedule_flush(id);
            }
        }
        if rekey {
            self.send_initiation(id, false, now);
        }
        if len == 0 {
            return Decapsulated::Done; // keepalive
        }
        let Some(plaintext) = datagram.get(HEADROOM..HEADROOM + len) else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::InvalidInnerPacket));
        };
        let Some((source, real_len)) = ip::source_and_len(plaintext) else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::InvalidInnerPacket));
        };
        let owner = match source {
            Addr::V4(a) => self.allowed_ips.lookup_v4(a),
            Addr::V6(a) => self.allowed_ips.lookup_v6(&a),
        };
        if owner != Some(id) {
            return Decapsulated::Dropped(self.drop_reason(DropReason::SourceNotAllowed));
        }
        if let Some(peer) = self.peer_mut(id) {
            peer.timers.on_data_received(now.monotonic);
        }
        Decapsulated::Deliver {
            peer: id,
            range: HEADROOM..HEADROOM + real_len,
        }
    }

    // ----------------------------------------------------------------- handshakes out

    /// Sends an initiation to `id` unless one went out less than REKEY_TIMEOUT ago.
    /// A retry keeps counting attempts; anything else starts a fresh count.
    fn send_initiation(&mut self, id: PeerId, is_retry: bool, now: Now) {
        let jitter = self.jitter();
        let Some(identity) = self.identity.as_ref() else {
            return;
        };
        let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        if !is_retry {
            peer.timers.handshake_attempts = 0;
        }
        if peer
            .timers
            .last_sent_handshake
            .is_some_and(|t| now.monotonic.saturating_sub(t) < REKEY_TIMEOUT)
        {
            return;
        }
        let Some(endpoint) = peer.endpoint else {
            return;
        };
        let local_index = self.index.allocate(id, &mut self.rng);
        let mut ephemeral = [0u8; 32];
        self.rng.fill_bytes(&mut ephemeral);
        let mut out = [0u8; INITIATION_LEN];
        let state = match handshake::create_initiation(
            &self.protocol,
            identity,
            peer,
            local_index,
            ephemeral,
            now,
            &mut out,
        ) {
            Ok(state) => state,
            Err(reason) => {
                self.index.remove(local_index);
                self.drops.count(reason);
                return;
            }
        };
        if let Some(old) = peer.handshake.replace(Handshake { local_index, state }) {
            self.index.remove(old.local_index);
        }
        peer.timers.last_sent_handshake = Some(now.monotonic);
        peer.stats.tx_bytes += INITIATION_LEN as u64;
        let ka = peer.persistent_keepalive;
        peer.timers.on_authenticated_traversal(now.monotonic, ka);
        peer.timers.on_authenticated_sent();
        peer.timers.on_handshake_initiated(now.monotonic, jitter);
        tracing::debug!(peer = %peer.public_key, attempt = peer.timers.handshake_attempts, "handshake initiation sent");
        self.push_control(endpoint, Some(id), &out);
    }

    /// A keepalive if a session is usable (and nothing else waits to go), else a handshake.
    fn send_keepalive(&mut self, id: PeerId, now: Now) {
        let mtu = self.mtu;
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        if !peer.staged.is_empty() {
            return;
        }
        let Some(endpoint) = peer.endpoint else {
            return;
        };
        if !peer.sendable(now.monotonic) {
            self.send_initiation(id, false, now);
            return;
        }
        let mut bytes = [0u8; MAX_HANDSHAKE_LEN];
        let Some(keypair) = peer.current.as_deref_mut() else {
            return;
        };
        let Some(n) = keypair.seal(&mut bytes, 0, mtu) else {
            return;
        };
        // Like the kernel, a keepalive also keeps the key fresh (REKEY_AFTER_TIME/MESSAGES).
        let rekey = keypair.wants_rekey_on_send(now.monotonic);
        peer.stats.tx_bytes += n as u64;
        let ka = peer.persistent_keepalive;
        peer.timers.on_authenticated_traversal(now.monotonic, ka);
        peer.timers.on_authenticated_sent();
        self.control.push_back(Control {
            to: endpoint,
            peer: Some(id),
            len: n,
            bytes,
        });
        if rekey {
            self.send_initiation(id, false, now);
        }
    }

    fn push_control(&mut self, to: SocketAddr, peer: Option<PeerId>, msg: &[u8]) {
        let mut bytes = [0u8; MAX_HANDSHAKE_LEN];
        bytes[..msg.len()].copy_from_slice(msg);
        self.control.push_back(Control {
            to,
            peer,
            len: msg.len(),
            bytes,
        });
    }

    /// Erases a peer's sessions and handshake (and their indices), keeping its configuration.
    fn clear_sessions(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        for index in peer.local_indices().collect::<Vec<_>>() {
            self.index.remove(index);
        }
        peer.handshake = None;
        peer.previous = None;
        peer.current = None;
        peer.next = None;
        peer.staged.clear();
        peer.timers.stop_all();
    }

    // ----------------------------------------------------------------- output and time

    /// The next datagram to send, written to `out` (at least `MAX_HANDSHAKE_LEN` bytes, and
    /// room for a full packet with `HEADROOM` and `TAILROOM` for staged packets). Call until
    /// it returns None after every batch of input.
    pub fn poll_transmit(&mut self, out: &mut [u8], now: Now) -> Option<Transmit> {
        if let Some(c) = self.control.pop_front() {
            out.get_mut(..c.len)?.copy_from_slice(&c.bytes[..c.len]);
            return Some(Transmit {
                endpoint: c.to,
                len: c.len,
            });
        }
        let mtu = self.mtu;
        while let Some(&id) = self.flush.front() {
            let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
                self.flush.pop_front();
                continue;
            };
            let (Some(endpoint), true) = (peer.endpoint, peer.sendable(now.monotonic)) else {
                self.flush.pop_front();
                continue;
            };
            let Some(packet) = peer.staged.pop_front() else {
                self.flush.pop_front();
                continue;
            };
            let len = packet.len();
            let Some(slot) = out.get_mut(HEADROOM..HEADROOM + len) else {
                self.drops.count(DropReason::BufferTooSmall);
                continue;
            };
            slot.copy_from_slice(&packet);
            if self.spare.len() < MAX_SPARE_BUFFERS {
                self.spare.push(packet);
            }
            let Some(keypair) = peer.current.as_deref_mut() else {
                continue;
            };
            let Some(n) = keypair.seal(out, len, mtu) else {
                self.drops.count(DropReason::BufferTooSmall);
                continue;
            };
            let rekey = keypair.wants_rekey_on_send(now.monotonic);
            self.after_data_sent(id, n, rekey, now);
            return Some(Transmit { endpoint, len: n });
        }
        None
    }

    /// Fires every timer that is due at `now`.
    pub fn update_timers(&mut self, now: Now) {
        if self.under_load_until.is_some_and(|t| now.monotonic >= t) {
            self.under_load_until = None;
        }
        self.rate_limiter.gc(now.monotonic);
        for slot in 0..self.peers.len() {
            let id = PeerId(slot as u32);
            // Bounded: each event clears its own deadline before it can set a later one.
            for _ in 0..8 {
                let Some(event) = self
                    .peer_mut(id)
                    .and_then(|p| p.timers.take_due(now.monotonic))
                else {
                    break;
                };
                self.fire(id, event, now);
            }
        }
    }

    fn fire(&mut self, id: PeerId, event: TimerEvent, now: Now) {
        match event {
            TimerEvent::RetransmitHandshake => {
                let Some(peer) = self.peer_mut(id) else {
                    return;
                };
                if peer.timers.handshake_attempts > MAX_TIMER_HANDSHAKES {
                    // Give up after REKEY_ATTEMPT_TIME: drop what waited, and erase the
                    // handshake's residue later unless something renews it.
                    tracing::debug!(peer = %peer.public_key, "handshake gave up after {} attempts", peer.timers.handshake_attempts);
                    peer.timers.send_keepalive = None;
                    let dropped = peer.staged.len();
                    peer.staged.clear();
                    if peer.timers.zero_key_material.is_none() {
                        peer.timers.on_session_derived(now.monotonic);
                    }
                    for _ in 0..dropped {
                        self.drops.count(DropReason::NoEndpoint);
                    }
                } else {
                    peer.timers.handshake_attempts += 1;
                    self.send_initiation(id, true, now);
                }
            }
            TimerEvent::SendKeepalive => {
                self.send_keepalive(id, now);
                if let Some(peer) = self.peer_mut(id)
                    && peer.timers.need_another_keepalive
                {
                    peer.timers.need_another_keepalive = false;
                    peer.timers.send_keepalive = Some(now.monotonic + KEEPALIVE_TIMEOUT);
                }
            }
            TimerEvent::NewHandshake => self.send_initiation(id, false, now),
            TimerEvent::ZeroKeyMaterial => {
                if let Some(peer) = self.peer_mut(id) {
                    tracing::debug!(peer = %peer.public_key, "erasing session keys");
                }
                let staged = self.peer_mut(id).map(|p| std::mem::take(&mut p.staged));
                self.clear_sessions(id);
                if let (Some(staged), Some(peer)) = (staged, self.peer_mut(id)) {
                    peer.staged = staged;
                }
            }
            TimerEvent::PersistentKeepalive => {
                if self.peer(id).is_some_and(|p| p.persistent_keepalive > 0) {
                    self.send_keepalive(id, now);
                }
            }
        }
    }

    /// When `update_timers` next has work (monotonic), if ever.
    pub fn next_deadline(&self) -> Option<Duration> {
        let peers = self
            .peers
            .iter()
            .flatten()
            .filter_map(|p| p.timers.next_deadline());
        let load = self.under_load_until;
        peers.chain(load).min()
    }

    /// How many receiver indices are in use (handshakes and sessions): for leak checks.
    pub fn index_count(&self) -> usize {
        self.index.len()
    }

    /// Whether `poll_transmit` has something (cheap check for the driver).
    pub fn has_transmit(&self) -> bool {
        !self.control.is_empty() || !self.flush.is_empty()
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
