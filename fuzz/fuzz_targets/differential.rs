//! The same handshake messages to tandem's core and boringtun's `Tunn`: the same decisions.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tandem::testkit::fuzz::differential::fuzz_differential(input));
