pub mod batch;
pub mod clock;
pub mod control;
pub mod crypto_pool;
pub mod event_loop;
pub mod plane;
pub mod reconcile;
pub mod sys;
pub mod tun;
pub mod udp;

pub use clock::Clock;
pub use control::{ControlRequest, ControlSender, LoopGone};
pub use event_loop::{Driver, DriverError, DriverStats, RegisteredUdp};
pub use plane::DataPlane;
pub use reconcile::{ApplyError, SetError};
pub use udp::{UdpError, UdpSockets};
