//! Scenarios in virtual time for issue 13: an honest handshake under load completes within
//! one round trip (tandem initiating, and a kernel-like initiator that never answers a
//! cookie reply at once), what an attacker can make the responder compute stays within the
//! stated budget, and data under an unknown receiver index from a peer's endpoint (the peer
//! restarted) starts exactly one handshake per REKEY_TIMEOUT.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::*;
use crate::proto::messages::{MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE};
use crate::proto::timers::REKEY_TIMEOUT;
use crate::testkit::packet::ipv4;

const BUF: usize = 2048;
const A_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1001);
const B_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 1002);
/// Somewhere no peer is configured at.
const STRANGER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)), 4444);

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from_bytes([seed; 32])
}

fn config(seed: u8, inner: [u8; 4], endpoint: Option<SocketAddr>) -> PeerConfig {
    PeerConfig {
        allowed_ips: vec![Prefix::new(IpAddr::from(inner), 32).expect("prefix")],
        endpoint,
        ..PeerConfig::new(key(seed).public_key())
    }
}

fn at_ms(ms: u64) -> Now {
    let t = Duration::from_secs(1000) + Duration::from_millis(ms);
    Now::new(t, Duration::from_secs(1_700_000_000) + t)
}

/// A knows B at `b_endpoint`; B knows A at A_ADDR.
fn pair(b_endpoint: Option<SocketAddr>) -> (Device, Device) {
    let mut a = Device::new(Some(key(1)), [1; 32]);
    let mut b = Device::new(Some(key(2)), [2; 32]);
    a.upsert_peer(&config(2, [10, 0, 0, 2], b_endpoint))
        .unwrap();
    b.upsert_peer(&config(1, [10, 0, 0, 1], Some(A_ADDR)))
        .unwrap();
    (a, b)
}

/// Every datagram `from` has queued: (message type, bytes).
fn drain(from: &mut Device, now: Now) -> Vec<(u8, Vec<u8>)> {
    let mut out = vec![0u8; BUF];
    let mut got = Vec::new();
    while let Some(t) = from.poll_transmit(&mut out, now) {
        got.push((out[0], out[..t.len].to_vec()));
    }
    got
}

fn deliver(to: &mut Device, src: SocketAddr, msgs: &[(u8, Vec<u8>)], now: Now) {
    for (_, m) in msgs {
        let mut buf = vec![0u8; BUF];
        buf[..m.len()].copy_from_slice(m);
        to.decapsulate(src, &mut buf, m.len(), now);
    }
}

fn kinds(msgs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    msgs.iter().map(|(k, _)| *k).collect()
}

/// B wants to send to A: its packet is queued and an initiation goes out.
fn b_starts(b: &mut Device, now: Now) -> Vec<(u8, Vec<u8>)> {
    let packet = ipv4([10, 0, 0, 2], [10, 0, 0, 1], b"hello");
    let mut buf = vec![0u8; BUF];
    buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
    assert_eq!(
        b.encapsulate(&mut buf, packet.len(), now),
        Encapsulated::Queued
    );
    let first = drain(b, now);
    assert_eq!(kinds(&first), [MESSAGE_INITIATION]);
    first
}

/// tandem as initiator, towards a responder under load that does not know its endpoint:
/// cookie reply, immediate resend with mac2, response. No time passes: one extra round trip,
/// not REKEY_TIMEOUT.
#[test]
fn tandem_initiator_answers_a_cookie_reply_at_once() {
    let (mut a, mut b) = pair(None);
    let now = at_ms(0);
    a.set_under_load(now);
    let init = b_starts(&mut b, now);
    deliver(&mut a, B_ADDR, &init, now);
    let cookie = drain(&mut a, now);
    assert_eq!(kinds(&cookie), [MESSAGE_COOKIE_REPLY]);
    assert_eq!(a.drops().get(DropReason::CookieRequired), 1);
    deliver(&mut b, A_ADDR, &cookie, now);
    let resend = drain(&mut b, now);
    assert_eq!(kinds(&resend), [MESSAGE_INITIATION], "resent at once");
    deliver(&mut a, B_ADDR, &resend, now);
    let response = drain(&mut a, now);
    assert_eq!(kinds(&response), [MESSAGE_RESPONSE]);
    deliver(&mut b, A_ADDR, &response, now);
    assert_eq!(b.handshakes_completed(), 1);
    // B's waiting packet goes, and confirms the session at A.
    let data = drain(&mut b, now);
    deliver(&mut a, B_ADDR, &data, now);
    assert_eq!(a.handshakes_completed(), 1);
}

/// The resend is bounded: a cookie reply to the resend itself causes no other (it waits for
/// the retransmit timer), so forged or repeated cookie replies make at most one extra
/// initiation per initiation sent on our own account.
#[test]
fn a_cookie_reply_to_the_resend_causes_no_other() {
    let (mut a, mut b) = pair(None);
    let now = at_ms(0);
    a.set_under_load(now);
    let init = b_starts(&mut b, now);
    deliver(&mut a, B_ADDR, &init, now);
    deliver(&mut b, A_ADDR, &drain(&mut a, now), now);
    let resend = drain(&mut b, now);
    assert_eq!(kinds(&resend), [MESSAGE_INITIATION]);
    // The resend arrives from another port (a NAT rebinding): its mac2 is for B_ADDR, so A
    // answers with another cookie reply.
    let elsewhere = SocketAddr::new(B_ADDR.ip(), 2002);
    deliver(&mut a, elsewhere, &resend, now);
    let cookie = drain(&mut a, now);
    assert_eq!(kinds(&cookie), [MESSAGE_COOKIE_REPLY]);
    deliver(&mut b, A_ADDR, &cookie, now);
    assert!(drain(&mut b, now).is_empty(), "no second immediate resend");
    // The same reply again is refused (bound to a mac1 already answered).
    deliver(&mut b, A_ADDR, &cookie, now);
    assert!(drain(&mut b, now).is_empty());
}

/// A kernel-like initiator (it keeps the cookie and waits for its retransmit timer) from
/// its configured endpoint is answered at once under load.
#[test]
fn initiation_from_a_peer_endpoint_is_answered_under_load() {
    let (mut a, mut b) = pair(Some(B_ADDR));
    let now = at_ms(0);
    a.set_under_load(now);
    let init = b_starts(&mut b, now);
    deliver(&mut a, B_ADDR, &init, now);
    let answer = drain(&mut a, now);
    assert_eq!(kinds(&answer), [MESSAGE_RESPONSE], "no cookie round trip");
    deliver(&mut b, A_ADDR, &answer, now);
    assert_eq!(b.handshakes_completed(), 1);
    // The same initiation from a stranger's address would have cost a cookie reply only.
    let (mut a2, mut b2) = pair(Some(B_ADDR));
    a2.set_under_load(now);
    let init = b_starts(&mut b2, now);
    deliver(&mut a2, STRANGER, &init, now);
    assert_eq!(kinds(&drain(&mut a2, now)), [MESSAGE_COOKIE_REPLY]);
}

/// The attacker's budget under load, counted in what reached Diffie-Hellman: messages that
/// got past the MAC checks end as `UnknownPeer` (a forged initiator) or `ReplayedInitiation`.
/// From a spoofed stranger's address: none. From a spoofed peer endpoint: at most the burst
/// of 5 plus 20 a second, the rest get cookie replies; and the peer's own cookie path still
/// works while its endpoint budget is spent.
#[test]
fn attacker_budget_under_load_is_bounded() {
    let (mut a, _) = pair(Some(B_ADDR));
    // An initiation with a valid mac1 for A from a key A does not know.
    let mut mallory = Device::new(Some(key(9)), [9; 32]);
    mallory
        .upsert_peer(&config(1, [10, 0, 0, 1], Some(A_ADDR)))
        .unwrap();
    let forged = b_starts_as(&mut mallory, at_ms(0));
    let reached_dh = |d: &Device| {
        d.drops().get(DropReason::UnknownPeer) + d.drops().get(DropReason::ReplayedInitiation)
    };
    // 50,000 a second for a second from a stranger: no DH at all.
    for i in 0..50_000u64 {
        let now = at_ms(i / 50);
        a.set_under_load(now);
        deliver(&mut a, STRANGER, &forged, now);
        drain(&mut a, now);
    }
    assert_eq!(reached_dh(&a), 0);
    // Cookie replies within that source's budget (burst 5, 20/s), the rest shed cheaply.
    let cookies = a.drops().get(DropReason::CookieRequired);
    assert!((20..=25).contains(&cookies), "{cookies} cookie replies");
    assert_eq!(a.drops().get(DropReason::RateLimited), 50_000 - cookies);
    // The same flood spoofing B's endpoint: the burst of 5, then 20/s, for 1 s.
    for i in 0..50_000u64 {
        let now = at_ms(10_000 + i / 50);
        a.set_under_load(now);
        deliver(&mut a, B_ADDR, &forged, now);
        drain(&mut a, now);
    }
    let dh = reached_dh(&a);
    assert!((20..=25).contains(&dh), "{dh} messages reached DH");
    // B's own initiation, while its endpoint budget is spent, still gets through the cookie
    // path.
    let (_, mut b) = pair(Some(B_ADDR));
    let now = at_ms(10_999);
    a.set_under_load(now);
    let init = b_starts(&mut b, now);
    deliver(&mut a, B_ADDR, &init, now);
    let answer = drain(&mut a, now);
    assert_eq!(kinds(&answer), [MESSAGE_COOKIE_REPLY]);
    deliver(&mut b, A_ADDR, &answer, now);
    let resend = drain(&mut b, now);
    deliver(&mut a, B_ADDR, &resend, now);
    assert_eq!(kinds(&drain(&mut a, now)), [MESSAGE_RESPONSE]);
}

fn b_starts_as(d: &mut Device, now: Now) -> Vec<(u8, Vec<u8>)> {
    let packet = ipv4([10, 0, 0, 9], [10, 0, 0, 1], b"x");
    let mut buf = vec![0u8; BUF];
    buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
    d.encapsulate(&mut buf, packet.len(), now);
    let msgs = drain(d, now);
    assert_eq!(kinds(&msgs), [MESSAGE_INITIATION]);
    msgs
}

/// B sends data under a session A has forgotten (A restarted): from B's endpoint A initiates
/// at once, once per REKEY_TIMEOUT however many such packets come; from anywhere else it
/// does nothing. The link is back after one round trip.
#[test]
fn unknown_index_from_a_peer_endpoint_initiates_once_per_rekey_timeout() {
    let (mut a, mut b) = pair(Some(B_ADDR));
    let now = at_ms(0);
    let init = b_starts(&mut b, now);
    deliver(&mut a, B_ADDR, &init, now);
    deliver(&mut b, A_ADDR, &drain(&mut a, now), now);
    deliver(&mut a, B_ADDR, &drain(&mut b, now), now);
    assert_eq!(a.handshakes_completed(), 1);

    // A restarts: same key and config, no sessions.
    let mut a = Device::new(Some(key(1)), [11; 32]);
    a.upsert_peer(&config(2, [10, 0, 0, 2], Some(B_ADDR)))
        .unwrap();
    let data = |b: &mut Device, now: Now| {
        let packet = ipv4([10, 0, 0, 2], [10, 0, 0, 1], b"ping");
        let mut buf = vec![0u8; BUF];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
        let Encapsulated::Send { len, .. } = b.encapsulate(&mut buf, packet.len(), now) else {
            panic!("B still has its session");
        };
        buf.truncate(len);
        vec![(buf[0], buf)]
    };
    // From a stranger: dropped, nothing sent.
    let t1 = at_ms(100);
    deliver(&mut a, STRANGER, &data(&mut b, t1), t1);
    assert!(drain(&mut a, t1).is_empty());
    // From B's endpoint: one initiation, however many packets.
    for _ in 0..50 {
        deliver(&mut a, B_ADDR, &data(&mut b, t1), t1);
    }
    let inits = drain(&mut a, t1);
    assert_eq!(kinds(&inits), [MESSAGE_INITIATION]);
    assert_eq!(a.drops().get(DropReason::UnknownReceiverIndex), 51);
    // More garbage within REKEY_TIMEOUT: nothing more (the retransmit timer is not run here).
    let rekey_ms = REKEY_TIMEOUT.as_millis() as u64;
    let t2 = at_ms(100 + rekey_ms - 1);
    deliver(&mut a, B_ADDR, &data(&mut b, t2), t2);
    assert!(drain(&mut a, t2).is_empty());
    let t3 = at_ms(100 + rekey_ms);
    deliver(&mut a, B_ADDR, &data(&mut b, t3), t3);
    assert_eq!(kinds(&drain(&mut a, t3)), [MESSAGE_INITIATION]);

    // The first initiation, answered: the link is back within that round trip.
    let t = at_ms(200);
    deliver(&mut b, A_ADDR, &inits, t);
    let response = drain(&mut b, t);
    assert_eq!(kinds(&response), [MESSAGE_RESPONSE]);
}

/// The endpoint map follows the peers' endpoints: configured, roamed, cleared, removed.
#[test]
fn endpoint_map_follows_endpoints() {
    let (mut a, mut b) = pair(Some(B_ADDR));
    let id = a.peer_id(&key(2).public_key()).unwrap();
    assert_eq!(a.endpoint_owners.owner(&B_ADDR), Some(id));
    // B roams: its initiation from a new address moves the entry.
    let moved = SocketAddr::new(B_ADDR.ip(), 7777);
    let now = at_ms(0);
    let init = b_starts(&mut b, now);
    deliver(&mut a, moved, &init, now);
    assert_eq!(a.endpoint_owners.owner(&B_ADDR), None);
    assert_eq!(a.endpoint_owners.owner(&moved), Some(id));
    a.set_endpoint(id, None);
    assert_eq!(a.endpoint_owners.owner(&moved), None);
    a.set_endpoint(id, Some(B_ADDR));
    assert_eq!(a.endpoint_owners.owner(&B_ADDR), Some(id));
    assert!(a.remove_peer(&key(2).public_key()));
    assert_eq!(a.endpoint_owners.owner(&B_ADDR), None);
    assert_eq!(a.endpoint_owners.len(), 0);
}
