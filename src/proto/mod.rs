//! The sans-IO WireGuard protocol core: a pure state machine. It never reads the clock,
//! touches a socket or draws randomness itself: `Now` and an RNG are arguments.

pub mod allowedips;
pub mod cookie;
pub mod crypto;
pub mod device;
#[cfg(fuzzing)]
mod dh_memo;
pub mod endpoint;
pub mod error;
pub mod handshake;
pub mod index;
pub mod ip;
pub mod keys;
pub mod messages;
pub mod noise;
pub mod peer;
mod peer_table;
pub mod prefix;
pub mod ratelimiter;
pub mod replay;
pub mod tai64n;
pub mod time;
pub mod timers;
pub mod transport;

pub use device::{
    ConfigureError, Decapsulated, Device, Encapsulated, Event, HEADROOM, PeerInfo, PreparedReceive,
    PreparedSend, ReceiveJob, TAILROOM, Transmit,
};
pub use endpoint::Endpoint;
pub use error::{DropCounters, DropReason};
pub use keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use peer::{PeerConfig, PeerId, PeerStats};
pub use time::Now;
pub use transport::{OpenJob, SealJob};
