//! The fuzz targets' bodies (`tandem::testkit::fuzz`) run on generated inputs in every `cargo test`:
//! the same invariants as under libFuzzer (no panic, ranges inside the buffer, the real
//! peers still work or recover afterwards), without needing libFuzzer or a nightly toolchain.
//! Longer campaigns: see fuzz/README.md.

use tandem::testkit::fuzz;
use tandem::testkit::rng::SplitMix64;

/// Input number `i`: the flags byte first (every mode, load and mac1 choice in turn), then up
/// to `max` random bytes, sparse so that mutations of the template stay close to it. The
/// generator has a fixed seed, so a failure names an input that replays.
fn input(g: &mut SplitMix64, i: usize, max: usize) -> Vec<u8> {
    let len = g.below(max as u64 + 1) as usize;
    let mut v = vec![(i % 16) as u8];
    for _ in 0..len {
        let r = g.next_u64();
        v.push(if r % 4 == 0 { (r >> 8) as u8 } else { 0 });
    }
    v
}

fn run(name: &str, body: fn(&[u8]), count: usize, max: usize, seed: u64) {
    let mut g = SplitMix64::new(seed);
    for i in 0..count {
        let input = input(&mut g, i, max);
        let result = std::panic::catch_unwind(|| body(&input));
        assert!(result.is_ok(), "{name}: input #{i} failed: {input:02x?}");
    }
}

#[test]
fn initiation_bodies() {
    run("initiation", fuzz::fuzz_initiation, 400, 160, 1);
}

#[test]
fn response_bodies() {
    run("response", fuzz::fuzz_response, 400, 100, 2);
}

#[test]
fn cookie_reply_bodies() {
    run("cookie_reply", fuzz::fuzz_cookie_reply, 400, 80, 3);
}

#[test]
fn transport_bodies() {
    run("transport", fuzz::fuzz_transport, 400, 120, 4);
}

#[test]
fn datagram_bodies() {
    run("datagram", fuzz::fuzz_datagram, 400, 200, 5);
}

#[test]
fn tun_packet_bodies() {
    run("tun_packet", fuzz::fuzz_tun_packet, 400, 200, 6);
}

#[test]
fn differential_bodies() {
    run(
        "differential",
        fuzz::differential::fuzz_differential,
        400,
        100,
        7,
    );
}

#[test]
fn session_bodies() {
    run("session", fuzz::session::fuzz_session, 400, 300, 8);
}
