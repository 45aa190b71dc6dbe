//! Interface setup over netlink (rtnetlink), never by running `ip`: MTU, link state,
//! addresses and routes, applied from an [`InterfacePlan`], brought to a new plan by [`sync`]
//! (all or nothing) and undone by [`teardown`].
//!
//! A full tunnel the wg-quick way (a default route in the mark's table and two policy rules
//! per family, see [`policy`]) is part of the same plan, sync and teardown.
//!
//! Every request goes to the network namespace of the thread that created the [`NetConf`].

mod error;
mod netlink;
mod plan;
pub mod policy;
pub mod prefix;
mod sync;
mod sysctl;

pub use error::NetconfError;
pub use netlink::{MAIN_TABLE, NetConf};
pub use plan::{Applied, InterfacePlan, apply, teardown};
pub use policy::{Family, FullTunnel, Placed, PolicyPart};
pub use sync::{Step, SyncError, Synced, diff, sync};
