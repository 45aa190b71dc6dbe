pub mod batch;
pub mod clock;
pub mod control;
pub mod crypto_pool;
pub mod event_loop;
mod job;
// The one exemption from the crate-wide `unsafe_code = "deny"` (Cargo.toml [lints]): the
// per-packet sendmmsg/recvmmsg path, which no crate batches the way the data plane needs.
#[allow(unsafe_code)]
pub mod mmsg;
pub mod oplog;
pub mod plane;
pub mod reconcile;
mod serve;
pub mod tun;
pub mod udp;
mod vnet;

pub use clock::Clock;
pub use control::{ControlRequest, ControlSender, LoopGone};
pub use event_loop::{Driver, DriverError, DriverStats, RegisteredUdp};
pub use plane::DataPlane;
pub use reconcile::{ApplyError, SetError};
pub use udp::{UdpError, UdpSockets};
