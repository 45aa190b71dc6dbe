//! Control requests that visit every peer (a `get`, a `set`, a reload), served without
//! stalling forwarding.
//!
//! The device has no lock: only the loop's thread touches it. So a request that walks 10^5
//! peers either runs on this thread or copies the device first, which is the same walk. It
//! runs here, cut into slices: each loop turn spends at most [`SLICE`] units (a peer or one
//! of its AllowedIPs, see `reconcile::slices`) on control work, then goes back to its packet
//! batches. What needs no device (turning a `set` into a desired state, diffing it against
//! the running one) is pure and runs on a thread of its own meanwhile.
//!
//! A request goes through up to three stages, one request at a time:
//!
//! 1. the running state is read in slices (`SnapshotBuilder`); a `get` ends here;
//! 2. a change is planned (`SetRequest::desired`, `plan`, `DevicePlan::changes`) off the
//!    loop (in the turn itself when the device is small, where a thread would cost more than
//!    the plan);
//! 3. the plan's fallible steps (binding a new port, re-marking the sockets) run at once, and
//!    on failure the request is refused with nothing changed; then the core's part is applied
//!    in slices (`PlanApplier`).
//!
//! Requests wait in the mailbox while one is in progress, so they are serialised: the set of
//! peers cannot change under a snapshot being taken (peers come and go only by requests),
//! and a `get` that arrives during a `set` is served after it: from the outside a `set` is
//! atomic, a `get` sees all of it or none. Packets meanwhile see the new peers as they
//! arrive, as with the kernel's peer-by-peer updates. What packets can change between the
//! snapshot and the application (a peer's endpoint, by roaming) is as if it happened just
//! after the request; the peer ids in a plan stay valid, since only requests remove peers. The cost per packet is nothing: the
//! loop looks at the job only when the control source is ready.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::oplog::{PeerNames, log_changes};
use super::reconcile::{ApplyError, SetError};
use crate::reconcile::{
    Changes, DesiredDevice, DevicePlan, InvalidSet, PlanApplier, SetRequest, Snapshot,
    SnapshotBuilder, plan,
};

/// Units of control work done per loop turn: a unit is a peer or one of its AllowedIPs read
/// or changed, a new peer's DH `reconcile::PEER_DH_UNITS`. In a release build on a 2-core VM
/// (benches/README.md, "Many peers") a turn's control work then averages 0.15–0.45 ms of CPU
/// and stayed under ~1.3 ms (one 3 ms turn seen while a table doubled).
pub const SLICE: usize = 2048;

/// Up to this many peers (running plus asked for), a change is planned in the loop's turn: a
/// thread would cost more than the plan.
pub(super) const PLAN_INLINE: usize = 256;

/// How long requests held the loop, turn by turn, for a debug line per request served
/// (`RUST_LOG=tandem::driver::job=debug`): what forwarding waited for at most.
#[derive(Debug, Default)]
pub struct Timing {
    /// Turns with control work since the last line.
    pub(super) turns: u32,
    /// Units spent in them.
    pub(super) units: usize,
    /// The longest of them (wall time, and the loop thread's CPU time: the difference is
    /// time the thread was preempted), and all of them.
    pub(super) longest: Duration,
    pub(super) longest_cpu: Duration,
    pub(super) total: Duration,
    /// Requests answered since the last line (ended in the current turn).
    pub(super) answered: u32,
}

/// Who is waiting for a change, and how its outcome is logged.
pub(super) enum Reply {
    /// A UAPI `set`.
    Uapi(oneshot::Sender<Result<Changes, SetError>>),
    /// A re-resolved endpoint (logged by the daemon's resolver, which knows the name).
    Endpoint(oneshot::Sender<Result<Changes, SetError>>),
    /// A whole desired device (a reload).
    Apply(oneshot::Sender<Result<Changes, ApplyError>>),
}

impl Reply {
    /// Answers the waiting side; a UAPI `set` is logged with the peers' names.
    pub(super) fn send(self, names: &PeerNames, result: Result<Changes, SetError>) {
        match self {
            Reply::Uapi(tx) => {
                match &result {
                    Ok(changes) => {
                        log_changes("configuration changed over UAPI", changes, names, &[])
                    }
                    Err(e) => tracing::warn!("UAPI set refused, nothing changed: {e}"),
                }
                let _ = tx.send(result);
            }
            Reply::Endpoint(tx) => {
                let _ = tx.send(result);
            }
            Reply::Apply(tx) => match result {
                Ok(changes) => {
                    let _ = tx.send(Ok(changes));
                }
                Err(SetError::Apply(e)) => {
                    let _ = tx.send(Err(e));
                }
                // A desired device is never invalid (`plan` leaves out what the core would
                // refuse); the reply type has no such case, so the caller sees the loop gone.
                Err(SetError::Invalid(e)) => {
                    tracing::error!("a reload could not be planned: {e}");
                }
            },
        }
    }
}

/// What a change asks for, before it is planned.
pub(super) enum Change {
    Set(SetRequest),
    Apply(Box<DesiredDevice>),
}

/// A plan and what it changes (computed with it, off the loop).
pub(super) struct Planned {
    pub(super) plan: DevicePlan,
    pub(super) changes: Changes,
}

/// Plans `change` against `running`. Pure.
pub(super) fn plan_change(running: &Snapshot, change: &Change) -> Result<Planned, InvalidSet> {
    let plan = match change {
        Change::Set(request) => plan(running, &request.desired(running)?),
        Change::Apply(desired) => plan(running, desired),
    };
    let changes = plan.changes();
    Ok(Planned { plan, changes })
}

/// A request in progress.
pub(super) enum Job {
    /// A `get`: the snapshot being taken.
    Get {
        builder: Box<SnapshotBuilder>,
        reply: oneshot::Sender<Snapshot>,
    },
    /// A change: the running state being taken for the plan.
    Reading {
        builder: Box<SnapshotBuilder>,
        change: Change,
        reply: Reply,
    },
    /// A change being planned on its own thread.
    Planning {
        planned: std_mpsc::Receiver<Result<Planned, InvalidSet>>,
        reply: Reply,
    },
    /// A change being applied.
    Applying {
        planned: Box<Planned>,
        applier: PlanApplier,
        reply: Reply,
    },
}

/// Where a job stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// Answered: the next request may start.
    Done,
    /// More slices to do: come back next turn.
    Working,
    /// Waiting for the planning thread, which wakes the loop when it is done.
    Waiting,
}

/// Frees a large plan on a thread of its own: a plan of 10^5 peers holds as many small
/// allocations, whose freeing would be one more stall.
pub(super) fn drop_off_loop(plan: DevicePlan) {
    if plan.add.len() + plan.update.len() + plan.remove.len() <= PLAN_INLINE {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("tandem-free".into())
        .spawn(move || drop(plan));
}
