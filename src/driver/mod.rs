pub mod batch;
pub mod clock;
pub mod crypto_pool;
pub mod event_loop;
pub mod plane;
pub mod sys;
pub mod tun;
pub mod udp;

pub use clock::Clock;
pub use event_loop::{Driver, DriverError, DriverStats, RegisteredUdp};
pub use plane::DataPlane;
pub use udp::{UdpError, UdpSockets};
