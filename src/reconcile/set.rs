//! A UAPI `set`, parsed and checked (by `control::uapi`), as operations; and its simulation
//! on a [`Snapshot`], line by line with wireguard-go's semantics, which turns it into a
//! [`DesiredDevice`] for the one reconciler.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use super::desired::{DesiredDevice, DesiredPeer, Prefix, Snapshot, running_prefixes};
use crate::proto::{PresharedKey, PrivateKey, PublicKey};

/// The most peers a device may have: the kernel's limit (`MAX_PEERS_PER_DEVICE`, 2^20), not
/// wireguard-go's 2^16. Nothing below depends on it being small: peer slots and ids are
/// `u32`, receiver indices are random `u32`s in a hash map (at most three per peer, so the
/// table stays sparse), AllowedIPs are a trie with per-peer lists, and the driver walks the
/// peers only in slices (`driver/job.rs`). The one-time cost of a `set` that large is in the
/// UAPI limits (`control::uapi::MAX_REQUEST_BYTES`).
pub const MAX_PEERS: usize = 1 << 20;

/// One `key=value` line of a `set`, checked.
#[derive(Debug, Clone)]
pub enum Op {
    // Device lines (before the first `public_key`).
    /// `None` clears the key (an all-zero `private_key`).
    PrivateKey(Option<PrivateKey>),
    ListenPort(u16),
    Fwmark(u32),
    ReplacePeers,
    // Peer lines.
    /// `public_key`: the peer the following lines configure (created if missing).
    Peer(PublicKey),
    UpdateOnly,
    Remove,
    /// All zeros removes the preshared key.
    PresharedKey(PresharedKey),
    /// `zone` is an IPv6 zone given by interface name, still to be turned into the scope id
    /// of `addr` ([`SetRequest::resolve_zones`]).
    Endpoint {
        addr: SocketAddr,
        zone: Option<String>,
    },
    PersistentKeepalive(u16),
    ReplaceAllowedIps,
    /// `allowed_ip=[-]addr/cidr`, host bits cleared; `remove` for the `-` form.
    AllowedIp {
        prefix: Prefix,
        remove: bool,
    },
}

/// A `set` that cannot be applied (EINVAL on the wire). Never holds key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSet(pub String);

/// A parsed, fully validated `set=1` request.
#[derive(Debug, Clone, Default)]
pub struct SetRequest {
    /// Each operation with its line number in the request (`set=1` is line 1).
    pub ops: Vec<(usize, Op)>,
}

impl SetRequest {
    /// How many operations the request holds (lines other than `protocol_version`).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// `public_key=K`, `update_only=true`, `endpoint=ADDR`: the endpoint of an existing peer
    /// and nothing else (no peer is created). How a re-resolved endpoint name reaches the
    /// device, through the same simulation and plan as any other change.
    pub fn update_endpoint(public_key: PublicKey, endpoint: SocketAddr) -> SetRequest {
        SetRequest {
            ops: vec![
                (2, Op::Peer(public_key)),
                (3, Op::UpdateOnly),
                (
                    4,
                    Op::Endpoint {
                        addr: endpoint,
                        zone: None,
                    },
                ),
            ],
        }
    }

    /// Turns IPv6 zones given by interface name (`endpoint=[fe80::1%eth0]:51820`, which is
    /// how `wg` writes a link-local endpoint) into scope ids, with the caller's lookup
    /// (`if_nametoindex`). [`SetRequest::desired`] refuses a request with a zone left
    /// unresolved; numeric zones need no lookup.
    pub fn resolve_zones(
        &mut self,
        mut resolve: impl FnMut(&str) -> Option<u32>,
    ) -> Result<(), InvalidSet> {
        for (number, op) in &mut self.ops {
            if let Op::Endpoint { addr, zone } = op
                && let Some(name) = zone.as_deref()
            {
                let index = resolve(name).ok_or_else(|| {
                    InvalidSet(format!(
                        "line {number}: no interface \"{}\" for the endpoint zone",
                        name.escape_debug()
                    ))
                })?;
                if let SocketAddr::V6(v6) = addr {
                    v6.set_scope_id(index);
                }
                *zone = None;
            }
        }
        Ok(())
    }

    /// The device this request asks for, starting from `running`.
    ///
    /// Semantics (wireguard-go's, line by line): `private_key` changes the identity and drops
    /// a peer carrying the new public key; `replace_peers` drops every peer; `public_key`
    /// selects a peer, creating it if missing; a peer equal to our own public key is ignored
    /// with all its lines, as wireguard-go and the kernel do (so one peer list can be pushed
    /// to every member of a mesh); `update_only` drops a peer this section created (so it only
    /// updates existing ones); `remove` drops the peer and ignores the rest of its section;
    /// `allowed_ip` moves a prefix from whichever peer held it, and `allowed_ip=-prefix`
    /// removes it only from this peer. A peer removed and added again in one request comes
    /// back fresh (no sessions). Errors: more than [`MAX_PEERS`] peers, an unresolved zone.
    pub fn desired(&self, running: &Snapshot) -> Result<DesiredDevice, InvalidSet> {
        self.desired_within(running, MAX_PEERS)
    }

    /// [`SetRequest::desired`] with a peer limit of `max_peers` (so that the limit's logic
    /// can be tested without a million peers).
    pub(crate) fn desired_within(
        &self,
        running: &Snapshot,
        max_peers: usize,
    ) -> Result<DesiredDevice, InvalidSet> {
        let mut model = Model::of(running);
        model.max_peers = max_peers;
        model.simulate(self)?;
        Ok(model.into_desired(running))
    }
}

/// A peer as the request leaves it.
struct ModelPeer {
    public_key: PublicKey,
    /// Continues the running peer of this key; false for a peer (re)created by the request.
    original: bool,
    /// All zeros: none.
    preshared_key: PresharedKey,
    endpoint: Option<SocketAddr>,
    keepalive: u16,
    allowed_ips: BTreeSet<Prefix>,
}

/// The peer the current section configures.
#[derive(Clone, Copy)]
struct Section {
    /// Slot in `Model::peers`; `None` when the section is ignored (our own key, removed,
    /// update_only on a missing peer).
    slot: Option<usize>,
    /// The section's `public_key` created the peer.
    created: bool,
}

struct Model {
    private_key: Option<PrivateKey>,
    public_key: Option<PublicKey>,
    listen_port: u16,
    fwmark: u32,
    /// Peers in order; removed ones leave `None`.
    peers: Vec<Option<ModelPeer>>,
    by_key: HashMap<PublicKey, usize>,
    /// Which slot holds each prefix (a prefix belongs to one peer at most).
    owner: HashMap<Prefix, usize>,
    live: usize,
    /// [`MAX_PEERS`], but for tests.
    max_peers: usize,
}

impl Model {
    fn of(running: &Snapshot) -> Self {
        let mut model = Model {
            private_key: running.private_key.clone(),
            public_key: running.private_key.as_ref().map(PrivateKey::public_key),
            listen_port: running.listen_port,
            fwmark: running.fwmark,
            peers: Vec::with_capacity(running.peers.len()),
            by_key: HashMap::with_capacity(running.peers.len()),
            owner: HashMap::new(),
            live: 0,
            max_peers: MAX_PEERS,
        };
        for info in &running.peers {
            let slot = model.peers.len();
            let allowed_ips: BTreeSet<Prefix> = running_prefixes(info).collect();
            for &prefix in &allowed_ips {
                model.owner.insert(prefix, slot);
            }
            model.peers.push(Some(ModelPeer {
                public_key: info.public_key,
                original: true,
                preshared_key: info.preshared_key.clone().unwrap_or_default(),
                endpoint: info.endpoint,
                keepalive: info.persistent_keepalive,
                allowed_ips,
            }));
            model.by_key.insert(info.public_key, slot);
            model.live += 1;
        }
        model
    }

    fn simulate(&mut self, req: &SetRequest) -> Result<(), InvalidSet> {
        let mut section = Section {
            slot: None,
            created: false,
        };
        for (number, op) in &req.ops {
            match op {
                Op::PrivateKey(key) => self.set_private_key(key.as_ref()),
                Op::ListenPort(port) => self.listen_port = *port,
                Op::Fwmark(mark) => self.fwmark = *mark,
                Op::ReplacePeers => {
                    for slot in 0..self.peers.len() {
                        self.remove_slot(slot);
                    }
                }
                Op::Peer(key) => section = self.select(*number, key)?,
                Op::UpdateOnly => {
                    if section.created
                        && let Some(slot) = section.slot.take()
                    {
                        self.remove_slot(slot);
                    }
                }
                Op::Remove => {
                    if let Some(slot) = section.slot.take() {
                        self.remove_slot(slot);
                    }
                }
                Op::PresharedKey(psk) => {
                    if let Some(peer) = self.peer_mut(section.slot) {
                        peer.preshared_key = psk.clone();
                    }
                }
                Op::Endpoint { addr, zone } => {
                    if zone.is_some() {
                        return Err(InvalidSet(format!(
                            "line {number}: the endpoint's zone names an interface; \
                             the driver must resolve it first"
                        )));
                    }
                    if let Some(peer) = self.peer_mut(section.slot) {
                        peer.endpoint = Some(*addr);
                    }
                }
                Op::PersistentKeepalive(secs) => {
                    if let Some(peer) = self.peer_mut(section.slot) {
                        peer.keepalive = *secs;
                    }
                }
                Op::ReplaceAllowedIps => {
                    if let Some(peer) = self.peer_mut(section.slot) {
                        let gone = std::mem::take(&mut peer.allowed_ips);
                        for prefix in gone {
                            self.owner.remove(&prefix);
                        }
                    }
                }
                Op::AllowedIp { prefix, remove } => {
                    if let Some(slot) = section.slot {
                        let prefix = prefix.network();
                        if *remove {
                            self.remove_prefix(slot, prefix);
                        } else {
                            self.insert_prefix(slot, prefix);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn set_private_key(&mut self, key: Option<&PrivateKey>) {
        if self.private_key.as_ref() == key {
            return;
        }
        self.private_key = key.cloned();
        self.public_key = key.map(PrivateKey::public_key);
        // We cannot be our own peer.
        if let Some(own) = self.public_key
            && let Some(&slot) = self.by_key.get(&own)
        {
            self.remove_slot(slot);
        }
    }

    /// A `public_key` line: the peer it names, created if missing.
    fn select(&mut self, number: usize, key: &PublicKey) -> Result<Section, InvalidSet> {
        if self.public_key.as_ref() == Some(key) {
            return Ok(Section {
                slot: None,
                created: false,
            });
        }
        if let Some(&slot) = self.by_key.get(key) {
            return Ok(Section {
                slot: Some(slot),
                created: false,
            });
        }
        if self.live >= self.max_peers {
            return Err(InvalidSet(format!(
                "line {number}: too many peers (at most {})",
                self.max_peers
            )));
        }
        let slot = self.peers.len();
        self.peers.push(Some(ModelPeer {
            public_key: *key,
            original: false,
            preshared_key: PresharedKey::default(),
            endpoint: None,
            keepalive: 0,
            allowed_ips: BTreeSet::new(),
        }));
        self.by_key.insert(*key, slot);
        self.live += 1;
        Ok(Section {
            slot: Some(slot),
            created: true,
        })
    }

    fn peer_mut(&mut self, slot: Option<usize>) -> Option<&mut ModelPeer> {
        self.peers.get_mut(slot?)?.as_mut()
    }

    fn remove_slot(&mut self, slot: usize) {
        let Some(peer) = self.peers.get_mut(slot).and_then(Option::take) else {
            return;
        };
        for prefix in &peer.allowed_ips {
            self.owner.remove(prefix);
        }
        self.by_key.remove(&peer.public_key);
        self.live -= 1;
    }

    /// Inserting a prefix takes it from the peer that held it, as AllowedIPs does.
    fn insert_prefix(&mut self, slot: usize, prefix: Prefix) {
        if let Some(previous) = self.owner.insert(prefix, slot)
            && previous != slot
            && let Some(Some(peer)) = self.peers.get_mut(previous)
        {
            peer.allowed_ips.remove(&prefix);
        }
        if let Some(Some(peer)) = self.peers.get_mut(slot) {
            peer.allowed_ips.insert(prefix);
        }
    }

    /// `allowed_ip=-prefix` removes the prefix only if this peer holds it.
    fn remove_prefix(&mut self, slot: usize, prefix: Prefix) {
        if self.owner.get(&prefix) == Some(&slot) {
            self.owner.remove(&prefix);
            if let Some(Some(peer)) = self.peers.get_mut(slot) {
                peer.allowed_ips.remove(&prefix);
            }
        }
    }

    /// The model as a desired device. A running peer that the request removed and created
    /// again comes back fresh. The running MTU is not the request's business.
    fn into_desired(self, running: &Snapshot) -> DesiredDevice {
        let running_keys: std::collections::HashSet<PublicKey> =
            running.peers.iter().map(|p| p.public_key).collect();
        let peers = self
            .peers
            .into_iter()
            .flatten()
            .map(|peer| {
                let fresh = !peer.original && running_keys.contains(&peer.public_key);
                DesiredPeer {
                    public_key: peer.public_key,
                    preshared_key: (!peer.preshared_key.is_zero()).then_some(peer.preshared_key),
                    endpoint: peer.endpoint,
                    persistent_keepalive: peer.keepalive,
                    allowed_ips: peer.allowed_ips.into_iter().collect(),
                    fresh,
                }
            })
            .collect();
        DesiredDevice {
            private_key: self.private_key,
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            mtu: None,
            peers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Device, Now};
    use crate::reconcile::{apply_to_device, plan};
    use std::time::Duration;

    fn peer(n: u8, endpoint: Option<SocketAddr>) -> DesiredPeer {
        let mut p = DesiredPeer::new(PrivateKey::from_bytes([n; 32]).public_key());
        p.endpoint = endpoint;
        p.persistent_keepalive = 25;
        p.allowed_ips = vec![crate::proto::prefix::Prefix::host(std::net::IpAddr::from(
            [10, 0, 0, n],
        ))];
        p
    }

    fn nth_key(n: u32) -> PublicKey {
        let mut k = [0xeeu8; 32];
        k[..4].copy_from_slice(&n.to_le_bytes());
        PublicKey::from_bytes(k)
    }

    #[test]
    fn the_peer_limit_is_the_kernels_and_counts_live_peers() {
        const { assert!(MAX_PEERS == 1 << 20, "the kernel's MAX_PEERS_PER_DEVICE") };
        let mut device = Device::new(Some(PrivateKey::from_bytes([1; 32])), [7; 32]);
        let start = DesiredDevice {
            private_key: Some(PrivateKey::from_bytes([1; 32])),
            peers: vec![peer(2, None), peer(3, None)],
            ..DesiredDevice::default()
        };
        let now = Now::new(Duration::from_secs(1), Duration::from_secs(1_700_000_000));
        let first = plan(&Snapshot::of(&device, 0, 0), &start);
        apply_to_device(&mut device, &first, now);
        let running = Snapshot::of(&device, 0, 0);
        let adding = |n: u32| SetRequest {
            ops: (0..n)
                .map(|i| (2 + i as usize, Op::Peer(nth_key(i))))
                .collect(),
        };
        // Two exist: three more fit in five, four do not, and the error names the line.
        let d = adding(3).desired_within(&running, 5).expect("fits");
        assert_eq!(d.peers.len(), 5);
        let err = adding(4).desired_within(&running, 5).unwrap_err();
        assert_eq!(err.0, "line 5: too many peers (at most 5)");
        // Removed peers free their place within the same request.
        let mut req = SetRequest {
            ops: vec![(2, Op::ReplacePeers)],
        };
        req.ops.extend(adding(5).ops);
        assert_eq!(
            req.desired_within(&running, 5).expect("fits").peers.len(),
            5
        );
        // A peer named twice counts once.
        let mut req = adding(3);
        req.ops.push((9, Op::Peer(nth_key(0))));
        assert!(req.desired_within(&running, 5).is_ok());
        // Above wireguard-go's 2^16 is fine with the real limit (checked at 70,000 in
        // tests/uapi_scale.rs through the socket).
        assert!(adding(70_000).desired(&Snapshot::default()).is_ok());
    }

    #[test]
    fn update_endpoint_changes_only_that_endpoint_of_an_existing_peer() {
        let old: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let new: SocketAddr = "192.0.2.2:51820".parse().expect("addr");
        let mut device = Device::new(Some(PrivateKey::from_bytes([1; 32])), [7; 32]);
        let start = DesiredDevice {
            private_key: Some(PrivateKey::from_bytes([1; 32])),
            peers: vec![peer(2, Some(old)), peer(3, None)],
            ..DesiredDevice::default()
        };
        let now = Now::new(Duration::from_secs(1), Duration::from_secs(1_700_000_000));
        let first = plan(&Snapshot::of(&device, 0, 0), &start);
        apply_to_device(&mut device, &first, now);
        let running = Snapshot::of(&device, 0, 0);
        let key2 = start.peers[0].public_key;

        let desired = SetRequest::update_endpoint(key2, new)
            .desired(&running)
            .expect("valid");
        let changes = plan(&running, &desired).changes();
        assert_eq!(changes.changed, vec![key2]);
        assert!(changes.added.is_empty() && changes.removed.is_empty());
        assert_eq!(desired.peers.len(), 2);
        assert_eq!(desired.peers[0].endpoint, Some(new));
        assert_eq!(desired.peers[0].persistent_keepalive, 25);
        assert_eq!(desired.peers[0].allowed_ips.len(), 1);
        assert!(!desired.peers[0].fresh, "the peer keeps its sessions");
        assert_eq!(desired.peers[1].endpoint, None);

        // A peer that is gone (removed by a reload or a UAPI `set`) is not brought back.
        let gone = PrivateKey::from_bytes([9; 32]).public_key();
        let desired = SetRequest::update_endpoint(gone, new)
            .desired(&running)
            .expect("valid");
        let changes = plan(&running, &desired).changes();
        assert!(changes.added.is_empty() && changes.changed.is_empty());
        assert_eq!(changes.unchanged, 2);
    }
}
