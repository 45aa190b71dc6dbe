//! Protocol scenarios of the pure core in virtual time: two tandem devices back to back.

mod common {
    pub mod pair;
}
use common::pair::*;

use tandem::proto::{Decapsulated, DropReason, Encapsulated, PresharedKey};

#[test]
fn first_packet_triggers_handshake_and_arrives() {
    let mut p = Pair::new(None, true);
    let pkt = p.packet(true, b"hello");
    assert_eq!(p.send_ip(true, &pkt), Encapsulated::Queued);
    assert_eq!(p.wire.len(), 1);
    assert_eq!(ty(&p.wire[0].1), 1, "an initiation goes out");
    p.run();
    assert_eq!(p.delivered_b, vec![pkt.clone()]);
    // b answers directly now that it has a confirmed session.
    let back = p.packet(false, b"world");
    assert!(matches!(p.send_ip(false, &back), Encapsulated::Send { .. }));
    p.run();
    assert_eq!(p.delivered_a, vec![back]);
}

#[test]
fn preshared_key_handshake_and_mismatch() {
    let psk = PresharedKey::from_bytes([7; 32]);
    let mut p = Pair::new(Some(psk), true);
    let pkt = p.packet(true, b"x");
    p.send_ip(true, &pkt);
    p.run();
    assert_eq!(p.delivered_b.len(), 1);

    let mut q = Pair::new(Some(PresharedKey::from_bytes([7; 32])), true);
    let id = q.b.peer;
    q.b.dev
        .set_preshared_key(id, Some(PresharedKey::from_bytes([8; 32])));
    q.send_ip(true, &pkt);
    q.run();
    assert!(q.delivered_b.is_empty());
    assert_eq!(q.a.dev.drops().get(DropReason::HandshakeDecrypt), 1);
}

#[test]
fn responder_without_endpoint_learns_it() {
    let mut p = Pair::new(None, false);
    let back = p.packet(false, b"early");
    assert_eq!(
        p.send_ip(false, &back),
        Encapsulated::Dropped(DropReason::NoEndpoint)
    );
    let pkt = p.packet(true, b"hi");
    p.send_ip(true, &pkt);
    p.run();
    assert!(matches!(p.send_ip(false, &back), Encapsulated::Send { .. }));
    p.run();
    assert_eq!(p.delivered_a, vec![back]);
}

#[test]
fn replayed_transport_packet_is_dropped_without_state_change() {
    let mut p = Pair::new(None, true);
    let pkt = p.packet(true, b"once");
    p.send_ip(true, &pkt);
    p.run();
    let data = p
        .sent_a
        .iter()
        .find(|d| ty(d) == 4 && d.len() > 32)
        .unwrap()
        .clone();
    assert_eq!(
        p.deliver(true, &data),
        Decapsulated::Dropped(DropReason::ReplayedCounter)
    );
    assert_eq!(p.delivered_b.len(), 1);
}
