//! Time passing, as the kernel's `timers.c`: firing each peer's due timers and saying when
//! the next one is due.
//!
//! The kernel arms one timer per peer and event; here every peer has its earliest deadline in
//! one min-heap, so saying when the next timer is due and finding the due peers cost
//! O(log peers), not a walk over every peer on every turn of the loop. A peer's timers can
//! only change through a mutable borrow from the peer table, which notes the peers it hands
//! out; before the heap is read, those peers' deadlines are brought in (`schedule_touched`).
//! An entry is never removed in place: a peer whose deadline moves later keeps its earlier
//! entry, which then pops early, finds nothing due and puts the peer back at its real
//! deadline; an entry of a removed peer finds no peer. Due peers fire in slot order, as the
//! walk over every peer did, so the random draws (jitter) and the datagrams come out in the
//! same order as before (a test below checks it against that walk).

use std::cmp::Reverse;
use std::time::Duration;

use rand_core::RngCore;

use crate::proto::error::DropReason;
use crate::proto::peer::PeerId;
use crate::proto::time::Now;
use crate::proto::timers::{
    KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REKEY_TIMEOUT_JITTER_MAX, TimerEvent,
};

use super::{Device, events};

impl Device {
    /// Fires every timer that is due at `now`.
    pub fn update_timers(&mut self, now: Now) {
        if self.under_load_until.is_some_and(|t| now.monotonic >= t) {
            self.under_load_until = None;
        }
        self.rate_limiter.gc(now.monotonic);
        self.endpoint_limiter.gc(now.monotonic);
        self.cookie_limiter.gc(now.monotonic);
        self.schedule_touched();
        // The peers whose entry is due, each once, in slot order.
        let mut due = std::mem::take(&mut self.timer_due);
        due.clear();
        while let Some(&Reverse((deadline, id))) = self.timer_heap.peek() {
            if deadline > now.monotonic {
                break;
            }
            self.timer_heap.pop();
            if let Some(peer) = self.peers.get_mut_untracked(id)
                && peer.scheduled == Some(deadline)
            {
                peer.scheduled = None;
                due.push(id);
            }
        }
        due.sort_unstable();
        for &id in &due {
            // Bounded: each event clears its own deadline before it can set a later one.
            for _ in 0..8 {
                let Some(event) = self
                    .peers
                    .get_mut(id)
                    .and_then(|p| p.timers.take_due(now.monotonic))
                else {
                    break;
                };
                self.fire(id, event, now);
            }
            // Back in the heap at its next deadline, whether anything fired or its entry was
            // only early.
            self.schedule(id);
        }
        self.timer_due = due;
        self.schedule_touched();
    }

    /// When `update_timers` next has work (monotonic), if ever. It may be a little early
    /// (a deadline that moved later), never late.
    pub fn next_deadline(&mut self) -> Option<Duration> {
        self.schedule_touched();
        let peers = self.timer_heap.peek().map(|&Reverse((d, _))| d);
        peers.into_iter().chain(self.under_load_until).min()
    }

    /// Brings the deadlines of the peers touched since the last call into the heap.
    fn schedule_touched(&mut self) {
        let mut touched = std::mem::take(&mut self.timer_scratch);
        self.peers.take_touched(&mut touched);
        for &id in &touched {
            self.schedule(id);
        }
        self.timer_scratch = touched;
    }

    /// Puts `id` in the heap at its next deadline unless it has an entry as early already.
    fn schedule(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut_untracked(id) else {
            return;
        };
        if let Some(deadline) = peer.timers.next_deadline()
            && peer.scheduled.is_none_or(|s| deadline < s)
        {
            peer.scheduled = Some(deadline);
            self.timer_heap.push(Reverse((deadline, id)));
        }
    }

    fn fire(&mut self, id: PeerId, event: TimerEvent, now: Now) {
        match event {
            TimerEvent::RetransmitHandshake => {
                let Some(peer) = self.peers.get_mut(id) else {
                    return;
                };
                if peer.timers.handshake_attempts > MAX_TIMER_HANDSHAKES {
                    // Give up after REKEY_ATTEMPT_TIME: drop what waited, and erase the
                    // handshake's residue later unless something renews it.
                    tracing::debug!(peer = %peer.public_key, "handshake gave up after {} attempts", peer.timers.handshake_attempts);
                    peer.timers.send_keepalive = None;
                    let dropped = peer.staged.len();
                    peer.staged.clear();
                    if peer.timers.zero_key_material.is_none() {
                        peer.timers.on_session_derived(now.monotonic);
                    }
                    // Every initiation of the series: the first and its retries.
                    let sent = peer.timers.handshake_attempts + 1;
                    let event = events::handshake_gave_up(peer, id, sent, now);
                    self.handshakes_failed += 1;
                    for _ in 0..dropped {
                        self.drops.count(DropReason::HandshakeTimeout);
                    }
                    if let Some(event) = event {
                        self.push_event(event);
                    }
                } else {
                    peer.timers.handshake_attempts += 1;
                    // No answer to the last initiation: the local address it left from may be
                    // the trouble (gone, or no longer routed back), so the retry lets the
                    // kernel pick one, as the kernel module and wireguard-go do here.
                    if let Some(endpoint) = &mut peer.endpoint {
                        endpoint.local = None;
                    }
                    self.send_initiation(id, true, now);
                }
            }
            TimerEvent::SendKeepalive => {
                self.send_keepalive(id, now);
                if let Some(peer) = self.peers.get_mut(id)
                    && peer.timers.need_another_keepalive
                {
                    peer.timers.need_another_keepalive = false;
                    peer.timers.send_keepalive = Some(now.monotonic + KEEPALIVE_TIMEOUT);
                }
            }
            TimerEvent::NewHandshake => self.send_initiation(id, false, now),
            TimerEvent::ZeroKeyMaterial => {
                if let Some(peer) = self.peers.get_mut(id) {
                    tracing::debug!(peer = %peer.public_key, "erasing session keys");
                }
                let staged = self
                    .peers
                    .get_mut(id)
                    .map(|p| std::mem::take(&mut p.staged));
                self.clear_sessions(id);
                if let (Some(staged), Some(peer)) = (staged, self.peers.get_mut(id)) {
                    peer.staged = staged;
                }
            }
            TimerEvent::PersistentKeepalive => {
                if self
                    .peers
                    .get(id)
                    .is_some_and(|p| p.persistent_keepalive > 0)
                {
                    self.send_keepalive(id, now);
                }
            }
        }
    }

    pub(super) fn jitter(&mut self) -> Duration {
        let max = REKEY_TIMEOUT_JITTER_MAX.as_micros() as u64;
        // A plain modulo, so the value depends on the generator alone (not on a sampling
        // algorithm that may change between versions); its bias is below 2^-45 here.
        Duration::from_micros(self.rng.next_u64() % (max + 1))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use super::*;
    use crate::proto::device::{Decapsulated, Encapsulated, HEADROOM, TAILROOM};
    use crate::proto::prefix::Prefix;
    use crate::proto::{PeerConfig, PrivateKey};
    use crate::testkit::packet::ipv4;
    use crate::testkit::rng::SplitMix64;

    /// The schedule as it was before the heap: every peer walked in slot order on every call.
    /// The reference the heap must match, fire for fire.
    fn update_timers_by_walk(d: &mut Device, now: Now) {
        if d.under_load_until.is_some_and(|t| now.monotonic >= t) {
            d.under_load_until = None;
        }
        d.rate_limiter.gc(now.monotonic);
        d.endpoint_limiter.gc(now.monotonic);
        d.cookie_limiter.gc(now.monotonic);
        for slot in 0..d.peers.slot_count() {
            let Some(id) = d.peers.id_at(slot) else {
                continue;
            };
            for _ in 0..8 {
                let Some(event) = d
                    .peers
                    .get_mut(id)
                    .and_then(|p| p.timers.take_due(now.monotonic))
                else {
                    break;
                };
                d.fire(id, event, now);
            }
        }
    }

    fn next_deadline_by_walk(d: &Device) -> Option<Duration> {
        let peers = d.peers.iter().filter_map(|(_, p)| p.timers.next_deadline());
        peers.chain(d.under_load_until).min()
    }

    const PEERS: u8 = 24;

    fn endpoint(i: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::from([192, 0, 2, i]), 51820)
    }

    fn peer_key(i: u8) -> PrivateKey {
        PrivateKey::from_bytes([i + 10; 32]).clamped()
    }

    /// One side of the comparison: the device under test, and a real responder for peer 0
    /// (so sessions, keepalives and rekeys happen, not only retries).
    struct World {
        device: Device,
        responder: Device,
    }

    impl World {
        fn new() -> World {
            let own = PrivateKey::from_bytes([1; 32]).clamped();
            let mut device = Device::new(Some(own.clone()), [5; 32]);
            for i in 0..PEERS {
                let mut c = PeerConfig::new(peer_key(i).public_key());
                c.endpoint = Some(endpoint(i));
                c.allowed_ips = vec![Prefix::host(IpAddr::from([10, 1, 0, i]))];
                device.upsert_peer(&c).expect("peer");
            }
            let mut responder = Device::new(Some(peer_key(0)), [6; 32]);
            let mut c = PeerConfig::new(own.public_key());
            c.allowed_ips = vec![Prefix::new(IpAddr::from([10, 0, 0, 0]), 8).expect("prefix")];
            responder.upsert_peer(&c).expect("responder's peer");
            World { device, responder }
        }

        /// Delivers what both sides queued (peer 0's datagrams to the responder and back;
        /// everything else is lost), and returns the device's datagrams in order.
        fn exchange(&mut self, now: Now) -> Vec<(SocketAddr, Vec<u8>)> {
            let mut sent = Vec::new();
            let mut out = vec![0u8; 2048];
            for _ in 0..64 {
                let mut quiet = true;
                while let Some(t) = self.device.poll_transmit(&mut out, now) {
                    quiet = false;
                    let bytes = out[..t.len].to_vec();
                    if t.endpoint == endpoint(0) {
                        let mut buf = bytes.clone();
                        buf.resize(bytes.len() + 64, 0);
                        let _ =
                            self.responder
                                .decapsulate(endpoint(99), &mut buf, bytes.len(), now);
                    }
                    sent.push((t.endpoint, bytes));
                }
                while let Some(t) = self.responder.poll_transmit(&mut out, now) {
                    quiet = false;
                    let mut buf = out[..t.len].to_vec();
                    let len = buf.len();
                    buf.resize(len + 64, 0);
                    let got = self.device.decapsulate(endpoint(0), &mut buf, len, now);
                    assert!(
                        !matches!(got, Decapsulated::Dropped(_)) || len == 32,
                        "{got:?}"
                    );
                }
                if quiet {
                    break;
                }
            }
            sent
        }
    }

    #[test]
    fn the_heap_fires_what_the_walk_fired_in_the_same_order() {
        let mut rng = SplitMix64::new(0x7133_0f1a);
        let mut heap = World::new();
        let mut walk = World::new();
        let mut now = Now::new(
            Duration::from_secs(1000),
            Duration::from_secs(1_700_000_000),
        );
        let mut fired = 0usize;
        for step in 0..1200 {
            match rng.next_u64() % 10 {
                // A packet to a random peer (an initiation, or data on peer 0's session).
                0..=2 => {
                    let to = (rng.next_u64() % u64::from(PEERS)) as u8;
                    let packet = ipv4([10, 0, 0, 1], [10, 1, 0, to], b"timer test");
                    let mut a = vec![0u8; HEADROOM + packet.len() + TAILROOM];
                    a[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
                    let mut b = a.clone();
                    let ra = heap.device.encapsulate(&mut a, packet.len(), now);
                    let rb = walk.device.encapsulate(&mut b, packet.len(), now);
                    assert_eq!(format!("{ra:?}"), format!("{rb:?}"), "step {step}");
                    if let Encapsulated::Send { len, .. } = ra {
                        assert_eq!(a[..len], b[..len], "step {step}");
                    }
                }
                // Persistent keepalive turned on or off for a random peer.
                3 => {
                    let i = (rng.next_u64() % u64::from(PEERS)) as u8;
                    let seconds = [0u16, 5, 25][(rng.next_u64() % 3) as usize];
                    for w in [&mut heap, &mut walk] {
                        let id = w.device.peer_id(&peer_key(i).public_key()).expect("peer");
                        w.device.set_persistent_keepalive(id, seconds, now);
                    }
                }
                // A peer removed and added back (a new id in the same slot).
                4 if step % 7 == 0 => {
                    let i = 1 + (rng.next_u64() % u64::from(PEERS - 1)) as u8;
                    for w in [&mut heap, &mut walk] {
                        assert!(w.device.remove_peer(&peer_key(i).public_key()));
                        let mut c = PeerConfig::new(peer_key(i).public_key());
                        c.endpoint = Some(endpoint(i));
                        c.allowed_ips = vec![Prefix::host(IpAddr::from([10, 1, 0, i]))];
                        w.device.upsert_peer(&c).expect("peer back");
                    }
                }
                // Time passes, a little or a lot, and the loop wakes (at the deadline it was
                // told, or later, or earlier).
                _ => {
                    let ahead = match rng.next_u64() % 4 {
                        0 => Duration::from_millis(rng.next_u64() % 50),
                        1 => Duration::from_millis(rng.next_u64() % 6000),
                        2 => Duration::from_secs(rng.next_u64() % 200),
                        _ => heap
                            .device
                            .next_deadline()
                            .map_or(Duration::ZERO, |d| d.saturating_sub(now.monotonic)),
                    };
                    now = Now::new(now.monotonic + ahead, now.unix + ahead);
                    heap.device.update_timers(now);
                    update_timers_by_walk(&mut walk.device, now);
                }
            }
            let a = heap.exchange(now);
            let b = walk.exchange(now);
            fired += a.len();
            assert_eq!(a, b, "step {step}: the datagrams differ");
            // Never later than the walk's deadline; early only by a stale entry, which the
            // next update corrects without firing anything.
            let (dh, dw) = (
                heap.device.next_deadline(),
                next_deadline_by_walk(&walk.device),
            );
            match (dh, dw) {
                (Some(h), Some(w)) => assert!(h <= w, "step {step}: {h:?} after {w:?}"),
                (None, Some(w)) => panic!("step {step}: the heap lost a deadline at {w:?}"),
                _ => {}
            }
            // Nothing is overdue in either once both have run their timers.
            if let Some(w) = dw {
                assert!(w > now.monotonic || dh.is_some(), "step {step}");
            }
        }
        assert!(
            fired > 500,
            "the scenario sent too little to mean much: {fired}"
        );
        // The heap stays proportional to the peers, stale entries included.
        assert!(
            heap.device.timer_heap.len() <= 4 * usize::from(PEERS) + 8,
            "{} entries",
            heap.device.timer_heap.len()
        );
    }
}
