//! A handshake flood for the attack tests and the fault bench: initiations with a valid mac1
//! for the responder (so they pass the cheap check and cost it a Diffie-Hellman, or a cookie
//! reply once it is under load), sent from several source sockets at a paced rate.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::rng::SplitMix64;
use crate::proto::PublicKey;
use crate::proto::cookie::CookieState;
use crate::proto::messages::INITIATION_LEN;

/// 64 distinct initiations with a valid mac1 for `responder` (random ephemeral and static
/// fields, no mac2): each costs the responder one Diffie-Hellman when it is not under load,
/// and a cookie reply (or nothing, past its budget) when it is.
pub fn messages(responder: &PublicKey) -> Vec<[u8; INITIATION_LEN]> {
    let mut rng = SplitMix64::new(0xf100d);
    let mut cookie = CookieState::new(responder.as_bytes());
    (0..64)
        .map(|_| {
            let mut m = [0u8; INITIATION_LEN];
            for b in m.iter_mut().skip(4) {
                *b = rng.next_u64() as u8;
            }
            m[..4].copy_from_slice(&[1, 0, 0, 0]);
            cookie.add_macs(&mut m, Duration::ZERO);
            m
        })
        .collect()
}

/// Sends `msgs` round robin from `sockets` (round robin too) to `target`, at up to `rate`
/// datagrams a second, until `stop` is set or `limit` has passed. Returns how many it sent.
pub fn send(
    sockets: &[UdpSocket],
    target: SocketAddr,
    msgs: &[[u8; INITIATION_LEN]],
    rate: u64,
    limit: Duration,
    stop: &AtomicBool,
) -> u64 {
    let (Some(_), Some(_)) = (sockets.first(), msgs.first()) else {
        return 0;
    };
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
        // Paced by the clock: catch up to rate * elapsed, in slices of at most 200.
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        for _ in 0..(due - sent).min(200) {
            let s = &sockets[(sent % sockets.len() as u64) as usize];
            let _ = s.send_to(&msgs[(sent % msgs.len() as u64) as usize], target);
            sent += 1;
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Device;
    use crate::proto::{Decapsulated, DropReason};
    use crate::testkit::{key, t0};

    /// The messages pass mac1 at the responder they were made for (and fail only later,
    /// decrypting the random static), and are refused at mac1 by any other.
    #[test]
    fn messages_carry_a_valid_mac1_for_their_responder_only() {
        let mut responder = Device::new(Some(key(5)), [5; 32]);
        let mut other = Device::new(Some(key(6)), [6; 32]);
        let src: SocketAddr = "192.0.2.7:7".parse().expect("literal");
        for m in messages(&key(5).public_key()).iter().take(4) {
            let mut buf = m.to_vec();
            let r = responder.decapsulate(src, &mut buf, m.len(), t0());
            assert_ne!(r, Decapsulated::Dropped(DropReason::InvalidMac1), "{r:?}");
            let mut buf = m.to_vec();
            let r = other.decapsulate(src, &mut buf, m.len(), t0());
            assert_eq!(r, Decapsulated::Dropped(DropReason::InvalidMac1));
        }
    }
}
