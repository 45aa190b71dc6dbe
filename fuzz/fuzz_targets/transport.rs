//! Transport messages at a device with an established session.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::{Harness, INNER4_A, INNER4_B, MESSAGE_TRANSPORT, Plan, ipv4};

fuzz_target!(|input: &[u8]| {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    let mut h = Harness::established();
    // A real data packet a -> b, sealed but not delivered: the template.
    let packet = ipv4(INNER4_A, INNER4_B, b"template payload");
    h.send_ip(true, &packet);
    let template = match h.take_wire().as_slice() {
        [(true, d)] => d.clone(),
        other => panic!(
            "expected one data packet from a, got {} datagrams",
            other.len()
        ),
    };
    // Header: type and receiver index (b's session), so the keypair lookup succeeds.
    let msg = plan.build(MESSAGE_TRANSPORT, &template, 8);
    if plan.under_load {
        h.b.set_under_load(h.now);
    }
    let r = h.garbage(false, &msg);
    h.assert_recovers(&r);
});
