//! Handshake initiations at a responder with no session yet, also under load.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::{Harness, INITIATION_LEN, MESSAGE_INITIATION, Plan};

fuzz_target!(|input: &[u8]| {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    let (mut h, template) = Harness::pending();
    // Header: type and sender index.
    let mut msg = plan.build(MESSAGE_INITIATION, &template, 8);
    plan.fix_macs(&mut msg, &h.b_public, INITIATION_LEN);
    if plan.under_load {
        h.b.set_under_load(h.now);
    }
    let r = h.garbage(false, &msg);
    h.assert_recovers(&r);
});
