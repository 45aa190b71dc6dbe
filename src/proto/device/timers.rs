//! Time passing, as the kernel's `timers.c`: firing each peer's due timers and saying when
//! the next one is due.

use std::time::Duration;

use rand_core::RngCore;

use crate::proto::error::DropReason;
use crate::proto::peer::PeerId;
use crate::proto::time::Now;
use crate::proto::timers::{
    KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REKEY_TIMEOUT_JITTER_MAX, TimerEvent,
};

use super::Device;

impl Device {
    /// Fires every timer that is due at `now`.
    pub fn update_timers(&mut self, now: Now) {
        if self.under_load_until.is_some_and(|t| now.monotonic >= t) {
            self.under_load_until = None;
        }
        self.rate_limiter.gc(now.monotonic);
        for slot in 0..self.peers.slot_count() {
            let Some(id) = self.peers.id_at(slot) else {
                continue;
            };
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
                    for _ in 0..dropped {
                        self.drops.count(DropReason::HandshakeTimeout);
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

    /// When `update_timers` next has work (monotonic), if ever.
    pub fn next_deadline(&self) -> Option<Duration> {
        let peers = self.peers.values().filter_map(|p| p.timers.next_deadline());
        let load = self.under_load_until;
        peers.chain(load).min()
    }

    pub(super) fn jitter(&mut self) -> Duration {
        let max = REKEY_TIMEOUT_JITTER_MAX.as_micros() as u64;
        // A plain modulo, so the value depends on the generator alone (not on a sampling
        // algorithm that may change between versions); its bias is below 2^-45 here.
        Duration::from_micros(self.rng.next_u64() % (max + 1))
    }
}
