//! The fuzz targets' bodies (fuzz/src/lib.rs) run on generated inputs in every `cargo test`:
//! the same invariants as under libFuzzer (no panic, ranges inside the buffer, the real
//! peers still work or recover afterwards), without needing libFuzzer or a nightly toolchain.
//! Longer campaigns: see fuzz/README.md.

#[allow(dead_code, unused_imports)]
#[path = "../fuzz/src/lib.rs"]
mod tandem_fuzz;

/// splitmix64: a fixed-seed generator, so a failure names an input that replays.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// An input: the flags byte first (every mode, load and mac1 choice in turn), then up to
    /// `max` random bytes, sparse so that mutations of the template stay close to it.
    fn input(&mut self, i: usize, max: usize) -> Vec<u8> {
        let len = (self.next() % (max as u64 + 1)) as usize;
        let mut v = vec![(i % 16) as u8];
        for _ in 0..len {
            let r = self.next();
            v.push(if r % 4 == 0 { (r >> 8) as u8 } else { 0 });
        }
        v
    }
}

fn run(name: &str, body: fn(&[u8]), count: usize, max: usize, seed: u64) {
    let mut g = Gen(seed);
    for i in 0..count {
        let input = g.input(i, max);
        let result = std::panic::catch_unwind(|| body(&input));
        assert!(result.is_ok(), "{name}: input #{i} failed: {input:02x?}");
    }
}

#[test]
fn initiation_bodies() {
    run("initiation", tandem_fuzz::fuzz_initiation, 400, 160, 1);
}

#[test]
fn response_bodies() {
    run("response", tandem_fuzz::fuzz_response, 400, 100, 2);
}

#[test]
fn cookie_reply_bodies() {
    run("cookie_reply", tandem_fuzz::fuzz_cookie_reply, 400, 80, 3);
}

#[test]
fn transport_bodies() {
    run("transport", tandem_fuzz::fuzz_transport, 400, 120, 4);
}

#[test]
fn datagram_bodies() {
    run("datagram", tandem_fuzz::fuzz_datagram, 400, 200, 5);
}

#[test]
fn tun_packet_bodies() {
    run("tun_packet", tandem_fuzz::fuzz_tun_packet, 400, 200, 6);
}
