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
//!
//! Laid out by concern, as the kernel splits its files: this file holds the state, the peers
//! and their configuration; `send.rs` (TUN -> UDP, the kernel's `send.c`), `receive.rs`
//! (UDP -> TUN, `receive.c`), `handshake.rs` (initiations, responses, cookie replies) and
//! `timers.rs` (`timers.c`) each add one `impl Device` block.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::allowedips::AllowedIps;
use super::endpoint::Endpoint;
use super::error::{DropCounters, DropReason};
use super::handshake::Identity;
use super::index::IndexTable;
use super::keys::{PresharedKey, PrivateKey, PublicKey};
use super::messages::MAX_HANDSHAKE_LEN;
use super::noise::Protocol;
use super::peer::{MAX_STAGED_PACKETS, Peer, PeerConfig, PeerId, PeerStats};
use super::peer_table::PeerTable;
use super::prefix::Prefix;
use super::ratelimiter::RateLimiter;
use super::time::Now;
use super::timers::UNDER_LOAD_HOLD;
use super::transport::{OpenJob, SealJob};

#[cfg(test)]
mod attack_tests;
mod events;
mod handshake;
mod receive;
mod revive;
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
    /// `buf[..len]` is a transport message for `endpoint`, to be sent from `local` (see
    /// [`Endpoint`]).
    Send {
        endpoint: SocketAddr,
        local: Option<IpAddr>,
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
    /// Run `job.seal(buf)`, then send `buf[..len]` to `endpoint` from `local` (see
    /// [`Endpoint`]). `peer` is whom it is for: if sending from `local` fails because the
    /// address is gone, the driver tells [`Device::clear_endpoint_src`].
    Seal {
        endpoint: SocketAddr,
        local: Option<IpAddr>,
        peer: PeerId,
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
    src: Endpoint,
}

impl ReceiveJob {
    /// Decrypts the whole transport message in place; the padded plaintext length.
    pub fn open(&self, datagram: &mut [u8]) -> Option<usize> {
        self.open.open(datagram)
    }
}

/// Something the driver may want to know (and log), drained with [`Device::poll_event`].
///
/// None of them can be caused by a packet that did not authenticate: the outage events come
/// from our own timers, the others from authenticated handshakes and transport packets. Each
/// outage event comes once per outage (see `events.rs`), not once per retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A handshake completed: as initiator when the response arrived, as responder when the
    /// initiator's first packet confirmed the session.
    HandshakeCompleted {
        peer: PeerId,
        public_key: PublicKey,
        endpoint: Option<SocketAddr>,
    },
    /// Our initiation to `endpoint` got no response within REKEY_TIMEOUT (seen when the next
    /// one goes: a retransmission, a keepalive or traffic). Once per outage: not again until
    /// a handshake completes.
    HandshakeUnanswered {
        peer: PeerId,
        public_key: PublicKey,
        endpoint: Option<SocketAddr>,
    },
    /// The retries gave up after REKEY_ATTEMPT_TIME with no response; `waited` is the time
    /// since the first unanswered initiation of the outage. Once per outage (the peer's
    /// `handshakes_failed` counts every series that gives up).
    HandshakeGaveUp {
        peer: PeerId,
        public_key: PublicKey,
        attempts: u32,
        waited: Duration,
    },
    /// An authenticated packet came from another address (or port) than the endpoint the
    /// peer had: the endpoint follows it (roaming). Not for a peer that had no endpoint.
    EndpointChanged {
        peer: PeerId,
        public_key: PublicKey,
        from: SocketAddr,
        to: SocketAddr,
    },
    /// A handshake completed after an outage: after "handshake not answered" was reported
    /// (`unanswered_for`: since the first unanswered initiation), or when the previous
    /// handshake was older than REJECT_AFTER_TIME, so no session was left
    /// (`since_last_handshake`). Comes before its `HandshakeCompleted`.
    PeerReconnected {
        peer: PeerId,
        public_key: PublicKey,
        endpoint: Option<SocketAddr>,
        unanswered_for: Option<Duration>,
        since_last_handshake: Option<Duration>,
    },
}

/// Events kept for the driver; beyond this the oldest is dropped (they are informational).
const MAX_EVENTS: usize = 256;

/// A datagram `poll_transmit` wrote: `out[..len]` goes to `endpoint`, from `local` when
/// known (see [`Endpoint`]). `peer` is None for a cookie reply, which belongs to no peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub endpoint: SocketAddr,
    pub local: Option<IpAddr>,
    pub peer: Option<PeerId>,
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
    pub allowed_ips: Vec<Prefix>,
    pub stats: PeerStats,
}

/// A handshake message or keepalive waiting for `poll_transmit`.
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
struct Control {
    to: Endpoint,
    peer: Option<PeerId>,
    len: usize,
    bytes: [u8; MAX_HANDSHAKE_LEN],
}

/// `Clone` only for the test kit (the fuzz targets copy one set-up pair per input): two clones
/// of a device would seal with the same keys and counters, so no daemon build can make one.
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub struct Device {
    protocol: Protocol,
    identity: Option<Identity>,
    peers: PeerTable<Peer>,
    by_key: HashMap<PublicKey, PeerId>,
    /// Which peer each endpoint belongs to (see `revive.rs`).
    endpoint_owners: revive::EndpointOwners,
    index: IndexTable,
    allowed_ips: AllowedIps<PeerId>,
    rate_limiter: RateLimiter,
    /// The budget of initiations from configured peers' endpoints that skip the cookie round
    /// trip under load (see `handshake.rs`, `check_handshake_macs`). Apart from
    /// `rate_limiter`, so that someone spoofing a peer's endpoint spends this budget only,
    /// not the bucket the peer's own cookie-carrying initiations are counted in.
    endpoint_limiter: RateLimiter,
    /// Under load, the cookie replies each source may get (see `check_handshake_macs`).
    cookie_limiter: RateLimiter,
    under_load_until: Option<Duration>,
    mtu: usize,
    control: VecDeque<Control>,
    /// Peers whose staged packets can go now that they have a session.
    flush: VecDeque<PeerId>,
    /// Recycled staging buffers.
    spare: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    drops: DropCounters,
    /// Handshakes completed since the device was made, for metrics (events may be dropped
    /// when nobody drains them; this count is not).
    handshakes_completed: u64,
    /// Handshake retry series that gave up (every peer's `handshakes_failed`, removed peers
    /// included).
    handshakes_failed: u64,
    /// ChaCha20 keyed by the caller's seed: its output is fixed by the algorithm, not by a
    /// crate version (rand's `StdRng` may change between versions), so a seed replays the
    /// same ephemeral keys, indices, cookie secrets and jitter everywhere.
    rng: ChaCha20Rng,
    /// Every peer's next timer deadline, earliest first (see `timers.rs`): entries can be
    /// stale (for a peer that was removed or whose deadline moved), never missing.
    timer_heap: BinaryHeap<Reverse<(Duration, PeerId)>>,
    /// Scratch lists of the timer schedule, kept to be reused (no allocation per turn).
    timer_scratch: Vec<PeerId>,
    timer_due: Vec<PeerId>,
}

impl Device {
    /// A device with our private key (or none yet: `wg`-style bare start) and a seed for its
    /// CSPRNG (ephemeral keys, indices, cookie secrets, jitter). The driver seeds it from the
    /// OS; tests from a constant, which makes every scenario reproducible byte for byte.
    pub fn new(private_key: Option<PrivateKey>, rng_seed: [u8; 32]) -> Self {
        let protocol = Protocol::wireguard();
        let mut rng = ChaCha20Rng::from_seed(rng_seed);
        let mut limiter_seed = [0u8; 16];
        rng.fill_bytes(&mut limiter_seed);
        // Derived, not drawn, so the generator's stream (and every replayed scenario) stays
        // as it was; a keyed hash needs its key secret, not independent of the other one.
        let endpoint_seed = limiter_seed.map(|b| !b);
        let cookie_seed = limiter_seed.map(|b| b ^ 0x5a);
        Device {
            identity: private_key.map(|k| Identity::new(k, &protocol)),
            protocol,
            peers: PeerTable::default(),
            by_key: HashMap::new(),
            endpoint_owners: revive::EndpointOwners::default(),
            index: IndexTable::default(),
            allowed_ips: AllowedIps::new(),
            rate_limiter: RateLimiter::new(limiter_seed),
            endpoint_limiter: RateLimiter::new(endpoint_seed),
            cookie_limiter: RateLimiter::new(cookie_seed),
            under_load_until: None,
            mtu: DEFAULT_MTU,
            control: VecDeque::new(),
            flush: VecDeque::new(),
            spare: Vec::new(),
            timer_heap: BinaryHeap::new(),
            timer_scratch: Vec::new(),
            timer_due: Vec::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
            handshakes_completed: 0,
            handshakes_failed: 0,
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
        if !self.begin_private_key(key) {
            return;
        }
        for slot in 0..self.peers.slot_count() {
            self.rekey_peer_at(slot);
        }
    }

    /// The first half of [`Device::set_private_key`]: the new identity, and our own key no
    /// longer a peer. Returns whether the key changed; if so, every peer slot must then go
    /// through [`Device::rekey_peer_at`] (one DH each: the driver does them in slices, and a
    /// handshake with a peer not yet done meanwhile fails and is retried).
    pub fn begin_private_key(&mut self, key: Option<PrivateKey>) -> bool {
        if self.identity.as_ref().map(|i| &i.private) == key.as_ref() {
            return false;
        }
        self.identity = key.map(|k| Identity::new(k, &self.protocol));
        if let Some(own) = self.public_key() {
            self.remove_peer(&own);
        }
        true
    }

    /// The peer in slot `slot` (if any: returns whether) takes our current static key: its
    /// precomputed DH(S_priv, S_pub) is redone, its sessions end, and a new handshake may
    /// start at once.
    pub fn rekey_peer_at(&mut self, slot: usize) -> bool {
        let Some(id) = self.peers.id_at(slot) else {
            return false;
        };
        let private = self.identity.as_ref().map(|i| &i.private);
        if let Some(peer) = self.peers.get_mut(id) {
            peer.set_own_private_key(private);
        }
        self.clear_sessions(id);
        // The old handshakes are void: a new one may start at once.
        if let Some(peer) = self.peers.get_mut(id) {
            peer.timers.last_sent_handshake = None;
        }
        true
    }

    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// The inner MTU bounds the padding of transport packets.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }

    /// Adds a peer, or updates the one with this public key (keeping its sessions).
    /// Refuses our own public key; nothing changes then.
    pub fn upsert_peer(&mut self, config: &PeerConfig) -> Result<PeerId, ConfigureError> {
        if Some(config.public_key) == self.public_key() {
            return Err(ConfigureError::OwnPublicKey);
        }
        let id = match self.by_key.get(&config.public_key) {
            Some(&id) => {
                let peer = self.peers.get_mut(id).ok_or(ConfigureError::UnknownPeer)?;
                if let Some(psk) = &config.preshared_key {
                    peer.preshared_key = psk.clone();
                }
                // A configured endpoint comes without a local address: the kernel chooses
                // until the peer's packets teach us one.
                if let Some(remote) = config.endpoint {
                    let from = peer
                        .endpoint
                        .replace(Endpoint::from(remote))
                        .map(|e| e.remote);
                    self.endpoint_owners.moved(id, from, Some(remote));
                }
                id
            }
            None => {
                let peer = Peer::new(config, self.private_key(), &self.protocol);
                let id = self.peers.insert(peer);
                self.by_key.insert(config.public_key, id);
                self.endpoint_owners.reserve_for(self.by_key.len());
                self.endpoint_owners.moved(id, None, config.endpoint);
                id
            }
        };
        for &prefix in &config.allowed_ips {
            self.route(id, prefix);
        }
        Ok(id)
    }

    /// Routes `prefix` to `id` in the AllowedIPs table and in the peers' own lists (taking
    /// it from the peer that had it). Costs that peer's prefixes, not the table's.
    fn route(&mut self, id: PeerId, prefix: Prefix) {
        let prefix = prefix.network();
        match self.allowed_ips.insert(prefix, id) {
            Some(old) if old == id => return,
            Some(old) => {
                if let Some(previous) = self.peers.get_mut(old) {
                    previous.allowed_ips.retain(|&p| p != prefix);
                }
            }
            None => {}
        }
        if let Some(peer) = self.peers.get_mut(id) {
            peer.allowed_ips.push(prefix);
        }
    }

    /// Takes every prefix of `id` out of the table, walking only its own list.
    fn unroute_all(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        for prefix in std::mem::take(&mut peer.allowed_ips) {
            self.allowed_ips.remove(prefix);
        }
    }

    /// Sets a peer's persistent keepalive; turning it on sends a keepalive at once (which
    /// starts a handshake when there is no session), as the kernel does.
    pub fn set_persistent_keepalive(&mut self, id: PeerId, seconds: u16, now: Now) {
        let Some(peer) = self.peers.get_mut(id) else {
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

    /// Starts a handshake with `id` now (subject to the usual one initiation per
    /// REKEY_TIMEOUT), e.g. for a peer just configured with an endpoint.
    pub fn initiate_handshake(&mut self, id: PeerId, now: Now) {
        self.send_initiation(id, false, now);
    }

    /// Sets a peer's endpoint (config, UAPI, a re-resolved name), with no local address.
    pub fn set_endpoint(&mut self, id: PeerId, endpoint: Option<SocketAddr>) {
        if let Some(peer) = self.peers.get_mut(id) {
            let from = std::mem::replace(&mut peer.endpoint, endpoint.map(Endpoint::from));
            self.endpoint_owners
                .moved(id, from.map(|e| e.remote), endpoint);
        }
    }

    /// Forgets the local address a peer's packets go out from (the kernel's
    /// `wg_socket_clear_peer_endpoint_src`): the driver calls it when sending from that
    /// address failed because it no longer exists on this host; the kernel picks the source
    /// again until the peer's next packet teaches a new one.
    pub fn clear_endpoint_src(&mut self, id: PeerId) {
        if let Some(peer) = self.peers.get_mut(id)
            && let Some(endpoint) = &mut peer.endpoint
            && endpoint.local.take().is_some()
        {
            tracing::debug!(peer = %peer.public_key, "local address of the endpoint forgotten");
        }
    }

    pub fn set_preshared_key(&mut self, id: PeerId, psk: Option<PresharedKey>) {
        if let Some(peer) = self.peers.get_mut(id) {
            peer.preshared_key = psk.unwrap_or_default();
        }
    }

    /// Removes every AllowedIP of a peer (UAPI `replace_allowed_ips`).
    pub fn clear_allowed_ips(&mut self, id: PeerId) {
        self.unroute_all(id);
    }

    /// Routes `prefix` to `id` (taking it from another peer if it had it). Refuses the id of
    /// a removed peer, which would make a route to nowhere.
    pub fn add_allowed_ip(&mut self, id: PeerId, prefix: Prefix) -> Result<(), ConfigureError> {
        if self.peers.get(id).is_none() {
            return Err(ConfigureError::UnknownPeer);
        }
        self.route(id, prefix);
        Ok(())
    }

    /// Removes one AllowedIP if it belongs to `id`.
    pub fn remove_allowed_ip(&mut self, id: PeerId, prefix: Prefix) {
        let prefix = prefix.network();
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let before = peer.allowed_ips.len();
        peer.allowed_ips.retain(|&p| p != prefix);
        if peer.allowed_ips.len() != before {
            self.allowed_ips.remove(prefix);
        }
    }

    /// Removes a peer with its sessions, indices, AllowedIPs and waiting packets.
    pub fn remove_peer(&mut self, key: &PublicKey) -> bool {
        let Some(id) = self.by_key.remove(key) else {
            return false;
        };
        self.clear_sessions(id);
        self.unroute_all(id);
        if let Some(peer) = self.peers.remove(id) {
            self.endpoint_owners
                .moved(id, peer.endpoint.map(|e| e.remote), None);
        }
        self.control.retain(|c| c.peer != Some(id));
        self.flush.retain(|&p| p != id);
        true
    }

    pub fn peer_id(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    pub fn peer_info(&self, id: PeerId) -> Option<PeerInfo> {
        let peer = self.peers.get(id)?;
        Some(PeerInfo {
            id,
            public_key: peer.public_key,
            preshared_key: (!peer.preshared_key.is_zero()).then(|| peer.preshared_key.clone()),
            endpoint: peer.endpoint.map(|e| e.remote),
            persistent_keepalive: peer.persistent_keepalive,
            allowed_ips: sorted(&peer.allowed_ips),
            stats: peer.stats.clone(),
        })
    }

    /// Makes room for `additional` more peers at once: growing the key map (and the slot
    /// table) one doubling at a time would rehash every peer already there, a few
    /// milliseconds at 10^5 peers, in whichever slice of a large `set` crosses the size.
    pub fn reserve_peers(&mut self, additional: usize) {
        self.by_key.reserve(additional);
        self.peers.reserve(additional);
    }

    /// How many AllowedIPs the peer `id` has (0 for no such peer).
    pub fn allowed_ip_count(&self, id: PeerId) -> usize {
        self.peers.get(id).map_or(0, |p| p.allowed_ips.len())
    }

    /// How many peers there are.
    pub fn peer_count(&self) -> usize {
        self.by_key.len()
    }

    /// The bound for [`Device::peer_info_at`]: how many peer slots there are (some empty).
    pub fn peer_slots(&self) -> usize {
        self.peers.slot_count()
    }

    /// The peer in slot `slot`, if one lives there: lets a caller (the driver's `get` in
    /// slices) walk the peers a few at a time, between batches, holding no borrow.
    pub fn peer_info_at(&self, slot: usize) -> Option<PeerInfo> {
        self.peer_info(self.peers.id_at(slot)?)
    }

    /// Every peer, in the order they were added (slot order).
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .filter_map(|(id, _)| self.peer_info(id))
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

    pub(super) fn drop_reason(&mut self, reason: DropReason) -> DropReason {
        self.drops.count(reason);
        tracing::debug!(%reason, "dropped");
        reason
    }

    /// Handshakes completed (as initiator or responder) since the device was made.
    pub fn handshakes_completed(&self) -> u64 {
        self.handshakes_completed
    }

    /// Handshake retry series that gave up since the device was made (see
    /// `PeerStats::handshakes_failed`).
    pub fn handshakes_failed(&self) -> u64 {
        self.handshakes_failed
    }

    pub(super) fn push_event(&mut self, event: Event) {
        if matches!(event, Event::HandshakeCompleted { .. }) {
            self.handshakes_completed += 1;
        }
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// A peer's prefixes in the order `wg` lists them: IPv4 first, each family by address, then
/// length (as the table's walk gave them before each peer kept its own list).
fn sorted(prefixes: &[Prefix]) -> Vec<Prefix> {
    let mut out = prefixes.to_vec();
    out.sort_unstable_by_key(|p| (p.addr().is_ipv6(), p.addr(), p.len()));
    out
}

/// Why a configuration change was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigureError {
    #[error("a peer cannot have our own public key")]
    OwnPublicKey,
    #[error("no such peer")]
    UnknownPeer,
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::testkit::packet::ipv4;
    use std::net::IpAddr;

    const BUF: usize = 2048;
    const A_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1001);
    const B_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1002);

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from_bytes([seed; 32])
    }

    fn peer_config(seed: u8, inner: [u8; 4], endpoint: SocketAddr) -> PeerConfig {
        PeerConfig {
            allowed_ips: vec![crate::proto::prefix::Prefix::new(IpAddr::from(inner), 32).unwrap()],
            endpoint: Some(endpoint),
            ..PeerConfig::new(key(seed).public_key())
        }
    }

    /// An IP packet from B's inner address to A's, framed with headroom and tailroom.
    fn b_to_a_packet() -> (Vec<u8>, usize) {
        let packet = ipv4([10, 0, 0, 2], [10, 0, 0, 1], b"ping");
        let mut buf = vec![0u8; BUF];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
        (buf, packet.len())
    }

    /// Feeds everything `from` has to send into `to`; what `to` made of each datagram.
    fn pump(
        from: &mut Device,
        from_addr: SocketAddr,
        to: &mut Device,
        now: Now,
    ) -> Vec<Decapsulated> {
        let mut out = vec![0u8; BUF];
        let mut results = Vec::new();
        while let Some(t) = from.poll_transmit(&mut out, now) {
            results.push(to.decapsulate(from_addr, &mut out, t.len, now));
        }
        results
    }

    /// The core's randomness is ChaCha20 keyed by the seed: these bytes are fixed by the
    /// algorithm, so a change of generator (or of what `new` draws first) shows up here
    /// before it silently changes every replayed scenario.
    #[test]
    fn seeded_rng_output_is_pinned() {
        let mut d = Device::new(None, [7; 32]);
        let mut bytes = [0u8; 16];
        d.rng.fill_bytes(&mut bytes);
        assert_eq!(
            bytes,
            [
                0x8c, 0x79, 0xa1, 0xdc, 0x14, 0x76, 0xab, 0x57, 0x32, 0x16, 0xa4, 0x02, 0x07, 0x64,
                0xbd, 0xe5
            ],
            "{bytes:02x?}"
        );
        // The raw generator is plain ChaCha20: an all-zero key gives the keystream of RFC 8439
        // appendix A.1, test vector #1 (block 0, nonce 0).
        let mut raw = ChaCha20Rng::from_seed([0; 32]);
        let mut block = [0u8; 8];
        raw.fill_bytes(&mut block);
        assert_eq!(
            block,
            [0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90],
            "{block:02x?}"
        );
    }

    /// A stale `PeerId` (and a stale receiver index) of a removed peer never reaches the peer
    /// that now lives in its slot.
    #[test]
    fn removed_peer_is_unreachable_after_its_slot_is_reused() {
        let now = Now::new(
            Duration::from_secs(1000),
            Duration::from_secs(1_700_000_000),
        );
        let mut a = Device::new(Some(key(1)), [1; 32]);
        let mut b = Device::new(Some(key(2)), [2; 32]);
        let old = a
            .upsert_peer(&peer_config(2, [10, 0, 0, 2], B_ADDR))
            .unwrap();
        b.upsert_peer(&peer_config(1, [10, 0, 0, 1], A_ADDR))
            .unwrap();

        // Handshake, then B's staged packet arrives at A.
        let (mut buf, len) = b_to_a_packet();
        assert_eq!(b.encapsulate(&mut buf, len, now), Encapsulated::Queued);
        pump(&mut b, B_ADDR, &mut a, now); // initiation
        pump(&mut a, A_ADDR, &mut b, now); // response
        let delivered = pump(&mut b, B_ADDR, &mut a, now);
        assert!(
            matches!(delivered.as_slice(), [Decapsulated::Deliver { peer, .. }] if *peer == old),
            "{delivered:?}"
        );

        // Two transport messages under the session A is about to forget: one still in
        // flight, one whose decryption job was prepared before the removal.
        let (mut late, len) = b_to_a_packet();
        let Encapsulated::Send { len: late_len, .. } = b.encapsulate(&mut late, len, now) else {
            panic!("B has a session");
        };
        let (mut in_job, len) = b_to_a_packet();
        let Encapsulated::Send { len: job_len, .. } = b.encapsulate(&mut in_job, len, now) else {
            panic!("B has a session");
        };
        let PreparedReceive::Open(job) = a.prepare_decapsulate(B_ADDR, &mut in_job, job_len, now)
        else {
            panic!("a transport message for a live session");
        };
        let opened = job.open(&mut in_job[..job_len]);
        assert!(opened.is_some());

        // B goes; C comes, with B's inner address, into B's old slot.
        assert!(a.remove_peer(&key(2).public_key()));
        assert_eq!(a.index_count(), 0, "B's sessions left the index table");
        let new = a
            .upsert_peer(&peer_config(3, [10, 0, 0, 2], B_ADDR))
            .unwrap();
        assert_eq!(a.peers.slot_count(), 1, "the slot was reused");
        assert_ne!(new, old);

        // The old id finds nothing and changes nothing.
        assert!(a.peer_info(old).is_none());
        a.set_endpoint(old, Some(A_ADDR));
        a.set_persistent_keepalive(old, 25, now);
        a.set_preshared_key(old, Some(PresharedKey::from_bytes([9; 32])));
        assert_eq!(
            a.add_allowed_ip(old, Prefix::host(IpAddr::from([10, 9, 9, 9]))),
            Err(ConfigureError::UnknownPeer)
        );
        a.remove_allowed_ip(old, Prefix::host(IpAddr::from([10, 0, 0, 2])));
        a.clear_allowed_ips(old);
        let info = a.peer_info(new).unwrap();
        assert_eq!(info.endpoint, Some(B_ADDR));
        assert_eq!(info.persistent_keepalive, 0);
        assert_eq!(info.preshared_key, None);
        assert_eq!(
            info.allowed_ips,
            vec![crate::proto::prefix::Prefix::new(IpAddr::from([10, 0, 0, 2]), 32).unwrap()]
        );
        assert!(!a.has_transmit());

        // The old peer's packets are dropped, both ways in.
        assert_eq!(
            a.decapsulate(B_ADDR, &mut late, late_len, now),
            Decapsulated::Dropped(DropReason::UnknownReceiverIndex)
        );
        assert_eq!(
            a.finish_decapsulate(&job, opened, &in_job[..job_len], now),
            Decapsulated::Dropped(DropReason::UnknownReceiverIndex)
        );
        assert_eq!(a.peer_info(new).unwrap().stats.rx_bytes, 0);
    }

    /// Each peer's own prefix list always says what the AllowedIPs table routes to it,
    /// through adds, moves between peers, removals, clears and peer removals.
    #[test]
    fn per_peer_prefix_lists_match_the_table() {
        let mut rng = crate::testkit::rng::SplitMix64::new(0x5eed_a11d);
        let mut d = Device::new(Some(key(1)), [3; 32]);
        let keys: Vec<PublicKey> = (2..10).map(|i| key(i).public_key()).collect();
        let prefix = |r: &mut crate::testkit::rng::SplitMix64| {
            let b = (r.next_u64() % 6) as u8;
            let len = [8u8, 16, 24, 32][(r.next_u64() % 4) as usize];
            Prefix::new(IpAddr::from([10, b, b, 1]), len).expect("prefix")
        };
        for step in 0..3000 {
            let k = keys[(rng.next_u64() % keys.len() as u64) as usize];
            let id = match d.peer_id(&k) {
                Some(id) => id,
                None => d.upsert_peer(&PeerConfig::new(k)).expect("peer"),
            };
            match rng.next_u64() % 10 {
                0..=5 => d.add_allowed_ip(id, prefix(&mut rng)).expect("add"),
                6 | 7 => d.remove_allowed_ip(id, prefix(&mut rng)),
                8 => d.clear_allowed_ips(id),
                _ => {
                    d.remove_peer(&k);
                }
            }
            let mut listed = 0;
            for (id, peer) in d.peers.iter() {
                assert_eq!(
                    sorted(&peer.allowed_ips),
                    d.allowed_ips.prefixes_of(id),
                    "step {step}"
                );
                listed += peer.allowed_ips.len();
            }
            assert_eq!(
                listed,
                d.allowed_ips.len(),
                "step {step}: a prefix with no peer"
            );
        }
    }

    /// An address of A's host other than the one its routes would pick: the one B dials.
    const SECONDARY: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 30));

    /// Feeds everything `from` has to send into `to`, as having arrived on `to`'s `local`;
    /// the sources `from` named, and what `to` made of each datagram.
    fn pump_to(
        from: &mut Device,
        from_addr: SocketAddr,
        to: &mut Device,
        local: Option<IpAddr>,
        now: Now,
    ) -> Vec<(Option<IpAddr>, Decapsulated)> {
        let mut out = vec![0u8; BUF];
        let mut results = Vec::new();
        while let Some(t) = from.poll_transmit(&mut out, now) {
            let d = to.decapsulate(Endpoint::new(from_addr, local), &mut out, t.len, now);
            results.push((t.local, d));
        }
        results
    }

    fn at(secs: u64) -> Now {
        Now::new(
            Duration::from_secs(secs),
            Duration::from_secs(1_700_000_000 + secs),
        )
    }

    /// A packet from A's inner address to B's, framed.
    fn a_to_b_packet() -> (Vec<u8>, usize) {
        let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"pong");
        let mut buf = vec![0u8; BUF];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
        (buf, packet.len())
    }

    /// The local address a packet arrives on is remembered with the endpoint (roaming) and
    /// every reply names it: the response, data, keepalives; it follows the latest
    /// authenticated packet, and a configured endpoint or `clear_endpoint_src` forgets it.
    #[test]
    fn replies_leave_from_the_local_address_the_peer_contacted() {
        let now = at(1000);
        let mut a = Device::new(Some(key(1)), [1; 32]);
        let mut b = Device::new(Some(key(2)), [2; 32]);
        let id = a
            .upsert_peer(&peer_config(2, [10, 0, 0, 2], B_ADDR))
            .unwrap();
        b.upsert_peer(&peer_config(1, [10, 0, 0, 1], A_ADDR))
            .unwrap();

        let (mut buf, len) = b_to_a_packet();
        assert_eq!(b.encapsulate(&mut buf, len, now), Encapsulated::Queued);
        // B's initiation reaches A on its secondary address: A's response leaves from there.
        pump_to(&mut b, B_ADDR, &mut a, Some(SECONDARY), now);
        let response = pump_to(&mut a, A_ADDR, &mut b, None, now);
        assert_eq!(response.len(), 1);
        assert_eq!(response[0].0, Some(SECONDARY), "{response:?}");
        pump_to(&mut b, B_ADDR, &mut a, Some(SECONDARY), now);

        // Data: the one-shot and the batched halves say the same.
        let (mut buf, len) = a_to_b_packet();
        assert!(matches!(
            a.encapsulate(&mut buf, len, now),
            Encapsulated::Send {
                endpoint: B_ADDR,
                local: Some(SECONDARY),
                ..
            }
        ));
        let (buf, len) = a_to_b_packet();
        match a.prepare_encapsulate(&buf, len, now) {
            PreparedSend::Seal {
                endpoint,
                local,
                peer,
                ..
            } => assert_eq!((endpoint, local, peer), (B_ADDR, Some(SECONDARY), id)),
            other => panic!("{other:?}"),
        }
        // A keepalive, from poll_transmit, too.
        a.send_keepalive(id, now);
        let mut out = vec![0u8; BUF];
        let t = a.poll_transmit(&mut out, now).expect("keepalive");
        assert_eq!((t.local, t.peer), (Some(SECONDARY), Some(id)));

        // B's next packet arrives on another address: the replies follow.
        let (mut buf, len) = b_to_a_packet();
        let Encapsulated::Send { len: n, .. } = b.encapsulate(&mut buf, len, now) else {
            panic!("B has a session");
        };
        let got = a.decapsulate(Endpoint::new(B_ADDR, Some(OTHER)), &mut buf, n, now);
        assert!(matches!(got, Decapsulated::Deliver { .. }), "{got:?}");
        let (mut buf, len) = a_to_b_packet();
        assert!(matches!(
            a.encapsulate(&mut buf, len, now),
            Encapsulated::Send {
                local: Some(OTHER),
                ..
            }
        ));
        // A forged packet (fails authentication) teaches nothing.
        let (mut b_buf, b_len) = b_to_a_packet();
        let Encapsulated::Send { len: n, .. } = b.encapsulate(&mut b_buf, b_len, now) else {
            panic!("B has a session");
        };
        b_buf[n - 1] ^= 1;
        let got = a.decapsulate(Endpoint::new(B_ADDR, Some(SECONDARY)), &mut b_buf, n, now);
        assert_eq!(got, Decapsulated::Dropped(DropReason::DecryptFailed));
        let (mut buf, len) = a_to_b_packet();
        assert!(matches!(
            a.encapsulate(&mut buf, len, now),
            Encapsulated::Send {
                local: Some(OTHER),
                ..
            }
        ));

        // The driver found the address gone: forgotten, the kernel picks.
        a.clear_endpoint_src(id);
        let (mut buf, len) = a_to_b_packet();
        assert!(matches!(
            a.encapsulate(&mut buf, len, now),
            Encapsulated::Send {
                endpoint: B_ADDR,
                local: None,
                ..
            }
        ));
        // A configured endpoint has none either.
        let (mut buf, len) = b_to_a_packet();
        let Encapsulated::Send { len: n, .. } = b.encapsulate(&mut buf, len, now) else {
            panic!("B has a session");
        };
        a.decapsulate(Endpoint::new(B_ADDR, Some(OTHER)), &mut buf, n, now);
        a.set_endpoint(id, Some(B_ADDR));
        let (mut buf, len) = a_to_b_packet();
        assert!(matches!(
            a.encapsulate(&mut buf, len, now),
            Encapsulated::Send { local: None, .. }
        ));
    }

    /// A handshake that goes unanswered may be leaving from an address that no longer works:
    /// its retransmission lets the kernel pick the source (as the kernel module and
    /// wireguard-go clear theirs in the retransmit timer).
    #[test]
    fn handshake_retransmit_forgets_the_local_address() {
        let now = at(1000);
        let mut a = Device::new(Some(key(1)), [1; 32]);
        let mut b = Device::new(Some(key(2)), [2; 32]);
        a.upsert_peer(&peer_config(2, [10, 0, 0, 2], B_ADDR))
            .unwrap();
        b.upsert_peer(&peer_config(1, [10, 0, 0, 1], A_ADDR))
            .unwrap();
        let (mut buf, len) = b_to_a_packet();
        b.encapsulate(&mut buf, len, now);
        // A answers B's initiation (learning the secondary address), but the response is lost.
        pump_to(&mut b, B_ADDR, &mut a, Some(SECONDARY), now);
        let mut out = vec![0u8; BUF];
        assert_eq!(
            a.poll_transmit(&mut out, now).map(|t| t.local),
            Some(Some(SECONDARY))
        );
        // A has something to send and no confirmed session: its own initiation goes from
        // the secondary address first...
        let (mut buf, len) = a_to_b_packet();
        assert_eq!(a.encapsulate(&mut buf, len, now), Encapsulated::Queued);
        let first = a.poll_transmit(&mut out, now).expect("initiation");
        assert_eq!((out[0], first.local), (1, Some(SECONDARY)));
        // ...and, unanswered, its retransmission from wherever the routes say.
        let later = at(1000 + 6);
        a.update_timers(later);
        let retry = a.poll_transmit(&mut out, later).expect("retransmission");
        assert_eq!((out[0], retry.local), (1, None));
    }
}
