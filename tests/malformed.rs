//! Malformed, forged and replayed datagrams against the pure core, in virtual time.
//!
//! For every case: no panic, the exact typed `DropReason` returned and counted once in
//! `drops()`, and no state change: nothing queued to send, the same timers, the same endpoint
//! and counters for the peer, and afterwards the real messages still work (a handshake still
//! completes, an established session still carries traffic both ways). Garbage comes from an
//! attacker's address, so an endpoint that moved would show.

use tandem::testkit::key;
use tandem::testkit::packet::ty;
use tandem::testkit::pair::*;

use std::net::SocketAddr;
use std::time::Duration;

use tandem::proto::crypto::{dh, hash, mac};
use tandem::proto::{Decapsulated, Device, DropReason, Encapsulated, PeerConfig, PublicKey};

const INITIATION_LEN: usize = 148;
const RESPONSE_LEN: usize = 92;
const COOKIE_REPLY_LEN: usize = 64;

fn attacker() -> SocketAddr {
    "203.0.113.9:666".parse().unwrap()
}

/// Everything observable about one side that garbage must not change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    endpoint: Option<SocketAddr>,
    stats: tandem::proto::PeerStats,
    deadline: Option<Duration>,
    has_transmit: bool,
}

fn snapshot(side: &mut Side) -> Snapshot {
    let info = side.dev.peer_info(side.peer).unwrap();
    Snapshot {
        endpoint: info.endpoint,
        stats: info.stats,
        deadline: side.dev.next_deadline(),
        has_transmit: side.dev.has_transmit(),
    }
}

/// Feeds `d` to one side from `src`; returns what it said and what it queued to send.
fn inject(p: &mut Pair, to_a: bool, src: SocketAddr, d: &[u8]) -> (Decapsulated, Vec<Vec<u8>>) {
    let now = p.now;
    let side = p.side(to_a);
    let mut buf = vec![0u8; d.len() + 64];
    buf[..d.len()].copy_from_slice(d);
    let got = side.dev.decapsulate(src, &mut buf, d.len(), now);
    let mut out = vec![0u8; OUT_BUF];
    let mut sent = Vec::new();
    for _ in 0..16 {
        let Some(t) = side.dev.poll_transmit(&mut out, now) else {
            break;
        };
        sent.push(out[..t.len].to_vec());
    }
    (got, sent)
}

/// `d` from the attacker is dropped for exactly `reason`, counted once, and changes nothing.
fn expect_drop(p: &mut Pair, to_a: bool, d: &[u8], reason: DropReason, what: &str) {
    expect_drop_from(p, to_a, attacker(), d, reason, what);
}

/// A session that carried one packet each way (a initiated).
fn established() -> Pair {
    let mut p = Pair::new(None, true);
    let x = p.packet(true, b"first");
    p.send_ip(true, &x);
    p.run();
    let y = p.packet(false, b"reply");
    assert!(matches!(p.send_ip(false, &y), Encapsulated::Send { .. }));
    p.run();
    assert_eq!(p.delivered_b, vec![x]);
    assert_eq!(p.delivered_a, vec![y]);
    p
}

/// The established session still carries traffic both ways, with no new handshake.
fn assert_traffic(p: &mut Pair, tag: &[u8]) {
    let (sa, sb) = (p.sent_a.len(), p.sent_b.len());
    let x = p.packet(true, tag);
    let y = p.packet(false, tag);
    assert!(matches!(p.send_ip(true, &x), Encapsulated::Send { .. }));
    assert!(matches!(p.send_ip(false, &y), Encapsulated::Send { .. }));
    p.run();
    assert_eq!(p.delivered_b.last(), Some(&x));
    assert_eq!(p.delivered_a.last(), Some(&y));
    assert!(p.sent_a[sa..].iter().all(|d| ty(d) == 4));
    assert!(p.sent_b[sb..].iter().all(|d| ty(d) == 4));
}

/// Takes the only datagram on the wire (from the side given).
fn take_wire(p: &mut Pair, from_a: bool) -> Vec<u8> {
    assert_eq!(p.wire.len(), 1, "one datagram in flight");
    let (f, d) = p.wire.remove(0);
    assert_eq!(f, from_a);
    d
}

/// mac1 recomputed for a handshake message to the owner of `receiver`: anyone who knows a
/// public key can do this, so it must not be what protects the state.
fn remac1(msg: &mut [u8], receiver: &PublicKey) {
    let key = hash(&[b"mac1----", receiver.as_bytes()]);
    let at = msg.len() - 32;
    let m = mac(&key, &[&msg[..at]]);
    msg[at..at + 16].copy_from_slice(&m);
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}

fn with_u32(d: &[u8], at: usize, v: u32) -> Vec<u8> {
    let mut m = d.to_vec();
    m[at..at + 4].copy_from_slice(&v.to_le_bytes());
    m
}

/// What the frame check makes of a message whose type byte became `t` (length `len`).
fn reason_for_type(t: u8, len: usize) -> Option<DropReason> {
    let fixed = match t {
        1 => INITIATION_LEN,
        2 => RESPONSE_LEN,
        3 => COOKIE_REPLY_LEN,
        4 => return None,
        _ => return Some(DropReason::UnknownType),
    };
    Some(if len < fixed {
        DropReason::Truncated
    } else if len > fixed {
        DropReason::Oversized
    } else {
        return None;
    })
}

/// Every bit flip of `msg` in `bytes`: byte 0 by the type it becomes, bytes 1..4 reserved,
/// the rest `body`.
fn flip_all(
    p: &mut Pair,
    to_a: bool,
    msg: &[u8],
    bytes: std::ops::Range<usize>,
    body: impl Fn(usize, &[u8]) -> DropReason,
    what: &str,
) {
    for i in bytes {
        for bit in 0..8 {
            let mut m = msg.to_vec();
            m[i] ^= 1 << bit;
            let reason = match i {
                0 => reason_for_type(m[0], m.len()).unwrap_or(DropReason::UnknownReceiverIndex),
                1..=3 => DropReason::ReservedNotZero,
                _ => body(i, &m),
            };
            expect_drop(p, to_a, &m, reason, &format!("{what}: byte {i} bit {bit}"));
        }
    }
}

// ------------------------------------------------------------------------- framing

#[test]
fn empty_and_short_datagrams_are_truncated() {
    let mut p = established();
    for to_a in [true, false] {
        for n in 0..4 {
            expect_drop(
                &mut p,
                to_a,
                &[1, 0, 0, 0][..n],
                DropReason::Truncated,
                "short",
            );
            expect_drop(
                &mut p,
                to_a,
                &[4, 0, 0, 0][..n],
                DropReason::Truncated,
                "short",
            );
        }
    }
    assert_traffic(&mut p, b"after short");
}

#[test]
fn length_beyond_the_buffer_is_refused() {
    let mut p = established();
    let now = p.now;
    let mut buf = [4u8; 40];
    let got = p.b.dev.decapsulate(attacker(), &mut buf, 41, now);
    assert_eq!(got, Decapsulated::Dropped(DropReason::BufferTooSmall));
    assert_eq!(p.b.dev.drops().get(DropReason::BufferTooSmall), 1);
    assert_traffic(&mut p, b"after");
}

#[test]
fn initiation_truncations_and_extensions() {
    // b does not know a's endpoint: it must only learn it from the real initiation.
    let mut p = Pair::new(None, false);
    let x = p.packet(true, b"hello");
    p.send_ip(true, &x);
    let init = take_wire(&mut p, true);
    assert_eq!(init.len(), INITIATION_LEN);
    for n in 0..INITIATION_LEN {
        expect_drop(
            &mut p,
            false,
            &init[..n],
            DropReason::Truncated,
            &format!("init[..{n}]"),
        );
    }
    for v in 0..=255u8 {
        let mut m = init.clone();
        m.push(v);
        expect_drop(
            &mut p,
            false,
            &m,
            DropReason::Oversized,
            &format!("init+{v}"),
        );
    }
    assert_eq!(p.b.dev.peer_info(p.b.peer).unwrap().endpoint, None);
    assert_eq!(p.deliver(true, &init), Decapsulated::Done);
    p.run();
    assert_eq!(p.delivered_b, vec![x]);
    assert_eq!(
        p.b.dev.peer_info(p.b.peer).unwrap().endpoint,
        Some(p.a.addr)
    );
    assert_traffic(&mut p, b"after");
}

#[test]
fn response_truncations_and_extensions() {
    let mut p = Pair::new(None, true);
    let x = p.packet(true, b"hello");
    p.send_ip(true, &x);
    let init = take_wire(&mut p, true);
    p.deliver(true, &init);
    let resp = take_wire(&mut p, false);
    assert_eq!(resp.len(), RESPONSE_LEN);
    for n in 0..RESPONSE_LEN {
        expect_drop(
            &mut p,
            true,
            &resp[..n],
            DropReason::Truncated,
            &format!("resp[..{n}]"),
        );
    }
    for v in 0..=255u8 {
        let mut m = resp.clone();
        m.push(v);
        expect_drop(
            &mut p,
            true,
            &m,
            DropReason::Oversized,
            &format!("resp+{v}"),
        );
    }
    assert_eq!(p.deliver(false, &resp), Decapsulated::Done);
    p.run();
    assert_eq!(p.delivered_b, vec![x]);
    assert_traffic(&mut p, b"after");
}

/// a's initiation meets b under load: b's cookie reply, not yet delivered to a. (b does not
/// know a's endpoint: from there it would answer at once.)
fn cookie_reply_in_flight() -> (Pair, Vec<u8>, Vec<u8>) {
    let mut p = Pair::new(None, false);
    let now = p.now;
    p.b.dev.set_under_load(now);
    let x = p.packet(true, b"hello");
    p.send_ip(true, &x);
    let init = take_wire(&mut p, true);
    assert_eq!(
        p.deliver(true, &init),
        Decapsulated::Dropped(DropReason::CookieRequired)
    );
    let cookie = take_wire(&mut p, false);
    assert_eq!((ty(&cookie), cookie.len()), (3, COOKIE_REPLY_LEN));
    (p, cookie, x)
}

/// After a's cookie reply was delivered: a's resend (mac2 under the cookie; sent at once on
/// the cookie reply, or else by the retransmit timer), taken off the wire.
fn retry_with_mac2(p: &mut Pair) -> Vec<u8> {
    for _ in 0..70 {
        p.now = p.now.advance(Duration::from_millis(100));
        let now = p.now;
        p.a.dev.update_timers(now);
        p.drain(true);
        if !p.wire.is_empty() {
            let init = take_wire(p, true);
            assert_eq!(ty(&init), 1);
            assert_ne!(&init[132..148], &[0u8; 16], "the retry carries mac2");
            return init;
        }
    }
    panic!("a did not retry within 7 s");
}

/// a's retry carries mac2, and b, still under load, answers it: the cookie reply was taken
/// and nothing else got in the way.
fn finish_after_cookie(p: &mut Pair, x: &[u8]) {
    let init = retry_with_mac2(p);
    let now = p.now;
    p.b.dev.set_under_load(now);
    assert_eq!(p.deliver(true, &init), Decapsulated::Done);
    p.run();
    assert_eq!(p.delivered_b, vec![x.to_vec()]);
    assert_eq!(p.b.dev.drops().get(DropReason::CookieRequired), 1);
    assert_traffic(p, b"after cookie");
}

#[test]
fn cookie_reply_truncations_and_extensions() {
    let (mut p, cookie, x) = cookie_reply_in_flight();
    for n in 0..COOKIE_REPLY_LEN {
        expect_drop(
            &mut p,
            true,
            &cookie[..n],
            DropReason::Truncated,
            &format!("cookie[..{n}]"),
        );
    }
    for v in 0..=255u8 {
        let mut m = cookie.clone();
        m.push(v);
        expect_drop(
            &mut p,
            true,
            &m,
            DropReason::Oversized,
            &format!("cookie+{v}"),
        );
    }
    let drops = p.a.dev.drops().total();
    assert_eq!(p.deliver(false, &cookie), Decapsulated::Done);
    assert_eq!(
        p.a.dev.drops().total(),
        drops,
        "the real cookie reply is taken"
    );
    finish_after_cookie(&mut p, &x);
}

#[test]
fn transport_truncations_and_extensions() {
    let mut p = established();
    for payload in [&b""[..], b"some data"] {
        let d = if payload.is_empty() {
            // A keepalive: a's persistent keepalive sends one at once.
            let now = p.now;
            let id = p.a.peer;
            p.a.dev.set_persistent_keepalive(id, 0, now);
            p.a.dev.set_persistent_keepalive(id, 25, now);
            p.drain(true);
            let d = take_wire(&mut p, true);
            p.a.dev.set_persistent_keepalive(id, 0, now);
            assert_eq!(d.len(), 32);
            d
        } else {
            let x = p.packet(true, payload);
            p.send_ip(true, &x);
            take_wire(&mut p, true)
        };
        for n in 0..d.len() {
            let reason = if n < 32 {
                DropReason::Truncated
            } else {
                DropReason::DecryptFailed
            };
            expect_drop(&mut p, false, &d[..n], reason, &format!("transport[..{n}]"));
        }
        for v in 0..=255u8 {
            let mut m = d.clone();
            m.push(v);
            expect_drop(
                &mut p,
                false,
                &m,
                DropReason::DecryptFailed,
                &format!("+{v}"),
            );
        }
        let got = p.deliver(true, &d);
        if payload.is_empty() {
            assert_eq!(got, Decapsulated::Done);
        } else {
            assert!(matches!(got, Decapsulated::Deliver { .. }));
        }
    }
    assert_traffic(&mut p, b"after");
}

#[test]
fn reserved_bytes_must_be_zero() {
    let (mut p, cookie, x) = cookie_reply_in_flight();
    let mut q = established();
    let init = q.sent_a.iter().find(|d| ty(d) == 1).unwrap().clone();
    let resp = q.sent_b.iter().find(|d| ty(d) == 2).unwrap().clone();
    let data = q.sent_a.iter().rfind(|d| ty(d) == 4).unwrap().clone();
    for (msg, to_a, name) in [
        (&init, false, "init"),
        (&resp, true, "resp"),
        (&data, false, "data"),
    ] {
        for i in 1..4 {
            for v in 1..=255u8 {
                let mut m = msg.clone();
                m[i] = v;
                expect_drop(
                    &mut q,
                    to_a,
                    &m,
                    DropReason::ReservedNotZero,
                    &format!("{name} [{i}]={v}"),
                );
            }
        }
    }
    for i in 1..4 {
        for v in 1..=255u8 {
            let mut m = cookie.clone();
            m[i] = v;
            expect_drop(
                &mut p,
                true,
                &m,
                DropReason::ReservedNotZero,
                &format!("cookie [{i}]={v}"),
            );
        }
    }
    assert_traffic(&mut q, b"after");
    assert_eq!(p.deliver(false, &cookie), Decapsulated::Done);
    finish_after_cookie(&mut p, &x);
}

#[test]
fn unknown_types_are_refused() {
    let (mut p, cookie, x) = cookie_reply_in_flight();
    let mut q = established();
    let init = q.sent_a.iter().find(|d| ty(d) == 1).unwrap().clone();
    let resp = q.sent_b.iter().find(|d| ty(d) == 2).unwrap().clone();
    let data = q.sent_a.iter().rfind(|d| ty(d) == 4).unwrap().clone();
    let types = std::iter::once(0u8).chain(5..=255);
    for t in types {
        for (msg, to_a) in [(&init, false), (&resp, true), (&data, false), (&data, true)] {
            let mut m = msg.clone();
            m[0] = t;
            expect_drop(
                &mut q,
                to_a,
                &m,
                DropReason::UnknownType,
                &format!("type {t}"),
            );
            // With non-zero reserved bytes too: the type is what is refused.
            m[1] = 1;
            expect_drop(
                &mut q,
                to_a,
                &m,
                DropReason::UnknownType,
                &format!("type {t}+r"),
            );
        }
        let mut m = cookie.clone();
        m[0] = t;
        expect_drop(
            &mut p,
            true,
            &m,
            DropReason::UnknownType,
            &format!("type {t}"),
        );
        // Just the type word, and a datagram of every other small length.
        for n in 4..40 {
            let mut m = vec![0u8; n];
            m[0] = t;
            expect_drop(
                &mut q,
                false,
                &m,
                DropReason::UnknownType,
                &format!("type {t} len {n}"),
            );
        }
    }
    assert_traffic(&mut q, b"after");
    assert_eq!(p.deliver(false, &cookie), Decapsulated::Done);
    finish_after_cookie(&mut p, &x);
}

// ------------------------------------------------------------------------- indices

#[test]
fn unknown_receiver_indices_are_refused() {
    let mut p = established();
    let data = p.sent_a.iter().rfind(|d| ty(d) == 4).unwrap().clone();
    let resp = p.sent_b.iter().find(|d| ty(d) == 2).unwrap().clone();
    let b_index = u32_at(&data, 4);
    let a_index = u32_at(&resp, 8);
    for idx in [
        0,
        1,
        u32::MAX,
        b_index ^ 1,
        b_index.wrapping_add(1),
        a_index,
    ] {
        if idx == b_index {
            continue;
        }
        let m = with_u32(&data, 4, idx);
        expect_drop(
            &mut p,
            false,
            &m,
            DropReason::UnknownReceiverIndex,
            &format!("data {idx:#x}"),
        );
    }
    // A response to an index we never handed out, with a valid mac1.
    for idx in [0, u32::MAX, a_index ^ 1] {
        let mut m = with_u32(&resp, 8, idx);
        let a_pub = p.a.public;
        remac1(&mut m, &a_pub);
        expect_drop(
            &mut p,
            true,
            &m,
            DropReason::UnknownReceiverIndex,
            &format!("resp {idx:#x}"),
        );
    }
    // A response to the index of an established session: no handshake is waiting for it.
    expect_drop(
        &mut p,
        true,
        &resp,
        DropReason::UnexpectedHandshakeMessage,
        "resp to session",
    );
    assert_traffic(&mut p, b"after");
}

#[test]
fn cookie_reply_to_unknown_index_or_forged_is_refused() {
    let (mut p, cookie, x) = cookie_reply_in_flight();
    let idx = u32_at(&cookie, 4);
    for other in [0, u32::MAX, idx ^ 1] {
        let m = with_u32(&cookie, 4, other);
        expect_drop(
            &mut p,
            true,
            &m,
            DropReason::UnknownReceiverIndex,
            &format!("cookie {other:#x}"),
        );
    }
    // Every bit of the nonce and the sealed cookie is authenticated.
    flip_all(
        &mut p,
        true,
        &cookie,
        0..COOKIE_REPLY_LEN,
        |i, _| {
            if i < 8 {
                DropReason::UnknownReceiverIndex
            } else {
                DropReason::InvalidCookieReply
            }
        },
        "cookie",
    );
    assert_eq!(p.deliver(false, &cookie), Decapsulated::Done);
    // A second copy names the initiation a replaced at once with its mac2-carrying resend:
    // that index is gone.
    expect_drop(
        &mut p,
        true,
        &cookie,
        DropReason::UnknownReceiverIndex,
        "cookie again",
    );
    finish_after_cookie(&mut p, &x);
}

#[test]
fn transport_to_a_pending_handshake_index_is_refused() {
    // a's initiation is in flight: its index exists but names no session yet.
    let p = established();
    let data = p.sent_b.iter().rfind(|d| ty(d) == 4).unwrap().clone();
    let mut q = Pair::new(None, true);
    let x = q.packet(true, b"x");
    q.send_ip(true, &x);
    let init = take_wire(&mut q, true);
    let pending = u32_at(&init, 4);
    let m = with_u32(&data, 4, pending);
    expect_drop(
        &mut q,
        true,
        &m,
        DropReason::UnknownReceiverIndex,
        "to pending index",
    );
    q.wire.push((true, init));
    q.run();
    assert_eq!(q.delivered_b, vec![x]);
    assert_traffic(&mut q, b"after");
}

// ------------------------------------------------------------------------- bit flips

#[test]
fn initiation_bit_flips_are_refused() {
    let mut p = Pair::new(None, false);
    let x = p.packet(true, b"hello");
    p.send_ip(true, &x);
    let init = take_wire(&mut p, true);
    // mac1 covers bytes 0..116 and is 116..132: every flip there breaks it.
    flip_all(
        &mut p,
        false,
        &init,
        0..132,
        |_, _| DropReason::InvalidMac1,
        "init",
    );
    assert_eq!(p.b.dev.peer_info(p.b.peer).unwrap().endpoint, None);
    assert_eq!(p.deliver(true, &init), Decapsulated::Done);
    p.run();
    assert_eq!(p.delivered_b, vec![x]);
    // mac2 is not checked when not under load: a flip there leaves a copy of a consumed
    // initiation, which is a replay.
    flip_all(
        &mut p,
        false,
        &init,
        132..148,
        |_, _| DropReason::ReplayedInitiation,
        "init mac2",
    );
    assert_traffic(&mut p, b"after");
}

#[test]
fn response_bit_flips_are_refused() {
    let mut p = Pair::new(None, true);
    let x = p.packet(true, b"hello");
    p.send_ip(true, &x);
    let init = take_wire(&mut p, true);
    p.deliver(true, &init);
    let resp = take_wire(&mut p, false);
    // mac1 covers bytes 0..60 and is 60..76.
    flip_all(
        &mut p,
        true,
        &resp,
        0..76,
        |_, _| DropReason::InvalidMac1,
        "resp",
    );
    assert_eq!(p.deliver(false, &resp), Decapsulated::Done);
    p.run();
    assert_eq!(p.delivered_b, vec![x]);
    // Once consumed, a copy (with any mac2) finds no handshake waiting.
    flip_all(
        &mut p,
        true,
        &resp,
        76..92,
        |_, _| DropReason::UnexpectedHandshakeMessage,
        "resp mac2",
    );
    assert_traffic(&mut p, b"after");
}

#[test]
fn forged_mac1_does_not_get_past_the_noise_layer() {
    // mac1 is no authentication: anyone knowing b's public key can compute it. A corrupted
    // body with a valid mac1 must still fail the handshake's AEAD (one bit per byte: each
    // try costs Diffie-Hellman).
    let mut p = Pair::new(None, true);
    let x = p.packet(true, b"hello");
    p.send_ip(true, &x);
    let init = take_wire(&mut p, true);
    let b_pub = p.b.public;
    for i in 8..116 {
        let mut m = init.clone();
        m[i] ^= 1 << (i % 8);
        remac1(&mut m, &b_pub);
        expect_drop(
            &mut p,
            false,
            &m,
            DropReason::HandshakeDecrypt,
            &format!("init byte {i}"),
        );
    }
    p.deliver(true, &init);
    let resp = take_wire(&mut p, false);
    let a_pub = p.a.public;
    for i in 12..60 {
        let mut m = resp.clone();
        m[i] ^= 1 << (i % 8);
        remac1(&mut m, &a_pub);
        expect_drop(
            &mut p,
            true,
            &m,
            DropReason::HandshakeDecrypt,
            &format!("resp byte {i}"),
        );
    }
    assert_eq!(p.deliver(false, &resp), Decapsulated::Done);
    p.run();
    assert_eq!(p.delivered_b, vec![x]);
    assert_traffic(&mut p, b"after");
}

#[test]
fn transport_bit_flips_and_bad_tags_are_refused() {
    let mut p = established();
    // Three more packets a -> b, all delivered: counters 0..=3 are seen.
    for i in 0..3u8 {
        let x = p.packet(true, &[i; 20]);
        p.send_ip(true, &x);
        p.run();
    }
    let x = p.packet(true, b"the packet under test");
    p.send_ip(true, &x);
    let d = take_wire(&mut p, true);
    let counter = u64::from_le_bytes(d[8..16].try_into().unwrap());
    assert!(counter >= 1);
    flip_all(
        &mut p,
        false,
        &d,
        0..d.len(),
        |i, m| match i {
            4..=7 => DropReason::UnknownReceiverIndex,
            // A flipped counter: lower ones were all seen (a replay), higher ones are new and
            // then fail authentication.
            8..=15 if u64::from_le_bytes(m[8..16].try_into().unwrap()) < counter => {
                DropReason::ReplayedCounter
            }
            _ => DropReason::DecryptFailed,
        },
        "data",
    );
    let got = p.deliver(true, &d);
    assert!(matches!(got, Decapsulated::Deliver { .. }));
    assert_eq!(p.delivered_b.last(), Some(&x));
    assert_traffic(&mut p, b"after");
}

#[test]
fn forged_transport_to_an_unconfirmed_session_does_not_confirm_it() {
    // b answered a's initiation: its session waits (as `next`) for a's first packet.
    let mut p = Pair::new(None, true);
    let x = p.packet(true, b"hello");
    p.send_ip(true, &x);
    let init = take_wire(&mut p, true);
    p.deliver(true, &init);
    let resp = take_wire(&mut p, false);
    let b_index = u32_at(&resp, 4);
    // A transport packet to that index with a bad tag (every counter the attacker may pick).
    for counter in [0u64, 1, 1 << 20, u64::MAX - 9000] {
        let mut m = vec![0u8; 48];
        m[0] = 4;
        m[4..8].copy_from_slice(&b_index.to_le_bytes());
        m[8..16].copy_from_slice(&counter.to_le_bytes());
        expect_drop(
            &mut p,
            false,
            &m,
            DropReason::DecryptFailed,
            &format!("forged {counter}"),
        );
    }
    // A counter at or past REJECT_AFTER_MESSAGES is refused before decrypting.
    let mut m = vec![0u8; 48];
    m[0] = 4;
    m[4..8].copy_from_slice(&b_index.to_le_bytes());
    m[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_drop(
        &mut p,
        false,
        &m,
        DropReason::ReplayedCounter,
        "counter u64::MAX",
    );
    // b still cannot send: its session is unconfirmed, so a packet waits.
    let y = p.packet(false, b"early");
    assert_eq!(p.send_ip(false, &y), Encapsulated::Queued);
    p.wire.retain(|(_, d)| ty(d) != 1); // b's own initiation, not needed here
    p.deliver(false, &resp);
    p.run();
    assert_eq!(p.delivered_b, vec![x]);
    assert_eq!(
        p.delivered_a,
        vec![y],
        "b's waiting packet goes once confirmed"
    );
    assert_traffic(&mut p, b"after");
}

// ------------------------------------------------------------------------- replays

#[test]
fn replayed_transport_packets_are_refused() {
    let mut p = established();
    let mut wire = Vec::new();
    for i in 0..10u8 {
        let x = p.packet(true, &[i; 30]);
        p.send_ip(true, &x);
        wire.push(take_wire(&mut p, true));
    }
    // Delivered once in a scrambled order, then every one again.
    for &i in &[3usize, 0, 9, 1, 2, 8, 4, 7, 5, 6] {
        assert!(matches!(
            p.deliver(true, &wire[i]),
            Decapsulated::Deliver { .. }
        ));
    }
    for (i, d) in wire.iter().enumerate() {
        expect_drop(
            &mut p,
            false,
            d,
            DropReason::ReplayedCounter,
            &format!("replay {i}"),
        );
    }
    // The packets from the handshake too (the first data packet, b's reply).
    let first = p.sent_a.iter().find(|d| ty(d) == 4).unwrap().clone();
    expect_drop(
        &mut p,
        false,
        &first,
        DropReason::ReplayedCounter,
        "first packet",
    );
    let reply = p.sent_b.iter().find(|d| ty(d) == 4).unwrap().clone();
    expect_drop(
        &mut p,
        true,
        &reply,
        DropReason::ReplayedCounter,
        "b's first",
    );
    assert_traffic(&mut p, b"after");
}

#[test]
fn transport_behind_the_replay_window_is_refused() {
    let mut p = established();
    let x = p.packet(true, b"old");
    p.send_ip(true, &x);
    let old = take_wire(&mut p, true);
    // 8200 newer packets delivered first: `old` falls behind the 8128-packet window.
    for i in 0..8200u32 {
        let y = p.packet(true, &i.to_le_bytes());
        p.send_ip(true, &y);
        let d = take_wire(&mut p, true);
        assert!(matches!(p.deliver(true, &d), Decapsulated::Deliver { .. }));
    }
    expect_drop(
        &mut p,
        false,
        &old,
        DropReason::ReplayedCounter,
        "behind the window",
    );
    assert_traffic(&mut p, b"after");
}

#[test]
fn replayed_initiation_is_refused() {
    let mut p = established();
    let init = p.sent_a.iter().find(|d| ty(d) == 1).unwrap().clone();
    // At once (within 20 ms) and later: it is the timestamp that refuses it.
    expect_drop(
        &mut p,
        false,
        &init,
        DropReason::ReplayedInitiation,
        "replay now",
    );
    p.now = p.now.advance(Duration::from_secs(3));
    expect_drop(
        &mut p,
        false,
        &init,
        DropReason::ReplayedInitiation,
        "replay later",
    );
    assert_traffic(&mut p, b"after");
    // From a's own address too: nothing changes, no response goes out.
    let src = p.a.addr;
    let (got, sent) = inject(&mut p, false, src, &init);
    assert_eq!(got, Decapsulated::Dropped(DropReason::ReplayedInitiation));
    assert!(sent.is_empty());
    assert_traffic(&mut p, b"after own");
}

#[test]
fn older_initiation_after_a_newer_one_is_a_replay() {
    let mut p = Pair::new(None, true);
    let x = p.packet(true, b"hello");
    p.send_ip(true, &x);
    let older = take_wire(&mut p, true);
    // a retries later (no answer): a newer initiation.
    p.advance_dropping(Duration::from_secs(6), Duration::from_secs(1));
    assert!(p.sent_a.iter().filter(|d| ty(d) == 1).count() >= 2);
    let newer = p.sent_a.iter().rfind(|d| ty(d) == 1).unwrap().clone();
    assert_ne!(older, newer);
    assert_eq!(p.deliver(true, &newer), Decapsulated::Done);
    p.run();
    assert_eq!(p.delivered_b, vec![x]);
    p.now = p.now.advance(Duration::from_secs(1));
    expect_drop(
        &mut p,
        false,
        &older,
        DropReason::ReplayedInitiation,
        "older",
    );
    assert_traffic(&mut p, b"after");
}

/// A second device with a's key (a's other instance, or a's key stolen): its initiations are
/// authentic and fresh, so only the flood rule can refuse them.
fn a_clone(p: &Pair, seed: u8) -> Device {
    let mut d = Device::new(Some(key(1)), [seed; 32]);
    let mut c = PeerConfig::new(p.b.public);
    c.endpoint = Some(p.b.addr);
    c.allowed_ips = vec![tandem::proto::prefix::Prefix::host(p.b.inner)];
    d.upsert_peer(&c).unwrap();
    d
}

fn initiation_from(dev: &mut Device, p: &Pair, now: tandem::proto::Now) -> Vec<u8> {
    let x = p.packet(true, b"clone");
    let mut buf = vec![0u8; 16 + x.len() + 31];
    buf[16..16 + x.len()].copy_from_slice(&x);
    assert_eq!(
        dev.encapsulate(&mut buf, x.len(), now),
        Encapsulated::Queued
    );
    let mut out = vec![0u8; OUT_BUF];
    let t = dev.poll_transmit(&mut out, now).unwrap();
    assert_eq!(t.len, INITIATION_LEN);
    out[..t.len].to_vec()
}

#[test]
fn initiation_within_20ms_is_a_flood() {
    let mut p = established();
    // Its wall clock is ahead, so its timestamp is newer than a's.
    let mut clone = a_clone(&p, 77);
    let later = tandem::proto::Now::new(p.now.monotonic, p.now.unix + Duration::from_secs(1));
    let init = initiation_from(&mut clone, &p, later);
    p.now = p.now.advance(Duration::from_millis(10));
    expect_drop(&mut p, false, &init, DropReason::InitiationFlood, "10 ms");
    p.now = p.now.advance(Duration::from_millis(9));
    expect_drop(&mut p, false, &init, DropReason::InitiationFlood, "19 ms");
    assert_traffic(&mut p, b"after flood");
    // 20 ms after the last consumed one the same message is taken: the flood drops recorded
    // neither its timestamp nor their time.
    p.now = p.now.advance(Duration::from_millis(1));
    let src = p.a.addr;
    let (got, sent) = inject(&mut p, false, src, &init);
    assert_eq!(got, Decapsulated::Done);
    assert_eq!(sent.len(), 1);
    assert_eq!(ty(&sent[0]), 2);
}

#[test]
fn initiation_from_an_unknown_static_key_is_refused() {
    let mut p = established();
    let mut stranger = Device::new(Some(key(3)), [3; 32]);
    let mut c = PeerConfig::new(p.b.public);
    c.endpoint = Some(p.b.addr);
    c.allowed_ips = vec![tandem::proto::prefix::Prefix::host(p.b.inner)];
    stranger.upsert_peer(&c).unwrap();
    let now = p.now;
    let init = initiation_from(&mut stranger, &p, now);
    expect_drop(&mut p, false, &init, DropReason::UnknownPeer, "stranger");
    p.now = p.now.advance(Duration::from_secs(1));
    expect_drop(
        &mut p,
        false,
        &init,
        DropReason::UnknownPeer,
        "stranger again",
    );
    // An initiation meant for another responder fails mac1.
    let mut other = Device::new(Some(key(4)), [4; 32]);
    let mut c = PeerConfig::new(key(5).public_key());
    c.endpoint = Some(p.b.addr);
    c.allowed_ips = vec![tandem::proto::prefix::Prefix::host(p.b.inner)];
    other.upsert_peer(&c).unwrap();
    let init = initiation_from(&mut other, &p, now);
    expect_drop(&mut p, false, &init, DropReason::InvalidMac1, "not for b");
    assert_traffic(&mut p, b"after");
}

/// Curve25519 points of small order (and non-canonical encodings of them): X25519 with any
/// clamped scalar gives all zeros.
fn low_order_points() -> Vec<[u8; 32]> {
    let hex = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
    ];
    hex.iter()
        .map(|h| {
            let mut b = [0u8; 32];
            for (i, byte) in b.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
            }
            b
        })
        .collect()
}

#[test]
fn low_order_ephemeral_keys_are_refused() {
    let mut p = Pair::new(None, true);
    let x = p.packet(true, b"hello");
    p.send_ip(true, &x);
    let init = take_wire(&mut p, true);
    let (b_pub, a_pub) = (p.b.public, p.a.public);
    let mut tried = 0;
    for point in low_order_points() {
        // Only points X25519 really sends to zero (the list is checked, not trusted).
        if dh(key(2).as_bytes(), &point).is_ok() {
            continue;
        }
        tried += 1;
        let mut m = init.clone();
        m[8..40].copy_from_slice(&point);
        remac1(&mut m, &b_pub);
        expect_drop(
            &mut p,
            false,
            &m,
            DropReason::LowOrderPoint,
            &format!("init e={point:02x?}"),
        );
    }
    assert!(tried >= 7, "only {tried} low-order points");
    p.deliver(true, &init);
    let resp = take_wire(&mut p, false);
    for point in low_order_points() {
        if dh(key(1).as_bytes(), &point).is_ok() {
            continue;
        }
        let mut m = resp.clone();
        m[12..44].copy_from_slice(&point);
        remac1(&mut m, &a_pub);
        expect_drop(
            &mut p,
            true,
            &m,
            DropReason::LowOrderPoint,
            &format!("resp e={point:02x?}"),
        );
    }
    assert_eq!(p.deliver(false, &resp), Decapsulated::Done);
    p.run();
    assert_eq!(p.delivered_b, vec![x]);
    assert_traffic(&mut p, b"after");
}

// ------------------------------------------------------------------------- under load

#[test]
fn under_load_initiation_without_mac2_gets_only_a_cookie() {
    let mut p = established();
    let mut clone = a_clone(&p, 78);
    let later = tandem::proto::Now::new(p.now.monotonic, p.now.unix + Duration::from_secs(1));
    let init = initiation_from(&mut clone, &p, later);
    p.now = p.now.advance(Duration::from_secs(1));
    let now = p.now;
    p.b.dev.set_under_load(now);
    let snap = snapshot(&mut p.b);
    let (got, sent) = inject(&mut p, false, attacker(), &init);
    assert_eq!(got, Decapsulated::Dropped(DropReason::CookieRequired));
    assert_eq!(p.b.dev.drops().get(DropReason::CookieRequired), 1);
    assert_eq!(p.b.dev.drops().total(), 1);
    // One cookie reply (to the source, not to a's endpoint), nothing else changed.
    assert_eq!(sent.len(), 1);
    assert_eq!((ty(&sent[0]), sent[0].len()), (3, COOKIE_REPLY_LEN));
    assert_eq!(snapshot(&mut p.b), snap);
    // A bad mac2 is the same as none.
    let mut m = init.clone();
    m[140] ^= 1;
    let (got, _) = inject(&mut p, false, attacker(), &m);
    assert_eq!(got, Decapsulated::Dropped(DropReason::CookieRequired));
    assert_traffic(&mut p, b"after");
}

#[test]
fn under_load_each_source_is_rate_limited() {
    let (mut p, cookie, x) = cookie_reply_in_flight();
    assert_eq!(p.deliver(false, &cookie), Decapsulated::Done);
    let init = retry_with_mac2(&mut p);
    let now = p.now;
    p.b.dev.set_under_load(now);
    // The first is consumed; the next four pass the limiter and are then replays; the sixth
    // in the same instant exceeds the burst of five.
    assert_eq!(p.deliver(true, &init), Decapsulated::Done);
    p.run();
    assert_eq!(p.delivered_b, vec![x]);
    let now = p.now;
    p.b.dev.set_under_load(now);
    let src = p.a.addr;
    for i in 0..4 {
        expect_drop_from(
            &mut p,
            false,
            src,
            &init,
            DropReason::ReplayedInitiation,
            &format!("copy {i}"),
        );
    }
    expect_drop_from(&mut p, false, src, &init, DropReason::RateLimited, "sixth");
    // 50 ms later one more token has accrued.
    p.now = p.now.advance(Duration::from_millis(50));
    expect_drop_from(
        &mut p,
        false,
        src,
        &init,
        DropReason::ReplayedInitiation,
        "later",
    );
    expect_drop_from(
        &mut p,
        false,
        src,
        &init,
        DropReason::RateLimited,
        "and again",
    );
    assert_traffic(&mut p, b"after");
}

/// Like `expect_drop`, from a given source (mac2 binds the source address).
fn expect_drop_from(
    p: &mut Pair,
    to_a: bool,
    src: SocketAddr,
    d: &[u8],
    reason: DropReason,
    what: &str,
) {
    let side = p.side(to_a);
    let before = side.dev.drops().clone();
    let snap = snapshot(side);
    let (got, sent) = inject(p, to_a, src, d);
    assert_eq!(got, Decapsulated::Dropped(reason), "{what}");
    let side = p.side(to_a);
    assert_eq!(
        side.dev.drops().get(reason),
        before.get(reason) + 1,
        "{what}"
    );
    assert_eq!(side.dev.drops().total(), before.total() + 1, "{what}");
    assert!(sent.is_empty(), "{what}: nothing is sent in answer");
    assert_eq!(snapshot(side), snap, "{what}: no state change");
}

#[test]
fn transport_under_an_expired_session_is_refused() {
    let mut p = established();
    let x = p.packet(true, b"late");
    p.send_ip(true, &x);
    let late = take_wire(&mut p, true);
    // REJECT_AFTER_TIME after the handshake (no timers run: the session is still there).
    p.now = p.now.advance(Duration::from_secs(180));
    expect_drop(&mut p, false, &late, DropReason::KeypairExpired, "180 s");
    // A fresh handshake still works.
    let y = p.packet(true, b"new");
    assert_eq!(p.send_ip(true, &y), Encapsulated::Queued);
    p.run();
    assert_eq!(p.delivered_b.last(), Some(&y));
    assert_traffic(&mut p, b"after");
}

// ------------------------------------------------------------------------- index hygiene

/// A cookie reply to `index` with a nonce and body the attacker made up.
fn junk_cookie_reply(index: u32) -> Vec<u8> {
    let mut m = vec![0x5au8; COOKIE_REPLY_LEN];
    m[..4].copy_from_slice(&[3, 0, 0, 0]);
    m[4..8].copy_from_slice(&index.to_le_bytes());
    m
}

/// The initiator completes a handshake while a session it answered as responder still waits
/// to be confirmed (`next`): the new session becomes current, `next` becomes previous, and
/// the old current is erased. Its receiver index must leave the index table with it: an
/// index that names no session is unknown to every message type. (The kernel frees the old
/// current here, index included.)
#[test]
fn initiator_with_pending_next_releases_the_old_current_index() {
    let mut p = established();
    // K1, the first session: a's index for it (b's receiver index) and b's.
    let a_k1 = u32_at(p.sent_b.iter().find(|d| ty(d) == 4).unwrap(), 4);
    let b_k1 = u32_at(p.sent_a.iter().find(|d| ty(d) == 4).unwrap(), 4);
    // b's data goes unanswered, so b's timer starts a handshake; a answers it, but the
    // response is lost: a now holds that session, N, as `next`.
    p.now = p.now.advance(Duration::from_secs(100));
    let y = p.packet(false, b"unanswered");
    assert!(matches!(p.send_ip(false, &y), Encapsulated::Send { .. }));
    p.wire.clear();
    let mut b_init = None;
    for _ in 0..200 {
        p.now = p.now.advance(Duration::from_millis(100));
        let now = p.now;
        p.b.dev.update_timers(now);
        p.drain(false);
        if let Some(i) = p.wire.iter().position(|(_, d)| ty(d) == 1) {
            b_init = Some(p.wire.remove(i).1);
            break;
        }
    }
    let b_init = b_init.expect("b starts a handshake");
    p.wire.clear();
    assert_eq!(p.deliver(false, &b_init), Decapsulated::Done);
    let lost = take_wire(&mut p, true);
    assert_eq!(ty(&lost), 2);
    let a_n = u32_at(&lost, 4);
    // K1 passes REKEY_AFTER_TIME at a: a's next packet (still under K1) starts a's own
    // handshake, which b answers: a takes the response while N is pending.
    p.now = p.now.advance(Duration::from_secs(21));
    let x = p.packet(true, b"rekey");
    assert!(matches!(p.send_ip(true, &x), Encapsulated::Send { .. }));
    assert_eq!(ty(&p.wire[1].1), 1);
    p.run();
    assert_eq!(p.delivered_b.last(), Some(&x));
    // a sends under the new session K2 now.
    let z = p.packet(true, b"under K2");
    assert!(matches!(p.send_ip(true, &z), Encapsulated::Send { .. }));
    assert_ne!(u32_at(p.sent_a.last().unwrap(), 4), b_k1);
    p.run();
    assert_eq!(p.delivered_b.last(), Some(&z));

    // N was kept as previous: its index still names a session (the packet is forged).
    let forged = |index: u32| {
        let mut t = vec![0u8; 48];
        t[0] = 4;
        t[4..8].copy_from_slice(&index.to_le_bytes());
        t[8] = 200;
        t
    };
    expect_drop(
        &mut p,
        true,
        &forged(a_n),
        DropReason::DecryptFailed,
        "to N",
    );
    // K1 was erased: its index names nothing.
    expect_drop(
        &mut p,
        true,
        &forged(a_k1),
        DropReason::UnknownReceiverIndex,
        "to K1",
    );
    // So a cookie reply to K1's index must be unknown too, as one to an index never used.
    let (control, _) = inject(
        &mut p,
        true,
        attacker(),
        &junk_cookie_reply(a_k1 ^ 0x8000_0001),
    );
    assert_eq!(
        control,
        Decapsulated::Dropped(DropReason::UnknownReceiverIndex)
    );
    let (got, _) = inject(&mut p, true, attacker(), &junk_cookie_reply(a_k1));
    assert_eq!(
        got,
        Decapsulated::Dropped(DropReason::UnknownReceiverIndex),
        "K1's index {a_k1:#x} stayed in a's index table after K1 was erased"
    );
}
