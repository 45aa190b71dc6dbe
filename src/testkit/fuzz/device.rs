//! The device targets: bytes from the network (or the TUN device) through a `Device`.
//!
//! A target builds the state its message type needs on a [`Pair`] (a pending handshake or an
//! established session), takes a real message of that type as a template, turns the fuzz
//! input into a datagram (see [`Plan`]), feeds it to `decapsulate`, and then checks the
//! invariants:
//!
//! - no panic (libFuzzer reports it; AddressSanitizer reports memory errors);
//! - every `Deliver` range lies inside the datagram that was handed in;
//! - every `Transmit` fits the caller's buffer;
//! - after the garbage, the real peers still handshake and move data both ways: at once when
//!   the garbage was refused, within a bounded time when it was accepted (see
//!   [`assert_recovers`]).
//!
//! Keys, RNG seeds and clocks are constants, so a crashing input replays byte for byte: each
//! input starts from a copy of the same pair (see `setup`).

use std::time::Duration;

use crate::proto::cookie::CookieState;
use crate::proto::messages::{
    COOKIE_REPLY_LEN, INITIATION_LEN, MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT, RESPONSE_LEN,
};
use crate::proto::{Decapsulated, DropReason, Encapsulated, HEADROOM, PublicKey, TAILROOM};
use crate::testkit::packet::ipv4;
use crate::testkit::pair::{
    ADDR_A, INNER4_A, INNER4_B, INNER6_A, INNER6_B, Pair, check_decapsulated,
};

/// Feeds the attacker's datagram `msg` to one side (`to_a`) and checks the invariant after
/// it ([`assert_recovers`]).
pub fn attack(p: &mut Pair, to_a: bool, msg: &[u8]) {
    let (r, answers) = p.garbage_answered(to_a, msg);
    assert_recovers(p, matches!(r, Decapsulated::Dropped(_)) && answers == 0);
}

/// The invariant after an attacker's datagram.
///
/// Garbage that was refused without an answer (`at_once`) must leave the pair working at
/// once. Otherwise the pair must work again within 48 s of virtual time:
///
/// - Garbage that was accepted was an authentic message with at most its unauthenticated
///   fields changed (a sender index: only mac1 covers it, and anyone can compute mac1), which
///   an attacker on the path can do to any peer: the session may break, but the timers must
///   mend it (a new handshake after KEEPALIVE_TIMEOUT + REKEY_TIMEOUT without an answer).
/// - Garbage that was refused but answered changed what the receiver does next: a cookie
///   reply under load, or, for data with an unknown index from the peer's own endpoint, a
///   handshake of its own (the restart recovery of `proto/device/revive.rs`). That handshake
///   can cross one the other side has in flight; both then end up refusing each other's
///   response, exactly as two kernel peers that initiate at once do, and the retries sort it
///   out (the `initiation` target found this, see fuzz/README.md).
///
/// Time moves in 5 ms steps, never in a jump: when both sides retry a handshake at once (each
/// consumes the other's initiation, which replaces its own, and each then refuses the other's
/// response), what separates them is the retry's random jitter of up to 333 ms, as in the
/// kernel; the step plays the part of the network delay within which two initiations cross.
/// A 6-second jump fires both retries at the same instant and keeps them in step for ever,
/// and a 20 ms step let the fuzzer line up both sides' jitter four rounds in a row through
/// the kit's fixed seeds (the session target found both; see fuzz/README.md).
pub fn assert_recovers(p: &mut Pair, at_once: bool) {
    if at_once {
        p.assert_works();
        return;
    }
    let mut last = String::new();
    for _ in 0..8 {
        p.advance(Duration::from_secs(6), Duration::from_millis(5));
        match p.probe() {
            Ok(()) => return,
            Err(e) => last = e,
        }
    }
    panic!("the pair did not recover within 48 s: {last}");
}

/// How a fuzz input becomes a datagram of one message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The type word (type byte, three zero bytes), then the fuzz bytes.
    Raw,
    /// The real message XOR the fuzz bytes (its length; missing bytes are zero, so an
    /// empty input gives the real message back).
    Mutate,
    /// The real message's first `header_len` bytes (type and indices, so the lookups
    /// succeed), then the fuzz bytes.
    Header,
}

/// The first input byte chooses the mode (bits 0-1), whether the receiver is under load
/// (bit 2) and whether mac1 is recomputed over the result (bit 3), so that bytes behind the
/// MAC check are reachable. The rest is data.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    pub mode: Mode,
    pub under_load: bool,
    pub fix_mac1: bool,
    pub data: &'a [u8],
}

impl<'a> Plan<'a> {
    pub fn parse(input: &'a [u8]) -> Option<Plan<'a>> {
        let (&flags, data) = input.split_first()?;
        let mode = match flags & 3 {
            0 => Mode::Raw,
            1 | 3 => Mode::Mutate,
            _ => Mode::Header,
        };
        Some(Plan {
            mode,
            under_load: flags & 4 != 0,
            fix_mac1: flags & 8 != 0,
            data,
        })
    }

    pub fn build(&self, ty: u8, template: &[u8], header_len: usize) -> Vec<u8> {
        match self.mode {
            Mode::Raw => {
                let mut m = vec![ty, 0, 0, 0];
                m.extend_from_slice(self.data);
                m
            }
            Mode::Mutate => {
                let mut m = template.to_vec();
                for (b, x) in m.iter_mut().zip(self.data) {
                    *b ^= x;
                }
                m
            }
            Mode::Header => {
                let mut m = template[..header_len.min(template.len())].to_vec();
                m.extend_from_slice(self.data);
                m
            }
        }
    }

    /// Recomputes mac1 (and a zero mac2) as a sender would for `receiver`, when asked and the
    /// message has the handshake length `len`.
    pub fn fix_macs(&self, msg: &mut [u8], receiver: &PublicKey, len: usize) {
        if self.fix_mac1 && msg.len() == len {
            CookieState::new(receiver.as_bytes()).add_macs(msg, Duration::ZERO);
        }
    }
}

// ---------------------------------------------------------------- set-ups

/// Each target's starting state, built once per thread and cloned for every input: the
/// handshakes that build it are most of the work otherwise, and a clone is the same state
/// byte for byte (devices, RNGs, clock), so an input still replays alone.
pub(super) fn setup<T: Clone + 'static>(
    cell: &'static std::thread::LocalKey<std::cell::OnceCell<T>>,
    build: fn() -> T,
) -> T {
    cell.with(|c| c.get_or_init(build).clone())
}

thread_local! {
    pub(super) static PENDING_SETUP: std::cell::OnceCell<(Pair, Vec<u8>)> = const { std::cell::OnceCell::new() };
    pub(super) static RESPONDED_SETUP: std::cell::OnceCell<(Pair, Vec<u8>)> = const { std::cell::OnceCell::new() };
    static COOKIED: std::cell::OnceCell<(Pair, Vec<u8>)> = const { std::cell::OnceCell::new() };
    pub(super) static ESTABLISHED_SETUP: std::cell::OnceCell<Pair> = const { std::cell::OnceCell::new() };
    static SEALED: std::cell::OnceCell<(Pair, Vec<u8>)> = const { std::cell::OnceCell::new() };
}

/// `a`'s initiation in flight, `b` has answered it: the pair and `b`'s real response (which
/// never reaches `a`).
pub(super) fn responded() -> (Pair, Vec<u8>) {
    let (mut h, init) = Pair::pending();
    h.deliver(true, &init);
    let template = match h.take_wire().as_slice() {
        [(false, r)] if r.len() == RESPONSE_LEN => r.clone(),
        other => panic!(
            "expected one response from b, got {} datagrams",
            other.len()
        ),
    };
    (h, template)
}

/// `a`'s initiation in flight, `b` under load has answered it with a cookie reply: the pair
/// and the reply.
fn cookied() -> (Pair, Vec<u8>) {
    let (mut h, init) = Pair::pending();
    // (b must not know a's endpoint: from there it would answer at once, see
    // proto/device/handshake.rs.)
    let peer_a = h.b.peer;
    h.b.dev.set_endpoint(peer_a, None);
    h.b.dev.set_under_load(h.now);
    h.deliver(true, &init);
    let template = match h.take_wire().as_slice() {
        [(false, r)] if r.len() == COOKIE_REPLY_LEN => r.clone(),
        other => panic!(
            "expected one cookie reply from b, got {} datagrams",
            other.len()
        ),
    };
    (h, template)
}

/// An established session and a real data packet a -> b, sealed but not delivered.
fn sealed() -> (Pair, Vec<u8>) {
    let mut h = Pair::established();
    let packet = ipv4(INNER4_A, INNER4_B, b"template payload");
    h.send_ip(true, &packet);
    let template = match h.take_wire().as_slice() {
        [(true, d)] => d.clone(),
        other => panic!(
            "expected one data packet from a, got {} datagrams",
            other.len()
        ),
    };
    (h, template)
}

// ---------------------------------------------------------------- target bodies

/// The device targets (name, body).
pub const TARGETS: &[super::Target] = &[
    ("initiation", fuzz_initiation),
    ("response", fuzz_response),
    ("cookie_reply", fuzz_cookie_reply),
    ("transport", fuzz_transport),
    ("datagram", fuzz_datagram),
    ("tun_packet", fuzz_tun_packet),
];

/// Handshake initiations at a responder with no session yet, also under load.
pub fn fuzz_initiation(input: &[u8]) {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    let (mut h, template) = setup(&PENDING_SETUP, Pair::pending);
    // Header: type and sender index.
    let mut msg = plan.build(MESSAGE_INITIATION, &template, 8);
    plan.fix_macs(&mut msg, &h.b.public, INITIATION_LEN);
    if plan.under_load {
        h.b.dev.set_under_load(h.now);
    }
    attack(&mut h, false, &msg);
}

/// Handshake responses at an initiator whose initiation is in flight, also under load.
pub fn fuzz_response(input: &[u8]) {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    // b answered the real initiation; the answer is the template and never reaches a.
    let (mut h, template) = setup(&RESPONDED_SETUP, responded);
    // Header: type, sender and receiver index (a's handshake).
    let mut msg = plan.build(MESSAGE_RESPONSE, &template, 12);
    plan.fix_macs(&mut msg, &h.a.public, RESPONSE_LEN);
    if plan.under_load {
        h.a.dev.set_under_load(h.now);
    }
    attack(&mut h, true, &msg);
}

/// Cookie replies at an initiator whose initiation is in flight, also under load.
pub fn fuzz_cookie_reply(input: &[u8]) {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    // b under load answered the real initiation (no mac2) with a cookie reply: the template.
    let (mut h, template) = setup(&COOKIED, cookied);
    // Header: type and receiver index (a's handshake). A cookie reply carries no mac1.
    let msg = plan.build(MESSAGE_COOKIE_REPLY, &template, 8);
    if plan.under_load {
        h.a.dev.set_under_load(h.now);
    }
    attack(&mut h, true, &msg);
}

/// Transport messages at a device with an established session.
pub fn fuzz_transport(input: &[u8]) {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    // A real data packet a -> b, sealed but not delivered: the template.
    let (mut h, template) = setup(&SEALED, sealed);
    // Header: type and receiver index (b's session), so the keypair lookup succeeds.
    let msg = plan.build(MESSAGE_TRANSPORT, &template, 8);
    if plan.under_load {
        h.b.dev.set_under_load(h.now);
    }
    attack(&mut h, false, &msg);
}

/// Arbitrary bytes as a UDP datagram at a device with an established session.
pub fn fuzz_datagram(input: &[u8]) {
    let mut h = setup(&ESTABLISHED_SETUP, Pair::established);
    attack(&mut h, false, input);
}

/// Arbitrary bytes as an IP packet from the TUN device, with an established session.
pub fn fuzz_tun_packet(input: &[u8]) {
    let Some((&flags, data)) = input.split_first() else {
        return;
    };
    let mut packet = data.to_vec();
    match flags & 3 {
        1 if packet.len() >= 20 => {
            packet[0] = 0x40 | (packet[0] & 0x0f);
            packet[12..16].copy_from_slice(&INNER4_A);
            packet[16..20].copy_from_slice(&INNER4_B);
        }
        2 if packet.len() >= 40 => {
            packet[0] = 0x60 | (packet[0] & 0x0f);
            packet[8..24].copy_from_slice(&INNER6_A);
            packet[24..40].copy_from_slice(&INNER6_B);
        }
        _ => {}
    }

    let mut h = setup(&ESTABLISHED_SETUP, Pair::established);
    let now = h.now;
    let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
    if let Encapsulated::Send { len, .. } = h.a.dev.encapsulate(&mut buf, packet.len(), now) {
        assert!(len <= buf.len(), "Send length {len} beyond the buffer");
        let mut datagram = buf[..len].to_vec();
        let r = h.b.dev.decapsulate(ADDR_A, &mut datagram, len, now);
        check_decapsulated(&r, len, datagram.len());
        match &r {
            Decapsulated::Deliver { range, .. } => {
                // The IP length field may claim more than was sent, up to the padding.
                let delivered = &datagram[range.clone()];
                let n = delivered.len().min(packet.len());
                assert_eq!(
                    &delivered[..n],
                    &packet[..n],
                    "delivered bytes differ from the sent packet"
                );
                assert!(
                    delivered[n..].iter().all(|&b| b == 0),
                    "delivered bytes past the packet are not padding"
                );
            }
            Decapsulated::Dropped(
                DropReason::DecryptFailed
                | DropReason::ReplayedCounter
                | DropReason::UnknownReceiverIndex,
            ) => panic!("a packet sealed by a did not open at b: {r:?}"),
            _ => {}
        }
    }
    h.drain(true);
    h.drain(false);
    h.run();
    h.assert_works();
}
