//! Every timer rule of the whitepaper, in virtual time (no sleeping): two tandem devices back
//! to back, with the clock advanced by the test.

use tandem::testkit::packet::ty;
use tandem::testkit::pair::*;
use tandem::testkit::t0;

use std::time::Duration;
use tandem::proto::{Decapsulated, DropReason, Encapsulated};

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// A pair with a confirmed session (a initiated, b has received data).
fn established() -> Pair {
    let mut p = Pair::new(None, true);
    let pkt = p.packet(true, b"hello");
    p.send_ip(true, &pkt);
    p.run();
    assert_eq!(p.delivered_b.len(), 1);
    p.sent_a.clear();
    p.sent_b.clear();
    p
}

fn initiations(sent: &[Vec<u8>]) -> usize {
    sent.iter().filter(|d| ty(d) == 1).count()
}

fn keepalives(sent: &[Vec<u8>]) -> usize {
    sent.iter().filter(|d| ty(d) == 4 && d.len() == 32).count()
}

#[test]
fn rekey_after_time_on_send() {
    let mut p = established();
    p.advance(119 * S, S);
    let pkt = p.packet(true, b"before");
    assert!(matches!(p.send_ip(true, &pkt), Encapsulated::Send { .. }));
    assert_eq!(
        initiations(&p.sent_a),
        0,
        "no rekey before REKEY_AFTER_TIME"
    );
    p.advance(2 * S, S);
    let pkt = p.packet(true, b"after");
    assert!(
        matches!(p.send_ip(true, &pkt), Encapsulated::Send { .. }),
        "the old session still sends"
    );
    assert_eq!(
        initiations(&p.sent_a),
        1,
        "REKEY_AFTER_TIME starts a handshake on send"
    );
    p.run();
    assert!(p.delivered_b.iter().any(|d| d.ends_with(b"after")));
}

#[test]
fn responder_does_not_rekey_on_time() {
    let mut p = established();
    let back = p.packet(false, b"x");
    p.send_ip(false, &back);
    p.run();
    p.advance(121 * S, 10 * S);
    p.sent_b.clear();
    let back = p.packet(false, b"y");
    assert!(matches!(p.send_ip(false, &back), Encapsulated::Send { .. }));
    assert_eq!(
        initiations(&p.sent_b),
        0,
        "only the initiator rekeys after REKEY_AFTER_TIME"
    );
}

#[test]
fn reject_after_time_stops_sending_and_receiving() {
    let mut p = established();
    // Keep the network dead for handshakes so the session just ages.
    p.advance_dropping(181 * S, S);
    let pkt = p.packet(true, b"late");
    assert_eq!(
        p.send_ip(true, &pkt),
        Encapsulated::Queued,
        "an expired session does not send"
    );
    p.wire.clear();
    // A packet sealed before expiry but delivered after it is refused.
    let mut q = established();
    let pkt = q.packet(true, b"old");
    q.send_ip(true, &pkt);
    let (_, d) = q.wire.pop().unwrap();
    q.advance_dropping(180 * S, 10 * S);
    assert_eq!(
        q.deliver(true, &d),
        Decapsulated::Dropped(DropReason::KeypairExpired)
    );
}

#[test]
fn handshake_retries_every_rekey_timeout_with_jitter_then_gives_up() {
    let mut p = Pair::new(None, true);
    let pkt = p.packet(true, b"lost");
    p.send_ip(true, &pkt);
    let start = p.now.monotonic;
    let mut times = vec![start];
    p.wire.clear();
    // Dead network: record when each initiation goes out.
    for _ in 0..130_000 {
        p.now = p.now.advance(MS);
        let now = p.now;
        p.a.dev.update_timers(now);
        let before = p.sent_a.len();
        p.drain(true);
        if initiations(&p.sent_a[before..]) > 0 {
            times.push(p.now.monotonic);
        }
        p.wire.clear();
    }
    // 1 + MAX_TIMER_HANDSHAKES + 1 initiations, like the kernel, then silence.
    assert_eq!(times.len(), 20, "{times:?}");
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= 5 * S && gap <= 5 * S + 334 * MS, "retry gap {gap:?}");
    }
    let gaps: Vec<_> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().any(|g| *g != gaps[0]),
        "retries carry random jitter"
    );
    let last = *times.last().unwrap() - start;
    assert!(
        last >= Duration::from_secs(90) && last < Duration::from_secs(110),
        "{last:?}"
    );
    // The packet that waited is dropped when the handshake gives up, and counted as such.
    assert_eq!(p.a.dev.drops().get(DropReason::HandshakeTimeout), 1);
    assert_eq!(p.a.dev.drops().get(DropReason::NoEndpoint), 0);
    p.advance_dropping(10 * S, S);
    let new = p.packet(true, b"new");
    p.send_ip(true, &new);
    p.run();
    assert_eq!(
        p.delivered_b,
        vec![new],
        "only the new packet arrives after giving up"
    );
}

#[test]
fn keepalive_after_receiving_with_nothing_to_send() {
    let mut p = established();
    // b received data at t0 and sent nothing: a keepalive goes out after KEEPALIVE_TIMEOUT.
    p.advance(9 * S, 100 * MS);
    assert_eq!(keepalives(&p.sent_b), 0);
    p.advance(2 * S, 100 * MS);
    assert_eq!(keepalives(&p.sent_b), 1);
    // If b answers with data, no keepalive is needed.
    let pkt = p.packet(true, b"again");
    p.send_ip(true, &pkt);
    p.run();
    let back = p.packet(false, b"reply");
    p.send_ip(false, &back);
    p.run();
    p.sent_b.clear();
    p.advance(11 * S, 100 * MS);
    assert_eq!(keepalives(&p.sent_b), 0);
}

#[test]
fn new_handshake_when_data_gets_no_answer() {
    let mut p = established();
    let back = p.packet(false, b"x");
    p.send_ip(false, &back);
    p.run();
    p.advance(20 * S, S);
    p.sent_a.clear();
    p.sent_b.clear();
    // a sends data; b's replies are lost (b's keepalive too): after KEEPALIVE + REKEY_TIMEOUT
    // (+ jitter) a starts a new handshake.
    let pkt = p.packet(true, b"anyone?");
    p.send_ip(true, &pkt);
    p.run();
    for _ in 0..16_000 {
        p.tick_timers(MS);
        p.wire.retain(|(from_a, _)| *from_a);
        p.run();
        if initiations(&p.sent_a) > 0 {
            break;
        }
    }
    assert_eq!(initiations(&p.sent_a), 1);
    let waited = p.now.monotonic - t0().monotonic - 20 * S;
    assert!(
        waited >= 15 * S && waited <= 15 * S + 334 * MS,
        "{waited:?}"
    );
}

#[test]
fn persistent_keepalive_keeps_sending() {
    let mut p = established();
    let id = p.a.peer;
    let now = p.now;
    p.a.dev.set_persistent_keepalive(id, 25, now);
    p.drain(true);
    p.run();
    p.sent_a.clear();
    p.advance(100 * S, S);
    let n = keepalives(&p.sent_a);
    assert!(
        (3..=5).contains(&n),
        "about one keepalive per 25 s, got {n}"
    );
}

#[test]
fn persistent_keepalive_starts_a_handshake_at_once() {
    let mut p = Pair::new(None, true);
    let id = p.a.peer;
    let now = p.now;
    p.a.dev.set_persistent_keepalive(id, 25, now);
    p.drain(true);
    assert_eq!(initiations(&p.sent_a), 1);
    p.run();
    // The responder can now reach the initiator without knowing its endpoint in advance.
    let back = p.packet(false, b"reach");
    assert!(matches!(
        p.send_ip(false, &back),
        Encapsulated::Send { .. } | Encapsulated::Queued
    ));
    p.run();
    assert_eq!(p.delivered_a, vec![back]);
}

#[test]
fn keys_are_erased_after_three_reject_after_time() {
    let mut p = established();
    p.advance_dropping(539 * S, 10 * S);
    // Sessions expired (180 s) but handshakes were dead; at 540 s key material is zeroed.
    p.advance_dropping(2 * S, S);
    let info = p.a.dev.peer_info(p.a.peer).unwrap();
    assert!(info.stats.last_handshake.is_some());
    // After erasure, the next packet needs (and gets) a fresh handshake.
    let pkt = p.packet(true, b"fresh");
    assert_eq!(p.send_ip(true, &pkt), Encapsulated::Queued);
    p.run();
    assert!(p.delivered_b.iter().any(|d| d.ends_with(b"fresh")));
}

#[test]
fn initiator_rekeys_on_receive_after_165_seconds() {
    let mut p = established();
    p.advance_dropping(166 * S, S);
    p.sent_a.clear();
    // Only b sends, a only receives: a must still rekey before the session expires.
    let back = p.packet(false, b"one-way");
    p.send_ip(false, &back);
    p.run();
    assert!(
        initiations(&p.sent_a) >= 1,
        "initiator rekeys on receive at 165 s"
    );
    assert_eq!(
        p.delivered_a.last().map(|d| d.ends_with(b"one-way")),
        Some(true)
    );
}

#[test]
fn rekey_under_continuous_traffic_loses_nothing() {
    let mut p = established();
    let mut sent = 0usize;
    for step in 0..400u32 {
        p.now = p.now.advance(Duration::from_millis(900));
        let now = p.now;
        p.a.dev.update_timers(now);
        p.drain(true);
        p.b.dev.update_timers(now);
        p.drain(false);
        let pkt = p.packet(step % 2 == 0, &step.to_be_bytes());
        p.send_ip(step % 2 == 0, &pkt);
        sent += 1;
        p.run();
    }
    // +1: the packet of established()
    let got = p.delivered_a.len() + p.delivered_b.len();
    assert_eq!(
        got,
        sent + 1,
        "every packet arrives across rekeys (6 minutes of traffic)"
    );
    let drops = p.a.dev.drops().total() + p.b.dev.drops().total();
    assert_eq!(drops, 0, "{:?} {:?}", p.a.dev.drops(), p.b.dev.drops());
}

#[test]
fn initiations_are_rate_limited_to_one_per_rekey_timeout() {
    let mut p = Pair::new(None, true);
    for i in 0..50u8 {
        let pkt = p.packet(true, &[i]);
        p.send_ip(true, &pkt);
        p.now = p.now.advance(50 * MS);
    }
    assert_eq!(
        initiations(&p.sent_a),
        1,
        "one initiation per REKEY_TIMEOUT"
    );
    p.run();
    assert_eq!(
        p.delivered_b.len(),
        50,
        "all staged packets flushed in order"
    );
    for (i, d) in p.delivered_b.iter().enumerate() {
        assert_eq!(d[20], i as u8);
    }
}

#[test]
fn receiver_indices_do_not_leak_across_many_rekeys() {
    let mut p = established();
    for step in 0..2000u32 {
        p.now = p.now.advance(Duration::from_millis(700));
        let now = p.now;
        p.a.dev.update_timers(now);
        p.drain(true);
        p.b.dev.update_timers(now);
        p.drain(false);
        // Both sides send, so both sides sometimes initiate (rekey races included).
        let from_a = step % 3 != 0;
        let pkt = p.packet(from_a, &step.to_be_bytes());
        p.send_ip(from_a, &pkt);
        p.run();
    }
    // At most: handshake + previous + current + next.
    assert!(p.a.dev.index_count() <= 4, "{}", p.a.dev.index_count());
    assert!(p.b.dev.index_count() <= 4, "{}", p.b.dev.index_count());
}
