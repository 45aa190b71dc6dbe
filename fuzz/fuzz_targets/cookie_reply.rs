//! Cookie replies at an initiator whose initiation is in flight, also under load.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::{COOKIE_REPLY_LEN, Harness, MESSAGE_COOKIE_REPLY, Plan};

fuzz_target!(|input: &[u8]| {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    let (mut h, init) = Harness::pending();
    // b under load answers the real initiation (no mac2) with a cookie reply: the template.
    h.b.set_under_load(h.now);
    h.deliver(true, &init);
    let template = match h.take_wire().as_slice() {
        [(false, r)] if r.len() == COOKIE_REPLY_LEN => r.clone(),
        other => panic!(
            "expected one cookie reply from b, got {} datagrams",
            other.len()
        ),
    };
    // Header: type and receiver index (a's handshake). A cookie reply carries no mac1.
    let msg = plan.build(MESSAGE_COOKIE_REPLY, &template, 8);
    if plan.under_load {
        h.a.set_under_load(h.now);
    }
    let r = h.garbage(true, &msg);
    h.assert_recovers(&r);
});
