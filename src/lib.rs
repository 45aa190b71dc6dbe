pub mod config;
pub mod control;
pub mod daemon;
pub mod driver;
pub mod keygen;
pub mod metrics;
pub mod netconf;
pub mod os;
pub mod proto;
pub mod provision;
pub mod reconcile;
/// Test kit (virtual-time device pair, packet builders, seeded generator, fuzz bodies) for
/// unit tests, `tests/`, `benches/` and `fuzz/`; why it is here: see the module's docs.
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
