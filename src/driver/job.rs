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
//! arrive, as with the kernel's peer-by-peer updates. The cost per packet is nothing: the
//! loop looks at the job only when the control source is ready.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::control::log_changes;
use super::event_loop::Driver;
use super::reconcile::{ApplyError, SetError};
use crate::reconcile::{
    Changes, DesiredDevice, DevicePlan, InvalidSet, PlanApplier, SetRequest, Snapshot,
    SnapshotBuilder, plan,
};

/// Units of control work done per loop turn: a unit is about a quarter of a microsecond (a
/// peer or one of its AllowedIPs read or changed; a new peer's DH is
/// `reconcile::PEER_DH_UNITS`), so a slice holds forwarding back for about half a
/// millisecond in a release build on a 2-core VM (benches/README.md, "Many peers").
pub const SLICE: usize = 2048;

/// Up to this many peers (running plus asked for), a change is planned in the loop's turn: a
/// thread would cost more than the plan.
const PLAN_INLINE: usize = 256;

/// How long requests held the loop, turn by turn, for a debug line per request served
/// (`RUST_LOG=tandem::driver::job=debug`): what forwarding waited for at most.
#[derive(Debug, Default)]
pub struct Timing {
    /// Turns with control work since the last line.
    turns: u32,
    /// Units spent in them.
    units: usize,
    /// The longest of them, and all of them.
    longest: Duration,
    total: Duration,
    /// Requests answered since the last line (ended in the current turn).
    answered: u32,
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
    fn send(self, result: Result<Changes, SetError>) {
        match self {
            Reply::Uapi(tx) => {
                match &result {
                    Ok(changes) => log_changes("configuration changed over UAPI", changes),
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
    plan: DevicePlan,
    changes: Changes,
}

/// Plans `change` against `running`. Pure.
fn plan_change(running: &Snapshot, change: &Change) -> Result<Planned, InvalidSet> {
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

impl Driver {
    /// Starts serving a `get`.
    pub(super) fn start_get(&mut self, reply: oneshot::Sender<Snapshot>) {
        let builder = Box::new(self.snapshot_builder());
        self.job = Some(Job::Get { builder, reply });
    }

    /// Starts serving a change.
    pub(super) fn start_change(&mut self, change: Change, reply: Reply) {
        let builder = Box::new(self.snapshot_builder());
        self.job = Some(Job::Reading {
            builder,
            change,
            reply,
        });
    }

    fn snapshot_builder(&self) -> SnapshotBuilder {
        SnapshotBuilder::new(&self.device, self.udp().port(), self.udp().fwmark())
    }

    /// Notes one turn of control work that began at `started` and spent `units`; logs the
    /// totals once the requests in progress are answered.
    pub(super) fn note_control_turn(&mut self, started: Duration, units: usize) {
        let took = self.now().monotonic.saturating_sub(started);
        let idle = self.job.is_none();
        let t = &mut self.job_timing;
        t.turns += 1;
        t.units += units;
        t.longest = t.longest.max(took);
        t.total += took;
        if t.answered > 0 && idle {
            tracing::debug!(
                requests = t.answered,
                turns = t.turns,
                units = t.units,
                longest_turn_us = t.longest.as_micros() as u64,
                total_us = t.total.as_micros() as u64,
                "control requests served"
            );
            *t = Timing::default();
        }
    }

    /// Works on the request in progress, spending at most `budget` units (and taking them
    /// off it). Stages that cost nothing per peer (a plan arriving, the fallible steps)
    /// follow each other in one call.
    pub(super) fn step_job(&mut self, budget: &mut usize) -> Progress {
        let had_job = self.job.is_some();
        let progress = self.step_job_inner(budget);
        if had_job && progress == Progress::Done {
            self.job_timing.answered += 1;
        }
        progress
    }

    fn step_job_inner(&mut self, budget: &mut usize) -> Progress {
        loop {
            let Some(job) = self.job.take() else {
                return Progress::Done;
            };
            let next = match job {
                Job::Get { mut builder, reply } => {
                    let (spent, done) = builder.step(&self.device, *budget);
                    *budget = budget.saturating_sub(spent);
                    if !done {
                        self.job = Some(Job::Get { builder, reply });
                        return Progress::Working;
                    }
                    let mut snapshot = builder.finish(&self.device);
                    snapshot.under_load = self.device.is_under_load(self.now());
                    let _ = reply.send(snapshot);
                    return Progress::Done;
                }
                Job::Reading {
                    mut builder,
                    change,
                    reply,
                } => {
                    let (spent, done) = builder.step(&self.device, *budget);
                    *budget = budget.saturating_sub(spent);
                    if !done {
                        self.job = Some(Job::Reading {
                            builder,
                            change,
                            reply,
                        });
                        return Progress::Working;
                    }
                    self.plan_off_loop(builder.finish(&self.device), change, reply)
                }
                Job::Planning { planned, reply } => match planned.try_recv() {
                    Ok(Ok(planned)) => self.begin_applying(Box::new(planned), reply),
                    Ok(Err(invalid)) => {
                        reply.send(Err(SetError::Invalid(invalid)));
                        return Progress::Done;
                    }
                    Err(std_mpsc::TryRecvError::Empty) => {
                        self.job = Some(Job::Planning { planned, reply });
                        return Progress::Waiting;
                    }
                    // The planning thread died (it cannot panic on valid types; this is a
                    // bug): the caller sees the loop gone rather than a made-up answer.
                    Err(std_mpsc::TryRecvError::Disconnected) => {
                        tracing::error!("the planning thread ended without a plan");
                        return Progress::Done;
                    }
                },
                Job::Applying {
                    planned,
                    mut applier,
                    reply,
                } => {
                    if *budget == 0 {
                        self.job = Some(Job::Applying {
                            planned,
                            applier,
                            reply,
                        });
                        return Progress::Working;
                    }
                    let now = self.now();
                    let (spent, done) = applier.step(&mut self.device, &planned.plan, now, *budget);
                    *budget = budget.saturating_sub(spent);
                    if !done {
                        self.job = Some(Job::Applying {
                            planned,
                            applier,
                            reply,
                        });
                        return Progress::Working;
                    }
                    // A peer whose keepalive was just turned on has a keepalive or
                    // initiation waiting.
                    self.flush();
                    let Planned { plan, changes } = *planned;
                    drop_off_loop(plan);
                    reply.send(Ok(changes));
                    return Progress::Done;
                }
            };
            self.job = next;
        }
    }

    /// Plans a change against `running`: in this turn for a small device, else on a thread
    /// that wakes the loop when done. Returns the next stage.
    fn plan_off_loop(&mut self, running: Snapshot, change: Change, reply: Reply) -> Option<Job> {
        let size = running.peers.len()
            + match &change {
                Change::Set(request) => request.len(),
                Change::Apply(desired) => desired.peers.len(),
            };
        if size > PLAN_INLINE
            && let Some(waker) = self.waker.as_ref().map(Arc::clone)
        {
            let (tx, rx) = std_mpsc::sync_channel(1);
            let spawned = std::thread::Builder::new()
                .name("tandem-plan".into())
                .spawn(move || {
                    let planned = plan_change(&running, &change);
                    // The snapshot and request are freed here, not on the loop.
                    drop((running, change));
                    let _ = tx.send(planned);
                    if let Err(e) = waker.wake() {
                        tracing::debug!(error = %e, "cannot wake the event loop");
                    }
                });
            match spawned {
                Ok(_) => {
                    return Some(Job::Planning { planned: rx, reply });
                }
                Err(e) => {
                    // Planning inline below is the same work, only on this thread.
                    tracing::warn!(error = %e, "cannot start a planning thread");
                    return self.plan_here(&Snapshot::default(), None, reply);
                }
            }
        }
        self.plan_here(&running, Some(&change), reply)
    }

    /// Plans on this thread, then begins applying. `change` None: a planning thread could
    /// not start and took the change with it; refuse it as unplannable.
    fn plan_here(
        &mut self,
        running: &Snapshot,
        change: Option<&Change>,
        reply: Reply,
    ) -> Option<Job> {
        let Some(change) = change else {
            reply.send(Err(SetError::Invalid(InvalidSet(
                "cannot plan the change (no thread)".into(),
            ))));
            return None;
        };
        match plan_change(running, change) {
            Ok(planned) => self.begin_applying(Box::new(planned), reply),
            Err(invalid) => {
                reply.send(Err(SetError::Invalid(invalid)));
                None
            }
        }
    }

    /// The fallible steps of a plan, at once; then its application in slices.
    fn begin_applying(&mut self, planned: Box<Planned>, reply: Reply) -> Option<Job> {
        match self.begin_plan(&planned.plan) {
            Ok(()) => Some(Job::Applying {
                planned,
                applier: PlanApplier::new(),
                reply,
            }),
            Err(e) => {
                reply.send(Err(SetError::Apply(e)));
                None
            }
        }
    }
}

/// Frees a large plan on a thread of its own: a plan of 10^5 peers holds as many small
/// allocations, whose freeing would be one more stall.
fn drop_off_loop(plan: DevicePlan) {
    if plan.add.len() + plan.update.len() + plan.remove.len() <= PLAN_INLINE {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("tandem-free".into())
        .spawn(move || drop(plan));
}
