//! The two steps of the one reconciler that touch the running device, cut into slices: taking
//! a [`Snapshot`] ([`SnapshotBuilder`]) and applying a [`DevicePlan`] ([`PlanApplier`]).
//!
//! Both walk every peer, which with 10^5 peers takes tens of milliseconds; the device lives on
//! the data-plane thread, so done in one go they would stop forwarding for that long. Here
//! each call does at most `budget` units of work and remembers where it stopped, so the
//! driver can interleave them with packet batches. A unit is one peer or one of its
//! AllowedIPs (what the work costs is proportional to those two).
//!
//! Neither knows about threads or clocks: the driver chooses the budget, and keeps the
//! result consistent by serving one request at a time (peers are added and removed only by
//! requests, so the set of peers cannot change under a snapshot being built; the data plane
//! may still move an endpoint or count bytes in between, which a `get` reports as of when it
//! reached that peer, as wireguard-go does peer by peer under its lock).

use super::desired::Snapshot;
use super::plan::DevicePlan;
use crate::proto::{Device, Now, PeerConfig};

/// What a peer's X25519 costs in units: a new peer precomputes DH(S_priv, S_pub), and so
/// does every peer when our key changes. Measured in a release build (benches/README.md,
/// "Many peers"): adding a peer with one prefix takes about 26 µs (129 units: 0.2 µs a unit),
/// reading one with a prefix about 0.15 µs (2 units), removing one about 0.25 µs (2 units).
/// Reads are cheaper than a unit; the budget is set by the writes.
pub const PEER_DH_UNITS: usize = 128;

/// A [`Snapshot`] taken a slice of peers at a time, in slot order.
#[derive(Debug)]
pub struct SnapshotBuilder {
    snapshot: Snapshot,
    /// The next peer slot to read.
    next: usize,
}

impl SnapshotBuilder {
    /// Starts a snapshot of `device` with the driver's socket settings: the device's own
    /// settings now, its peers by [`SnapshotBuilder::step`].
    pub fn new(device: &Device, listen_port: u16, fwmark: u32) -> Self {
        let mut snapshot = Snapshot {
            private_key: device.private_key().cloned(),
            listen_port,
            fwmark,
            mtu: device.mtu(),
            peers: Vec::new(),
            drops: device.drops().clone(),
            handshakes_completed: device.handshakes_completed(),
            handshakes_failed: device.handshakes_failed(),
            under_load: false,
        };
        // One allocation, not log2(peers) growths.
        snapshot.peers.reserve_exact(device.peer_count());
        SnapshotBuilder { snapshot, next: 0 }
    }

    /// Reads peers until `budget` units are spent (at least one peer, so it always moves on)
    /// or none is left. Returns the units spent and whether the snapshot is complete.
    pub fn step(&mut self, device: &Device, budget: usize) -> (usize, bool) {
        let mut spent = 0;
        while self.next < device.peer_slots() {
            if spent >= budget.max(1) {
                return (spent, false);
            }
            if let Some(info) = device.peer_info_at(self.next) {
                spent += 1 + info.allowed_ips.len();
                self.snapshot.peers.push(info);
            }
            self.next += 1;
        }
        (spent, true)
    }

    /// The snapshot; the device-wide counters as they are at the end.
    pub fn finish(mut self, device: &Device) -> Snapshot {
        self.snapshot.drops = device.drops().clone();
        self.snapshot.handshakes_completed = device.handshakes_completed();
        self.snapshot
    }
}

/// Where the application of a [`DevicePlan`] stands, in the order of
/// [`apply_to_device`]: removals, the device's own settings, updates, additions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanApplier {
    phase: Phase,
    /// The next item of the phase's list.
    next: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Remove,
    Device,
    /// Every peer slot takes our new key (only when it changed).
    Rekey,
    Update,
    Add,
    Done,
}

impl PlanApplier {
    pub fn new() -> Self {
        PlanApplier::default()
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Applies the next items of `plan` to `device` until `budget` units are spent (at least
    /// one item, so it always moves on). Returns the units spent and whether the plan is
    /// applied. Cannot fail, for the reasons [`apply_to_device`] gives; the same
    /// `plan` must be passed to every call.
    ///
    /// A new private key is applied peer by peer too (`Device::rekey_peer_at`), between
    /// the removals and the updates.
    pub fn step(
        &mut self,
        device: &mut Device,
        plan: &DevicePlan,
        now: Now,
        budget: usize,
    ) -> (usize, bool) {
        let budget = budget.max(1);
        let mut spent = 0;
        while spent < budget {
            let i = self.next;
            self.next += 1;
            match self.phase {
                Phase::Remove => {
                    if i == 0 {
                        // Room for the new peers at once (see `Device::reserve_peers`).
                        device.reserve_peers(plan.add.len());
                    }
                    match plan.remove.get(i) {
                        Some(key) => {
                            let prefixes = device
                                .peer_id(key)
                                .map_or(0, |id| device.allowed_ip_count(id));
                            device.remove_peer(key);
                            spent += 1 + prefixes;
                        }
                        None => self.next_phase(Phase::Device),
                    }
                }
                Phase::Device => {
                    let rekey = plan
                        .private_key
                        .as_ref()
                        .is_some_and(|key| device.begin_private_key(key.clone()));
                    if let Some(mtu) = plan.mtu {
                        device.set_mtu(mtu);
                    }
                    spent += 1;
                    self.next_phase(if rekey { Phase::Rekey } else { Phase::Update });
                }
                Phase::Rekey => {
                    if i >= device.peer_slots() {
                        self.next_phase(Phase::Update);
                    } else if device.rekey_peer_at(i) {
                        spent += PEER_DH_UNITS;
                    }
                }
                Phase::Update => match plan.update.get(i) {
                    Some(update) => {
                        let id = update.id;
                        if let Some(psk) = &update.preshared_key {
                            device.set_preshared_key(id, psk.clone());
                        }
                        if let Some(endpoint) = update.endpoint {
                            device.set_endpoint(id, Some(endpoint));
                        }
                        for p in &update.remove_ips {
                            device.remove_allowed_ip(id, *p);
                        }
                        for p in &update.add_ips {
                            // Cannot fail: a `Prefix`'s length fits its family.
                            let _ = device.add_allowed_ip(id, *p);
                        }
                        if let Some(seconds) = update.persistent_keepalive {
                            device.set_persistent_keepalive(id, seconds, now);
                        }
                        spent += 1 + update.remove_ips.len() + update.add_ips.len();
                    }
                    None => self.next_phase(Phase::Add),
                },
                Phase::Add => match plan.add.get(i) {
                    Some(peer) => {
                        let config = PeerConfig {
                            public_key: peer.public_key,
                            preshared_key: peer.preshared_key.clone(),
                            endpoint: peer.endpoint,
                            persistent_keepalive: 0,
                            allowed_ips: Vec::new(),
                        };
                        // Cannot fail: our own key was left out by `plan` and there are no
                        // prefixes yet.
                        if let Ok(id) = device.upsert_peer(&config) {
                            for p in &peer.allowed_ips {
                                let _ = device.add_allowed_ip(id, *p);
                            }
                            if peer.persistent_keepalive != 0 {
                                device.set_persistent_keepalive(id, peer.persistent_keepalive, now);
                            }
                        }
                        spent += PEER_DH_UNITS + peer.allowed_ips.len();
                    }
                    None => self.next_phase(Phase::Done),
                },
                Phase::Done => return (spent, true),
            }
        }
        // Out of budget: done only if nothing is left (the next call would find so at once,
        // but a caller should not have to come back for nothing).
        let done = match self.phase {
            Phase::Remove => {
                self.next >= plan.remove.len()
                    && plan.private_key.is_none()
                    && plan.mtu.is_none()
                    && plan.update.is_empty()
                    && plan.add.is_empty()
            }
            Phase::Device | Phase::Rekey => false,
            Phase::Update => self.next >= plan.update.len() && plan.add.is_empty(),
            Phase::Add => self.next >= plan.add.len(),
            Phase::Done => true,
        };
        if done {
            self.phase = Phase::Done;
        }
        (spent, done)
    }

    fn next_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.next = 0;
    }
}

/// Applies the core's part of `plan` to `device`: peers removed, our key, the MTU, then the
/// peers that stay and the new ones. Cannot fail: `plan` left out whatever the core would
/// refuse. Prefixes that move between peers come out right in any order, since adding one
/// takes it from its old owner and removing one drops it only from the peer that holds it.
/// Persistent keepalive is set last for each peer, so turning it on sends the first
/// keepalive (or handshake) at once, as the kernel does.
pub fn apply_to_device(device: &mut Device, plan: &DevicePlan, now: Now) {
    // One code path with the driver's application in slices: here, one slice of all of it.
    PlanApplier::new().step(device, plan, now, usize::MAX);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{DesiredDevice, DesiredPeer, Prefix, plan};
    use super::*;
    use crate::proto::{PrivateKey, PublicKey};

    fn key(n: u32) -> PublicKey {
        let mut k = [7u8; 32];
        k[..4].copy_from_slice(&n.to_le_bytes());
        PublicKey::from_bytes(k)
    }

    fn now() -> Now {
        Now::new(Duration::from_secs(10), Duration::from_secs(1_700_000_000))
    }

    /// Peers `range`, each with `ips` prefixes of its own, some with keepalive.
    fn desired(range: std::ops::Range<u32>, ips: u32) -> DesiredDevice {
        let peers = range
            .map(|n| {
                let mut p = DesiredPeer::new(key(n));
                p.allowed_ips = (0..ips)
                    .map(|j| {
                        let [_, a, b, c] = (n * 8 + j).to_be_bytes();
                        Prefix::new([10, a, b, c].into(), 32).expect("prefix")
                    })
                    .collect();
                p.persistent_keepalive = if n % 5 == 0 { 25 } else { 0 };
                p
            })
            .collect();
        DesiredDevice {
            private_key: Some(PrivateKey::from_bytes([1; 32])),
            listen_port: 0,
            fwmark: 0,
            mtu: Some(1420),
            peers,
        }
    }

    /// What a `get` would report, with the per-peer ids left out (they differ between two
    /// devices brought to the same state).
    fn text(s: &Snapshot) -> Vec<String> {
        s.peers
            .iter()
            .map(|p| {
                format!(
                    "{} {:?} {} {:?}",
                    p.public_key.to_hex(),
                    p.endpoint,
                    p.persistent_keepalive,
                    p.allowed_ips
                )
            })
            .collect()
    }

    #[test]
    fn a_snapshot_in_slices_equals_one_taken_at_once_and_keeps_to_its_budget() {
        let mut device = Device::new(None, [3; 32]);
        let d = desired(0..300, 3);
        apply_to_device(&mut device, &plan(&Snapshot::default(), &d), now());
        // Holes in the slot table are skipped.
        for n in (0..300).step_by(7) {
            device.remove_peer(&key(n));
        }
        let whole = Snapshot::of(&device, 51820, 4);
        for budget in [0, 1, 4, 10, 64, 10_000] {
            let mut builder = SnapshotBuilder::new(&device, 51820, 4);
            let mut steps = 0;
            loop {
                steps += 1;
                let (spent, done) = builder.step(&device, budget);
                // At most one peer (1 + 3 prefixes) beyond the budget.
                assert!(
                    spent < budget.max(1) + 4,
                    "{spent} for a budget of {budget}"
                );
                if done {
                    break;
                }
                assert!(steps < 10_000, "a snapshot that never ends");
            }
            let sliced = builder.finish(&device);
            assert_eq!(text(&sliced), text(&whole), "budget {budget}");
            assert_eq!((sliced.listen_port, sliced.fwmark), (51820, 4));
            assert_eq!(sliced.private_key, whole.private_key);
            if budget >= 16 {
                // 257 peers of 4 units each: about 1028 / budget steps.
                assert!(steps <= 257 * 4 / budget + 2, "{steps} steps at {budget}");
            }
        }
    }

    #[test]
    fn a_plan_applied_in_slices_ends_where_one_applied_at_once_ends() {
        // From 0..200 (3 prefixes each) to 100..350 (2 each), with a new key and MTU, in
        // slices of every size; the result equals the plan applied in one go.
        let before = desired(0..200, 3);
        let mut after = desired(100..350, 2);
        after.private_key = Some(PrivateKey::from_bytes([2; 32]));
        after.mtu = Some(1280);
        let start = |seed| {
            let mut device = Device::new(None, seed);
            apply_to_device(&mut device, &plan(&Snapshot::default(), &before), now());
            device
        };
        let mut reference = start([4; 32]);
        let p = plan(&Snapshot::of(&reference, 1, 0), &after);
        assert!(!p.remove.is_empty() && !p.update.is_empty() && !p.add.is_empty());
        apply_to_device(&mut reference, &p, now());
        let want = text(&Snapshot::of(&reference, 1, 0));

        for budget in [1, 2, 3, 17, 100, 1 << 20] {
            let mut device = start([4; 32]);
            let p = plan(&Snapshot::of(&device, 1, 0), &after);
            let mut applier = PlanApplier::new();
            let mut steps = 0;
            loop {
                steps += 1;
                let (spent, done) = applier.step(&mut device, &p, now(), budget);
                // At most one item (a new peer with its prefixes) beyond the budget.
                assert!(
                    spent < budget + PEER_DH_UNITS + 3,
                    "{spent} for a budget of {budget}"
                );
                if done {
                    assert!(applier.is_done());
                    break;
                }
                assert!(steps < 100_000, "an application that never ends");
            }
            // Done means done: another step changes nothing.
            assert_eq!(applier.step(&mut device, &p, now(), budget), (0, true));
            let got = Snapshot::of(&device, 1, 0);
            assert_eq!(text(&got), want, "budget {budget}");
            assert_eq!(got.mtu, 1280);
            assert_eq!(got.private_key, after.private_key);
            assert!(plan(&got, &after).changes().is_empty());
        }
    }

    #[test]
    fn an_empty_plan_is_done_in_one_step() {
        let mut device = Device::new(None, [3; 32]);
        let mut applier = PlanApplier::new();
        let (_, done) = applier.step(&mut device, &DevicePlan::default(), now(), 1);
        // The device step (nothing to do) still counts one unit.
        let done = done
            || applier
                .step(&mut device, &DevicePlan::default(), now(), 1)
                .1;
        assert!(done && applier.is_done());
    }
}
