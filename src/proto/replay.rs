//! The receive counter window: rejects replayed and too-old transport counters.
//!
//! The RFC 6479 bitmap, sized as in the Linux kernel and wireguard-go: 8192 bits in a ring of
//! 128 words, of which one word is kept as slack so that moving the window forward only ever
//! clears whole words (no bit shifting). That leaves a usable window of 8128 counters behind
//! the greatest one received.
//!
//! The counter is checked twice: [`ReplayWindow::check`] before decrypting (cheap, changes
//! nothing, so a forged packet cannot move the window), and [`ReplayWindow::mark`] only after
//! the AEAD tag verified.

/// Counters at or above this are never accepted: the sender must have rekeyed long before.
/// 2^64 - 2^13 - 1, as in the whitepaper.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Total bits in the ring.
const BITS_TOTAL: u64 = 8192;
/// Bits per word of the ring.
const WORD_BITS: u64 = u64::BITS as u64;
/// Words in the ring (a power of two, so the ring index is a mask).
const WORDS: usize = (BITS_TOTAL / WORD_BITS) as usize;
/// Mask that turns a word number into a ring slot.
const WORD_MASK: u64 = WORDS as u64 - 1;

/// How far behind the greatest counter received a counter may be and still be accepted:
/// 8192 bits minus one u64 word.
pub const WINDOW_SIZE: u64 = BITS_TOTAL - WORD_BITS;

/// Sliding window of received transport counters for one keypair.
///
/// Fixed size (1 KiB of bitmap), no heap: one lives in every keypair.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Ring of seen-bits. A counter `n` lives at bit position `n + 1` (see `next`), i.e. in
    /// word `((n + 1) / 64) % 128`, bit `(n + 1) % 64`.
    bitmap: [u64; WORDS],
    /// One past the greatest counter marked so far; 0 while nothing was marked. Storing the
    /// successor lets "nothing received yet" need no separate flag, and is why bit positions
    /// are offset by one as well.
    next: u64,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bitmap is 128 words of noise in a log; the greatest counter is what matters.
        f.debug_struct("ReplayWindow")
            .field("greatest", &self.greatest())
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    pub const fn new() -> Self {
        ReplayWindow {
            bitmap: [0; WORDS],
            next: 0,
        }
    }

    /// The greatest counter marked so far, if any.
    pub fn greatest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// Ring slot and bit mask of the bit position `pos` (= counter + 1).
    #[inline]
    fn slot(pos: u64) -> (usize, u64) {
        // The mask keeps the slot below WORDS, so the cast and the index cannot go wrong.
        (
            ((pos / WORD_BITS) & WORD_MASK) as usize,
            1 << (pos % WORD_BITS),
        )
    }

    /// Cheap check BEFORE decrypting: would `counter` be accepted? Never changes state.
    #[inline]
    pub fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        // No overflow: counter < 2^64 - 2^13, so counter + 1 + WINDOW_SIZE fits.
        let pos = counter + 1;
        if pos + WINDOW_SIZE < self.next {
            // More than WINDOW_SIZE behind the greatest counter: its bit may already have
            // been recycled for a newer counter, so it cannot be told apart from a replay.
            return false;
        }
        if pos > self.next {
            // Ahead of everything seen: always new.
            return true;
        }
        let (word, bit) = Self::slot(pos);
        self.bitmap.get(word).is_some_and(|w| w & bit == 0)
    }

    /// AFTER authentication succeeded: record `counter`. Returns false (and changes nothing)
    /// when it is replayed, too old, or >= REJECT_AFTER_MESSAGES.
    #[inline]
    pub fn mark(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        let pos = counter + 1;
        if pos > self.next {
            // The window moves forward: every word that now starts to hold newer positions
            // still holds bits of positions a whole ring older, which are all outside the
            // window; clear them. A jump of a full ring or more clears everything.
            let current_word = self.next / WORD_BITS;
            let new_word = pos / WORD_BITS;
            let fresh = (new_word - current_word).min(WORDS as u64);
            for i in 1..=fresh {
                if let Some(w) = self
                    .bitmap
                    .get_mut(((current_word + i) & WORD_MASK) as usize)
                {
                    *w = 0;
                }
            }
            self.next = pos;
        }
        let (word, bit) = Self::slot(pos);
        match self.bitmap.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            // Unreachable after `check`, but a wrong answer here must be "reject".
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // A fixed-seed generator, so the random tests replay.
    use crate::testkit::rng::SplitMix64;
    use std::collections::HashSet;

    /// Asserts that `check` and then `mark` both give `expected` for `counter`.
    #[track_caller]
    fn t(w: &mut ReplayWindow, case: &str, counter: u64, expected: bool) {
        assert_eq!(w.check(counter), expected, "{case}: check({counter})");
        assert_eq!(w.mark(counter), expected, "{case}: mark({counter})");
    }

    /// Every case of the kernel's counter selftest (drivers/net/wireguard/selftest/counter.c),
    /// numbered as there.
    #[test]
    fn kernel_selftest_sequence() {
        const LIM: u64 = WINDOW_SIZE + 1;
        const R: u64 = REJECT_AFTER_MESSAGES;
        let cases: [(u64, bool); 34] = [
            (0, true),                    // 1
            (1, true),                    // 2
            (1, false),                   // 3
            (9, true),                    // 4
            (8, true),                    // 5
            (7, true),                    // 6
            (7, false),                   // 7
            (LIM, true),                  // 8
            (LIM - 1, true),              // 9
            (LIM - 1, false),             // 10
            (LIM - 2, true),              // 11
            (2, true),                    // 12
            (2, false),                   // 13
            (LIM + 16, true),             // 14
            (3, false),                   // 15
            (LIM + 16, false),            // 16
            (LIM * 4, true),              // 17
            (LIM * 4 - (LIM - 1), true),  // 18
            (10, false),                  // 19
            (LIM * 4 - LIM, false),       // 20
            (LIM * 4 - (LIM + 1), false), // 21
            (LIM * 4 - (LIM - 2), true),  // 22
            (LIM * 4 + 1 - LIM, false),   // 23
            (0, false),                   // 24
            (R, false),                   // 25
            (R - 1, true),                // 26
            (R, false),                   // 27
            (R - 1, false),               // 28
            (R - 2, true),                // 29
            (R + 1, false),               // 30
            (R + 2, false),               // 31
            (R - 2, false),               // 32
            (R - 3, true),                // 33
            (0, false),                   // 34
        ];
        let mut w = ReplayWindow::new();
        for (i, &(n, ok)) in cases.iter().enumerate() {
            t(&mut w, &format!("case {}", i + 1), n, ok);
        }
    }

    #[test]
    fn kernel_selftest_full_window_ascending_then_zero() {
        let mut w = ReplayWindow::new();
        for i in 1..=WINDOW_SIZE {
            t(&mut w, "ascending", i, true);
        }
        t(&mut w, "zero at the edge", 0, true);
        t(&mut w, "zero again", 0, false);
    }

    #[test]
    fn kernel_selftest_window_plus_one_ascending() {
        let mut w = ReplayWindow::new();
        for i in 2..=WINDOW_SIZE + 1 {
            t(&mut w, "ascending", i, true);
        }
        t(&mut w, "one at the edge", 1, true);
        t(&mut w, "zero past the edge", 0, false);
    }

    #[test]
    fn kernel_selftest_descending_from_window() {
        let mut w = ReplayWindow::new();
        for i in (0..=WINDOW_SIZE).rev() {
            t(&mut w, "descending", i, true);
        }
    }

    #[test]
    fn kernel_selftest_descending_from_window_plus_one() {
        let mut w = ReplayWindow::new();
        for i in (1..=WINDOW_SIZE + 1).rev() {
            t(&mut w, "descending", i, true);
        }
        t(&mut w, "zero past the edge", 0, false);
    }

    #[test]
    fn kernel_selftest_descending_then_top() {
        let mut w = ReplayWindow::new();
        for i in (1..=WINDOW_SIZE).rev() {
            t(&mut w, "descending", i, true);
        }
        t(&mut w, "new top", WINDOW_SIZE + 1, true);
        t(&mut w, "zero past the edge", 0, false);
    }

    #[test]
    fn kernel_selftest_descending_zero_then_top() {
        let mut w = ReplayWindow::new();
        for i in (1..=WINDOW_SIZE).rev() {
            t(&mut w, "descending", i, true);
        }
        t(&mut w, "zero", 0, true);
        t(&mut w, "new top", WINDOW_SIZE + 1, true);
    }

    #[test]
    fn check_never_changes_state() {
        let mut w = ReplayWindow::new();
        assert!(w.check(5));
        assert!(w.check(5));
        assert_eq!(w.greatest(), None);
        assert!(w.mark(5));
        assert!(!w.check(5));
        assert_eq!(w.greatest(), Some(5));
        assert!(w.check(100_000));
        assert_eq!(w.greatest(), Some(5));
        assert!(w.check(4));
    }

    #[test]
    fn rejected_mark_changes_nothing() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(20_000));
        let before = w.clone();
        assert!(!w.mark(20_000)); // replay
        assert!(!w.mark(20_000 - WINDOW_SIZE - 1)); // too old
        assert!(!w.mark(REJECT_AFTER_MESSAGES)); // too large
        assert!(!w.mark(u64::MAX));
        assert_eq!(w.next, before.next);
        assert_eq!(w.bitmap, before.bitmap);
    }

    /// The naive model: every counter ever accepted, and the greatest.
    #[derive(Default)]
    struct Model {
        seen: HashSet<u64>,
        greatest: Option<u64>,
    }

    impl Model {
        fn accepts(&self, n: u64) -> bool {
            n < REJECT_AFTER_MESSAGES
                && !self.seen.contains(&n)
                && self.greatest.is_none_or(|g| n >= g || g - n <= WINDOW_SIZE)
        }
        fn mark(&mut self, n: u64) -> bool {
            let ok = self.accepts(n);
            if ok {
                self.seen.insert(n);
                self.greatest = Some(self.greatest.map_or(n, |g| g.max(n)));
            }
            ok
        }
    }

    #[test]
    fn matches_naive_model_on_random_sequences() {
        let mut rng = SplitMix64::new(0x7a6e_6465_6d00_0001);
        let (mut accepted, mut rejected) = (0u32, 0u32);
        for seq in 0..300 {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            // Some sequences start near the top of the counter space.
            let base = match seq % 3 {
                0 => 0,
                1 => rng.below(1 << 40),
                _ => REJECT_AFTER_MESSAGES - rng.below(3 * BITS_TOTAL),
            };
            let mut recent: Vec<u64> = Vec::new();
            for step in 0..2_000 {
                let g = m.greatest.unwrap_or(base);
                let n = match rng.below(10) {
                    // Small steps forward, the common case.
                    0..=2 => g.saturating_add(rng.below(4)),
                    // Behind, within and around the window's edge.
                    3 => g.saturating_sub(rng.below(WINDOW_SIZE + 3)),
                    4 => g.saturating_sub(WINDOW_SIZE - 1 + rng.below(4)),
                    // Jumps forward around one ring, or far.
                    5 => g.saturating_add(BITS_TOTAL - 80 + rng.below(160)),
                    6 => g.saturating_add(rng.below(3 * BITS_TOTAL)),
                    // A replay of something recent.
                    7 if !recent.is_empty() => recent[rng.below(recent.len() as u64) as usize],
                    // Near or beyond the reject limit.
                    8 => REJECT_AFTER_MESSAGES
                        .wrapping_sub(2)
                        .wrapping_add(rng.below(5)),
                    _ => g.saturating_sub(rng.below(64)),
                };
                let expected = m.accepts(n);
                assert_eq!(w.check(n), expected, "seq {seq} step {step}: check({n})");
                assert_eq!(m.mark(n), expected);
                assert_eq!(w.mark(n), expected, "seq {seq} step {step}: mark({n})");
                assert_eq!(w.greatest(), m.greatest, "seq {seq} step {step}");
                if expected {
                    accepted += 1;
                    if recent.len() == 64 {
                        recent.remove(0);
                    }
                    recent.push(n);
                } else {
                    rejected += 1;
                }
            }
        }
        assert!(
            accepted > 50_000 && rejected > 50_000,
            "poorly spread: {accepted} accepted, {rejected} rejected"
        );
    }
}
