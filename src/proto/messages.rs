//! Wire formats (whitepaper section 5.4). A message starts with a one-byte type and three
//! reserved zero bytes (a little-endian u32). Handshake messages have fixed sizes; every parser
//! here checks the whole frame before anything else looks at it.

use super::error::DropReason;

pub const MESSAGE_INITIATION: u8 = 1;
pub const MESSAGE_RESPONSE: u8 = 2;
pub const MESSAGE_COOKIE_REPLY: u8 = 3;
pub const MESSAGE_TRANSPORT: u8 = 4;

/// type(4) sender(4) ephemeral(32) static(32+16) timestamp(12+16) mac1(16) mac2(16)
pub const INITIATION_LEN: usize = 148;
/// type(4) sender(4) receiver(4) ephemeral(32) empty(0+16) mac1(16) mac2(16)
pub const RESPONSE_LEN: usize = 92;
/// type(4) receiver(4) nonce(24) cookie(16+16)
pub const COOKIE_REPLY_LEN: usize = 64;
/// type(4) receiver(4) counter(8), then the encrypted packet and its tag.
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// A transport message with an empty payload.
pub const KEEPALIVE_LEN: usize = TRANSPORT_HEADER_LEN + TAG_LEN;
/// The largest handshake-side message, for fixed buffers.
pub const MAX_HANDSHAKE_LEN: usize = INITIATION_LEN;

const TAG_LEN: usize = super::crypto::TAG_LEN;

/// Offsets inside an initiation.
pub mod initiation {
    pub const SENDER: usize = 4;
    /// The Noise body: ephemeral, encrypted static, encrypted timestamp.
    pub const BODY: core::ops::Range<usize> = 8..116;
    pub const MAC1: usize = 116;
    pub const MAC2: usize = 132;
}

/// Offsets inside a response.
pub mod response {
    pub const SENDER: usize = 4;
    pub const RECEIVER: usize = 8;
    /// The Noise body: ephemeral and encrypted empty payload.
    pub const BODY: core::ops::Range<usize> = 12..60;
    pub const MAC1: usize = 60;
    pub const MAC2: usize = 76;
}

/// Offsets inside a cookie reply.
pub mod cookie_reply {
    pub const RECEIVER: usize = 4;
    pub const NONCE: core::ops::Range<usize> = 8..32;
    pub const COOKIE: core::ops::Range<usize> = 32..64;
}

/// Padding of transport plaintext: a multiple of 16 bytes.
pub const PADDING_MULTIPLE: usize = 16;

/// The kind of a datagram, after its frame was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Initiation,
    Response,
    CookieReply,
    Transport { receiver: u32, counter: u64 },
}

/// Checks the frame of `datagram`: type, reserved bytes and length.
pub fn classify(datagram: &[u8]) -> Result<MessageKind, DropReason> {
    let Some(&[ty, r0, r1, r2]) = datagram.first_chunk::<4>() else {
        return Err(DropReason::Truncated);
    };
    let (kind, fixed_len) = match ty {
        MESSAGE_INITIATION => (MessageKind::Initiation, Some(INITIATION_LEN)),
        MESSAGE_RESPONSE => (MessageKind::Response, Some(RESPONSE_LEN)),
        MESSAGE_COOKIE_REPLY => (MessageKind::CookieReply, Some(COOKIE_REPLY_LEN)),
        MESSAGE_TRANSPORT => {
            if datagram.len() < KEEPALIVE_LEN {
                return Err(DropReason::Truncated);
            }
            let kind = MessageKind::Transport {
                receiver: read_u32(datagram, 4),
                counter: read_u64(datagram, 8),
            };
            (kind, None)
        }
        _ => return Err(DropReason::UnknownType),
    };
    if (r0, r1, r2) != (0, 0, 0) {
        return Err(DropReason::ReservedNotZero);
    }
    if let Some(len) = fixed_len {
        if datagram.len() < len {
            return Err(DropReason::Truncated);
        }
        if datagram.len() > len {
            return Err(DropReason::Oversized);
        }
    }
    Ok(kind)
}

/// Little-endian u32 at `at`; 0 when out of range (callers check lengths first).
pub fn read_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Little-endian u64 at `at`; 0 when out of range (callers check lengths first).
pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Writes the type word: the type byte and three reserved zero bytes.
pub fn write_type(out: &mut [u8], ty: u8) {
    out[..4].copy_from_slice(&[ty, 0, 0, 0]);
}

/// Writes a transport header for `receiver` and `counter` into the first 16 bytes of `out`.
pub fn write_transport_header(out: &mut [u8], receiver: u32, counter: u64) {
    write_type(out, MESSAGE_TRANSPORT);
    out[4..8].copy_from_slice(&receiver.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
}

/// Plaintext length after zero padding to a multiple of 16, never beyond `mtu` (as the
/// kernel does, so a full-size packet is not pushed past the path MTU by padding).
pub fn padded_len(len: usize, mtu: usize) -> usize {
    let padded = len.div_ceil(PADDING_MULTIPLE) * PADDING_MULTIPLE;
    if padded > mtu { len.max(mtu) } else { padded }
}

/// Length of a transport message carrying `plaintext_len` bytes (already padded).
pub const fn transport_len(plaintext_len: usize) -> usize {
    TRANSPORT_HEADER_LEN + plaintext_len + TAG_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_add_up() {
        assert_eq!(initiation::MAC2 + 16, INITIATION_LEN);
        assert_eq!(
            initiation::BODY.len(),
            super::super::noise::initiation_body_len(12)
        );
        assert_eq!(response::MAC2 + 16, RESPONSE_LEN);
        assert_eq!(
            response::BODY.len(),
            super::super::noise::response_body_len(0)
        );
        assert_eq!(cookie_reply::COOKIE.end, COOKIE_REPLY_LEN);
        assert_eq!(KEEPALIVE_LEN, 32);
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        for (ty, len) in [
            (1u8, INITIATION_LEN),
            (2, RESPONSE_LEN),
            (3, COOKIE_REPLY_LEN),
        ] {
            let mut msg = vec![0u8; len + 8];
            msg[0] = ty;
            for n in 0..len + 8 {
                let got = classify(&msg[..n]);
                if n == len {
                    assert!(got.is_ok(), "type {ty} len {n}");
                } else if n < len {
                    assert_eq!(got, Err(DropReason::Truncated), "type {ty} len {n}");
                } else {
                    assert_eq!(got, Err(DropReason::Oversized), "type {ty} len {n}");
                }
            }
        }
        let mut t = [0u8; 100];
        t[0] = 4;
        for n in 0..KEEPALIVE_LEN {
            assert_eq!(classify(&t[..n]), Err(DropReason::Truncated));
        }
        assert!(classify(&t[..KEEPALIVE_LEN]).is_ok());
    }

    #[test]
    fn reserved_bytes_and_unknown_types() {
        for ty in [0u8, 5, 255] {
            let mut m = vec![0u8; 148];
            m[0] = ty;
            assert_eq!(classify(&m), Err(DropReason::UnknownType));
        }
        for i in 1..4 {
            let mut m = vec![0u8; 148];
            m[0] = 1;
            m[i] = 1;
            assert_eq!(classify(&m), Err(DropReason::ReservedNotZero));
        }
    }

    #[test]
    fn transport_header_round_trip() {
        let mut m = [0u8; 32];
        write_transport_header(&mut m, 0xdead_beef, 0x0102_0304_0506_0708);
        assert_eq!(
            classify(&m),
            Ok(MessageKind::Transport {
                receiver: 0xdead_beef,
                counter: 0x0102_0304_0506_0708
            })
        );
    }

    #[test]
    fn padding_rule() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(16, 1420), 16);
        assert_eq!(padded_len(1419, 1420), 1420);
        assert_eq!(padded_len(1420, 1420), 1420);
        assert_eq!(padded_len(1500, 1420), 1500);
    }
}
