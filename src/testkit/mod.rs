//! The test kit of the pure core, shared by unit tests, integration tests, benches and the
//! fuzz crate: two `Device`s wired back to back in virtual time ([`pair`]), small IPv4/IPv6
//! packet builders ([`packet`]), a seeded generator ([`rng`]), fixed keys and clocks, the
//! fuzz target bodies ([`fuzz`]), and for the fault tests and bench an impaired UDP link
//! ([`impair`]), sequence-numbered traffic ([`seqflow`]) and a handshake flood ([`flood`]).
//!
//! Why it lives in the library, behind the `testkit` feature, and not in `tests/common`: a
//! file under `tests/` can only reach the benches and the fuzz crate by `#[path]` includes,
//! and every copy of an include compiles the kit again with its own dead-code warnings. As a
//! module of the library it is one crate item that `tests/`, `benches/` (through the
//! `tandem = { path = ".", features = ["testkit"] }` dev-dependency on itself), the library's
//! own unit tests (`cfg(test)`) and `fuzz/` (its dependency on tandem turns the feature on)
//! all `use` the same way. It needs nothing but the public API of `proto` and std, so it adds
//! no dependency, and the binary never builds it (the feature is off outside dev builds).
//! What needs processes, namespaces or the `tandem` binary (tests/common) stays in `tests/`.

pub mod flood;
pub mod fuzz;
pub mod impair;
pub mod packet;
pub mod pair;
pub mod rng;
pub mod seqflow;

use std::time::Duration;

use crate::proto::prefix::Prefix;
use crate::proto::{Now, PrivateKey};

/// A distinct, valid private key per seed, without an RNG: `[seed; 32]`, stored clamped
/// already, so the base64 that `wg` reads back from a daemon is the one a test configured.
pub fn key(seed: u8) -> PrivateKey {
    PrivateKey::from_bytes([seed; 32]).clamped()
}

/// The virtual clock's start: 1000 s of monotonic time, wall clock November 2023.
pub fn t0() -> Now {
    Now::new(
        Duration::from_secs(1000),
        Duration::from_secs(1_700_000_000),
    )
}

/// The prefix `addr/len`, for tests that write many (panics on a bad literal).
pub fn pfx(addr: &str, len: u8) -> Prefix {
    let addr = addr.parse().expect("test address");
    Prefix::new(addr, len).expect("test prefix")
}
