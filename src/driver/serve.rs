//! The event loop's side of `job.rs`: starting a request, working on it a slice at a time,
//! and timing the turns it takes (see `job.rs` for why and how).

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::event_loop::Driver;
use super::job::{
    Change, Job, PLAN_INLINE, Planned, Progress, Reply, Timing, drop_off_loop, plan_change,
};
use super::reconcile::SetError;
use crate::reconcile::{InvalidSet, PlanApplier, Snapshot, SnapshotBuilder};

impl Driver {
    /// Starts serving a `get`.
    pub(super) fn start_get(&mut self, reply: oneshot::Sender<Snapshot>) {
        debug_assert!(self.job.is_none(), "one request at a time");
        let builder = Box::new(self.snapshot_builder());
        self.job = Some(Job::Get { builder, reply });
    }

    /// Starts serving a change.
    pub(super) fn start_change(&mut self, change: Change, reply: Reply) {
        debug_assert!(self.job.is_none(), "one request at a time");
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

    /// Notes one turn of control work that began at `started` (monotonic clock, the thread's
    /// CPU clock) and spent `units`; logs the
    /// totals once the requests in progress are answered.
    pub(super) fn note_control_turn(&mut self, started: (Duration, Duration), units: usize) {
        let took = self.now().monotonic.saturating_sub(started.0);
        let took_cpu = crate::os::thread_cpu_time().saturating_sub(started.1);
        let idle = self.job.is_none();
        let t = &mut self.job_timing;
        t.turns += 1;
        t.units += units;
        t.longest = t.longest.max(took);
        t.longest_cpu = t.longest_cpu.max(took_cpu);
        t.total += took;
        if !idle {
            return;
        }
        // Nothing in progress: log what was answered since the last line (turns without a
        // request, such as the MTU check, are not counted for the next one).
        if t.answered > 0 {
            // Under the target `job.rs` documents (`RUST_LOG=tandem::driver::job=debug`).
            tracing::debug!(
                target: "tandem::driver::job",
                requests = t.answered,
                turns = t.turns,
                units = t.units,
                longest_turn_us = t.longest.as_micros() as u64,
                longest_turn_cpu_us = t.longest_cpu.as_micros() as u64,
                total_us = t.total.as_micros() as u64,
                "control requests served"
            );
        }
        *t = Timing::default();
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
                        reply.send(&self.names, Err(SetError::Invalid(invalid)));
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
                    reply.send(&self.names, Ok(changes));
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
            reply.send(
                &self.names,
                Err(SetError::Invalid(InvalidSet(
                    "cannot plan the change (no thread)".into(),
                ))),
            );
            return None;
        };
        match plan_change(running, change) {
            Ok(planned) => self.begin_applying(Box::new(planned), reply),
            Err(invalid) => {
                reply.send(&self.names, Err(SetError::Invalid(invalid)));
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
                reply.send(&self.names, Err(SetError::Apply(e)));
                None
            }
        }
    }
}
