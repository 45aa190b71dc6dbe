//! Interface setup over netlink (rtnetlink), never by running `ip`: MTU, link state,
//! addresses and routes, applied from an [`InterfacePlan`], brought to a new plan by [`sync`]
//! (all or nothing) and undone by [`teardown`].
//!
//! Every request goes to the network namespace of the thread that created the [`NetConf`].
//! Policy routing (fwmark rules for full tunnels) is not here yet.

mod error;
mod netlink;
mod plan;
pub mod prefix;
mod sync;

pub use error::NetconfError;
pub use netlink::{MAIN_TABLE, NetConf};
pub use plan::{Applied, InterfacePlan, apply, teardown};
pub use sync::{Step, SyncError, Synced, diff, sync};
