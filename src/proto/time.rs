//! Time as the core sees it: values handed in by the driver, never read from a clock here.

use std::time::Duration;

/// One reading of the caller's clocks.
///
/// `monotonic` drives every timer (an arbitrary epoch, never going backwards); `unix` is the
/// wall clock, used only for TAI64N handshake timestamps and the "latest handshake" users see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub monotonic: Duration,
    pub unix: Duration,
}

impl Now {
    pub const fn new(monotonic: Duration, unix: Duration) -> Self {
        Now { monotonic, unix }
    }

    /// The same instant `d` later on both clocks (virtual time in tests).
    pub fn advance(self, d: Duration) -> Self {
        Now {
            monotonic: self.monotonic + d,
            unix: self.unix + d,
        }
    }
}
