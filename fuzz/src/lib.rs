//! The shared harness of tandem's fuzz targets.
//!
//! Two `Device`s (`a` initiates, `b` responds) are wired back to back in virtual time, as in
//! `tests/common/pair.rs`. A target builds the state its message type needs (a pending
//! handshake or an established session), takes a real message of that type as a template,
//! turns the fuzz input into a datagram (see [`Plan`]), feeds it to `decapsulate`, and then
//! checks the invariants:
//!
//! - no panic (libFuzzer reports it; AddressSanitizer reports memory errors);
//! - every `Deliver` range lies inside the datagram that was handed in;
//! - every `Transmit` fits the caller's buffer;
//! - after the garbage, the real peers still handshake and move data both ways: at once when
//!   the garbage was refused, within a bounded time when it was accepted (see
//!   [`Harness::assert_recovers`]).
//!
//! Keys, RNG seeds and clocks are constants, so a crashing input replays byte for byte: each
//! input starts from a fresh pair (a few X25519 operations, well under a millisecond).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tandem::proto::DropReason;
use tandem::proto::cookie::CookieState;
use tandem::proto::{
    Decapsulated, Device, Encapsulated, HEADROOM, Now, PeerConfig, PrivateKey, PublicKey, TAILROOM,
};

pub use tandem::proto::messages::{
    COOKIE_REPLY_LEN, INITIATION_LEN, MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT, RESPONSE_LEN,
};

/// Outer addresses of the two sides.
pub const ADDR_A: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1);
pub const ADDR_B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 2);
/// Inner addresses: each side owns one IPv4 and one IPv6 host route.
pub const INNER4_A: [u8; 4] = [10, 0, 0, 1];
pub const INNER4_B: [u8; 4] = [10, 0, 0, 2];
pub const INNER6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const INNER6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// Room for any datagram `poll_transmit` writes (a full packet with headroom and tailroom).
const OUT_BUF: usize = 4096;
/// Bound on deliveries per `run`, so a feedback loop shows up as a failure, not a hang.
const MAX_DELIVERIES: usize = 256;

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from_bytes([seed; 32]).clamped()
}

/// An IPv4 packet (protocol UDP, no options) carrying `payload`.
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

/// An IPv6 packet (next header UDP) carrying `payload`.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    p[40..].copy_from_slice(payload);
    p
}

/// Checks what `decapsulate` returned for a datagram of `len` bytes in a buffer of `buf_len`.
pub fn check_decapsulated(r: &Decapsulated, len: usize, buf_len: usize) {
    if let Decapsulated::Deliver { range, .. } = r {
        assert!(
            range.start <= range.end && range.end <= len && len <= buf_len,
            "Deliver range {range:?} outside the {len}-byte datagram"
        );
    }
}

pub struct Harness {
    pub a: Device,
    pub b: Device,
    pub a_public: PublicKey,
    pub b_public: PublicKey,
    pub now: Now,
    /// Datagrams in flight: (sent by a?, bytes).
    wire: Vec<(bool, Vec<u8>)>,
    pub delivered_a: Vec<Vec<u8>>,
    pub delivered_b: Vec<Vec<u8>>,
    /// A counter that makes every probe packet of `assert_works` distinct.
    probe: u32,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// Two devices that know each other (keys, endpoints, inner addresses); no session yet.
    pub fn new() -> Harness {
        let (ka, kb) = (key(1), key(2));
        let (a_public, b_public) = (ka.public_key(), kb.public_key());
        let mut a = Device::new(Some(ka), [1; 32]);
        let mut b = Device::new(Some(kb), [2; 32]);
        let mut ca = PeerConfig::new(b_public);
        ca.endpoint = Some(ADDR_B);
        ca.allowed_ips = vec![
            (IpAddr::V4(Ipv4Addr::from(INNER4_B)), 32),
            (IpAddr::V6(Ipv6Addr::from(INNER6_B)), 128),
        ];
        let mut cb = PeerConfig::new(a_public);
        cb.endpoint = Some(ADDR_A);
        cb.allowed_ips = vec![
            (IpAddr::V4(Ipv4Addr::from(INNER4_A)), 32),
            (IpAddr::V6(Ipv6Addr::from(INNER6_A)), 128),
        ];
        assert!(a.upsert_peer(&ca).is_ok(), "configuring a's peer");
        assert!(b.upsert_peer(&cb).is_ok(), "configuring b's peer");
        Harness {
            a,
            b,
            a_public,
            b_public,
            now: Now::new(
                Duration::from_secs(1000),
                Duration::from_secs(1_700_000_000),
            ),
            wire: Vec::new(),
            delivered_a: Vec::new(),
            delivered_b: Vec::new(),
            probe: 0,
        }
    }

    /// `a` has sent its initiation (returned, not delivered) and waits for the response;
    /// its first packet is staged.
    pub fn pending() -> (Harness, Vec<u8>) {
        let mut h = Harness::new();
        let first = ipv4(INNER4_A, INNER4_B, b"first");
        assert_eq!(h.send_ip(true, &first), Encapsulated::Queued);
        let wire = h.take_wire();
        let init = match wire.as_slice() {
            [(true, init)] if init.len() == INITIATION_LEN => init.clone(),
            other => panic!(
                "expected one initiation from a, got {} datagrams",
                other.len()
            ),
        };
        (h, init)
    }

    /// A session in both directions: `a` initiated, `b` has seen `a`'s first data packet.
    pub fn established() -> Harness {
        let (mut h, init) = Harness::pending();
        h.wire.push((true, init));
        h.run();
        assert_eq!(h.delivered_b.len(), 1, "first packet arrives at b");
        h
    }

    fn side(&mut self, a: bool) -> &mut Device {
        if a { &mut self.a } else { &mut self.b }
    }

    pub fn take_wire(&mut self) -> Vec<(bool, Vec<u8>)> {
        std::mem::take(&mut self.wire)
    }

    /// An IP packet into one side's TUN input; a direct `Send` goes on the wire.
    pub fn send_ip(&mut self, from_a: bool, packet: &[u8]) -> Encapsulated {
        let now = self.now;
        let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        let r = self.side(from_a).encapsulate(&mut buf, packet.len(), now);
        if let Encapsulated::Send { len, .. } = r {
            assert!(len <= buf.len(), "Send length {len} beyond the buffer");
            self.wire.push((from_a, buf[..len].to_vec()));
        }
        self.drain(from_a);
        r
    }

    /// Collects everything `poll_transmit` has; each datagram must fit the buffer.
    fn poll_all(&mut self, a: bool) -> Vec<Vec<u8>> {
        let now = self.now;
        let mut out = vec![0u8; OUT_BUF];
        let mut got = Vec::new();
        // Bounded: the control queue and the staged packets are finite.
        for _ in 0..MAX_DELIVERIES {
            let Some(t) = self.side(a).poll_transmit(&mut out, now) else {
                return got;
            };
            assert!(t.len > 0 && t.len <= out.len(), "Transmit length {}", t.len);
            got.push(out[..t.len].to_vec());
        }
        panic!("poll_transmit did not run dry");
    }

    pub fn drain(&mut self, a: bool) {
        for d in self.poll_all(a) {
            self.wire.push((a, d));
        }
    }

    /// Hands `datagram` to the other side as if from the sender's address, checked.
    fn decapsulate(&mut self, from_a: bool, datagram: &[u8]) -> (Decapsulated, Vec<u8>) {
        let now = self.now;
        let src = if from_a { ADDR_A } else { ADDR_B };
        // Exactly the datagram's size: any read or write past it is a bug.
        let mut buf = datagram.to_vec();
        let r = self
            .side(!from_a)
            .decapsulate(src, &mut buf, datagram.len(), now);
        check_decapsulated(&r, datagram.len(), buf.len());
        (r, buf)
    }

    /// Delivers one datagram and puts the receiver's answers on the wire.
    pub fn deliver(&mut self, from_a: bool, datagram: &[u8]) -> Decapsulated {
        let (r, buf) = self.decapsulate(from_a, datagram);
        if let Decapsulated::Deliver { range, .. } = &r {
            let p = buf[range.clone()].to_vec();
            if from_a {
                self.delivered_b.push(p);
            } else {
                self.delivered_a.push(p);
            }
        }
        self.drain(!from_a);
        r
    }

    /// Feeds an attacker's datagram to one side (`to_a`): checked like any other, and
    /// whatever it provokes (responses, cookie replies) is lost on the way back.
    pub fn garbage(&mut self, to_a: bool, datagram: &[u8]) -> Decapsulated {
        let (r, _) = self.decapsulate(!to_a, datagram);
        self.poll_all(to_a);
        r
    }

    /// Delivers what is on the wire until it is quiet (bounded).
    pub fn run(&mut self) {
        for _ in 0..MAX_DELIVERIES {
            if self.wire.is_empty() {
                return;
            }
            let (from_a, d) = self.wire.remove(0);
            self.deliver(from_a, &d);
        }
        panic!("the pair did not go quiet after {MAX_DELIVERIES} datagrams");
    }

    /// Moves time on, fires both sides' timers and delivers what they send.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now.advance(d);
        let now = self.now;
        self.a.update_timers(now);
        self.drain(true);
        self.b.update_timers(now);
        self.drain(false);
        self.run();
    }

    /// After 6 s (past REKEY_TIMEOUT, the one-second under-load hold and the 20 ms
    /// initiation interval), does a packet go a -> b and then one b -> a?
    fn exchange(&mut self) -> Result<(), String> {
        self.advance(Duration::from_secs(6));
        self.probe += 1;
        let ping = ipv4(INNER4_A, INNER4_B, &self.probe.to_be_bytes());
        self.send_ip(true, &ping);
        self.run();
        if self.delivered_b.last() != Some(&ping) {
            return Err(format!("a -> b lost; drops at b: {:?}", nonzero(&self.b)));
        }
        let pong = ipv6(INNER6_B, INNER6_A, &self.probe.to_be_bytes());
        self.send_ip(false, &pong);
        self.run();
        if self.delivered_a.last() != Some(&pong) {
            return Err(format!("b -> a lost; drops at a: {:?}", nonzero(&self.a)));
        }
        Ok(())
    }

    /// The real peers work at once.
    pub fn assert_works(&mut self) {
        if let Err(e) = self.exchange() {
            panic!("the pair does not work after the input: {e}");
        }
    }

    /// The invariant after an attacker's datagram. Refused garbage must leave the pair
    /// working at once. Garbage that was accepted was an authentic message with at most its
    /// unauthenticated fields changed (a sender index: only mac1 covers it, and anyone can
    /// compute mac1), which an attacker on the path can do to any peer: the session may
    /// break, but the timers must mend it (a new handshake after KEEPALIVE_TIMEOUT +
    /// REKEY_TIMEOUT without an answer), so it must work again within 48 s.
    pub fn assert_recovers(&mut self, garbage: &Decapsulated) {
        if matches!(garbage, Decapsulated::Dropped(_)) {
            self.assert_works();
            return;
        }
        let mut last = String::new();
        for _ in 0..8 {
            match self.exchange() {
                Ok(()) => return,
                Err(e) => last = e,
            }
        }
        panic!("the pair did not recover from an accepted input within 48 s: {last}");
    }
}

fn nonzero(d: &Device) -> Vec<(tandem::proto::DropReason, u64)> {
    d.drops().iter().filter(|(_, n)| *n > 0).collect()
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

// ---------------------------------------------------------------- target bodies
//
// Each fuzz target is one of these, so `tests/fuzz_smoke.rs` in the main crate runs the very
// same bodies on generated inputs in every `cargo test` (no libFuzzer needed there).

/// Handshake initiations at a responder with no session yet, also under load.
pub fn fuzz_initiation(input: &[u8]) {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    let (mut h, template) = Harness::pending();
    // Header: type and sender index.
    let mut msg = plan.build(MESSAGE_INITIATION, &template, 8);
    plan.fix_macs(&mut msg, &h.b_public, INITIATION_LEN);
    if plan.under_load {
        h.b.set_under_load(h.now);
    }
    let r = h.garbage(false, &msg);
    h.assert_recovers(&r);
}

/// Handshake responses at an initiator whose initiation is in flight, also under load.
pub fn fuzz_response(input: &[u8]) {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    let (mut h, init) = Harness::pending();
    // b answers the real initiation; the answer is the template and never reaches a.
    h.deliver(true, &init);
    let template = match h.take_wire().as_slice() {
        [(false, r)] if r.len() == RESPONSE_LEN => r.clone(),
        other => panic!(
            "expected one response from b, got {} datagrams",
            other.len()
        ),
    };
    // Header: type, sender and receiver index (a's handshake).
    let mut msg = plan.build(MESSAGE_RESPONSE, &template, 12);
    plan.fix_macs(&mut msg, &h.a_public, RESPONSE_LEN);
    if plan.under_load {
        h.a.set_under_load(h.now);
    }
    let r = h.garbage(true, &msg);
    h.assert_recovers(&r);
}

/// Cookie replies at an initiator whose initiation is in flight, also under load.
pub fn fuzz_cookie_reply(input: &[u8]) {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    let (mut h, init) = Harness::pending();
    // b under load answers the real initiation (no mac2) with a cookie reply: the template.
    h.b.set_under_load(h.now);
    h.deliver(true, &init);
    let template = match h.take_wire().as_slice() {
        [(false, r)] if r.len() == COOKIE_REPLY_LEN => r.clone(),
        other => panic!(
            "expected one cookie reply from b, got {} datagrams",
            other.len()
        ),
    };
    // Header: type and receiver index (a's handshake). A cookie reply carries no mac1.
    let msg = plan.build(MESSAGE_COOKIE_REPLY, &template, 8);
    if plan.under_load {
        h.a.set_under_load(h.now);
    }
    let r = h.garbage(true, &msg);
    h.assert_recovers(&r);
}

/// Transport messages at a device with an established session.
pub fn fuzz_transport(input: &[u8]) {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    let mut h = Harness::established();
    // A real data packet a -> b, sealed but not delivered: the template.
    let packet = ipv4(INNER4_A, INNER4_B, b"template payload");
    h.send_ip(true, &packet);
    let template = match h.take_wire().as_slice() {
        [(true, d)] => d.clone(),
        other => panic!(
            "expected one data packet from a, got {} datagrams",
            other.len()
        ),
    };
    // Header: type and receiver index (b's session), so the keypair lookup succeeds.
    let msg = plan.build(MESSAGE_TRANSPORT, &template, 8);
    if plan.under_load {
        h.b.set_under_load(h.now);
    }
    let r = h.garbage(false, &msg);
    h.assert_recovers(&r);
}

/// Arbitrary bytes as a UDP datagram at a device with an established session.
pub fn fuzz_datagram(input: &[u8]) {
    let mut h = Harness::established();
    let r = h.garbage(false, input);
    h.assert_recovers(&r);
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
}
