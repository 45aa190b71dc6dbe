//! The daemon around the core: `tandem up` (setup, run loop, signals, reload, teardown),
//! systemd notification, and the demo with its helpers.

pub mod demo;
pub mod helper;
pub mod notify;
pub mod reload;
pub mod run;
pub mod settings;

pub use run::up;

/// Exit status for an unusable configuration (sysexits.h EX_CONFIG), which systemd units can
/// list in `RestartPreventExitStatus=`.
pub const EXIT_CONFIG: u8 = 78;
