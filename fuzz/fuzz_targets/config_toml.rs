//! tandem TOML config text (lossily UTF-8) through parse, export and the daemon's apply.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tandem::testkit::fuzz::text::fuzz_config_toml(input));
