//! The integration tests' kit for what needs the system: network namespaces, veth pairs and
//! processes ([`netns`]), a running `tandem` and its helpers ([`kit`]), real WireGuard
//! peers ([`peers`]), and the `laptop — isp — server` topology of the full-tunnel tests
//! ([`topology`]). The pure parts (the virtual-time device pair, packet builders, a seeded
//! generator, fixed keys) are the library's `tandem::testkit`.
//!
//! Included one way only, from any file in `tests/`:
//!
//! ```ignore
//! mod common;
//! use common::{kit, netns};
//! ```
//!
//! Cargo does not build `tests/common/mod.rs` as a test of its own. Each test binary uses
//! its own part of the kit, so every file here allows dead code.

pub mod kit;
pub mod netns;
pub mod peers;
pub mod topology;
