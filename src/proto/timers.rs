//! The whitepaper's timer constants (section 6) and one peer's timer state.
//!
//! Each timer is an optional deadline on the caller's monotonic clock; `Device::update_timers`
//! fires the ones that are due. The event hooks (`on_data_sent`, ...) mirror the kernel's
//! `wg_timers_*` functions, so the rules read the same as there.

use std::time::Duration;

pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
pub use super::replay::REJECT_AFTER_MESSAGES;
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshake retries get up to this much random extra delay, so peers do not lock step.
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT.
pub const MAX_TIMER_HANDSHAKES: u32 =
    (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;
/// Session keys are erased this long after the last handshake if nothing renews them.
pub const ZERO_KEY_MATERIAL_AFTER: Duration = Duration::from_secs(3 * 180);
/// An initiator whose session is this old rekeys when it receives (so the session never
/// expires under a peer that only receives): REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT.
pub const REKEY_ON_RECEIVE_AGE: Duration = Duration::from_secs(180 - 10 - 5);
/// At most one initiation per peer is consumed in this interval (50 per second).
pub const INITIATION_MIN_INTERVAL: Duration = Duration::from_millis(20);
/// How long the device stays "under load" after the driver last reported a backlog.
pub const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);

/// One peer's timers, as deadlines on the monotonic clock.
#[derive(Debug, Clone, Default)]
pub struct PeerTimers {
    pub retransmit_handshake: Option<Duration>,
    pub send_keepalive: Option<Duration>,
    pub new_handshake: Option<Duration>,
    pub zero_key_material: Option<Duration>,
    pub persistent_keepalive: Option<Duration>,
    pub handshake_attempts: u32,
    pub need_another_keepalive: bool,
    pub sent_lastminute_handshake: bool,
    /// When we last sent an initiation: initiations are sent at most once per REKEY_TIMEOUT.
    pub last_sent_handshake: Option<Duration>,
}

/// A timer that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerEvent {
    RetransmitHandshake,
    SendKeepalive,
    NewHandshake,
    ZeroKeyMaterial,
    PersistentKeepalive,
}

impl PeerTimers {
    /// wg_timers_data_sent: if nothing comes back within KEEPALIVE + REKEY_TIMEOUT, rekey.
    pub fn on_data_sent(&mut self, now: Duration, jitter: Duration) {
        if self.new_handshake.is_none() {
            self.new_handshake = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter);
        }
    }

    /// wg_timers_data_received: answer with a keepalive if we send nothing for a while.
    pub fn on_data_received(&mut self, now: Duration) {
        if self.send_keepalive.is_none() {
            self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        } else {
            self.need_another_keepalive = true;
        }
    }

    /// wg_timers_any_authenticated_packet_sent: whatever we sent serves as a keepalive.
    pub fn on_authenticated_sent(&mut self) {
        self.send_keepalive = None;
    }

    /// wg_timers_any_authenticated_packet_received: the peer is alive, no rekey needed.
    pub fn on_authenticated_received(&mut self) {
        self.new_handshake = None;
    }

    /// wg_timers_any_authenticated_packet_traversal: restart the persistent keepalive.
    pub fn on_authenticated_traversal(&mut self, now: Duration, persistent_keepalive: u16) {
        self.persistent_keepalive = (persistent_keepalive > 0)
            .then(|| now + Duration::from_secs(u64::from(persistent_keepalive)));
    }

    /// wg_timers_handshake_initiated: retry if no response arrives.
    pub fn on_handshake_initiated(&mut self, now: Duration, jitter: Duration) {
        self.retransmit_handshake = Some(now + REKEY_TIMEOUT + jitter);
    }

    /// wg_timers_handshake_complete.
    pub fn on_handshake_complete(&mut self) {
        self.retransmit_handshake = None;
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
    }

    /// wg_timers_session_derived: erase keys if no new handshake happens for 3 * REJECT_AFTER_TIME.
    pub fn on_session_derived(&mut self, now: Duration) {
        self.zero_key_material = Some(now + ZERO_KEY_MATERIAL_AFTER);
    }

    /// Forget every timer (peer removed or key material erased by the user).
    pub fn stop_all(&mut self) {
        *self = PeerTimers {
            last_sent_handshake: self.last_sent_handshake,
            ..PeerTimers::default()
        };
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Duration> {
        [
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Takes the first due timer, clearing its deadline.
    pub fn take_due(&mut self, now: Duration) -> Option<TimerEvent> {
        let slots: [(&mut Option<Duration>, TimerEvent); 5] = [
            (&mut self.zero_key_material, TimerEvent::ZeroKeyMaterial),
            (
                &mut self.retransmit_handshake,
                TimerEvent::RetransmitHandshake,
            ),
            (&mut self.new_handshake, TimerEvent::NewHandshake),
            (&mut self.send_keepalive, TimerEvent::SendKeepalive),
            (
                &mut self.persistent_keepalive,
                TimerEvent::PersistentKeepalive,
            ),
        ];
        for (slot, event) in slots {
            if slot.is_some_and(|d| d <= now) {
                *slot = None;
                return Some(event);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_whitepaper() {
        assert_eq!(MAX_TIMER_HANDSHAKES, 18);
        assert_eq!(REJECT_AFTER_MESSAGES, u64::MAX - 8192);
        assert_eq!(REKEY_ON_RECEIVE_AGE, Duration::from_secs(165));
        assert_eq!(ZERO_KEY_MATERIAL_AFTER, Duration::from_secs(540));
    }

    #[test]
    fn keepalive_timer_is_not_pushed_back_by_more_data() {
        let mut t = PeerTimers::default();
        t.on_data_received(Duration::from_secs(1));
        t.on_data_received(Duration::from_secs(5));
        assert_eq!(t.send_keepalive, Some(Duration::from_secs(11)));
        assert!(t.need_another_keepalive);
        assert_eq!(t.take_due(Duration::from_secs(10)), None);
        assert_eq!(
            t.take_due(Duration::from_secs(11)),
            Some(TimerEvent::SendKeepalive)
        );
        assert_eq!(t.next_deadline(), None);
    }
}
