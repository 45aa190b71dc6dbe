//! Arbitrary bytes as a UDP datagram at a device with an established session.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tandem::testkit::fuzz::fuzz_datagram(input));
