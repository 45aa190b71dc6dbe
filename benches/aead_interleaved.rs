//! ring against aws-lc-rs on the data path (ChaCha20-Poly1305, 1420-byte packets, in place,
//! WireGuard's nonce and empty AAD), measured so that a busy machine cannot favour either:
//! many short rounds, each timing both libraries back to back (in alternating order), and the
//! median of the per-round ratio. Contention that lasts longer than one round (about 2 ms)
//! slows both sides of that round alike, so it cancels in the ratio. Results:
//! benches/README.md.
//!
//! `cargo bench --bench aead_interleaved` (about 10 s of measurement).

use std::hint::black_box;
use std::time::Instant;

const LEN: usize = 1420;
const TAG_LEN: usize = 16;
const KEY: [u8; 32] = [0x42; 32];
/// Operations per timed half-round: ~1 ms each at ~1 GiB/s.
const OPS: usize = 800;
const ROUNDS: usize = 1200;

fn wg_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

trait Aead {
    fn seal(&self, counter: u64, buf: &mut [u8]);
    fn open(&self, counter: u64, buf: &mut [u8]) -> bool;
}

struct Ring(ring::aead::LessSafeKey);
struct AwsLc(aws_lc_rs::aead::LessSafeKey);

impl Aead for Ring {
    fn seal(&self, counter: u64, buf: &mut [u8]) {
        use ring::aead::{Aad, Nonce};
        let (msg, rest) = buf.split_at_mut(LEN);
        let nonce = Nonce::assume_unique_for_key(wg_nonce(counter));
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, Aad::empty(), msg)
            .expect("packet-sized");
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
    }
    fn open(&self, counter: u64, buf: &mut [u8]) -> bool {
        use ring::aead::{Aad, Nonce};
        let nonce = Nonce::assume_unique_for_key(wg_nonce(counter));
        self.0.open_in_place(nonce, Aad::empty(), buf).is_ok()
    }
}

impl Aead for AwsLc {
    fn seal(&self, counter: u64, buf: &mut [u8]) {
        use aws_lc_rs::aead::{Aad, Nonce};
        let (msg, rest) = buf.split_at_mut(LEN);
        let nonce = Nonce::assume_unique_for_key(wg_nonce(counter));
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, Aad::empty(), msg)
            .expect("packet-sized");
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
    }
    fn open(&self, counter: u64, buf: &mut [u8]) -> bool {
        use aws_lc_rs::aead::{Aad, Nonce};
        let nonce = Nonce::assume_unique_for_key(wg_nonce(counter));
        self.0.open_in_place(nonce, Aad::empty(), buf).is_ok()
    }
}

/// Nanoseconds per seal of one packet over `OPS` packets.
fn time_seal(a: &dyn Aead, buf: &mut [u8]) -> f64 {
    let start = Instant::now();
    for c in 0..OPS as u64 {
        a.seal(c, black_box(&mut *buf));
    }
    start.elapsed().as_nanos() as f64 / OPS as f64
}

/// Nanoseconds per open, each of a fresh copy of one valid message (the copy is the same
/// for both libraries and costs ~1/20 of an open).
fn time_open(a: &dyn Aead, sealed: &[u8], buf: &mut [u8]) -> f64 {
    let start = Instant::now();
    for _ in 0..OPS {
        buf.copy_from_slice(sealed);
        assert!(a.open(7, black_box(&mut *buf)));
    }
    start.elapsed().as_nanos() as f64 / OPS as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn quartiles(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 4], v[3 * v.len() / 4])
}

fn main() {
    let ring = Ring(ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &KEY).expect("key"),
    ));
    let aws = AwsLc(aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::CHACHA20_POLY1305, &KEY).expect("key"),
    ));
    // Same work: byte-identical output, and each opens the other's.
    let plain: Vec<u8> = (0..LEN + TAG_LEN).map(|i| i as u8).collect();
    let (mut a, mut b) = (plain.clone(), plain.clone());
    ring.seal(7, &mut a);
    aws.seal(7, &mut b);
    assert_eq!(a, b, "ring and aws-lc-rs disagree");
    let mut c = a.clone();
    assert!(aws.open(7, &mut c) && ring.open(7, &mut b));
    let sealed = a;

    let mut buf = plain.clone();
    let libs: [&dyn Aead; 2] = [&ring, &aws];
    // Warm-up: caches, CPU frequency, lazy CPU feature detection.
    for lib in libs {
        for _ in 0..20 {
            time_seal(lib, &mut buf);
            time_open(lib, &sealed, &mut buf);
        }
    }
    let mut ns = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]]; // [op][lib]
    let mut ratio = [Vec::new(), Vec::new()]; // [op]: aws / ring, per round
    for round in 0..ROUNDS {
        // Alternate which library goes first, so neither always runs on a warmer core.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut this = [[0.0; 2]; 2];
        for &lib in &order {
            this[0][lib] = time_seal(libs[lib], &mut buf);
        }
        for &lib in &order {
            this[1][lib] = time_open(libs[lib], &sealed, &mut buf);
        }
        for op in 0..2 {
            for lib in 0..2 {
                ns[op][lib].push(this[op][lib]);
            }
            ratio[op].push(this[op][1] / this[op][0]);
        }
    }
    println!("{ROUNDS} rounds x {OPS} packets of {LEN} bytes per library and op, alternating");
    for (op, name) in ["seal", "open"].iter().enumerate() {
        let r = median(&mut ns[op][0]);
        let w = median(&mut ns[op][1]);
        let mib = |ns: f64| LEN as f64 / ns * 1e9 / (1 << 20) as f64;
        let (q1, q3) = quartiles(&mut ratio[op]);
        let mid = median(&mut ratio[op]);
        println!(
            "{name}: ring {r:.0} ns ({:.0} MiB/s), aws-lc-rs {w:.0} ns ({:.0} MiB/s); \
             aws-lc/ring time ratio median {mid:.3} (IQR {q1:.3}-{q3:.3})",
            mib(r),
            mib(w)
        );
    }
}
