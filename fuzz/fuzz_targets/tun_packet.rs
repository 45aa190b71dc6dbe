//! Arbitrary bytes as an IP packet from the TUN device, with an established session.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tandem::testkit::fuzz::fuzz_tun_packet(input));
