//! The one reconciler: every way of configuring a device (a config file at start, a SIGHUP
//! reload, a UAPI `set`, a re-resolved endpoint name) produces one [`DesiredDevice`]; [`plan`]
//! compares it with a [`Snapshot`] of the running device and lists the changes (pure, no I/O);
//! the driver applies that [`DevicePlan`] with `Driver::apply_plan`, doing what can fail
//! (binding a new port, re-marking sockets) before anything else, so a failure leaves the
//! device as it was.
//!
//! A UAPI `set` is first simulated line by line on the snapshot with wireguard-go's semantics
//! ([`SetRequest::desired`]), which turns it into a desired state like any other; a
//! re-resolved name is such a `set` of one line ([`SetRequest::update_endpoint`]).
//!
//! One rule for every source: a listen port of 0 means "any port", which the port already
//! bound is, so 0 never rebinds; an endpoint left out keeps the one the peer has (configured
//! or learned by roaming); a peer whose public key stays keeps its sessions.

mod desired;
mod plan;
mod set;
mod slices;

pub use desired::{DesiredDevice, DesiredPeer, Prefix, Snapshot, mask};
pub use plan::{Changes, DevicePlan, PeerUpdate, plan};
pub use set::{InvalidSet, MAX_PEERS, Op, SetRequest};
pub use slices::{PEER_DH_UNITS, PlanApplier, SnapshotBuilder, apply_to_device};
