//! Handshakes per second: tandem's `Device` and boringtun's `Tunn` side by side.
//!
//! - `initiator`: create an initiation, then consume the response (and send what the new
//!   session sends at once: tandem a staged packet or keepalive, boringtun a keepalive). The
//!   responder's work between the two steps is not timed.
//! - `responder`: consume an initiation and create the response. Initiations are made
//!   beforehand, untimed: each must carry a newer timestamp than the last one accepted, and
//!   tandem also wants 20 ms between accepted initiations, so every initiation is made (and
//!   consumed) 6 s of virtual time after the previous one.
//!
//! Run: `cargo bench --bench handshake`. Issue target: a tandem responder processes at least
//! 5,000 initiations per second per core (200 µs each).

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem::proto::{Decapsulated, Device, Encapsulated, HEADROOM, Now, TAILROOM};
use tandem::testkit::key;
use tandem::testkit::packet::ipv4;
use tandem::testkit::pair::{ADDR_A, ADDR_B, INNER4_A, INNER4_B, Pair};

/// Past REKEY_TIMEOUT (5 s, so the initiator may send again), and with REJECT_AFTER_TIME
/// passed after 31 steps at most; far past the responder's 20 ms between initiations.
const STEP: Duration = Duration::from_secs(6);
/// Beyond REJECT_AFTER_TIME (180 s): the initiator's session is unusable, so the next packet
/// starts a handshake.
const EXPIRE: Duration = Duration::from_secs(200);

/// Two tandem devices, `a` initiating to `b`, with one virtual clock.
struct TandemPair {
    a: Device,
    b: Device,
    now: Now,
    packet: Vec<u8>,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl TandemPair {
    fn new() -> Self {
        // The kit's pair, without its wire: the timed steps below call the devices directly.
        let Pair { a, b, now, .. } = Pair::new(None, true);
        // A 64-byte IPv4 packet 10.0.0.1 -> 10.0.0.2.
        let packet = ipv4(INNER4_A, INNER4_B, &[0; 44]);
        TandemPair {
            a: a.dev,
            b: b.dev,
            now,
            buf: vec![0u8; HEADROOM + packet.len() + TAILROOM],
            packet,
            out: vec![0u8; 2048],
        }
    }

    /// `a` gets a packet for `b` without a usable session: it stages it and sends an
    /// initiation, which is returned.
    fn initiate(&mut self) -> [u8; 148] {
        let len = self.packet.len();
        self.buf[HEADROOM..HEADROOM + len].copy_from_slice(&self.packet);
        let r = self.a.encapsulate(&mut self.buf, len, self.now);
        assert_eq!(r, Encapsulated::Queued, "no usable session at a");
        let t = self.a.poll_transmit(&mut self.out, self.now);
        let mut init = [0u8; 148];
        match t {
            Some(t) if t.len == init.len() => init.copy_from_slice(&self.out[..t.len]),
            other => panic!("expected an initiation, got {other:?}"),
        }
        while self.a.poll_transmit(&mut self.out, self.now).is_some() {}
        init
    }

    /// `b` consumes an initiation and creates its response, which is returned.
    fn respond(&mut self, init: &[u8; 148]) -> [u8; 92] {
        let mut msg = *init;
        let r = self.b.decapsulate(ADDR_A, &mut msg, init.len(), self.now);
        assert_eq!(r, Decapsulated::Done, "b accepts the initiation");
        let mut resp = [0u8; 92];
        match self.b.poll_transmit(&mut self.out, self.now) {
            Some(t) if t.len == resp.len() => resp.copy_from_slice(&self.out[..t.len]),
            other => panic!("expected a response, got {other:?}"),
        }
        resp
    }

    /// `a` consumes the response and sends what the new session sends first.
    fn complete(&mut self, resp: &[u8; 92]) {
        let mut msg = *resp;
        let r = self.a.decapsulate(ADDR_B, &mut msg, resp.len(), self.now);
        assert_eq!(r, Decapsulated::Done, "a accepts the response");
        let mut sent = 0;
        while self.a.poll_transmit(&mut self.out, self.now).is_some() {
            sent += 1;
        }
        assert!(sent > 0, "a sends on its new session");
    }
}

/// boringtun's `Tunn` pair with the same static keys. Each side gets a rate limiter that is
/// never "under load", so no handshake is answered with a cookie reply.
struct BoringPair {
    a: Tunn,
    b: Tunn,
    ip_a: IpAddr,
    ip_b: IpAddr,
    out: Vec<u8>,
}

impl BoringPair {
    fn new() -> Self {
        let (ka, kb) = (key(1), key(2));
        let sa = x25519::StaticSecret::from(*ka.as_bytes());
        let sb = x25519::StaticSecret::from(*kb.as_bytes());
        let pa = x25519::PublicKey::from(*ka.public_key().as_bytes());
        let pb = x25519::PublicKey::from(*kb.public_key().as_bytes());
        let ra = Arc::new(RateLimiter::new(&pa, u64::MAX));
        let rb = Arc::new(RateLimiter::new(&pb, u64::MAX));
        BoringPair {
            a: Tunn::new(sa, pb, None, None, 1, Some(ra)),
            b: Tunn::new(sb, pa, None, None, 2, Some(rb)),
            ip_a: ADDR_A.ip(),
            ip_b: ADDR_B.ip(),
            out: vec![0u8; 2048],
        }
    }

    fn initiate(&mut self) -> [u8; 148] {
        let mut init = [0u8; 148];
        match self.a.format_handshake_initiation(&mut self.out, true) {
            TunnResult::WriteToNetwork(m) if m.len() == init.len() => init.copy_from_slice(m),
            _ => panic!("boringtun: expected an initiation"),
        }
        init
    }

    fn respond(&mut self, init: &[u8; 148]) -> [u8; 92] {
        let mut resp = [0u8; 92];
        match self.b.decapsulate(Some(self.ip_a), init, &mut self.out) {
            TunnResult::WriteToNetwork(m) if m.len() == resp.len() => resp.copy_from_slice(m),
            _ => panic!("boringtun: expected a response"),
        }
        resp
    }

    fn complete(&mut self, resp: &[u8; 92]) {
        match self.a.decapsulate(Some(self.ip_b), resp, &mut self.out) {
            TunnResult::WriteToNetwork(m) => {
                black_box(m);
            }
            _ => panic!("boringtun: expected a keepalive after the response"),
        }
    }
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));

    let mut t = TandemPair::new();
    g.bench_function("tandem/initiator", |bench| {
        bench.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                t.now = t.now.advance(EXPIRE);
                let start = Instant::now();
                let init = t.initiate();
                timed += start.elapsed();
                let resp = t.respond(&init);
                let start = Instant::now();
                t.complete(&resp);
                timed += start.elapsed();
            }
            timed
        })
    });

    let mut bt = BoringPair::new();
    g.bench_function("boringtun/initiator", |bench| {
        bench.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let init = bt.initiate();
                timed += start.elapsed();
                let resp = bt.respond(&init);
                let start = Instant::now();
                bt.complete(&resp);
                timed += start.elapsed();
            }
            timed
        })
    });

    // `a` never completes here: each STEP it may send a fresh initiation (its packets wait
    // staged); `b` consumes them at the times they were made.
    let mut t = TandemPair::new();
    g.bench_function("tandem/responder", |bench| {
        bench.iter_custom(|iters| {
            let batch: Vec<(Now, [u8; 148])> = (0..iters)
                .map(|_| {
                    t.now = t.now.advance(STEP);
                    (t.now, t.initiate())
                })
                .collect();
            let start = Instant::now();
            for (now, init) in &batch {
                t.now = *now;
                black_box(t.respond(init));
            }
            start.elapsed()
        })
    });

    let mut bt = BoringPair::new();
    g.bench_function("boringtun/responder", |bench| {
        bench.iter_custom(|iters| {
            let batch: Vec<[u8; 148]> = (0..iters).map(|_| bt.initiate()).collect();
            let start = Instant::now();
            for init in &batch {
                black_box(bt.respond(init));
            }
            start.elapsed()
        })
    });
    g.finish();
}

/// Reference points for the handshake numbers: an X25519 Montgomery ladder (variable base:
/// what every Diffie-Hellman costs, and what `x25519(k, 9)` costs for a public key), and a
/// fixed-base public key from curve25519-dalek's precomputed table (through boringtun's
/// x25519-dalek 2 types; tandem's x25519-dalek 3 exposes the table only through its secret
/// types).
fn x25519_reference(c: &mut Criterion) {
    let mut g = c.benchmark_group("x25519");
    g.sample_size(20);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(2));
    let k = *key(3).as_bytes();
    let p = *key(4).public_key().as_bytes();
    g.bench_function("ladder", |b| {
        b.iter(|| x25519_dalek::x25519(black_box(k), black_box(p)))
    });
    g.bench_function("ladder_basepoint", |b| {
        b.iter(|| x25519_dalek::x25519(black_box(k), x25519_dalek::X25519_BASEPOINT_BYTES))
    });
    let s = x25519::StaticSecret::from(k);
    g.bench_function("fixed_base_table", |b| {
        b.iter(|| x25519::PublicKey::from(black_box(&s)))
    });
    // The same public key from aws-lc (import + compute_public_key), the candidate for
    // leaving x25519-dalek out (benches/README.md has the comparison).
    g.bench_function("aws_lc_public_key", |b| {
        b.iter(|| {
            let private = aws_lc_rs::agreement::PrivateKey::from_private_key(
                &aws_lc_rs::agreement::X25519,
                black_box(&k),
            )
            .expect("key");
            private.compute_public_key().expect("public key")
        })
    });
    // aws-lc's variable-base ladder, as `proto::crypto::dh` runs it.
    g.bench_function("aws_lc_dh", |b| {
        b.iter(|| tandem::proto::crypto::dh(black_box(&k), black_box(&p)))
    });
    g.finish();
}

criterion_group!(benches, handshake, x25519_reference);
criterion_main!(benches);
