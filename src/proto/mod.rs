//! The sans-IO WireGuard protocol core: a pure state machine. It never reads the clock,
//! touches a socket or draws randomness itself: `Now` and an RNG are arguments.

pub mod allowedips;
pub mod keys;
pub mod ratelimiter;
pub mod replay;
pub mod time;

pub use keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use time::Now;
