//! The driver's clocks, read here and handed to the core as [`Now`].

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::proto::Now;

/// Monotonic time counts from the moment the driver started; wall time is the system clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    /// Both clocks, now. A wall clock set before 1970 reads as the epoch.
    pub fn now(&self) -> Now {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Now::new(self.start.elapsed(), unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_starts_near_zero_and_advances() {
        let clock = Clock::new();
        let now = clock.now();
        assert!(now.monotonic < Duration::from_secs(5));
        assert!(
            now.unix > Duration::from_secs(1_600_000_000),
            "wall clock looks unset"
        );
        std::thread::sleep(Duration::from_millis(20));
        let later = clock.now();
        assert!(later.monotonic >= now.monotonic + Duration::from_millis(20));
    }
}
