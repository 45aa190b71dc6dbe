//! What the operator hears about a peer's connectivity (see [`Event`]): roaming, outages and
//! reconnections. Each function updates the peer's state and says which event, if any, the
//! caller pushes once its borrow of the peer ends.
//!
//! An outage starts when the retransmission timer finds an initiation unanswered, and ends
//! when a handshake completes; the peer's [`Outage`] remembers what was reported in between,
//! so that "not answered" and "gave up" come once per outage, however many retry series
//! (new traffic starts a new one, as in the kernel) it takes.

use std::time::Duration;

use crate::proto::endpoint::Endpoint;
use crate::proto::peer::{Outage, Peer, PeerId};
use crate::proto::time::Now;
use crate::proto::timers::REJECT_AFTER_TIME;

use super::Event;

/// Roaming: the endpoint follows an authenticated packet from `src`; an event when the
/// remote address or port changed (not when the peer had none, nor for the local address).
pub(super) fn learn_endpoint(peer: &mut Peer, id: PeerId, src: Endpoint) -> Option<Event> {
    let from = peer.endpoint.map(|e| e.remote);
    peer.endpoint = Some(src);
    match from {
        Some(from) if from != src.remote => Some(Event::EndpointChanged {
            peer: id,
            public_key: peer.public_key,
            from,
            to: src.remote,
        }),
        _ => None,
    }
}

/// A handshake completed at `now`: records its time and ends the outage; the reconnection
/// event when there was one (reported unanswered, or no session left since the previous
/// handshake is older than REJECT_AFTER_TIME). A first handshake is no reconnection.
pub(super) fn handshake_completed(peer: &mut Peer, id: PeerId, now: Now) -> Option<Event> {
    let previous = peer.stats.last_handshake.replace(now.unix);
    let unanswered_for = match std::mem::take(&mut peer.outage) {
        Outage::None => None,
        Outage::Unanswered { since } | Outage::GaveUp { since } => {
            Some(now.monotonic.saturating_sub(since))
        }
    };
    let since_last_handshake = previous.map(|t| now.unix.saturating_sub(t));
    let expired = since_last_handshake.is_some_and(|d| d > REJECT_AFTER_TIME);
    (unanswered_for.is_some() || expired).then(|| Event::PeerReconnected {
        peer: id,
        public_key: peer.public_key,
        endpoint: peer.endpoint.map(|e| e.remote),
        unanswered_for,
        since_last_handshake,
    })
}

/// The retransmission timer fired: the initiation sent at `sent` got no response. The
/// event the first time in an outage.
pub(super) fn initiation_unanswered(
    peer: &mut Peer,
    id: PeerId,
    sent: Option<Duration>,
    now: Now,
) -> Option<Event> {
    if peer.outage != Outage::None {
        return None;
    }
    peer.outage = Outage::Unanswered {
        since: sent.unwrap_or(now.monotonic),
    };
    Some(Event::HandshakeUnanswered {
        peer: id,
        public_key: peer.public_key,
        endpoint: peer.endpoint.map(|e| e.remote),
    })
}

/// A retry series gave up after `attempts` initiations: counted as a failed handshake, and
/// the event the first time in an outage.
pub(super) fn handshake_gave_up(
    peer: &mut Peer,
    id: PeerId,
    attempts: u32,
    now: Now,
) -> Option<Event> {
    peer.stats.handshakes_failed += 1;
    let since = match peer.outage {
        Outage::GaveUp { .. } => return None,
        Outage::Unanswered { since } => since,
        // Not reported unanswered (cannot happen: a series retries before it gives up).
        Outage::None => now.monotonic,
    };
    peer.outage = Outage::GaveUp { since };
    Some(Event::HandshakeGaveUp {
        peer: id,
        public_key: peer.public_key,
        attempts,
        waited: now.monotonic.saturating_sub(since),
    })
}
