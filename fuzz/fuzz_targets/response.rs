//! Handshake responses at an initiator whose initiation is in flight, also under load.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::{Harness, MESSAGE_RESPONSE, Plan, RESPONSE_LEN};

fuzz_target!(|input: &[u8]| {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    let (mut h, init) = Harness::pending();
    // b answers the real initiation; the answer is the template and never reaches a.
    h.deliver(true, &init);
    let template = match h.take_wire().as_slice() {
        [(false, r)] if r.len() == RESPONSE_LEN => r.clone(),
        other => panic!(
            "expected one response from b, got {} datagrams",
            other.len()
        ),
    };
    // Header: type, sender and receiver index (a's handshake).
    let mut msg = plan.build(MESSAGE_RESPONSE, &template, 12);
    plan.fix_macs(&mut msg, &h.a_public, RESPONSE_LEN);
    if plan.under_load {
        h.a.set_under_load(h.now);
    }
    let r = h.garbage(true, &msg);
    h.assert_recovers(&r);
});
