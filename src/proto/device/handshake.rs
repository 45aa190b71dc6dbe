//! The handshake as the device runs it (the kernel's `noise.c` and `cookie.c` callers):
//! sending initiations, consuming initiations, responses and cookie replies, and erasing a
//! peer's sessions.

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
        let jitter = self.jitter();
        let Some(identity) = self.identity.as_ref() else {
            return;
        };
        let Some(peer) = self.peers.get_mut(id) else {
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
        // An initiation still in flight (sent at least REKEY_TIMEOUT ago, see above) got no
        // response, whatever sends this one: a retry, traffic or a keepalive.
        let mut unanswered = None;
        if let Some(old) = peer.handshake.replace(Handshake { local_index, state }) {
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
            if !identity.checker.check_mac2(msg, src.remote, now.monotonic) {
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
            endpoint: peer.endpoint.map(|e| e.remote),
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
        peer.cookie.consume_reply(msg, now.monotonic)
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
