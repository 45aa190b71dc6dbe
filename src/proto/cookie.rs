//! mac1, mac2 and cookie replies (whitepaper section 5.4.4 and 5.4.7).
//!
//! mac1 proves the sender knows our public key and is checked before any Diffie-Hellman. Under
//! load, a handshake message must also carry mac2, a MAC under a cookie that proves the sender
//! can receive at its source address; without it the sender gets a 64-byte cookie reply.

use std::net::SocketAddr;
use std::time::Duration;

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::crypto::{TAG_LEN, ct_eq, hash, mac, xaead_open, xaead_seal};
use super::error::DropReason;
use super::messages::{COOKIE_REPLY_LEN, MESSAGE_COOKIE_REPLY, cookie_reply, write_type};

const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";

/// The responder's cookie secret lives this long.
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);
/// An initiator stops using a cookie a little before the responder's secret rotates.
const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);

/// mac1 covers everything before it; mac2 everything before it (including mac1).
fn mac1_range(msg: &[u8]) -> (usize, usize) {
    let mac1_at = msg.len() - 32;
    (mac1_at, mac1_at + 16)
}

/// The source address as the cookie binds it: IP bytes, then the port, big-endian.
fn address_bytes(src: SocketAddr, out: &mut [u8; 18]) -> &[u8] {
    let port = src.port().to_be_bytes();
    match src {
        SocketAddr::V4(a) => {
            out[..4].copy_from_slice(&a.ip().octets());
            out[4..6].copy_from_slice(&port);
            &out[..6]
        }
        SocketAddr::V6(a) => {
            out[..16].copy_from_slice(&a.ip().octets());
            out[16..18].copy_from_slice(&port);
            &out[..18]
        }
    }
}

/// Our side as a responder: verifies mac1/mac2 and makes cookie replies.
#[derive(Zeroize, ZeroizeOnDrop)]
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub struct CookieChecker {
    /// HASH(LABEL_MAC1 || S_pub_ours)
    mac1_key: [u8; 32],
    /// HASH(LABEL_COOKIE || S_pub_ours)
    cookie_key: [u8; 32],
    /// R_m, the changing secret cookies are made from.
    secret: [u8; 32],
    #[zeroize(skip)]
    secret_born: Option<Duration>,
}

impl CookieChecker {
    pub fn new(own_public: &[u8; 32]) -> Self {
        CookieChecker {
            mac1_key: hash(&[LABEL_MAC1, own_public]),
            cookie_key: hash(&[LABEL_COOKIE, own_public]),
            secret: [0; 32],
            secret_born: None,
        }
    }

    /// mac1 of a whole handshake message (initiation or response).
    pub fn check_mac1(&self, msg: &[u8]) -> bool {
        let (at, end) = mac1_range(msg);
        ct_eq(&mac(&self.mac1_key, &[&msg[..at]]), &msg[at..end])
    }

    /// τ = MAC(R_m, A): the cookie for `src`, or None when no fresh secret exists.
    fn cookie_for(&self, src: SocketAddr, now: Duration) -> Option<[u8; 16]> {
        let born = self.secret_born?;
        if now.saturating_sub(born) >= COOKIE_REFRESH_TIME {
            return None;
        }
        let mut a = [0u8; 18];
        Some(mac(&self.secret, &[address_bytes(src, &mut a)]))
    }

    /// mac2 of a whole handshake message from `src`.
    pub fn check_mac2(&self, msg: &[u8], src: SocketAddr, now: Duration) -> bool {
        let Some(cookie) = self.cookie_for(src, now) else {
            return false;
        };
        let mac2_at = msg.len() - 16;
        ct_eq(&mac(&cookie, &[&msg[..mac2_at]]), &msg[mac2_at..])
    }

    /// The cookie reply to a handshake message `msg` (whose sender index is `sender`) from
    /// `src`: msg.cookie = XAEAD(HASH(LABEL_COOKIE || S_pub), nonce, τ, mac1 of msg).
    pub fn create_reply<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        msg: &[u8],
        sender: u32,
        src: SocketAddr,
        now: Duration,
        rng: &mut R,
    ) -> [u8; COOKIE_REPLY_LEN] {
        let fresh = self
            .secret_born
            .is_some_and(|born| now.saturating_sub(born) < COOKIE_REFRESH_TIME);
        if !fresh {
            rng.fill_bytes(&mut self.secret);
            self.secret_born = Some(now);
        }
        let mut a = [0u8; 18];
        let cookie = mac(&self.secret, &[address_bytes(src, &mut a)]);
        let mut out = [0u8; COOKIE_REPLY_LEN];
        write_type(&mut out, MESSAGE_COOKIE_REPLY);
        out[cookie_reply::RECEIVER..cookie_reply::RECEIVER + 4]
            .copy_from_slice(&sender.to_le_bytes());
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        out[cookie_reply::NONCE].copy_from_slice(&nonce);
        let (at, end) = mac1_range(msg);
        let sealed = &mut out[cookie_reply::COOKIE];
        sealed[..16].copy_from_slice(&cookie);
        xaead_seal(&self.cookie_key, &nonce, sealed, &msg[at..end]);
        out
    }
}

/// Our side as an initiator towards one peer: adds mac1/mac2, keeps the latest cookie.
#[derive(Zeroize, ZeroizeOnDrop)]
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub struct CookieState {
    /// HASH(LABEL_MAC1 || S_pub_peer)
    mac1_key: [u8; 32],
    /// HASH(LABEL_COOKIE || S_pub_peer)
    cookie_key: [u8; 32],
    cookie: [u8; 16],
    #[zeroize(skip)]
    cookie_born: Option<Duration>,
    /// mac1 of the last handshake message we sent: a cookie reply must be bound to it.
    last_mac1: Option<[u8; 16]>,
}

impl CookieState {
    pub fn new(peer_public: &[u8; 32]) -> Self {
        CookieState {
            mac1_key: hash(&[LABEL_MAC1, peer_public]),
            cookie_key: hash(&[LABEL_COOKIE, peer_public]),
            cookie: [0; 16],
            cookie_born: None,
            last_mac1: None,
        }
    }

    /// Fills mac1 and mac2 (the last 32 bytes) of a handshake message we are about to send.
    pub fn add_macs(&mut self, msg: &mut [u8], now: Duration) {
        let (at, end) = mac1_range(msg);
        let mac1 = mac(&self.mac1_key, &[&msg[..at]]);
        msg[at..end].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let usable = self.cookie_born.is_some_and(|born| {
            now.saturating_sub(born) < COOKIE_REFRESH_TIME - COOKIE_SECRET_LATENCY
        });
        let mac2 = if usable {
            mac(&self.cookie, &[&msg[..end]])
        } else {
            [0; 16]
        };
        msg[end..].copy_from_slice(&mac2);
    }

    /// Takes a cookie reply addressed to one of our handshakes. The next handshake message we
    /// send carries mac2 under it: for an initiation in flight the device resends at once
    /// (once per initiation, see `device/handshake.rs`), not at the retransmit timer.
    pub fn consume_reply(
        &mut self,
        reply: &[u8; COOKIE_REPLY_LEN],
        now: Duration,
    ) -> Result<(), DropReason> {
        let Some(last_mac1) = self.last_mac1 else {
            return Err(DropReason::UnexpectedHandshakeMessage);
        };
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&reply[cookie_reply::NONCE]);
        let mut sealed = [0u8; 16 + TAG_LEN];
        sealed.copy_from_slice(&reply[cookie_reply::COOKIE]);
        xaead_open(&self.cookie_key, &nonce, &mut sealed, &last_mac1)
            .map_err(|_| DropReason::InvalidCookieReply)?;
        self.cookie.copy_from_slice(&sealed[..16]);
        sealed.zeroize();
        self.cookie_born = Some(now);
        self.last_mac1 = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn src() -> SocketAddr {
        "192.0.2.7:51820".parse().unwrap()
    }

    #[test]
    fn mac1_binds_the_responder_key() {
        let responder = [9u8; 32];
        let mut st = CookieState::new(&responder);
        let mut msg = [0x55u8; 148];
        st.add_macs(&mut msg, Duration::ZERO);
        assert!(CookieChecker::new(&responder).check_mac1(&msg));
        assert!(!CookieChecker::new(&[8u8; 32]).check_mac1(&msg));
        assert_eq!(&msg[132..], &[0u8; 16], "no cookie yet: mac2 is zero");
        msg[3] ^= 1;
        assert!(!CookieChecker::new(&responder).check_mac1(&msg));
    }

    #[test]
    fn cookie_round_trip_gives_valid_mac2() {
        let mut rng = StdRng::seed_from_u64(1);
        let responder = [9u8; 32];
        let mut checker = CookieChecker::new(&responder);
        let mut st = CookieState::new(&responder);
        let now = Duration::from_secs(1000);
        let mut msg = [0x11u8; 148];
        st.add_macs(&mut msg, now);
        assert!(!checker.check_mac2(&msg, src(), now));
        let reply = checker.create_reply(&msg, 77, src(), now, &mut rng);
        assert_eq!(u32::from_le_bytes(reply[4..8].try_into().unwrap()), 77);
        st.consume_reply(&reply, now).unwrap();
        // A second copy of the reply is refused: it was bound to a mac1 already answered.
        assert_eq!(
            st.consume_reply(&reply, now),
            Err(DropReason::UnexpectedHandshakeMessage)
        );
        let mut msg2 = [0x22u8; 148];
        st.add_macs(&mut msg2, now + Duration::from_secs(1));
        assert!(checker.check_mac2(&msg2, src(), now + Duration::from_secs(1)));
        // Another source address or port does not share the cookie.
        assert!(!checker.check_mac2(&msg2, "192.0.2.7:51821".parse().unwrap(), now));
        // After the secret rotates the cookie is worthless, and the initiator stops using it.
        assert!(!checker.check_mac2(&msg2, src(), now + COOKIE_REFRESH_TIME));
        let mut msg3 = [0x33u8; 148];
        st.add_macs(&mut msg3, now + COOKIE_REFRESH_TIME);
        assert_eq!(&msg3[132..], &[0u8; 16]);
    }

    #[test]
    fn forged_cookie_reply_is_refused() {
        let mut rng = StdRng::seed_from_u64(2);
        let responder = [9u8; 32];
        let mut checker = CookieChecker::new(&responder);
        let mut st = CookieState::new(&responder);
        let mut msg = [0x11u8; 92];
        st.add_macs(&mut msg, Duration::ZERO);
        let mut reply = checker.create_reply(&msg, 1, src(), Duration::ZERO, &mut rng);
        reply[40] ^= 1;
        assert_eq!(
            st.consume_reply(&reply, Duration::ZERO),
            Err(DropReason::InvalidCookieReply)
        );
        // A reply from a checker with another key (another responder) is refused too.
        let mut other = CookieChecker::new(&[1u8; 32]);
        let reply = other.create_reply(&msg, 1, src(), Duration::ZERO, &mut rng);
        assert_eq!(
            st.consume_reply(&reply, Duration::ZERO),
            Err(DropReason::InvalidCookieReply)
        );
    }
}
