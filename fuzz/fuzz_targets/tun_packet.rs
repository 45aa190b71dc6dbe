//! Arbitrary bytes as an IP packet from the TUN device, with an established session.
//!
//! The first input byte may patch an IPv4 (1) or IPv6 (2) header's version and addresses
//! onto the rest so that routing finds the peer; whatever is sealed must open at the peer,
//! and what the peer delivers must be what was sent (trimmed to the IP length, or extended
//! into the zero padding when the length field claims more).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::proto::{Decapsulated, DropReason, Encapsulated, HEADROOM, TAILROOM};
use tandem_fuzz::{ADDR_A, Harness, INNER4_A, INNER4_B, INNER6_A, INNER6_B, check_decapsulated};

fuzz_target!(|input: &[u8]| {
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

    let mut h = Harness::established();
    let now = h.now;
    let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
    if let Encapsulated::Send { len, .. } = h.a.encapsulate(&mut buf, packet.len(), now) {
        assert!(len <= buf.len(), "Send length {len} beyond the buffer");
        let mut datagram = buf[..len].to_vec();
        let r = h.b.decapsulate(ADDR_A, &mut datagram, len, now);
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
});
