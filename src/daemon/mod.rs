//! The daemon around the core: `tandem up` and the wireguard-go style `tandem [-f] IFNAME`
//! (setup, run loop, signals, reload, UAPI socket, teardown), detaching, `tandem show`,
//! systemd notification, and the demo with its helpers.

pub mod demo;
pub mod detach;
pub mod dns;
pub mod endpoints;
pub mod helper;
pub mod hooks;
pub mod notify;
pub mod privileges;
pub mod reload;
pub mod run;
pub mod settings;
pub mod status;

pub use run::{bare, up};

/// Exit status for an unusable configuration (sysexits.h EX_CONFIG), which systemd units can
/// list in `RestartPreventExitStatus=`.
pub const EXIT_CONFIG: u8 = 78;
