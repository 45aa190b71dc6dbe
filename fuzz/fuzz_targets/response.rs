//! Handshake responses at an initiator whose initiation is in flight, also under load.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tandem::testkit::fuzz::fuzz_response(input));
