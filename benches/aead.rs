//! Data-path AEAD comparison: ChaCha20-Poly1305 sealing and opening in place, as WireGuard's
//! transport messages use it (nonce = 4 zero bytes || u64 LE counter, empty AAD, 16-byte tag
//! after the ciphertext), at a small packet (64 bytes) and a full 1420-byte MTU packet.
//!
//! Contenders: RustCrypto `chacha20poly1305`, `ring`, `aws-lc-rs`, and tandem's own
//! `TransportKey` (aws-lc underneath, plus its nonce and tag plumbing). Before timing anything
//! the bench checks that all four produce the same ciphertext and tag and open each other's
//! output, so the numbers compare the same work. Results: benches/README.md.

use std::hint::black_box;
use std::time::Duration;

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit};
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main,
};
use tandem::proto::transport::TransportKey;

const TAG_LEN: usize = 16;
/// A small packet (TCP ACK-sized) and a full packet at WireGuard's default MTU.
const SIZES: [usize; 2] = [64, 1420];
const KEY: [u8; 32] = [0x42; 32];
/// Distinct bytes in every position, so a wrong nonce layout changes the output.
const COUNTER: u64 = 0x0807_0605_0403_0201;
/// Inputs per timed batch for `iter_batched_ref`: enough to amortise the clock reads, few
/// enough (64 x 1436 bytes) that the batch stays in L2 like a driver's packet batch.
const BATCH: u64 = 64;

/// The whitepaper's nonce, built here independently of tandem's `nonce_bytes` so that the
/// agreement check also covers tandem's nonce layout.
fn wg_nonce(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    nonce
}

/// The data-path shape tandem's `TransportKey` has: seal `buf[..len]` in place and write the
/// tag at `buf[len..len + 16]`; open ciphertext||tag in place and return the plaintext length.
trait DataPathAead {
    const NAME: &'static str;
    fn new(key: &[u8; 32]) -> Self;
    fn seal(&self, counter: u64, buf: &mut [u8], len: usize);
    fn open(&self, counter: u64, buf: &mut [u8]) -> Option<usize>;
}

struct RustCrypto(ChaCha20Poly1305);

impl DataPathAead for RustCrypto {
    const NAME: &'static str = "rustcrypto";

    fn new(key: &[u8; 32]) -> Self {
        RustCrypto(ChaCha20Poly1305::new(&(*key).into()))
    }

    fn seal(&self, counter: u64, buf: &mut [u8], len: usize) {
        let (msg, rest) = buf.split_at_mut(len);
        let nonce = wg_nonce(counter).into();
        match self.0.encrypt_inout_detached(&nonce, &[], msg.into()) {
            Ok(tag) => rest[..TAG_LEN].copy_from_slice(&tag),
            Err(_) => panic!("rustcrypto refused a packet-sized plaintext"),
        }
    }

    fn open(&self, counter: u64, buf: &mut [u8]) -> Option<usize> {
        let len = buf.len().checked_sub(TAG_LEN)?;
        let (msg, tag) = buf.split_at_mut(len);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().ok()?;
        let nonce = wg_nonce(counter).into();
        self.0
            .decrypt_inout_detached(&nonce, &[], msg.into(), &tag.into())
            .ok()?;
        Some(len)
    }
}

struct Ring(ring::aead::LessSafeKey);

impl DataPathAead for Ring {
    const NAME: &'static str = "ring";

    fn new(key: &[u8; 32]) -> Self {
        match ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key) {
            Ok(k) => Ring(ring::aead::LessSafeKey::new(k)),
            Err(_) => panic!("ring refused a 32-byte key"),
        }
    }

    fn seal(&self, counter: u64, buf: &mut [u8], len: usize) {
        let nonce = ring::aead::Nonce::assume_unique_for_key(wg_nonce(counter));
        let (msg, rest) = buf.split_at_mut(len);
        match self
            .0
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), msg)
        {
            Ok(tag) => rest[..TAG_LEN].copy_from_slice(tag.as_ref()),
            Err(_) => panic!("ring refused a packet-sized plaintext"),
        }
    }

    fn open(&self, counter: u64, buf: &mut [u8]) -> Option<usize> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(wg_nonce(counter));
        self.0
            .open_in_place(nonce, ring::aead::Aad::empty(), buf)
            .ok()
            .map(|p| p.len())
    }
}

struct AwsLc(aws_lc_rs::aead::LessSafeKey);

impl DataPathAead for AwsLc {
    const NAME: &'static str = "aws-lc-rs";

    fn new(key: &[u8; 32]) -> Self {
        match aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::CHACHA20_POLY1305, key) {
            Ok(k) => AwsLc(aws_lc_rs::aead::LessSafeKey::new(k)),
            Err(_) => panic!("aws-lc-rs refused a 32-byte key"),
        }
    }

    fn seal(&self, counter: u64, buf: &mut [u8], len: usize) {
        let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(wg_nonce(counter));
        let (msg, rest) = buf.split_at_mut(len);
        match self
            .0
            .seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), msg)
        {
            Ok(tag) => rest[..TAG_LEN].copy_from_slice(tag.as_ref()),
            Err(_) => panic!("aws-lc-rs refused a packet-sized plaintext"),
        }
    }

    fn open(&self, counter: u64, buf: &mut [u8]) -> Option<usize> {
        let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(wg_nonce(counter));
        self.0
            .open_in_place(nonce, aws_lc_rs::aead::Aad::empty(), buf)
            .ok()
            .map(|p| p.len())
    }
}

/// tandem's data path as the daemon calls it.
struct Tandem(TransportKey);

impl DataPathAead for Tandem {
    const NAME: &'static str = "tandem";

    fn new(key: &[u8; 32]) -> Self {
        Tandem(TransportKey::new(key))
    }

    fn seal(&self, counter: u64, buf: &mut [u8], len: usize) {
        self.0.seal(counter, buf, len);
    }

    fn open(&self, counter: u64, buf: &mut [u8]) -> Option<usize> {
        self.0.open(counter, buf)
    }
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// Seals `plaintext` with `A` into a fresh ciphertext||tag buffer.
fn sealed<A: DataPathAead>(plaintext: &[u8]) -> Vec<u8> {
    let mut buf = plaintext.to_vec();
    buf.resize(plaintext.len() + TAG_LEN, 0);
    A::new(&KEY).seal(COUNTER, &mut buf, plaintext.len());
    buf
}

/// `A` opens `reference` back to `plaintext`, and refuses it after a flipped tag bit or under
/// another counter.
fn check_opens<A: DataPathAead>(reference: &[u8], plaintext: &[u8]) {
    let key = A::new(&KEY);
    let mut buf = reference.to_vec();
    assert_eq!(
        key.open(COUNTER, &mut buf),
        Some(plaintext.len()),
        "{} failed to open",
        A::NAME
    );
    assert_eq!(
        &buf[..plaintext.len()],
        plaintext,
        "{} opened to other bytes",
        A::NAME
    );

    let mut forged = reference.to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        key.open(COUNTER, &mut forged),
        None,
        "{} accepted a forged tag",
        A::NAME
    );

    let mut buf = reference.to_vec();
    assert_eq!(
        key.open(COUNTER + 1, &mut buf),
        None,
        "{} accepted another counter",
        A::NAME
    );
}

/// Outside any timed loop: all four agree byte for byte and open each other's output.
fn assert_all_agree() {
    for len in SIZES {
        let pt = plaintext(len);
        let reference = sealed::<RustCrypto>(&pt);
        assert_eq!(
            sealed::<Ring>(&pt),
            reference,
            "ring differs from rustcrypto at {len} bytes"
        );
        assert_eq!(
            sealed::<AwsLc>(&pt),
            reference,
            "aws-lc-rs differs from rustcrypto at {len} bytes"
        );
        assert_eq!(
            sealed::<Tandem>(&pt),
            reference,
            "tandem differs from rustcrypto at {len} bytes"
        );
        check_opens::<RustCrypto>(&reference, &pt);
        check_opens::<Ring>(&reference, &pt);
        check_opens::<AwsLc>(&reference, &pt);
        check_opens::<Tandem>(&reference, &pt);
    }
}

/// Seals `len` bytes with `A`. The key is set up once, as a session's is; each timed call
/// works on its own buffer prepared outside the timing, as `open_with` does, so seal and open
/// see the same memory behaviour.
fn seal_with<A: DataPathAead>(group: &mut BenchmarkGroup<WallTime>, len: usize) {
    let key = A::new(&KEY);
    let mut input = plaintext(len);
    input.resize(len + TAG_LEN, 0);
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function(format!("{}/{len}", A::NAME), |b| {
        b.iter_batched_ref(
            || input.clone(),
            |buf| key.seal(black_box(COUNTER), black_box(buf.as_mut_slice()), len),
            BatchSize::NumIterations(BATCH),
        );
    });
}

/// Opens `len` bytes (plus tag) with `A`; opening decrypts in place, so every call gets a
/// fresh copy of the valid ciphertext, made outside the timing.
fn open_with<A: DataPathAead>(group: &mut BenchmarkGroup<WallTime>, len: usize) {
    let key = A::new(&KEY);
    let input = sealed::<A>(&plaintext(len));
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function(format!("{}/{len}", A::NAME), |b| {
        b.iter_batched_ref(
            || input.clone(),
            |buf| black_box(key.open(black_box(COUNTER), black_box(buf.as_mut_slice()))),
            BatchSize::NumIterations(BATCH),
        );
    });
}

fn aead(c: &mut Criterion) {
    assert_all_agree();
    let mut seal = c.benchmark_group("seal");
    for len in SIZES {
        seal_with::<RustCrypto>(&mut seal, len);
        seal_with::<Ring>(&mut seal, len);
        seal_with::<AwsLc>(&mut seal, len);
        seal_with::<Tandem>(&mut seal, len);
    }
    seal.finish();
    let mut open = c.benchmark_group("open");
    for len in SIZES {
        open_with::<RustCrypto>(&mut open, len);
        open_with::<Ring>(&mut open, len);
        open_with::<AwsLc>(&mut open, len);
        open_with::<Tandem>(&mut open, len);
    }
    open.finish();
}

criterion_group! {
    name = benches;
    // Short on purpose: 16 benchmarks x 2 s finish in well under a minute on 2 shared cores.
    // No plots: rendering them costs ~5 s of CPU per benchmark, more than measuring it.
    config = Criterion::default()
        .measurement_time(Duration::from_millis(1500))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(10)
        .without_plots();
    targets = aead
}
criterion_main!(benches);
