//! An established pair, then a program of sends, losses, replays, corruption and time.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tandem::testkit::fuzz::session::fuzz_session(input));
