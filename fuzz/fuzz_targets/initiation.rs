//! Handshake initiations at a responder with no session yet, also under load.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tandem::testkit::fuzz::fuzz_initiation(input));
