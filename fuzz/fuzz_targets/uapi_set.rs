//! UAPI set=1 streams, in chunks, through framer, parser, simulation and a real Device.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tandem::testkit::fuzz::text::fuzz_uapi_set(input));
