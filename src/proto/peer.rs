//! One peer: its keys, endpoint, handshake in flight, the three sessions (previous, current,
//! next), timers, packets waiting for a session, and counters users see in `wg show`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use zeroize::Zeroize;

use super::cookie::CookieState;
use super::crypto;
use super::endpoint::Endpoint;
use super::keys::{PresharedKey, PrivateKey, PublicKey};
use super::noise::{InitiatorState, Protocol};
use super::prefix::Prefix;
use super::tai64n::Tai64N;
use super::timers::PeerTimers;
use super::transport::Keypair;

pub use super::peer_table::PeerId;

/// The most packets one peer keeps while waiting for a handshake (the kernel's number);
/// beyond that the oldest is dropped.
pub const MAX_STAGED_PACKETS: usize = 128;

/// How a peer is configured (what `wg set` and config files speak of).
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; 0 is off.
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<Prefix>,
}

impl PeerConfig {
    pub fn new(public_key: PublicKey) -> Self {
        PeerConfig {
            public_key,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
        }
    }
}

/// Our initiation in flight.
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub(crate) struct Handshake {
    pub local_index: u32,
    pub state: InitiatorState,
    /// This initiation is the immediate resend after a cookie reply: a cookie reply to it
    /// does not cause another (see `device/handshake.rs`, `consume_cookie_reply`).
    pub after_cookie: bool,
}

/// What users see of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Wall-clock time of the latest completed handshake.
    pub last_handshake: Option<Duration>,
    /// Handshake attempts that gave up: initiations retried for REKEY_ATTEMPT_TIME with no
    /// response (each series that gives up counts once).
    pub handshakes_failed: u64,
}

/// What the device has told the operator about a peer's unanswered handshakes since its
/// last completed one, so that each line comes once per outage (see `Event`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Outage {
    /// Nothing reported: the last handshake completed, or none was tried.
    #[default]
    None,
    /// "handshake not answered" was reported; `since` is when the first unanswered
    /// initiation went out (monotonic).
    Unanswered { since: Duration },
    /// "gave up" was reported too.
    GaveUp { since: Duration },
}

#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub(crate) struct Peer {
    pub public_key: PublicKey,
    pub preshared_key: PresharedKey,
    /// DH(S_priv_ours, S_pub_peer), precomputed: it only changes with either static key.
    pub static_static: [u8; 32],
    /// HASH(H0 || S_pub_peer): the initiator's hash after the `<- s` pre-message.
    pub responder_hash: [u8; 32],
    /// Where packets go: roaming updates it with every authenticated packet.
    pub endpoint: Option<Endpoint>,
    pub persistent_keepalive: u16,
    pub handshake: Option<Handshake>,
    /// Greatest initiation timestamp accepted from this peer (replay protection).
    pub latest_timestamp: Tai64N,
    /// When we last accepted an initiation from this peer (flood protection).
    pub last_initiation_consumed: Option<Duration>,
    pub previous: Option<Box<Keypair>>,
    pub current: Option<Box<Keypair>>,
    pub next: Option<Box<Keypair>>,
    pub cookie: CookieState,
    pub timers: PeerTimers,
    /// The deadline this peer has in the device's timer heap (the earliest of its entries
    /// there that is still current), `None` when it has none: see `device/timers.rs`.
    pub scheduled: Option<Duration>,
    /// The prefixes the AllowedIPs table routes to this peer (host bits cleared), so listing
    /// and removing them costs this peer's entries only (the kernel's `peer->allowedips_list`).
    pub allowed_ips: Vec<Prefix>,
    pub staged: VecDeque<Vec<u8>>,
    pub stats: PeerStats,
    /// Unanswered handshakes reported since the last completed one.
    pub outage: Outage,
}

impl Peer {
    pub fn new(config: &PeerConfig, own_private: Option<&PrivateKey>, protocol: &Protocol) -> Self {
        let mut peer = Peer {
            public_key: config.public_key,
            preshared_key: config.preshared_key.clone().unwrap_or_default(),
            static_static: [0; 32],
            responder_hash: protocol.hash_with_responder(config.public_key.as_bytes()),
            endpoint: config.endpoint.map(Endpoint::from),
            persistent_keepalive: config.persistent_keepalive,
            handshake: None,
            latest_timestamp: Tai64N::default(),
            last_initiation_consumed: None,
            previous: None,
            current: None,
            next: None,
            cookie: CookieState::new(config.public_key.as_bytes()),
            timers: PeerTimers::default(),
            scheduled: None,
            allowed_ips: Vec::new(),
            staged: VecDeque::new(),
            stats: PeerStats {
                rx_bytes: 0,
                tx_bytes: 0,
                last_handshake: None,
                handshakes_failed: 0,
            },
            outage: Outage::None,
        };
        peer.set_own_private_key(own_private);
        peer
    }

    /// Recomputes DH(S_priv, S_pub_peer). A low-order peer key gives zeros, and every
    /// handshake with that peer is then refused.
    pub fn set_own_private_key(&mut self, own_private: Option<&PrivateKey>) {
        self.static_static.zeroize();
        if let Some(key) = own_private {
            self.static_static =
                crypto::dh(key.as_bytes(), self.public_key.as_bytes()).unwrap_or([0; 32]);
        }
    }

    /// The session with local index `index`, if any of the three has it.
    pub fn keypair_mut(&mut self, index: u32) -> Option<&mut Keypair> {
        [&mut self.current, &mut self.previous, &mut self.next]
            .into_iter()
            .flatten()
            .map(|k| &mut **k)
            .find(|k| k.local_index == index)
    }

    /// Every local index this peer holds (handshake and sessions), to clean the index table.
    pub fn local_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.handshake
            .as_ref()
            .map(|h| h.local_index)
            .into_iter()
            .chain(
                [&self.previous, &self.current, &self.next]
                    .into_iter()
                    .flatten()
                    .map(|k| k.local_index),
            )
    }

    /// The session to send with, when it is still usable.
    pub fn sendable(&self, now: Duration) -> bool {
        self.current.as_ref().is_some_and(|k| k.can_send(now))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.static_static.zeroize();
        self.responder_hash.zeroize();
    }
}
