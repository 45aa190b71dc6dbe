//! Arbitrary bytes as a UDP datagram at a device with an established session.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::Harness;

fuzz_target!(|input: &[u8]| {
    let mut h = Harness::established();
    let r = h.garbage(false, input);
    h.assert_recovers(&r);
});
