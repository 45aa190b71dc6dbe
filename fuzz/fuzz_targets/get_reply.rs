//! UAPI get replies as tandem show reads them; generated replies must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tandem::testkit::fuzz::text::fuzz_get_reply(input));
