//! Why the core dropped something. Every drop is typed and counted, never fatal, and logged by
//! the driver at debug level; nothing from the network can make the core panic.

use std::fmt;

/// A typed reason for dropping a datagram or a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    // --- framing ---
    /// Shorter than any message or than its type requires.
    Truncated,
    /// Longer than a fixed-size handshake message.
    Oversized,
    /// The type byte names no WireGuard message.
    UnknownType,
    /// The three bytes after the type are not zero.
    ReservedNotZero,
    // --- handshake ---
    /// mac1 did not verify (not for us, or corrupted): checked before any Diffie-Hellman.
    InvalidMac1,
    /// Under load, and mac2 was missing or wrong: a cookie reply was sent instead.
    CookieRequired,
    /// Under load, and this source exceeded its handshake rate.
    RateLimited,
    /// The handshake did not decrypt or authenticate.
    HandshakeDecrypt,
    /// A Diffie-Hellman result was all zeros (low-order point).
    LowOrderPoint,
    /// The initiator's static key belongs to no configured peer.
    UnknownPeer,
    /// The initiation's timestamp is not newer than the last accepted one (replay).
    ReplayedInitiation,
    /// A second initiation from the same peer within 20 ms.
    InitiationFlood,
    /// A response or cookie reply for a handshake we are not running.
    UnexpectedHandshakeMessage,
    /// A cookie reply that did not decrypt under the last mac1 we sent.
    InvalidCookieReply,
    /// We have no private key, so we cannot take part in handshakes.
    NoPrivateKey,
    // --- transport ---
    /// The receiver index names no current session.
    UnknownReceiverIndex,
    /// The session is older than REJECT_AFTER_TIME or past REJECT_AFTER_MESSAGES.
    KeypairExpired,
    /// The counter was already seen or is behind the replay window.
    ReplayedCounter,
    /// The transport packet did not authenticate.
    DecryptFailed,
    /// The decrypted packet is not a well-formed IPv4 or IPv6 packet.
    InvalidInnerPacket,
    /// The inner source address is not in the sending peer's AllowedIPs.
    SourceNotAllowed,
    // --- outbound (TUN side) ---
    /// No peer's AllowedIPs contain the destination.
    NoRoute,
    /// The peer has no known endpoint to send to.
    NoEndpoint,
    /// The peer has no current session to seal with.
    NoKeypair,
    /// The packet does not fit the caller's buffer with headroom and tailroom.
    BufferTooSmall,
    /// The peer's queue of packets waiting for a handshake is full.
    QueueFull,
    /// The handshake gave up after REKEY_ATTEMPT_TIME; the packets waiting for it went.
    HandshakeTimeout,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 27] = [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::UnknownType,
        DropReason::ReservedNotZero,
        DropReason::InvalidMac1,
        DropReason::CookieRequired,
        DropReason::RateLimited,
        DropReason::HandshakeDecrypt,
        DropReason::LowOrderPoint,
        DropReason::UnknownPeer,
        DropReason::ReplayedInitiation,
        DropReason::InitiationFlood,
        DropReason::UnexpectedHandshakeMessage,
        DropReason::InvalidCookieReply,
        DropReason::NoPrivateKey,
        DropReason::UnknownReceiverIndex,
        DropReason::KeypairExpired,
        DropReason::ReplayedCounter,
        DropReason::DecryptFailed,
        DropReason::InvalidInnerPacket,
        DropReason::SourceNotAllowed,
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::NoKeypair,
        DropReason::BufferTooSmall,
        DropReason::QueueFull,
        DropReason::HandshakeTimeout,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// A stable snake_case name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::UnknownType => "unknown_type",
            DropReason::ReservedNotZero => "reserved_not_zero",
            DropReason::InvalidMac1 => "invalid_mac1",
            DropReason::CookieRequired => "cookie_required",
            DropReason::RateLimited => "rate_limited",
            DropReason::HandshakeDecrypt => "handshake_decrypt",
            DropReason::LowOrderPoint => "low_order_point",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::ReplayedInitiation => "replayed_initiation",
            DropReason::InitiationFlood => "initiation_flood",
            DropReason::UnexpectedHandshakeMessage => "unexpected_handshake_message",
            DropReason::InvalidCookieReply => "invalid_cookie_reply",
            DropReason::NoPrivateKey => "no_private_key",
            DropReason::UnknownReceiverIndex => "unknown_receiver_index",
            DropReason::KeypairExpired => "keypair_expired",
            DropReason::ReplayedCounter => "replayed_counter",
            DropReason::DecryptFailed => "decrypt_failed",
            DropReason::InvalidInnerPacket => "invalid_inner_packet",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::NoKeypair => "no_keypair",
            DropReason::BufferTooSmall => "buffer_too_small",
            DropReason::QueueFull => "queue_full",
            DropReason::HandshakeTimeout => "handshake_timeout",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One counter per drop reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::COUNT]);

impl DropCounters {
    pub fn count(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// Non-zero counters with their reasons.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.get(r)))
            .filter(|&(_, n)| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_order_matches_discriminants() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
        }
        let mut c = DropCounters::default();
        c.count(DropReason::QueueFull);
        c.count(DropReason::QueueFull);
        assert_eq!(c.get(DropReason::QueueFull), 2);
        assert_eq!(c.total(), 2);
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            vec![(DropReason::QueueFull, 2)]
        );
    }

    #[test]
    fn metric_labels_are_distinct() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}
