//! TAI64N timestamps for handshake initiations, on the kernel's base so that peers can switch
//! between tandem, the kernel and wireguard-go without their timestamps going backwards.

use std::time::Duration;

/// TAI64 label of the Unix epoch (2^62) plus the 10 leap seconds TAI was ahead in 1970,
/// as the kernel and wireguard-go encode it.
const TAI64_BASE: u64 = (1 << 62) + 10;

/// Nanoseconds are rounded down to a multiple of 2^24 ns (about 16.8 ms), the largest power
/// of two below 1 s / 50: the timestamp then leaks no fine timing, yet still grows across the
/// 20 ms flood limit between initiations.
const NANOS_MASK: u32 = !((1 << 24) - 1);

/// A 12-byte TAI64N timestamp; byte order equals numeric order (big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Tai64N(pub [u8; 12]);

impl Tai64N {
    pub const LEN: usize = 12;

    /// The timestamp for the wall-clock time `unix` (since 1970-01-01 UTC).
    pub fn from_unix(unix: Duration) -> Self {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&TAI64_BASE.wrapping_add(unix.as_secs()).to_be_bytes());
        out[8..].copy_from_slice(&(unix.subsec_nanos() & NANOS_MASK).to_be_bytes());
        Tai64N(out)
    }

    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_base_and_rounding() {
        let t = Tai64N::from_unix(Duration::new(1_700_000_000, 999_999_999));
        assert_eq!(
            &t.0[..8],
            &(0x400000000000000au64 + 1_700_000_000).to_be_bytes()
        );
        let nanos = u32::from_be_bytes(t.0[8..].try_into().unwrap());
        assert_eq!(nanos % (1 << 24), 0);
        assert!(nanos <= 999_999_999 && 999_999_999 - nanos < 1 << 24);
    }

    #[test]
    fn ordering_follows_time() {
        let a = Tai64N::from_unix(Duration::new(100, 0));
        let b = Tai64N::from_unix(Duration::new(100, 20_000_000));
        let c = Tai64N::from_unix(Duration::new(101, 0));
        assert!(a < b && b < c);
        // Within one 2^24 ns bucket the timestamp does not move.
        assert_eq!(a, Tai64N::from_unix(Duration::new(100, 10_000_000)));
    }
}
