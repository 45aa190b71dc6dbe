//! From (running, desired) to the list of changes, and the part of applying them that cannot
//! fail (the core's keys and peers). The driver does the part that can, first.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use super::desired::{DesiredDevice, DesiredPeer, Prefix, Snapshot, running_prefixes};
use crate::proto::{PeerId, PresharedKey, PrivateKey, PublicKey};

/// What has to change to go from a [`Snapshot`] to a [`DesiredDevice`].
#[derive(Debug, Clone, Default)]
pub struct DevicePlan {
    /// Bind new sockets on this port (with the new fwmark, if any).
    pub listen_port: Option<u16>,
    /// Mark the sockets (the new ones, or the current ones) with this.
    pub fwmark: Option<u32>,
    /// Set (or clear) our static key; every session restarts.
    pub private_key: Option<Option<PrivateKey>>,
    pub mtu: Option<usize>,
    /// Peers to remove with their sessions (first, before anything is added).
    pub remove: Vec<PublicKey>,
    /// Peers that stay, with what changes about them.
    pub update: Vec<PeerUpdate>,
    /// New peers (and peers started over), in the desired order.
    pub add: Vec<DesiredPeer>,
    /// Peers that stay exactly as they are.
    pub unchanged: usize,
}

/// The changes to one peer that stays (and keeps its sessions).
#[derive(Debug, Clone)]
pub struct PeerUpdate {
    pub id: PeerId,
    pub public_key: PublicKey,
    pub preshared_key: Option<Option<PresharedKey>>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    pub remove_ips: Vec<Prefix>,
    pub add_ips: Vec<Prefix>,
}

impl PeerUpdate {
    fn is_empty(&self) -> bool {
        self.preshared_key.is_none()
            && self.endpoint.is_none()
            && self.persistent_keepalive.is_none()
            && self.remove_ips.is_empty()
            && self.add_ips.is_empty()
    }
}

/// What an applied plan changed, for the log and the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<PublicKey>,
    pub removed: Vec<PublicKey>,
    /// Peers that stay and had something changed (sessions kept).
    pub changed: Vec<PublicKey>,
    /// Peers left exactly as they were.
    pub unchanged: usize,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    pub private_key_changed: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.listen_port.is_none()
            && self.fwmark.is_none()
            && !self.private_key_changed
    }
}

impl DevicePlan {
    /// What applying this plan changes.
    pub fn changes(&self) -> Changes {
        let fresh: BTreeSet<PublicKey> = self
            .add
            .iter()
            .filter(|p| p.fresh)
            .map(|p| p.public_key)
            .collect();
        Changes {
            added: self.add.iter().map(|p| p.public_key).collect(),
            removed: self
                .remove
                .iter()
                .filter(|k| !fresh.contains(k))
                .copied()
                .collect(),
            changed: self.update.iter().map(|u| u.public_key).collect(),
            unchanged: self.unchanged,
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            private_key_changed: self.private_key.is_some(),
        }
    }
}

/// The changes that take `running` to `desired`. Pure. A desired peer carrying our own
/// (desired) public key is left out, as the kernel and wireguard-go do, which with
/// [`Prefix`]'s checked lengths keeps the apply step infallible whatever the source.
pub fn plan(running: &Snapshot, desired: &DesiredDevice) -> DevicePlan {
    let mut plan = DevicePlan::default();
    if desired.listen_port != 0 && desired.listen_port != running.listen_port {
        plan.listen_port = Some(desired.listen_port);
    }
    if desired.fwmark != running.fwmark {
        plan.fwmark = Some(desired.fwmark);
    }
    if desired.private_key != running.private_key {
        plan.private_key = Some(desired.private_key.clone());
    }
    if let Some(mtu) = desired.mtu
        && mtu != running.mtu
    {
        plan.mtu = Some(mtu);
    }

    let own = desired.private_key.as_ref().map(PrivateKey::public_key);
    let wanted: HashMap<PublicKey, &DesiredPeer> = desired
        .peers
        .iter()
        .filter(|p| Some(p.public_key) != own)
        .map(|p| (p.public_key, p))
        .collect();
    let mut running_by_key = HashMap::with_capacity(running.peers.len());
    for info in &running.peers {
        match wanted.get(&info.public_key) {
            Some(peer) if !peer.fresh => {
                running_by_key.insert(info.public_key, info);
            }
            _ => plan.remove.push(info.public_key),
        }
    }

    let mut seen = BTreeSet::new();
    for peer in desired.peers.iter().filter(|p| Some(p.public_key) != own) {
        if !seen.insert(peer.public_key) {
            continue; // listed twice: the first one counts
        }
        let allowed_ips: Vec<Prefix> = networks(&peer.allowed_ips);
        let Some(info) = running_by_key.get(&peer.public_key) else {
            let mut add = peer.clone();
            add.allowed_ips = allowed_ips;
            plan.add.push(add);
            continue;
        };
        let before: BTreeSet<Prefix> = running_prefixes(info).collect();
        let after: BTreeSet<Prefix> = allowed_ips.iter().copied().collect();
        let update = PeerUpdate {
            id: info.id,
            public_key: peer.public_key,
            preshared_key: (info.preshared_key != peer.preshared_key)
                .then(|| peer.preshared_key.clone()),
            endpoint: peer.endpoint.filter(|&e| info.endpoint != Some(e)),
            persistent_keepalive: (info.persistent_keepalive != peer.persistent_keepalive)
                .then_some(peer.persistent_keepalive),
            remove_ips: before.difference(&after).copied().collect(),
            // In the desired order, so longest-prefix ties come out as the source listed them.
            add_ips: allowed_ips
                .iter()
                .filter(|p| !before.contains(p))
                .copied()
                .collect(),
        };
        if update.is_empty() {
            plan.unchanged += 1;
        } else {
            plan.update.push(update);
        }
    }
    plan
}

/// Host bits cleared, duplicates left out, order kept.
fn networks(prefixes: &[Prefix]) -> Vec<Prefix> {
    let mut seen = BTreeSet::new();
    prefixes
        .iter()
        .map(Prefix::network)
        .filter(|p| seen.insert(*p))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proto::{Device, Now, PrivateKey};
    use crate::reconcile::apply_to_device;

    fn key(n: u8) -> PrivateKey {
        PrivateKey::from_bytes([n; 32])
    }

    fn now() -> Now {
        Now::new(Duration::from_secs(10), Duration::from_secs(1_700_000_000))
    }

    fn prefix(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    fn peer(n: u8, ips: &[&str]) -> DesiredPeer {
        let mut p = DesiredPeer::new(key(n).public_key());
        p.allowed_ips = ips.iter().map(|s| prefix(s)).collect();
        p
    }

    fn desired(peers: Vec<DesiredPeer>) -> DesiredDevice {
        DesiredDevice {
            private_key: Some(key(1)),
            listen_port: 0,
            fwmark: 0,
            mtu: Some(1420),
            peers,
        }
    }

    /// A device brought to `d` from empty, and its snapshot.
    fn device_at(d: &DesiredDevice) -> (Device, Snapshot) {
        let mut device = Device::new(None, [3; 32]);
        let p = plan(&Snapshot::of(&device, 51820, 0), d);
        apply_to_device(&mut device, &p, now());
        let snap = Snapshot::of(&device, 51820, 0);
        (device, snap)
    }

    #[test]
    fn the_running_state_plans_nothing() {
        let d = desired(vec![peer(2, &["10.0.0.2/32"]), peer(3, &["fd00::/64"])]);
        let (_, snap) = device_at(&d);
        let p = plan(&snap, &d);
        assert!(p.changes().is_empty(), "{p:?}");
        assert_eq!(p.unchanged, 2);
        // Port 0 ("any") and the bound port both keep the sockets.
        let mut d2 = d.clone();
        d2.listen_port = 51820;
        assert_eq!(plan(&snap, &d2).listen_port, None);
        d2.listen_port = 4000;
        assert_eq!(plan(&snap, &d2).listen_port, Some(4000));
    }

    #[test]
    fn peers_are_added_removed_and_updated_by_difference() {
        let (mut device, snap) = device_at(&desired(vec![
            peer(2, &["10.0.0.2/32", "10.20.0.0/16"]),
            peer(3, &["10.0.0.3/32"]),
        ]));
        let id2 = device.peer_id(&key(2).public_key()).expect("peer 2");
        // Peer 3 goes, 4 comes, 2 loses one prefix, gains one and takes 3's.
        let mut p2 = peer(2, &["10.0.0.2/32", "10.30.1.7/16", "10.0.0.3/32"]);
        p2.persistent_keepalive = 25;
        let d = desired(vec![p2, peer(4, &["10.0.0.4/32"])]);
        let p = plan(&snap, &d);
        assert_eq!(p.remove, vec![key(3).public_key()]);
        assert_eq!(p.add.len(), 1);
        assert_eq!(p.update.len(), 1);
        let u = &p.update[0];
        assert_eq!(u.remove_ips, vec![prefix("10.20.0.0/16")]);
        // Host bits cleared, in the order given.
        assert_eq!(
            u.add_ips,
            vec![prefix("10.30.0.0/16"), prefix("10.0.0.3/32")]
        );
        assert_eq!(u.persistent_keepalive, Some(25));
        assert_eq!(u.endpoint, None, "no endpoint given: the learned one stays");

        apply_to_device(&mut device, &p, now());
        assert_eq!(
            device.peer_id(&key(2).public_key()),
            Some(id2),
            "kept its slot"
        );
        assert!(device.peer_id(&key(3).public_key()).is_none());
        let after = Snapshot::of(&device, 51820, 0);
        let again = plan(&after, &d);
        assert!(again.changes().is_empty(), "applying converged: {again:?}");
    }

    #[test]
    fn a_fresh_peer_is_removed_and_added_and_our_own_key_is_left_out() {
        let d = desired(vec![peer(2, &["10.0.0.2/32"])]);
        let (_, snap) = device_at(&d);
        let mut fresh = peer(2, &["10.0.0.2/32"]);
        fresh.fresh = true;
        let d2 = desired(vec![fresh, peer(1, &["10.0.0.1/32"])]);
        let p = plan(&snap, &d2);
        assert_eq!(p.remove, vec![key(2).public_key()]);
        assert_eq!(p.add.len(), 1, "our own key is not a peer: {p:?}");
        let c = p.changes();
        assert_eq!(c.added, vec![key(2).public_key()]);
        assert!(c.removed.is_empty(), "started over, not removed");
    }

    #[test]
    fn prefixes_are_planned_as_networks_once_each() {
        let d = desired(vec![peer(
            2,
            &["10.0.0.9/24", "10.0.0.0/24", "10.0.0.2/32"],
        )]);
        let p = plan(&Snapshot::default(), &d);
        assert_eq!(
            p.add[0].allowed_ips,
            vec![prefix("10.0.0.0/24"), prefix("10.0.0.2/32")]
        );
    }

    #[test]
    fn random_sequences_of_desired_states_converge() {
        // From any state to any other in one plan; then planning again finds nothing to do.
        // Each prefix has one owner, as every source guarantees (the config refuses a prefix
        // listed twice; a UAPI set's simulation moves it).
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut device = Device::new(Some(key(1)), [3; 32]);
        for _ in 0..200 {
            let mut peers = Vec::new();
            let mut taken = BTreeSet::new();
            for n in 2..10u8 {
                if next(2) == 0 {
                    continue;
                }
                let ips: Vec<String> = (0..next(4))
                    .map(|_| format!("10.{}.{}.0/24", next(3), next(4)))
                    .filter(|p| taken.insert(p.clone()))
                    .collect();
                let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
                let mut p = peer(n, &ips);
                p.persistent_keepalive = u16::try_from(next(3)).unwrap_or(0);
                p.fresh = next(8) == 0;
                peers.push(p);
            }
            let d = desired(peers);
            let before = Snapshot::of(&device, 51820, 0);
            let p = plan(&before, &d);
            apply_to_device(&mut device, &p, now());
            let after = Snapshot::of(&device, 51820, 0);
            let mut again = d.clone();
            again.peers.iter_mut().for_each(|p| p.fresh = false);
            let p2 = plan(&after, &again);
            assert!(p2.changes().is_empty(), "{p2:?}");
            // Every prefix is routed to the peer that wants it.
            let mut owner = HashMap::new();
            for peer in &again.peers {
                for p in &peer.allowed_ips {
                    owner.insert(p.network(), peer.public_key);
                }
            }
            for info in &after.peers {
                for p in running_prefixes(info) {
                    assert_eq!(owner.get(&p), Some(&info.public_key));
                }
            }
        }
    }
}
