//! Data path over an established session: seal (`encapsulate`) and open (`decapsulate`) of
//! 64- and 1420-byte IP packets, tandem's `Device` and boringtun's `Tunn` side by side.
//! Throughput counts the inner packet's bytes.
//!
//! - seal: each iteration copies the plaintext packet into the buffer (tandem encrypts in
//!   place, so the previous iteration left ciphertext there; boringtun copies its input into
//!   its output buffer itself) and encapsulates it.
//! - open: the replay window refuses counters more than 8128 behind the newest, so packets
//!   cannot be replayed from a fixed ring. Instead each batch of `BATCH` packets is freshly
//!   sealed by the sender (untimed; counters keep rising across batches) and only the
//!   receiver's `decapsulate` of the whole batch, in order, is timed. tandem decrypts in the
//!   batch's own buffers, as a driver decrypts in its receive buffers; boringtun copies into
//!   its output buffer.
//!
//! Run: `cargo bench --bench transport`. Issue target: at least 1.5 GB/s per core sealing
//! 1420-byte packets.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tandem::proto::{Decapsulated, Device, Encapsulated, HEADROOM, Now, TAILROOM};
use tandem::testkit::key;
use tandem::testkit::packet::ipv4;
use tandem::testkit::pair::{ADDR_A, ADDR_B, INNER4_A, INNER4_B, Pair};

const SIZES: [usize; 2] = [64, 1420];
/// Packets sealed ahead of each timed open batch (well inside the 8128-packet window).
const BATCH: usize = 1024;
const BUF: usize = 2048;

/// An IPv4 packet 10.0.0.1 -> 10.0.0.2 of `size` bytes in all.
fn packet(size: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..size - 20).map(|i| i as u8).collect();
    ipv4(INNER4_A, INNER4_B, &payload)
}

/// Two tandem devices with a confirmed session; `a` sends, `b` receives.
struct TandemPair {
    a: Device,
    b: Device,
    now: Now,
}

impl TandemPair {
    fn new() -> Self {
        // The kit's pair: the first packet starts the handshake; everything is delivered
        // until quiet. Then only the devices are kept.
        let mut p = Pair::new(None, true);
        p.send_ip(true, &packet(64));
        p.run();
        assert_eq!(
            p.delivered_b.len(),
            1,
            "the first packet arrives: session established"
        );
        let Pair { a, b, now, .. } = p;
        TandemPair {
            a: a.dev,
            b: b.dev,
            now,
        }
    }

    /// `a` seals `packet` into `buf`; returns the datagram length.
    fn seal(&mut self, packet: &[u8], buf: &mut [u8]) -> usize {
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        match self.a.encapsulate(buf, packet.len(), self.now) {
            Encapsulated::Send { len, .. } => len,
            other => panic!("tandem seal: {other:?}"),
        }
    }
}

/// boringtun's `Tunn` pair with a confirmed session; `a` sends, `b` receives.
struct BoringPair {
    a: Tunn,
    b: Tunn,
    ip_a: IpAddr,
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
        let mut a = Tunn::new(sa, pb, None, None, 1, Some(ra));
        let mut b = Tunn::new(sb, pa, None, None, 2, Some(rb));
        let (ip_a, ip_b) = (ADDR_A.ip(), ADDR_B.ip());
        let mut out = vec![0u8; BUF];
        let init = match a.format_handshake_initiation(&mut out, false) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            _ => panic!("boringtun: no initiation"),
        };
        let resp = match b.decapsulate(Some(ip_a), &init, &mut out) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            _ => panic!("boringtun: no response"),
        };
        let keepalive = match a.decapsulate(Some(ip_b), &resp, &mut out) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            _ => panic!("boringtun: no keepalive"),
        };
        // The keepalive confirms the session at b.
        assert!(matches!(
            b.decapsulate(Some(ip_a), &keepalive, &mut out),
            TunnResult::Done
        ));
        BoringPair { a, b, ip_a }
    }

    fn seal(&mut self, packet: &[u8], out: &mut [u8]) -> usize {
        match self.a.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(m) => m.len(),
            _ => panic!("boringtun seal"),
        }
    }
}

fn transport(c: &mut Criterion) {
    let mut g = c.benchmark_group("transport");
    g.sample_size(20);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(2));

    for size in SIZES {
        let p = packet(size);
        g.throughput(Throughput::Bytes(size as u64));

        let mut t = TandemPair::new();
        let mut buf = vec![0u8; HEADROOM + size + TAILROOM];
        g.bench_function(BenchmarkId::new("tandem/seal", size), |bench| {
            bench.iter(|| black_box(t.seal(black_box(&p), &mut buf)))
        });

        let mut bt = BoringPair::new();
        let mut out = vec![0u8; BUF];
        g.bench_function(BenchmarkId::new("boringtun/seal", size), |bench| {
            bench.iter(|| black_box(bt.seal(black_box(&p), &mut out)))
        });

        let mut t = TandemPair::new();
        let mut batch: Vec<(Vec<u8>, usize)> = (0..BATCH).map(|_| (vec![0u8; BUF], 0)).collect();
        g.bench_function(BenchmarkId::new("tandem/open", size), |bench| {
            bench.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(BATCH);
                    for (buf, len) in &mut batch[..n] {
                        *len = t.seal(&p, buf);
                    }
                    let mut ok = 0;
                    let start = Instant::now();
                    for (buf, len) in &mut batch[..n] {
                        let r = t.b.decapsulate(ADDR_A, buf, *len, t.now);
                        if let Decapsulated::Deliver { range, .. } = black_box(r) {
                            ok += usize::from(range.len() == size);
                        }
                    }
                    timed += start.elapsed();
                    assert_eq!(ok, n, "every packet opens");
                    left -= n;
                }
                timed
            })
        });

        let mut bt = BoringPair::new();
        let mut sealed: Vec<(Vec<u8>, usize)> = (0..BATCH).map(|_| (vec![0u8; BUF], 0)).collect();
        let mut out = vec![0u8; BUF];
        g.bench_function(BenchmarkId::new("boringtun/open", size), |bench| {
            bench.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(BATCH);
                    for (buf, len) in &mut sealed[..n] {
                        *len = bt.seal(&p, buf);
                    }
                    let mut ok = 0;
                    let start = Instant::now();
                    for (buf, len) in &sealed[..n] {
                        let r = bt.b.decapsulate(Some(bt.ip_a), &buf[..*len], &mut out);
                        if let TunnResult::WriteToTunnelV4(m, _) = black_box(r) {
                            ok += usize::from(m.len() == size);
                        }
                    }
                    timed += start.elapsed();
                    assert_eq!(ok, n, "every packet opens");
                    left -= n;
                }
                timed
            })
        });
    }
    g.finish();
}

criterion_group!(benches, transport);
criterion_main!(benches);
