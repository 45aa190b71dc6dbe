//! The differential target: the same handshake message goes to tandem's core and to
//! boringtun's `Tunn` (an independent implementation: its own parser, Noise code and
//! X25519), and both must make the same decision, accept or refuse. A difference is a bug in
//! one of them, or a place where tandem is stricter or looser than a peer it must work with.
//!
//! Both sides hold the same static keys (`key(1)` initiates, `key(2)` responds) and no
//! preshared key, and neither is under load, so a decision depends on the message alone:
//!
//! - **Initiation** (plan bit 2 clear): the real initiation from tandem's `a`, changed as the
//!   plan says (see [`Plan`]: raw, XOR mutation or header + data; mac1 recomputed when bit 3
//!   is set), goes byte for byte to tandem's `b` and to a boringtun responder.
//! - **Response** (bit 2 set): each implementation's initiator has its own initiation in
//!   flight (ephemeral keys and indices differ), answered by a tandem responder. The same
//!   change is applied to both responses (the same bytes XORed at the same offsets, or the
//!   same data after each real header), mac1 recomputed for `key(1)`, and each goes back to
//!   its own initiator.
//!
//! Accepted means: tandem returns `Done` (a response is queued, or the session is made);
//! boringtun returns anything but an error (the response, or the first keepalive).
//!
//! boringtun's objects cost a Diffie-Hellman or two to build, so one of each is kept per
//! thread and reused while it refuses (a refusal leaves its handshake state as it was) and
//! built afresh after it accepts. If a decision differs, the input is tried again on fresh
//! objects before it counts, so leftover state can never be the cause of a report. The
//! boringtun initiator's ephemeral key comes from the OS, so its response differs from run to
//! run; the decisions do not.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use super::device::{PENDING_SETUP, Plan, RESPONDED_SETUP, setup};
use crate::proto::Decapsulated;
use crate::proto::messages::{INITIATION_LEN, MESSAGE_INITIATION, MESSAGE_RESPONSE, RESPONSE_LEN};
use crate::testkit::pair::Pair;

/// The source address boringtun is told (it keys its rate limiter on it).
const SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// A boringtun `Tunn` with static key `[own; 32]` whose peer is `[peer; 32]`'s public key.
/// Its rate limiter allows every handshake, so it is never under load (nor is tandem here).
fn bt_tunn(own: u8, peer: u8) -> Tunn {
    let secret = x25519::StaticSecret::from([own; 32]);
    let public = x25519::PublicKey::from(&secret);
    let peer = x25519::PublicKey::from(&x25519::StaticSecret::from([peer; 32]));
    let limiter = Arc::new(RateLimiter::new(&public, u64::MAX));
    Tunn::new(secret, peer, None, None, 1, Some(limiter))
}

/// Did boringtun accept `msg`?
fn bt_accepts(tunn: &mut Tunn, msg: &[u8]) -> bool {
    let mut out = vec![0u8; 2048];
    !matches!(
        tunn.decapsulate(Some(SRC), msg, &mut out),
        TunnResult::Err(_)
    )
}

/// A boringtun initiator with its initiation sent to a tandem responder, and that
/// responder's real response.
fn bt_initiator() -> (Tunn, Vec<u8>) {
    let mut tunn = bt_tunn(1, 2);
    let mut out = vec![0u8; 2048];
    let init = match tunn.format_handshake_initiation(&mut out, false) {
        TunnResult::WriteToNetwork(m) if m.len() == INITIATION_LEN => m.to_vec(),
        _ => panic!("boringtun did not make an initiation"),
    };
    let mut p = Pair::new(None, true);
    p.deliver(true, &init);
    match p.take_wire().as_slice() {
        [(false, r)] if r.len() == RESPONSE_LEN => (tunn, r.clone()),
        other => panic!(
            "expected one response to boringtun's initiation, got {} datagrams",
            other.len()
        ),
    }
}

thread_local! {
    static BT_RESPONDER: RefCell<Option<Tunn>> = const { RefCell::new(None) };
    static BT_INITIATOR: RefCell<Option<(Tunn, Vec<u8>)>> = const { RefCell::new(None) };
}

/// tandem's decision on the initiation `msg` (at `b`, no session yet).
fn tandem_initiation(msg: &[u8]) -> bool {
    let (mut h, _) = setup(&PENDING_SETUP, Pair::pending);
    matches!(h.garbage(false, msg), Decapsulated::Done)
}

/// boringtun's decision on the initiation `msg`, on the kept responder or a fresh one.
fn bt_initiation(msg: &[u8], fresh: bool) -> bool {
    BT_RESPONDER.with(|cell| {
        let mut cell = cell.borrow_mut();
        if fresh || cell.is_none() {
            *cell = Some(bt_tunn(2, 1));
        }
        let Some(tunn) = cell.as_mut() else {
            unreachable!("set just above")
        };
        let accepted = bt_accepts(tunn, msg);
        if accepted {
            // It has a session and has seen the timestamp now: the next input needs a new one.
            *cell = None;
        }
        accepted
    })
}

/// tandem's decision on a response changed by `plan` (at `a`, its initiation in flight).
fn tandem_response(plan: &Plan) -> bool {
    let (mut h, template) = setup(&RESPONDED_SETUP, super::device::responded);
    let mut msg = plan.build(MESSAGE_RESPONSE, &template, 12);
    plan.fix_macs(&mut msg, &h.a.public, RESPONSE_LEN);
    matches!(h.garbage(true, &msg), Decapsulated::Done)
}

/// boringtun's decision on its own response changed by `plan`.
fn bt_response(plan: &Plan, public_a: &crate::proto::PublicKey, fresh: bool) -> bool {
    BT_INITIATOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if fresh || cell.is_none() {
            *cell = Some(bt_initiator());
        }
        let Some((tunn, template)) = cell.as_mut() else {
            unreachable!("set just above")
        };
        let mut msg = plan.build(MESSAGE_RESPONSE, template, 12);
        plan.fix_macs(&mut msg, public_a, RESPONSE_LEN);
        let accepted = bt_accepts(tunn, &msg);
        if accepted {
            *cell = None;
        }
        accepted
    })
}

/// Same handshake message to tandem and boringtun: same accept or refuse.
pub fn fuzz_differential(input: &[u8]) {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    // Bit 2 picks the message type here (neither side is under load).
    let response = plan.under_load;
    if response {
        let public_a = setup(&RESPONDED_SETUP, super::device::responded).0.a.public;
        let ours = tandem_response(&plan);
        let mut theirs = bt_response(&plan, &public_a, false);
        if ours != theirs {
            theirs = bt_response(&plan, &public_a, true);
        }
        assert_eq!(
            ours, theirs,
            "response: tandem accepted={ours}, boringtun accepted={theirs}"
        );
    } else {
        let (h, template) = setup(&PENDING_SETUP, Pair::pending);
        let mut msg = plan.build(MESSAGE_INITIATION, &template, 8);
        plan.fix_macs(&mut msg, &h.b.public, INITIATION_LEN);
        let ours = tandem_initiation(&msg);
        let mut theirs = bt_initiation(&msg, false);
        if ours != theirs {
            theirs = bt_initiation(&msg, true);
        }
        assert_eq!(
            ours, theirs,
            "initiation {msg:02x?}: tandem accepted={ours}, boringtun accepted={theirs}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(flags: u8, data: &[u8]) -> Vec<u8> {
        let mut v = vec![flags];
        v.extend_from_slice(data);
        v
    }

    /// The harness can tell both decisions apart: the real messages are accepted by both,
    /// a flipped ciphertext byte (mac1 recomputed) is refused by both.
    #[test]
    fn both_sides_accept_the_real_messages_and_refuse_a_flipped_byte() {
        let (h, init) = setup(&PENDING_SETUP, Pair::pending);
        assert!(tandem_initiation(&init));
        assert!(bt_initiation(&init, true));
        let mut flipped = init.clone();
        flipped[40] ^= 1; // inside the encrypted static key
        Plan::parse(&[0x08])
            .unwrap()
            .fix_macs(&mut flipped, &h.b.public, INITIATION_LEN);
        assert!(!tandem_initiation(&flipped));
        assert!(!bt_initiation(&flipped, true));

        let public_a = h.a.public;
        let real = plan(0x05, &[]);
        let real = Plan::parse(&real).unwrap();
        assert!(tandem_response(&real));
        assert!(bt_response(&real, &public_a, true));
        let mut data = vec![0u8; 60];
        data[50] = 1; // inside the encrypted empty payload's tag
        let bad = plan(0x0d, &data);
        let bad = Plan::parse(&bad).unwrap();
        assert!(!tandem_response(&bad));
        assert!(!bt_response(&bad, &public_a, true));
        // Every one of these agrees through the target itself, too.
        for input in [plan(0x01, &[]), plan(0x05, &[]), plan(0x0d, &data)] {
            fuzz_differential(&input);
        }
    }
}
