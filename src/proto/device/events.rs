//! What the operator hears about a peer's connectivity (see [`Event`]): roaming, outages and
//! reconnections. Each function updates the peer's state and says which event, if any, the
//! caller pushes once its borrow of the peer ends.
//!
//! An outage starts when an initiation is replaced by another before any response, and ends
//! when a handshake completes; the peer's [`Outage`] remembers what was reported in between,
//! so that "not answered" and "gave up" come once per outage, however many retry series
//! (new traffic starts a new one, as in the kernel) it takes.

use std::time::Duration;

use crate::proto::endpoint::Endpoint;
use crate::proto::peer::{Outage, Peer, PeerId};
use crate::proto::time::Now;
use crate::proto::timers::REJECT_AFTER_TIME;

use super::Event;
use super::revive::EndpointOwners;

/// Roaming: the endpoint follows an authenticated packet from `src`; an event when the
/// remote address or port changed (not when the peer had none, nor for the local address).
pub(super) fn learn_endpoint(
    peer: &mut Peer,
    id: PeerId,
    src: Endpoint,
    owners: &mut EndpointOwners,
) -> Option<Event> {
    let from = peer.endpoint.map(|e| e.remote);
    peer.endpoint = Some(src);
    if from != Some(src.remote) {
        owners.moved(id, from, Some(src.remote));
    }
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

/// A new initiation replaces one sent at `sent` (at least REKEY_TIMEOUT ago) that got no
/// response: the event the first time in an outage. Detected there rather than in the
/// retransmission timer because a persistent keepalive or traffic may send the next
/// initiation first (re-arming that timer), as in the kernel.
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;
    use crate::proto::device::{Decapsulated, Device, Encapsulated, HEADROOM};
    use crate::proto::prefix::Prefix;
    use crate::proto::{PeerConfig, PrivateKey};
    use crate::testkit::packet::ipv4;

    const BUF: usize = 2048;
    const A_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1001);
    const B_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 1002);
    const B_ROAMED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 1002);
    const STRANGER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 4444);

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from_bytes([seed; 32])
    }

    /// Milliseconds of virtual time (monotonic and wall clock move together).
    fn at_ms(ms: u64) -> Now {
        let t = Duration::from_millis(ms);
        Now::new(t, Duration::from_secs(1_700_000_000) + t)
    }

    /// Device `own` with one peer `peer` (inner address 10.0.0.`peer`, endpoint if given).
    fn device(own: u8, peer: u8, endpoint: Option<SocketAddr>, seed: u8) -> Device {
        let mut d = Device::new(Some(key(own)), [seed; 32]);
        let mut c = PeerConfig::new(key(peer).public_key());
        c.allowed_ips = vec![Prefix::host(IpAddr::from([10, 0, 0, peer]))];
        c.endpoint = endpoint;
        d.upsert_peer(&c).expect("peer");
        d
    }

    fn packet(from: u8, to: u8) -> (Vec<u8>, usize) {
        let p = ipv4([10, 0, 0, from], [10, 0, 0, to], b"ping");
        let mut buf = vec![0u8; BUF];
        buf[HEADROOM..HEADROOM + p.len()].copy_from_slice(&p);
        (buf, p.len())
    }

    /// Everything `from` has to send, fed to `to` as coming from `src`.
    fn pump(from: &mut Device, src: SocketAddr, to: &mut Device, now: Now) {
        let mut out = vec![0u8; BUF];
        while let Some(t) = from.poll_transmit(&mut out, now) {
            to.decapsulate(src, &mut out, t.len, now);
        }
    }

    fn discard(d: &mut Device, now: Now) {
        let mut out = vec![0u8; BUF];
        while d.poll_transmit(&mut out, now).is_some() {}
    }

    fn events(d: &mut Device) -> Vec<Event> {
        std::iter::from_fn(|| d.poll_event()).collect()
    }

    /// Runs `d`'s timers every 100 ms from `from_ms` to `to_ms`, its output lost; the events
    /// with the time each came at.
    fn run_unanswered(d: &mut Device, from_ms: u64, to_ms: u64) -> Vec<(u64, Event)> {
        let mut out = Vec::new();
        for ms in (from_ms..=to_ms).step_by(100) {
            d.update_timers(at_ms(ms));
            discard(d, at_ms(ms));
            out.extend(events(d).into_iter().map(|e| (ms, e)));
        }
        out
    }

    /// A peer that never answers: "not answered" once at the first retransmission
    /// (REKEY_TIMEOUT), "gave up" once when the retries end (about 95 s later: 20
    /// initiations), each counted failure in the counters; a second series that gives up is
    /// counted but not reported again; the handshake that finally completes reports the
    /// reconnection, before its "completed".
    #[test]
    fn unanswered_then_gave_up_once_per_outage_then_reconnected() {
        let mut a = device(1, 2, Some(B_ADDR), 1);
        let id = a.peer_id(&key(2).public_key()).expect("peer");
        let (mut buf, len) = packet(1, 2);
        assert_eq!(
            a.encapsulate(&mut buf, len, at_ms(1_000_000)),
            Encapsulated::Queued
        );
        discard(&mut a, at_ms(1_000_000));
        let seen = run_unanswered(&mut a, 1_000_000, 1_300_000);
        let [(t1, unanswered), (t2, gave_up)] = seen.as_slice() else {
            panic!("{seen:?}");
        };
        assert!((1_005_000..=1_005_400).contains(t1), "{t1}");
        assert_eq!(
            *unanswered,
            Event::HandshakeUnanswered {
                peer: id,
                public_key: key(2).public_key(),
                endpoint: Some(B_ADDR),
            }
        );
        let Event::HandshakeGaveUp {
            attempts, waited, ..
        } = gave_up
        else {
            panic!("{gave_up:?}");
        };
        assert_eq!(*attempts, 20);
        assert!(
            (Duration::from_secs(95)..Duration::from_secs(107)).contains(waited),
            "{waited:?}"
        );
        assert_eq!(Duration::from_millis(t2 - 1_000_000), *waited);
        assert_eq!(a.handshakes_failed(), 1);
        assert_eq!(a.peer_info(id).expect("peer").stats.handshakes_failed, 1);

        // New traffic, a new series, as unanswered: counted, not reported again.
        let (mut buf, len) = packet(1, 2);
        a.encapsulate(&mut buf, len, at_ms(1_300_000));
        discard(&mut a, at_ms(1_300_000));
        assert_eq!(run_unanswered(&mut a, 1_300_000, 1_450_000), vec![]);
        assert_eq!(a.handshakes_failed(), 2);
        assert_eq!(a.peer_info(id).expect("peer").stats.handshakes_failed, 2);

        // The peer is back: reconnected (after 460 s without an answer), then completed.
        let mut b = device(2, 1, None, 2);
        let now = at_ms(1_460_000);
        let (mut buf, len) = packet(1, 2);
        a.encapsulate(&mut buf, len, now);
        pump(&mut a, A_ADDR, &mut b, now);
        pump(&mut b, B_ADDR, &mut a, now);
        let got = events(&mut a);
        assert!(
            matches!(
                got.as_slice(),
                [
                    Event::PeerReconnected {
                        unanswered_for: Some(d),
                        endpoint: Some(B_ADDR),
                        ..
                    },
                    Event::HandshakeCompleted { .. },
                ] if *d == Duration::from_secs(460)
            ),
            "{got:?}"
        );
        // The outage is over: a later unanswered initiation is reported again.
        assert_eq!(a.peers.get(id).map(|p| p.outage), Some(Outage::None));
    }

    /// A persistent keepalive of 5 s sends the next initiation before the retransmission
    /// timer would (and re-arms it): the unanswered one is still reported, once.
    #[test]
    fn unanswered_is_seen_when_a_keepalive_sends_the_next_initiation() {
        let mut a = device(1, 2, Some(B_ADDR), 1);
        let id = a.peer_id(&key(2).public_key()).expect("peer");
        a.set_persistent_keepalive(id, 5, at_ms(1_000_000));
        discard(&mut a, at_ms(1_000_000));
        let seen = run_unanswered(&mut a, 1_000_000, 1_060_000);
        assert!(
            matches!(
                seen.as_slice(),
                [(t, Event::HandshakeUnanswered { .. })] if (1_005_000..=1_005_400).contains(t)
            ),
            "{seen:?}"
        );
    }

    /// A (key 1) and B (key 2) at `now` with a session that B started, A's handshake event
    /// drained.
    fn session(now: Now) -> (Device, Device) {
        let mut a = device(1, 2, Some(B_ADDR), 1);
        let mut b = device(2, 1, Some(A_ADDR), 2);
        let (mut buf, len) = packet(2, 1);
        b.encapsulate(&mut buf, len, now);
        pump(&mut b, B_ADDR, &mut a, now);
        pump(&mut a, A_ADDR, &mut b, now);
        pump(&mut b, B_ADDR, &mut a, now);
        assert!(matches!(
            events(&mut a).as_slice(),
            [Event::HandshakeCompleted { .. }]
        ));
        (a, b)
    }

    /// Nothing a stranger sends makes an event: garbage, initiations from a key we do not
    /// know, forged and replayed transport packets; and an idle peer makes none either.
    #[test]
    fn hostile_input_makes_no_event() {
        let now = at_ms(1_000_000);
        // A session, and one of B's transport packets to replay and forge.
        let (mut a, mut b) = session(now);
        let (mut data, len) = packet(2, 1);
        let Encapsulated::Send { len: n, .. } = b.encapsulate(&mut data, len, now) else {
            panic!("B has a session");
        };
        let mut copy = data.clone();
        assert!(matches!(
            a.decapsulate(B_ADDR, &mut copy, n, now),
            Decapsulated::Deliver { .. }
        ));
        assert_eq!(events(&mut a), vec![]);

        let mut garbage = vec![0xffu8; 200];
        for len in [0, 1, 3, 4, 32, 64, 92, 148, 200] {
            a.decapsulate(STRANGER, &mut garbage.clone(), len, now);
        }
        for kind in 1..=4u8 {
            garbage[0] = kind;
            garbage[1..4].fill(0);
            for len in [32, 64, 92, 148] {
                a.decapsulate(STRANGER, &mut garbage.clone(), len, now);
            }
        }
        // An initiation from C, whom A does not know.
        let mut c = device(3, 1, Some(A_ADDR), 3);
        let (mut buf, len) = packet(3, 1);
        c.encapsulate(&mut buf, len, now);
        pump(&mut c, STRANGER, &mut a, now);
        // B's packet replayed from elsewhere, and forged.
        let mut replay = data.clone();
        assert!(matches!(
            a.decapsulate(STRANGER, &mut replay, n, now),
            Decapsulated::Dropped(_)
        ));
        let mut forged = data.clone();
        forged[n - 1] ^= 1;
        assert!(matches!(
            a.decapsulate(STRANGER, &mut forged, n, now),
            Decapsulated::Dropped(_)
        ));
        assert_eq!(events(&mut a), vec![]);
        assert!(a.drops().total() >= 28, "{:?}", a.drops());
        // Time passes with nothing to send: no event.
        assert_eq!(run_unanswered(&mut a, 1_000_100, 1_200_000), vec![]);
        assert_eq!(a.handshakes_failed(), 0);
    }

    /// The first authenticated packet from a new address changes the endpoint with one
    /// event; more from there, and forged or replayed ones from elsewhere, make none.
    #[test]
    fn endpoint_change_is_reported_once() {
        let now = at_ms(1_000_000);
        let (mut a, mut b) = session(now);
        let mut send = |from: SocketAddr, a: &mut Device, corrupt: bool| {
            let (mut buf, len) = packet(2, 1);
            let Encapsulated::Send { len: n, .. } = b.encapsulate(&mut buf, len, now) else {
                panic!("B has a session");
            };
            if corrupt {
                buf[n - 1] ^= 1;
            }
            a.decapsulate(from, &mut buf, n, now)
        };
        assert!(matches!(
            send(B_ROAMED, &mut a, false),
            Decapsulated::Deliver { .. }
        ));
        assert_eq!(
            events(&mut a),
            vec![Event::EndpointChanged {
                peer: a.peer_id(&key(2).public_key()).expect("peer"),
                public_key: key(2).public_key(),
                from: B_ADDR,
                to: B_ROAMED,
            }]
        );
        for _ in 0..5 {
            send(B_ROAMED, &mut a, false);
        }
        assert_eq!(
            send(STRANGER, &mut a, true),
            Decapsulated::Dropped(crate::proto::DropReason::DecryptFailed)
        );
        assert_eq!(events(&mut a), vec![]);
    }

    /// A handshake after more than REJECT_AFTER_TIME without one is a reconnection (the peer
    /// restarted, or slept); one within it is routine.
    #[test]
    fn reconnected_after_the_session_expired() {
        let mut a = device(1, 2, None, 1);
        let handshake = |a: &mut Device, seed: u8, ms: u64| {
            // A fresh B each time: a peer that restarted.
            let mut b = device(2, 1, Some(A_ADDR), seed);
            let now = at_ms(ms);
            let (mut buf, len) = packet(2, 1);
            b.encapsulate(&mut buf, len, now);
            pump(&mut b, B_ADDR, a, now);
            pump(a, A_ADDR, &mut b, now);
            pump(&mut b, B_ADDR, a, now);
            events(a)
        };
        assert!(matches!(
            handshake(&mut a, 2, 1_000_000).as_slice(),
            [Event::HandshakeCompleted { .. }]
        ));
        assert!(matches!(
            handshake(&mut a, 3, 1_170_000).as_slice(),
            [Event::HandshakeCompleted { .. }]
        ));
        let got = handshake(&mut a, 4, 1_470_000);
        assert!(
            matches!(
                got.as_slice(),
                [
                    Event::PeerReconnected {
                        unanswered_for: None,
                        since_last_handshake: Some(d),
                        ..
                    },
                    Event::HandshakeCompleted { .. },
                ] if *d == Duration::from_secs(300)
            ),
            "{got:?}"
        );
    }
}
