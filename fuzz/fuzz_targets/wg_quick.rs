//! wg-quick .conf text through parse, import, export and the daemon's apply.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tandem::testkit::fuzz::text::fuzz_wg_quick(input));
