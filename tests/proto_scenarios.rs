//! Protocol scenarios of the pure core in virtual time: two tandem devices back to back.

use tandem::testkit::key;
use tandem::testkit::packet::{ipv4, ipv6, ty};
use tandem::testkit::pair::*;

use tandem::proto::{Decapsulated, DropReason, Encapsulated, PresharedKey};

#[test]
fn first_packet_triggers_handshake_and_arrives() {
    let mut p = Pair::new(None, true);
    let pkt = p.packet(true, b"hello");
    assert_eq!(p.send_ip(true, &pkt), Encapsulated::Queued);
    assert_eq!(p.wire.len(), 1);
    assert_eq!(ty(&p.wire[0].1), 1, "an initiation goes out");
    p.run();
    assert_eq!(p.delivered_b, vec![pkt.clone()]);
    // b answers directly now that it has a confirmed session.
    let back = p.packet(false, b"world");
    assert!(matches!(p.send_ip(false, &back), Encapsulated::Send { .. }));
    p.run();
    assert_eq!(p.delivered_a, vec![back]);
}

#[test]
fn preshared_key_handshake_and_mismatch() {
    let psk = PresharedKey::from_bytes([7; 32]);
    let mut p = Pair::new(Some(psk), true);
    let pkt = p.packet(true, b"x");
    p.send_ip(true, &pkt);
    p.run();
    assert_eq!(p.delivered_b.len(), 1);

    let mut q = Pair::new(Some(PresharedKey::from_bytes([7; 32])), true);
    let id = q.b.peer;
    q.b.dev
        .set_preshared_key(id, Some(PresharedKey::from_bytes([8; 32])));
    q.send_ip(true, &pkt);
    q.run();
    assert!(q.delivered_b.is_empty());
    assert_eq!(q.a.dev.drops().get(DropReason::HandshakeDecrypt), 1);
}

#[test]
fn responder_without_endpoint_learns_it() {
    let mut p = Pair::new(None, false);
    let back = p.packet(false, b"early");
    assert_eq!(
        p.send_ip(false, &back),
        Encapsulated::Dropped(DropReason::NoEndpoint)
    );
    let pkt = p.packet(true, b"hi");
    p.send_ip(true, &pkt);
    p.run();
    assert!(matches!(p.send_ip(false, &back), Encapsulated::Send { .. }));
    p.run();
    assert_eq!(p.delivered_a, vec![back]);
}

#[test]
fn replayed_transport_packet_is_dropped_without_state_change() {
    let mut p = Pair::new(None, true);
    let pkt = p.packet(true, b"once");
    p.send_ip(true, &pkt);
    p.run();
    let data = p
        .sent_a
        .iter()
        .find(|d| ty(d) == 4 && d.len() > 32)
        .unwrap()
        .clone();
    assert_eq!(
        p.deliver(true, &data),
        Decapsulated::Dropped(DropReason::ReplayedCounter)
    );
    assert_eq!(p.delivered_b.len(), 1);
}

/// b under load and not knowing a's endpoint: a cookie reply, and a answers it at once with
/// mac2 (not at its retransmit timer), so the handshake completes with no time passing.
#[test]
fn under_load_initiation_gets_a_cookie_then_completes_with_mac2() {
    let mut p = Pair::new(None, false);
    let now = p.now;
    p.b.dev.set_under_load(now);
    let pkt = p.packet(true, b"load");
    p.send_ip(true, &pkt);
    let (_, init) = p.wire.remove(0);
    assert_eq!(
        p.deliver(true, &init),
        Decapsulated::Dropped(DropReason::CookieRequired)
    );
    assert_eq!(p.wire.len(), 1);
    assert_eq!(ty(&p.wire[0].1), 3, "a cookie reply goes back");
    assert_eq!(p.wire[0].1.len(), 64);
    p.run();
    assert_eq!(p.a.dev.drops().total(), 0, "the cookie reply is accepted");
    assert_eq!(p.delivered_b, vec![pkt], "completed without waiting");
    assert_eq!(p.b.dev.drops().get(DropReason::CookieRequired), 1);
}

/// Under load, mac2-carrying copies of one initiation from one source: the first is
/// answered, and beyond the burst the rate limiter refuses them before any other check.
#[test]
fn under_load_handshakes_are_rate_limited_per_source() {
    let mut p = Pair::new(None, false);
    let now = p.now;
    p.b.dev.set_under_load(now);
    let pkt = p.packet(true, b"x");
    p.send_ip(true, &pkt);
    let (_, init) = p.wire.remove(0);
    p.deliver(true, &init);
    let (_, cookie) = p.wire.remove(0);
    assert_eq!(ty(&cookie), 3);
    p.deliver(false, &cookie);
    // a's immediate resend, with mac2.
    let (_, resend) = p.wire.remove(0);
    assert_eq!(ty(&resend), 1);
    let (mut accepted, mut limited) = (0, 0);
    for _ in 0..10 {
        match p.deliver(true, &resend) {
            Decapsulated::Done => accepted += 1,
            Decapsulated::Dropped(DropReason::RateLimited) => limited += 1,
            _ => {}
        }
    }
    p.wire.clear();
    assert_eq!(
        accepted, 1,
        "a handshake with a valid mac2 is answered under load"
    );
    assert_eq!(
        limited, 5,
        "a burst beyond 5 from one source is rate limited"
    );
}

#[test]
fn roaming_endpoint_follows_authenticated_packets_only() {
    let mut p = Pair::new(None, true);
    let pkt = p.packet(true, b"1");
    p.send_ip(true, &pkt);
    p.run();
    // a moves to a new address and port; its next packet comes from there.
    p.a.addr = "198.51.100.9:4444".parse().unwrap();
    let pkt = p.packet(true, b"2");
    p.send_ip(true, &pkt);
    p.run();
    let info = p.b.dev.peer_info(p.b.peer).unwrap();
    assert_eq!(
        info.endpoint,
        Some(p.a.addr),
        "endpoint follows the latest authenticated packet"
    );
    // Garbage from a third address does not move it.
    let mut junk = p.sent_a.last().unwrap().clone();
    junk[40] ^= 1;
    let spoofer: std::net::SocketAddr = "203.0.113.66:1".parse().unwrap();
    let mut buf = junk.clone();
    let now = p.now;
    let r = p.b.dev.decapsulate(spoofer, &mut buf, junk.len(), now);
    assert!(matches!(r, Decapsulated::Dropped(_)));
    assert_eq!(
        p.b.dev.peer_info(p.b.peer).unwrap().endpoint,
        Some(p.a.addr)
    );
    // b's replies go to the new address.
    let back = p.packet(false, b"3");
    match p.send_ip(false, &back) {
        Encapsulated::Send { endpoint, .. } => assert_eq!(endpoint, p.a.addr),
        other => panic!("{other:?}"),
    }
}

#[test]
fn inner_source_outside_allowed_ips_is_dropped() {
    let mut p = Pair::new(None, true);
    let pkt = p.packet(true, b"ok");
    p.send_ip(true, &pkt);
    p.run();
    // a is allowed to send towards 10.0.0.2, but claims a source b does not allow from a.
    let spoofed = ipv4([10, 9, 9, 9], [10, 0, 0, 2], b"spoof");
    p.send_ip(true, &spoofed);
    let (_, d) = p.wire.pop().unwrap();
    assert_eq!(
        p.deliver(true, &d),
        Decapsulated::Dropped(DropReason::SourceNotAllowed)
    );
    // No route for an unknown destination on the sending side.
    let nowhere = ipv4([10, 0, 0, 1], [172, 16, 0, 1], b"?");
    assert_eq!(
        p.send_ip(true, &nowhere),
        Encapsulated::Dropped(DropReason::NoRoute)
    );
}

#[test]
fn ipv6_inner_packets_and_longest_prefix_match() {
    let mut p = Pair::new(None, true);
    let a_peer = p.a.peer;
    let b_peer = p.b.peer;
    p.a.dev
        .add_allowed_ip(a_peer, "fd00::/64".parse().unwrap())
        .unwrap();
    p.b.dev
        .add_allowed_ip(b_peer, "fd00::1/128".parse().unwrap())
        .unwrap();
    let v6 = ipv6(INNER6_A, INNER6_B, b"six!");
    p.send_ip(true, &v6);
    p.run();
    assert_eq!(p.delivered_b, vec![v6]);
}

#[test]
fn changing_our_private_key_ends_sessions_and_a_new_handshake_works() {
    let mut p = Pair::new(None, true);
    let pkt = p.packet(true, b"1");
    p.send_ip(true, &pkt);
    p.run();
    let new_key = key(9);
    let new_pub = new_key.public_key();
    p.a.dev.set_private_key(Some(new_key));
    // b learns a's new public key (as a config reload would do).
    p.b.dev.remove_peer(&p.a.public);
    let mut cfg = tandem::proto::PeerConfig::new(new_pub);
    cfg.endpoint = Some(p.a.addr);
    cfg.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
    p.b.peer = p.b.dev.upsert_peer(&cfg).unwrap();
    let pkt = p.packet(true, b"2");
    assert_eq!(
        p.send_ip(true, &pkt),
        Encapsulated::Queued,
        "old sessions are gone"
    );
    p.run();
    assert_eq!(p.delivered_b.last(), Some(&pkt));
}

#[test]
fn own_public_key_cannot_be_a_peer() {
    let p = Pair::new(None, true);
    let mut dev = tandem::proto::Device::new(Some(key(1)), [0; 32]);
    let cfg = tandem::proto::PeerConfig::new(p.a.public);
    assert_eq!(
        dev.upsert_peer(&cfg),
        Err(tandem::proto::ConfigureError::OwnPublicKey)
    );
}

#[test]
fn split_jobs_on_other_threads_match_the_one_call_path() {
    use tandem::proto::{HEADROOM, PreparedReceive, PreparedSend, TAILROOM};
    let mut p = Pair::new(None, true);
    let pkt = p.packet(true, b"warm");
    p.send_ip(true, &pkt);
    p.run();
    // A batch of 64 packets: prepare in order, seal on two threads, send in order.
    let now = p.now;
    let mut bufs: Vec<Vec<u8>> = (0..64u8)
        .map(|i| {
            let pkt = p.packet(true, &[i; 100]);
            let mut b = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
            b[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
            b
        })
        .collect();
    let jobs: Vec<_> = bufs
        .iter()
        .map(|b| {
            match p
                .a
                .dev
                .prepare_encapsulate(b, b.len() - HEADROOM - TAILROOM, now)
            {
                PreparedSend::Seal { job, .. } => job,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    std::thread::scope(|s| {
        let (left, right) = bufs.split_at_mut(32);
        let (jl, jr) = jobs.split_at(32);
        s.spawn(move || {
            left.iter_mut()
                .zip(jl)
                .for_each(|(b, j)| assert!(j.seal(b).is_some()))
        });
        s.spawn(move || {
            right
                .iter_mut()
                .zip(jr)
                .for_each(|(b, j)| assert!(j.seal(b).is_some()))
        });
    });
    let lens: Vec<usize> = jobs.iter().map(|j| j.message_len()).collect();
    // Receive side: prepare all, open on threads in reverse, finish in order.
    let mut rx: Vec<Vec<u8>> = bufs
        .iter()
        .zip(&lens)
        .map(|(b, &n)| b[..n].to_vec())
        .collect();
    let src = p.a.addr;
    let rjobs: Vec<_> = rx
        .iter_mut()
        .map(|d| {
            let n = d.len();
            match p.b.dev.prepare_decapsulate(src, d, n, now) {
                PreparedReceive::Open(job) => job,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    let opened: Vec<Option<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = rx
            .iter_mut()
            .zip(&rjobs)
            .rev()
            .map(|(d, j)| s.spawn(move || j.open(d)))
            .collect();
        let mut v: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        v.reverse();
        v
    });
    for (i, ((d, j), o)) in rx.iter().zip(&rjobs).zip(opened).enumerate() {
        match p.b.dev.finish_decapsulate(j, o, d, now) {
            Decapsulated::Deliver { range, .. } => assert_eq!(d[range][20..], [i as u8; 100]),
            other => panic!("{other:?}"),
        }
    }
    // Replays through the split path are refused at prepare time.
    let mut again = bufs[0][..lens[0]].to_vec();
    let n = again.len();
    assert!(matches!(
        p.b.dev.prepare_decapsulate(src, &mut again, n, now),
        PreparedReceive::Dropped(DropReason::ReplayedCounter)
    ));
}

#[test]
fn handshake_completion_is_reported_once_per_side() {
    use tandem::proto::Event;
    let mut p = Pair::new(None, true);
    let pkt = p.packet(true, b"hello");
    p.send_ip(true, &pkt);
    p.run();
    let a_events: Vec<_> = std::iter::from_fn(|| p.a.dev.poll_event()).collect();
    let b_events: Vec<_> = std::iter::from_fn(|| p.b.dev.poll_event()).collect();
    assert_eq!(
        a_events,
        vec![Event::HandshakeCompleted {
            peer: p.a.peer,
            public_key: p.b.public,
            endpoint: Some(p.b.addr)
        }]
    );
    // The responder's session is confirmed by the initiator's first packet.
    assert_eq!(
        b_events,
        vec![Event::HandshakeCompleted {
            peer: p.b.peer,
            public_key: p.a.public,
            endpoint: Some(p.a.addr)
        }]
    );
    // Data under the session reports nothing more.
    let pkt = p.packet(false, b"again");
    p.send_ip(false, &pkt);
    p.run();
    assert_eq!(p.a.dev.poll_event(), None);
    assert_eq!(p.b.dev.poll_event(), None);
}
