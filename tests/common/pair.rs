//! A virtual-time harness: two tandem `Device`s wired back to back in memory, for protocol
//! scenarios of the pure core (no sockets, no sleeping).
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tandem::proto::{
    Decapsulated, Device, Encapsulated, HEADROOM, Now, PeerConfig, PeerId, PresharedKey,
    PrivateKey, PublicKey, TAILROOM,
};

pub const BUF: usize = 2048;

pub fn key(seed: u8) -> PrivateKey {
    PrivateKey::from_bytes([seed; 32]).clamped()
}

pub fn t0() -> Now {
    Now::new(
        Duration::from_secs(1000),
        Duration::from_secs(1_700_000_000),
    )
}

/// One side of the pair.
pub struct Side {
    pub dev: Device,
    pub addr: SocketAddr,
    pub inner: IpAddr,
    pub public: PublicKey,
    pub peer: PeerId,
}

pub struct Pair {
    pub a: Side,
    pub b: Side,
    pub now: Now,
    /// Datagrams in flight: (from a?, bytes).
    pub wire: Vec<(bool, Vec<u8>)>,
    pub delivered_a: Vec<Vec<u8>>,
    pub delivered_b: Vec<Vec<u8>>,
    pub sent_a: Vec<Vec<u8>>,
    pub sent_b: Vec<Vec<u8>>,
}

impl Pair {
    /// a = 10.0.0.1 at 192.0.2.1:1, b = 10.0.0.2 at 192.0.2.2:2; both know each other's
    /// endpoint unless `b_knows_a` is false.
    pub fn new(psk: Option<PresharedKey>, b_knows_a: bool) -> Pair {
        let (ka, kb) = (key(1), key(2));
        let (pa, pb) = (ka.public_key(), kb.public_key());
        let addr_a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let addr_b: SocketAddr = "192.0.2.2:2".parse().unwrap();
        let mut da = Device::new(Some(ka), [1; 32]);
        let mut db = Device::new(Some(kb), [2; 32]);
        let mut ca = PeerConfig::new(pb);
        ca.preshared_key = psk.clone();
        ca.endpoint = Some(addr_b);
        ca.allowed_ips = vec![("10.0.0.2".parse().unwrap(), 32)];
        let mut cb = PeerConfig::new(pa);
        cb.preshared_key = psk;
        cb.endpoint = b_knows_a.then_some(addr_a);
        cb.allowed_ips = vec![("10.0.0.1".parse().unwrap(), 32)];
        let peer_a = da.upsert_peer(&ca).unwrap();
        let peer_b = db.upsert_peer(&cb).unwrap();
        Pair {
            a: Side {
                dev: da,
                addr: addr_a,
                inner: "10.0.0.1".parse().unwrap(),
                public: pa,
                peer: peer_a,
            },
            b: Side {
                dev: db,
                addr: addr_b,
                inner: "10.0.0.2".parse().unwrap(),
                public: pb,
                peer: peer_b,
            },
            now: t0(),
            wire: Vec::new(),
            delivered_a: Vec::new(),
            delivered_b: Vec::new(),
            sent_a: Vec::new(),
            sent_b: Vec::new(),
        }
    }

    pub fn side(&mut self, a: bool) -> &mut Side {
        if a { &mut self.a } else { &mut self.b }
    }

    /// An IPv4/UDP-shaped packet from one side's inner address to the other's.
    pub fn packet(&self, from_a: bool, payload: &[u8]) -> Vec<u8> {
        let (src, dst) = if from_a {
            (self.a.inner, self.b.inner)
        } else {
            (self.b.inner, self.a.inner)
        };
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
            unreachable!()
        };
        ipv4(s.octets(), d.octets(), payload)
    }

    /// Feeds an IP packet into one side's TUN input; a direct Send goes on the wire.
    pub fn send_ip(&mut self, from_a: bool, packet: &[u8]) -> Encapsulated {
        let now = self.now;
        let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        let r = self
            .side(from_a)
            .dev
            .encapsulate(&mut buf, packet.len(), now);
        if let Encapsulated::Send { len, .. } = r {
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

    /// Moves everything `poll_transmit` has onto the wire.
    pub fn drain(&mut self, a: bool) {
        let now = self.now;
        let mut out = vec![0u8; BUF];
        let mut got = Vec::new();
        while let Some(t) = self.side(a).dev.poll_transmit(&mut out, now) {
            got.push(out[..t.len].to_vec());
        }
        for d in got {
            self.put_on_wire(a, d);
        }
    }

    /// Delivers one datagram to the other side as if from the sender's address.
    pub fn deliver(&mut self, from_a: bool, d: &[u8]) -> Decapsulated {
        let now = self.now;
        let src = if from_a { self.a.addr } else { self.b.addr };
        let mut buf = vec![0u8; BUF];
        buf[..d.len()].copy_from_slice(d);
        let r = self
            .side(!from_a)
            .dev
            .decapsulate(src, &mut buf, d.len(), now);
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

    /// Delivers everything on the wire until it is quiet (bounded).
    pub fn run(&mut self) -> usize {
        let mut n = 0;
        for _ in 0..1000 {
            if self.wire.is_empty() {
                break;
            }
            let (from_a, d) = self.wire.remove(0);
            self.deliver(from_a, &d);
            n += 1;
        }
        n
    }

    /// Advances virtual time in steps, firing timers and delivering everything in between.
    pub fn advance(&mut self, total: Duration, step: Duration) {
        let end = self.now.monotonic + total;
        while self.now.monotonic < end {
            self.now = self.now.advance(step);
            let now = self.now;
            self.a.dev.update_timers(now);
            self.drain(true);
            self.b.dev.update_timers(now);
            self.drain(false);
            self.run();
        }
    }

    /// Advances time but drops everything that is sent (a dead network).
    pub fn advance_dropping(&mut self, total: Duration, step: Duration) {
        let end = self.now.monotonic + total;
        while self.now.monotonic < end {
            self.now = self.now.advance(step);
            let now = self.now;
            self.a.dev.update_timers(now);
            self.drain(true);
            self.b.dev.update_timers(now);
            self.drain(false);
            self.wire.clear();
        }
    }
}

pub fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..].copy_from_slice(payload);
    p
}

/// The message type byte of a datagram.
pub fn ty(d: &[u8]) -> u8 {
    d[0]
}
