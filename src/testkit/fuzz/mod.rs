//! The fuzz targets' bodies. Each cargo-fuzz target in `fuzz/` is a one-line wrapper around
//! one of the functions here, `tests/fuzz_smoke.rs` runs them on generated inputs and
//! `tests/fuzz_corpus.rs` replays the checked-in corpus (`fuzz/corpus/<target>/`) through
//! them in every `cargo test`. They live in the kit, not in the fuzz crate, so that both reach
//! them with a plain `use` (see the kit's module root).
//!
//! - [`device`]: datagrams and TUN packets through a whole `Device` pair in virtual time.
//! - [`differential`]: the same handshake messages to tandem and boringtun's `Tunn`.
//! - [`session`]: an established pair, then a program of sends, losses, replays, corruption
//!   and time passing (structure-aware).
//! - [`text`]: the text inputs: TOML and wg-quick configs, UAPI requests and replies.

pub mod device;
pub mod differential;
pub mod session;
pub mod text;

pub use device::*;

/// A target: its name (the `[[bin]]` in `fuzz/Cargo.toml` and the folder under
/// `fuzz/corpus/`) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// The targets built on the device targets' set-ups (they import `device`, so they are
/// listed here rather than in `device::TARGETS`).
const ON_DEVICES: &[Target] = &[
    ("session", session::fuzz_session),
    ("differential", differential::fuzz_differential),
];

/// Every target.
pub fn targets() -> impl Iterator<Item = Target> {
    device::TARGETS
        .iter()
        .chain(ON_DEVICES)
        .chain(text::TARGETS)
        .copied()
}

/// The body of the target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    targets().find(|(n, _)| *n == name).map(|(_, f)| f)
}
