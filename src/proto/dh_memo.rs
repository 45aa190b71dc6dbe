//! Fuzz builds only (`cfg(fuzzing)`, which cargo-fuzz sets): X25519 results remembered per
//! thread, keyed by the exact inputs.
//!
//! Every fuzz input starts from the same fixed keys and RNG seeds, so the setup handshakes and
//! the "do the peers still work" handshake after each input repeat the same few ladders
//! millions of times; they were 64 % of the fuzzers' time (perf, `datagram` target). X25519 is
//! a pure function, so a remembered result is the byte-identical result: the code under test,
//! its branches and its errors (a low-order point is remembered as refused) are unchanged.
//! Inputs that reach a ladder with new bytes (a mutated ephemeral key with a recomputed mac1)
//! still compute it. No other build contains this file.

use std::cell::RefCell;
use std::collections::HashMap;

/// Enough for every fixed ladder of the targets; cleared when full, so a long campaign of
/// fresh ephemeral keys cannot grow it without bound.
const CAPACITY: usize = 4096;

type Key = ([u8; 32], [u8; 32]);

thread_local! {
    static MEMO: RefCell<HashMap<Key, Option<[u8; 32]>>> = RefCell::new(HashMap::new());
}

/// The remembered `compute(private, public)`, or computes and remembers it. `public` is the
/// base point's encoding for `DH_PUBKEY`.
pub fn memo(
    private: &[u8; 32],
    public: &[u8; 32],
    compute: impl FnOnce() -> Option<[u8; 32]>,
) -> Option<[u8; 32]> {
    let key = (*private, *public);
    if let Some(hit) = MEMO.with(|m| m.borrow().get(&key).copied()) {
        return hit;
    }
    let result = compute();
    MEMO.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= CAPACITY {
            m.clear();
        }
        m.insert(key, result);
    });
    result
}
