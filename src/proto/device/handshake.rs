//! The handshake as the device runs it (the kernel's `noise.c` and `cookie.c` callers):
//! sending initiations, consuming initiations, responses and cookie replies, and erasing a
//! peer's sessions.

use std::time::Duration;

use rand_core::RngCore;

use crate::proto::endpoint::Endpoint;
use crate::proto::error::DropReason;
use crate::proto::handshake;
use crate::proto::keys::PublicKey;
use crate::proto::messages::{
    COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, cookie_reply, read_u32, response,
};
use crate::proto::peer::{Handshake, PeerId};
use crate::proto::time::Now;
use crate::proto::timers::{INITIATION_MIN_INTERVAL, REKEY_TIMEOUT};
use crate::proto::transport::Keypair;

use super::{Device, Event, events};

impl Device {
    /// Sends an initiation to `id` unless one went out less than REKEY_TIMEOUT ago.
    /// A retry keeps counting attempts; anything else starts a fresh count.
    pub(super) fn send_initiation(&mut self, id: PeerId, is_retry: bool, now: Now) {
        // Drawn first, whether or not anything is sent, as it always was: seeded scenarios
        // replay the same stream.
        let jitter = self.jitter();
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if !is_retry {
            peer.timers.handshake_attempts = 0;
        }
        if !self.initiation_due(id, now) {
            return;
        }
        self.initiate(id, false, jitter, now);
    }

    /// Whether `send_initiation` would send now: none went out in the last REKEY_TIMEOUT.
    pub(super) fn initiation_due(&self, id: PeerId, now: Now) -> bool {
        self.peers.get(id).is_some_and(|peer| {
            peer.timers
                .last_sent_handshake
                .is_none_or(|t| now.monotonic.saturating_sub(t) >= REKEY_TIMEOUT)
        })
    }

    /// Builds and queues an initiation to `id`, with no rate check (the callers do it).
    /// `after_cookie` marks the one immediate resend a cookie reply may cause.
    fn initiate(&mut self, id: PeerId, after_cookie: bool, jitter: Duration, now: Now) {
        let Some(identity) = self.identity.as_ref() else {
            return;
        };
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
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
        // An initiation still in flight (sent at least REKEY_TIMEOUT ago, see above) got no
        // response, whatever sends this one: a retry, traffic or a keepalive.
        let mut unanswered = None;
        if let Some(old) = peer.handshake.replace(Handshake {
            local_index,
            state,
            after_cookie,
        }) {
            self.index.remove(old.local_index);
            let sent = peer.timers.last_sent_handshake;
            unanswered = events::initiation_unanswered(peer, id, sent, now);
        }
        peer.timers.last_sent_handshake = Some(now.monotonic);
        peer.stats.tx_bytes += INITIATION_LEN as u64;
        let ka = peer.persistent_keepalive;
        peer.timers.on_authenticated_traversal(now.monotonic, ka);
        peer.timers.on_authenticated_sent();
        peer.timers.on_handshake_initiated(now.monotonic, jitter);
        tracing::debug!(peer = %peer.public_key, attempt = peer.timers.handshake_attempts, "handshake initiation sent");
        if let Some(event) = unanswered {
            self.push_event(event);
        }
        self.push_control(endpoint, Some(id), &out);
    }

    /// mac1 always, then under load: mac2 (else a cookie reply) and the per-source limit.
    ///
    /// # Honest peers first under a flood
    ///
    /// The cookie round trip costs an honest initiator one round trip when it answers the
    /// cookie reply at once (tandem does: see `consume_cookie_reply`), but a whole
    /// REKEY_TIMEOUT (5 s) when it waits for its retransmit timer, as the kernel and
    /// wireguard-go do. So under load, an initiation from the *current endpoint of a configured
    /// peer* (an O(1) probe of the endpoint map, `revive.rs`) is let through without mac2, within a budget of
    /// its own: `endpoint_limiter`, 20/s per source IP with a burst of 5 (the rate limiter's
    /// numbers). Past that budget the message is treated as before: a cookie reply, then mac2
    /// and the ordinary per-source limit. The budget is a separate table so that someone who
    /// spoofs a peer's endpoint drains only it, never the bucket the peer's own mac2-carrying
    /// initiations are counted in: at worst the peer is back to the plain cookie path.
    ///
    /// # What an attacker can make us compute
    ///
    /// Costs, per message that gets past the checks: a forged initiation costs one X25519
    /// (`es` = DH(S_priv, E_pub), in `read_initiation_static`; `ss` is precomputed per peer)
    /// and is refused when its static key is unknown or its timestamp does not decrypt; a
    /// replayed genuine initiation costs the same one and is refused as a replay; only a
    /// fresh, authentic one (the peer's own) costs the two more of a response. A response
    /// needs the receiver index of our initiation in flight before any DH. A cookie reply
    /// costs a MAC and an XChaCha20-Poly1305 seal, no DH. With D ≈ 30k X25519/s for one core:
    ///
    /// - Not under load (before and after): every valid-mac1 initiation costs one DH; the
    ///   driver declares load as soon as one receive batch holds more than 16 handshake
    ///   messages, so a sender can keep us busy only up to about what one core does while
    ///   keeping pace, at most D/s, the kernel's behaviour too.
    /// - Under load, spoofed sources (any address the attacker cannot receive at): 0 DH/s
    ///   before and after; they get cookie replies only (now at most 20/s per source after a
    ///   burst of 5: `cookie_limiter`). A source that is a peer's endpoint is the exception
    ///   below.
    /// - Under load, sources the attacker can receive at (A distinct IPs, IPv6 per /64): at
    ///   most 20/s each after a burst of 5, so 20·A + 5·A DH/s; unchanged.
    /// - Replayed cookies: a cookie is bound to the source IP and port and to a secret that
    ///   changes every 120 s, so replaying one needs that source, and spends that source's
    ///   bucket: already counted above; unchanged.
    /// - New: spoofed endpoints of real peers. Needs the address of each (from the config or
    ///   by watching the path); each distinct IP among the P peers' endpoints adds at most
    ///   20/s after a burst of 5, so at most 20·P + 5·P DH/s more (spoofing gains no second
    ///   DH: the timestamp does not decrypt without the peer's private key). A peer's bucket
    ///   refills in 250 ms; its honest initiations fall back to the cookie round trip while
    ///   it is drained. With tens of peers this is hundreds of DH/s, a few percent of D; the
    ///   bound grows with the number of peers, which is the price of trusting their
    ///   endpoints, and is never more than `MAX_ENTRIES` sources per table.
    ///
    /// # What the cookie-reply budget costs honest peers
    ///
    /// Under load, a source that is no peer's current endpoint gets at most 5 cookie replies
    /// at once and 20/s after (`cookie_limiter`, keyed like the rate limiter). Honest
    /// initiators send one initiation per REKEY_TIMEOUT, far inside that. Someone who spoofs
    /// the IP of a roaming peer (whose address we do not know yet) while keeping us under
    /// load can spend that budget and delay the peer's handshake until the load ends: the
    /// same outcome a flood that overflows the receive queue causes without the budget, for
    /// everyone instead of one address. Peers at their known endpoints are not affected.
    fn check_handshake_macs(
        &mut self,
        src: Endpoint,
        msg: &[u8],
        sender: u32,
        now: Now,
    ) -> Result<(), DropReason> {
        let identity = self.identity.as_mut().ok_or(DropReason::NoPrivateKey)?;
        if !identity.checker.check_mac1(msg) {
            return Err(DropReason::InvalidMac1);
        }
        if self.under_load_until.is_some_and(|t| now.monotonic < t) {
            // An initiator without a cookie sends mac2 as zeros: no MAC to compute for it.
            let mac2 = msg[msg.len() - 16..].iter().any(|&b| b != 0)
                && identity.checker.check_mac2(msg, src.remote, now.monotonic);
            // A configured peer's current endpoint skips the cookie round trip, within a
            // budget of its own (see the budget above); past it, the usual cookie.
            let peer_endpoint = !mac2 && self.endpoint_owners.owner(&src.remote).is_some();
            if peer_endpoint && self.endpoint_limiter.allow(src.remote.ip(), now.monotonic) {
                return Ok(());
            }
            if !mac2 {
                // Cookie replies, too, within a per-source budget (`cookie_limiter`): a flood
                // from a few sources then costs a MAC and a table probe per message, not a
                // sealed reply and a send each, so the receive queue drains and honest
                // messages are not dropped behind it. A peer's endpoint always gets its
                // cookie (as before), so spoofing it cannot deny the peer its way in.
                if !peer_endpoint && !self.cookie_limiter.allow(src.remote.ip(), now.monotonic) {
                    return Err(DropReason::RateLimited);
                }
                let reply = identity.checker.create_reply(
                    msg,
                    sender,
                    src.remote,
                    now.monotonic,
                    &mut self.rng,
                );
                // From the address the initiation came to, as every reply.
                self.push_control(src, None, &reply);
                return Err(DropReason::CookieRequired);
            }
            if !self.rate_limiter.allow(src.remote.ip(), now.monotonic) {
                return Err(DropReason::RateLimited);
            }
        }
        Ok(())
    }

    pub(super) fn consume_initiation(
        &mut self,
        src: Endpoint,
        msg: &[u8; INITIATION_LEN],
        now: Now,
    ) -> Result<(), DropReason> {
        let sender = handshake::sender_index(msg);
        self.check_handshake_macs(src, msg, sender, now)?;
        let identity = self.identity.as_ref().ok_or(DropReason::NoPrivateKey)?;
        let partial = handshake::read_initiation_static(&self.protocol, identity, msg)?;
        let key = PublicKey::from_bytes(partial.initiator_static);
        let id = *self.by_key.get(&key).ok_or(DropReason::UnknownPeer)?;
        let peer = self.peers.get(id).ok_or(DropReason::UnknownPeer)?;
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
        let Some(peer) = self.peers.get_mut(id) else {
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
        let roamed = events::learn_endpoint(peer, id, src, &mut self.endpoint_owners);
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
        if let Some(event) = roamed {
            self.push_event(event);
        }
        self.push_control(src, Some(id), &out);
        Ok(())
    }

    pub(super) fn consume_response(
        &mut self,
        src: Endpoint,
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
        let peer = self.peers.get_mut(id).ok_or(DropReason::UnknownPeer)?;
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
        let roamed = events::learn_endpoint(peer, id, src, &mut self.endpoint_owners);
        peer.stats.rx_bytes += RESPONSE_LEN as u64;
        let reconnected = events::handshake_completed(peer, id, now);
        let ka = peer.persistent_keepalive;
        peer.timers.on_handshake_complete();
        peer.timers.on_session_derived(now.monotonic);
        peer.timers.on_authenticated_received();
        peer.timers.on_authenticated_traversal(now.monotonic, ka);
        tracing::debug!(peer = %peer.public_key, "handshake complete (initiator)");
        let completed = Event::HandshakeCompleted {
            peer: id,
            public_key: peer.public_key,
            endpoint: Some(src.remote),
        };
        let has_staged = !peer.staged.is_empty();
        for k in dropped.into_iter().flatten() {
            self.index.remove(k.local_index);
        }
        for event in [roamed, reconnected].into_iter().flatten() {
            self.push_event(event);
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

    pub(super) fn consume_cookie_reply(
        &mut self,
        msg: &[u8; COOKIE_REPLY_LEN],
        now: Now,
    ) -> Result<(), DropReason> {
        let receiver = read_u32(msg, cookie_reply::RECEIVER);
        let id = self
            .index
            .get(receiver)
            .ok_or(DropReason::UnknownReceiverIndex)?;
        let peer = self.peers.get_mut(id).ok_or(DropReason::UnknownPeer)?;
        peer.cookie.consume_reply(msg, now.monotonic)?;
        // The reply answers our initiation in flight: send it again at once, now with mac2,
        // instead of at the retransmit timer (REKEY_TIMEOUT later). Once per initiation sent
        // on our own account: the resend is marked, and a reply to it waits for the timer.
        // A cookie reply is sealed under a key anyone can derive from the responder's public
        // key, bound to our mac1, so whoever sees our initiation on the path can forge one:
        // the most that buys is this one extra initiation (one ephemeral key and one DH, `es`;
        // `ss` is precomputed) per initiation we send, two per peer per REKEY_TIMEOUT.
        let resend = peer
            .handshake
            .as_ref()
            .is_some_and(|h| h.local_index == receiver && !h.after_cookie);
        if resend {
            let jitter = self.jitter();
            self.initiate(id, true, jitter, now);
        }
        Ok(())
    }

    /// Erases a peer's sessions and handshake (and their indices), keeping its configuration.
    pub(super) fn clear_sessions(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(id) else {
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
}
