//! Two tandem `Device`s wired back to back in memory, in virtual time: the harness of the
//! protocol scenarios, the fuzz targets and the benches' setup. Nothing sleeps and nothing
//! touches a socket; every loop is bounded, so a feedback loop fails instead of hanging.
//!
//! `a` is 10.0.0.1 (and fd00::1 with [`Pair::with_ipv6`]) at 192.0.2.1:1, `b` is 10.0.0.2
//! (fd00::2) at 192.0.2.2:2. Keys are [`key`]`(1)` and `key(2)`, RNG seeds `[1; 32]` and
//! `[2; 32]`, the clock starts at [`t0`]: every run replays byte for byte.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::packet::{ipv4, ipv6};
use super::{key, t0};
use crate::proto::messages::INITIATION_LEN;
use crate::proto::prefix::Prefix;
use crate::proto::{
    Decapsulated, Device, DropReason, Encapsulated, HEADROOM, Now, PeerConfig, PeerId,
    PresharedKey, PublicKey, TAILROOM,
};

/// Outer addresses of the two sides.
pub const ADDR_A: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1);
pub const ADDR_B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 2);
/// Inner addresses: an IPv4 host route per side, and an IPv6 one with [`Pair::with_ipv6`].
pub const INNER4_A: [u8; 4] = [10, 0, 0, 1];
pub const INNER4_B: [u8; 4] = [10, 0, 0, 2];
pub const INNER6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const INNER6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// Room for any datagram `poll_transmit` writes (a full packet with headroom and tailroom).
pub const OUT_BUF: usize = 4096;
/// Bound on deliveries per [`Pair::run`] and transmits per [`Pair::drain`].
pub const MAX_DELIVERIES: usize = 1000;

/// Checks what `decapsulate` returned for a datagram of `len` bytes in a buffer of `buf_len`:
/// a `Deliver` range must lie inside the datagram.
pub fn check_decapsulated(r: &Decapsulated, len: usize, buf_len: usize) {
    if let Decapsulated::Deliver { range, .. } = r {
        assert!(
            range.start <= range.end && range.end <= len && len <= buf_len,
            "Deliver range {range:?} outside the {len}-byte datagram"
        );
    }
}

/// The drop counters of `d` that are not zero.
pub fn nonzero_drops(d: &Device) -> Vec<(DropReason, u64)> {
    d.drops().iter().filter(|(_, n)| *n > 0).collect()
}

/// One side of the pair.
#[derive(Clone)]
pub struct Side {
    pub dev: Device,
    pub addr: SocketAddr,
    pub inner: IpAddr,
    pub public: PublicKey,
    /// The other side, as this side's peer.
    pub peer: PeerId,
}

#[derive(Clone)]
pub struct Pair {
    pub a: Side,
    pub b: Side,
    pub now: Now,
    /// Datagrams in flight: (sent by a?, bytes).
    pub wire: Vec<(bool, Vec<u8>)>,
    /// Inner packets each side delivered to its TUN.
    pub delivered_a: Vec<Vec<u8>>,
    pub delivered_b: Vec<Vec<u8>>,
    /// Every datagram each side sent, in order (what [`Pair::wire`] had, before delivery).
    pub sent_a: Vec<Vec<u8>>,
    pub sent_b: Vec<Vec<u8>>,
    /// Makes every probe packet of [`Pair::exchange`] distinct.
    probe: u32,
}

impl Pair {
    /// Two devices that know each other's keys and inner IPv4 addresses, and each other's
    /// endpoint unless `b_knows_a` is false; no session yet.
    pub fn new(psk: Option<PresharedKey>, b_knows_a: bool) -> Pair {
        let (ka, kb) = (key(1), key(2));
        let (pa, pb) = (ka.public_key(), kb.public_key());
        let mut da = Device::new(Some(ka), [1; 32]);
        let mut db = Device::new(Some(kb), [2; 32]);
        let (inner_a, inner_b) = (IpAddr::from(INNER4_A), IpAddr::from(INNER4_B));
        let mut ca = PeerConfig::new(pb);
        ca.preshared_key = psk.clone();
        ca.endpoint = Some(ADDR_B);
        ca.allowed_ips = vec![Prefix::host(inner_b)];
        let mut cb = PeerConfig::new(pa);
        cb.preshared_key = psk;
        cb.endpoint = b_knows_a.then_some(ADDR_A);
        cb.allowed_ips = vec![Prefix::host(inner_a)];
        let peer_a = da.upsert_peer(&ca).expect("configuring a's peer");
        let peer_b = db.upsert_peer(&cb).expect("configuring b's peer");
        Pair {
            a: Side {
                dev: da,
                addr: ADDR_A,
                inner: inner_a,
                public: pa,
                peer: peer_a,
            },
            b: Side {
                dev: db,
                addr: ADDR_B,
                inner: inner_b,
                public: pb,
                peer: peer_b,
            },
            now: t0(),
            wire: Vec::new(),
            delivered_a: Vec::new(),
            delivered_b: Vec::new(),
            sent_a: Vec::new(),
            sent_b: Vec::new(),
            probe: 0,
        }
    }

    /// Adds the IPv6 host routes (fd00::1 for a, fd00::2 for b) to both sides.
    pub fn with_ipv6(mut self) -> Pair {
        let (pa, pb) = (self.a.peer, self.b.peer);
        self.a
            .dev
            .add_allowed_ip(pa, Prefix::host(IpAddr::from(INNER6_B)))
            .expect("fd00::2 at a");
        self.b
            .dev
            .add_allowed_ip(pb, Prefix::host(IpAddr::from(INNER6_A)))
            .expect("fd00::1 at b");
        self
    }

    /// A dual-stack pair in which `a` has sent its initiation (returned, not delivered and
    /// not on the wire) and waits for the response; its first packet is staged.
    pub fn pending() -> (Pair, Vec<u8>) {
        let mut p = Pair::new(None, true).with_ipv6();
        let first = ipv4(INNER4_A, INNER4_B, b"first");
        assert_eq!(p.send_ip(true, &first), Encapsulated::Queued);
        let init = match p.take_wire().as_slice() {
            [(true, init)] if init.len() == INITIATION_LEN => init.clone(),
            other => panic!(
                "expected one initiation from a, got {} datagrams",
                other.len()
            ),
        };
        (p, init)
    }

    /// A dual-stack session in both directions: `a` initiated, `b` has seen `a`'s first
    /// data packet.
    pub fn established() -> Pair {
        let (mut p, init) = Pair::pending();
        p.wire.push((true, init));
        p.run();
        assert_eq!(p.delivered_b.len(), 1, "first packet arrives at b");
        p
    }

    pub fn side(&mut self, a: bool) -> &mut Side {
        if a { &mut self.a } else { &mut self.b }
    }

    /// Everything on the wire, which is left empty.
    pub fn take_wire(&mut self) -> Vec<(bool, Vec<u8>)> {
        std::mem::take(&mut self.wire)
    }

    /// An IPv4/UDP-shaped packet from one side's inner address to the other's.
    pub fn packet(&self, from_a: bool, payload: &[u8]) -> Vec<u8> {
        let (src, dst) = if from_a {
            (self.a.inner, self.b.inner)
        } else {
            (self.b.inner, self.a.inner)
        };
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
            unreachable!("inner addresses are IPv4")
        };
        ipv4(s.octets(), d.octets(), payload)
    }

    /// Feeds an IP packet into one side's TUN input; a direct `Send` goes on the wire, and
    /// so does whatever `poll_transmit` has afterwards.
    pub fn send_ip(&mut self, from_a: bool, packet: &[u8]) -> Encapsulated {
        let now = self.now;
        let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        let r = self
            .side(from_a)
            .dev
            .encapsulate(&mut buf, packet.len(), now);
        if let Encapsulated::Send { len, .. } = r {
            assert!(len <= buf.len(), "Send length {len} beyond the buffer");
            self.put_on_wire(from_a, buf[..len].to_vec());
        }
        self.drain(from_a);
        r
    }

    fn put_on_wire(&mut self, from_a: bool, d: Vec<u8>) {
        if from_a {
            self.sent_a.push(d.clone())
        } else {
            self.sent_b.push(d.clone())
        }
        self.wire.push((from_a, d));
    }

    /// Everything `poll_transmit` has for one side; each datagram must fit the buffer.
    pub fn poll_all(&mut self, a: bool) -> Vec<Vec<u8>> {
        let now = self.now;
        let mut out = vec![0u8; OUT_BUF];
        let mut got = Vec::new();
        // Bounded: the control queue and the staged packets are finite.
        for _ in 0..MAX_DELIVERIES {
            let Some(t) = self.side(a).dev.poll_transmit(&mut out, now) else {
                return got;
            };
            assert!(t.len > 0 && t.len <= out.len(), "Transmit length {}", t.len);
            got.push(out[..t.len].to_vec());
        }
        panic!("poll_transmit did not run dry");
    }

    /// Moves everything `poll_transmit` has onto the wire.
    pub fn drain(&mut self, a: bool) {
        for d in self.poll_all(a) {
            self.put_on_wire(a, d);
        }
    }

    /// Hands `datagram` to the other side as if from the sender's address, in a buffer of
    /// exactly its size (any read or write past it is a bug), and checks the result.
    fn decapsulate(&mut self, from_a: bool, datagram: &[u8]) -> (Decapsulated, Vec<u8>) {
        let now = self.now;
        let src = if from_a { self.a.addr } else { self.b.addr };
        let mut buf = datagram.to_vec();
        let r = self
            .side(!from_a)
            .dev
            .decapsulate(src, &mut buf, datagram.len(), now);
        check_decapsulated(&r, datagram.len(), buf.len());
        (r, buf)
    }

    /// Delivers one datagram to the other side and puts its answers on the wire.
    pub fn deliver(&mut self, from_a: bool, datagram: &[u8]) -> Decapsulated {
        let (r, buf) = self.decapsulate(from_a, datagram);
        if let Decapsulated::Deliver { range, .. } = &r {
            let p = buf[range.clone()].to_vec();
            if from_a {
                self.delivered_b.push(p)
            } else {
                self.delivered_a.push(p)
            }
        }
        self.drain(!from_a);
        r
    }

    /// Feeds an attacker's datagram to one side (`to_a`), as if from the other side's
    /// address: checked like any other, and whatever it provokes (responses, cookie
    /// replies) is lost on the way back.
    pub fn garbage(&mut self, to_a: bool, datagram: &[u8]) -> Decapsulated {
        self.garbage_answered(to_a, datagram).0
    }

    /// [`Pair::garbage`], and how many datagrams the receiver sent in answer (all lost).
    pub fn garbage_answered(&mut self, to_a: bool, datagram: &[u8]) -> (Decapsulated, usize) {
        let (r, _) = self.decapsulate(!to_a, datagram);
        let answers = self.poll_all(to_a).len();
        (r, answers)
    }

    /// Delivers everything on the wire, in order, until it is quiet; how many datagrams.
    /// Panics if it is not quiet after [`MAX_DELIVERIES`].
    pub fn run(&mut self) -> usize {
        for n in 0..MAX_DELIVERIES {
            if self.wire.is_empty() {
                return n;
            }
            let (from_a, d) = self.wire.remove(0);
            self.deliver(from_a, &d);
        }
        panic!("the pair did not go quiet after {MAX_DELIVERIES} datagrams");
    }

    /// Moves time on by `d`, fires both sides' timers and puts what they send on the wire
    /// (not delivered: the caller may drop or reorder it first).
    pub fn tick_timers(&mut self, d: Duration) {
        self.now = self.now.advance(d);
        let now = self.now;
        self.a.dev.update_timers(now);
        self.drain(true);
        self.b.dev.update_timers(now);
        self.drain(false);
    }

    /// Moves time on by `d` once, fires both sides' timers and delivers what they send.
    pub fn tick(&mut self, d: Duration) {
        self.tick_timers(d);
        self.run();
    }

    /// Advances virtual time by `total` in steps of `step`, firing timers and delivering
    /// everything in between.
    pub fn advance(&mut self, total: Duration, step: Duration) {
        let end = self.now.monotonic + total;
        while self.now.monotonic < end {
            self.tick(step);
        }
    }

    /// Advances time but drops everything that is sent (a dead network).
    pub fn advance_dropping(&mut self, total: Duration, step: Duration) {
        let end = self.now.monotonic + total;
        while self.now.monotonic < end {
            self.tick_timers(step);
            self.wire.clear();
        }
    }

    /// After 6 s (past REKEY_TIMEOUT, the one-second under-load hold and the 20 ms
    /// initiation interval), does a packet go a -> b (IPv4) and then one b -> a (IPv6)?
    /// Needs [`Pair::with_ipv6`].
    pub fn exchange(&mut self) -> Result<(), String> {
        self.tick(Duration::from_secs(6));
        self.probe()
    }

    /// Does a packet go a -> b (IPv4) and then one b -> a (IPv6), now?
    pub fn probe(&mut self) -> Result<(), String> {
        self.probe += 1;
        let ping = ipv4(INNER4_A, INNER4_B, &self.probe.to_be_bytes());
        self.send_ip(true, &ping);
        self.run();
        if self.delivered_b.last() != Some(&ping) {
            let drops = nonzero_drops(&self.b.dev);
            return Err(format!("a -> b lost; drops at b: {drops:?}"));
        }
        let pong = ipv6(INNER6_B, INNER6_A, &self.probe.to_be_bytes());
        self.send_ip(false, &pong);
        self.run();
        if self.delivered_a.last() != Some(&pong) {
            let drops = nonzero_drops(&self.a.dev);
            return Err(format!("b -> a lost; drops at a: {drops:?}"));
        }
        Ok(())
    }

    /// The pair works at once: [`Pair::exchange`] succeeds.
    pub fn assert_works(&mut self) {
        if let Err(e) = self.exchange() {
            panic!("the pair does not work: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_handshakes_and_carries_both_families() {
        let mut p = Pair::established();
        assert_eq!(p.delivered_b, vec![ipv4(INNER4_A, INNER4_B, b"first")]);
        p.assert_works();
        assert_eq!(p.delivered_a.len(), 1);
        assert!(nonzero_drops(&p.a.dev).is_empty() && nonzero_drops(&p.b.dev).is_empty());
    }
}
