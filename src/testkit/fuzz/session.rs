//! The structure-aware session target: an established pair, then a program of up to
//! [`MAX_OPS`] operations read from the input, three bytes each, that a random-bytes target
//! cannot reach (valid traffic in both directions, then that traffic lost, reordered,
//! replayed, corrupted, delayed past rekey and expiry times). Invariants:
//!
//! - whatever a side delivers to its TUN is a packet the other side sent, byte for byte, and
//!   no packet is delivered twice (replays, duplicates and reordering included);
//! - nothing loops: every delivery round goes quiet (the pair's own bound);
//! - afterwards the peers work again within the timers' bound (as in `assert_recovers`).
//!
//! | op (first byte % 8) | what it does (x, y: the next two bytes) |
//! |----|----|
//! | 0, 1 | `a` (0) or `b` (1) sends a new numbered packet, `x % 64` bytes of padding |
//! | 2 | deliver the datagram at `x` on the wire (taken off the wire) |
//! | 3 | replay: deliver again a copy of datagram `x` of everything ever sent (by `a` if `y` is even) |
//! | 4 | corrupt: a copy of wire datagram `x` with byte `y` XORed with the op byte's high bits, delivered |
//! | 5 | lose the datagram at `x` on the wire |
//! | 6 | time passes: `x` half-seconds, times `y % 4 + 1`, then both sides' timers fire |
//! | 7 | deliver everything on the wire, in order |

use std::collections::HashMap;
use std::time::Duration;

use super::device::{assert_recovers, setup};
use crate::testkit::pair::Pair;

/// Most operations per input.
pub const MAX_OPS: usize = 256;

/// Delivers `datagram` from one side (`from_a`) and checks what the other delivered.
fn deliver(h: &mut Pair, from_a: bool, datagram: &[u8], sent: &Sent) {
    let before = if from_a {
        h.delivered_b.len()
    } else {
        h.delivered_a.len()
    };
    h.deliver(from_a, datagram);
    let delivered = if from_a {
        &h.delivered_b
    } else {
        &h.delivered_a
    };
    assert!(
        delivered.len() <= before + 1,
        "one datagram delivered twice"
    );
    if let Some(p) = delivered.get(before) {
        sent.check(from_a, p);
    }
}

/// Every numbered packet each side has sent, by (sent by `a`, number).
#[derive(Default)]
struct Sent(HashMap<(bool, u32), Vec<u8>>);

impl Sent {
    /// Checks a packet the other side delivered: sent by `from_a`'s side, unchanged, and
    /// not delivered before.
    fn check(&self, from_a: bool, packet: &[u8]) {
        // The pair's packets carry a 20-byte IPv4 header, then the number.
        let id = packet
            .get(20..24)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let Some(bytes) = id.and_then(|id| self.0.get(&(from_a, id))) else {
            panic!("delivered a packet the other side never sent: {packet:02x?}");
        };
        assert_eq!(
            bytes.as_slice(),
            packet,
            "delivered bytes differ from the sent packet"
        );
    }

    /// No packet was delivered twice, over the whole run.
    fn no_duplicates(h: &Pair, base_a: usize, base_b: usize) {
        for (from_a, delivered) in [
            (true, &h.delivered_b[base_b..]),
            (false, &h.delivered_a[base_a..]),
        ] {
            let mut seen = std::collections::HashSet::new();
            for p in delivered {
                let id = u32::from_be_bytes([p[20], p[21], p[22], p[23]]);
                assert!(
                    seen.insert(id),
                    "packet {id} from a={from_a} delivered twice"
                );
            }
        }
    }
}

pub fn fuzz_session(input: &[u8]) {
    let mut h = setup(&super::device::ESTABLISHED_SETUP, Pair::established);
    let (base_a, base_b) = (h.delivered_a.len(), h.delivered_b.len());
    let (hist_a, hist_b) = (h.sent_a.len(), h.sent_b.len());
    let mut sent = Sent::default();
    let mut next_id = 1u32;
    for op in input.chunks(3).take(MAX_OPS) {
        let code = op[0];
        let x = op.get(1).copied().unwrap_or(0) as usize;
        let y = op.get(2).copied().unwrap_or(0) as usize;
        match code % 8 {
            0 | 1 => {
                let from_a = code % 8 == 0;
                let mut payload = next_id.to_be_bytes().to_vec();
                payload.resize(4 + x % 64, 0xa5);
                let packet = h.packet(from_a, &payload);
                sent.0.insert((from_a, next_id), packet.clone());
                next_id += 1;
                h.send_ip(from_a, &packet);
            }
            2 if !h.wire.is_empty() => {
                let (from_a, d) = h.wire.remove(x % h.wire.len());
                deliver(&mut h, from_a, &d, &sent);
            }
            3 => {
                let from_a = y % 2 == 0;
                let history = if from_a {
                    &h.sent_a[hist_a..]
                } else {
                    &h.sent_b[hist_b..]
                };
                if !history.is_empty() {
                    let d = history[x % history.len()].clone();
                    deliver(&mut h, from_a, &d, &sent);
                }
            }
            4 if !h.wire.is_empty() => {
                let (from_a, mut d) = h.wire[x % h.wire.len()].clone();
                let at = y % d.len().max(1);
                if let Some(b) = d.get_mut(at) {
                    *b ^= (code >> 3) | 1;
                }
                deliver(&mut h, from_a, &d, &sent);
            }
            5 if !h.wire.is_empty() => {
                h.wire.remove(x % h.wire.len());
            }
            6 => {
                let half_seconds = (x as u64) * (y as u64 % 4 + 1);
                h.tick_timers(Duration::from_millis(500 * half_seconds));
            }
            7 => {
                // Bounded like `Pair::run`, with every delivery checked.
                for _ in 0..crate::testkit::pair::MAX_DELIVERIES {
                    if h.wire.is_empty() {
                        break;
                    }
                    let (from_a, d) = h.wire.remove(0);
                    deliver(&mut h, from_a, &d, &sent);
                }
            }
            _ => {}
        }
    }
    // What is still on the wire arrives late; then the peers must work again.
    for _ in 0..crate::testkit::pair::MAX_DELIVERIES {
        if h.wire.is_empty() {
            break;
        }
        let (from_a, d) = h.wire.remove(0);
        deliver(&mut h, from_a, &d, &sent);
    }
    Sent::no_duplicates(&h, base_a, base_b);
    assert_recovers(&mut h, false);
}
