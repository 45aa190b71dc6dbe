//! Applying a `set`: first simulated, line by line with wireguard-go's semantics, on a model
//! of the device's configuration; then the difference between the model and the device is
//! applied with calls that cannot fail. So an error leaves the device untouched.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use super::parse::{Op, SetRequest, mask};
use super::{InterfaceState, MAX_PEERS, SetOutcome, UapiError};
use crate::proto::{Device, Now, PeerConfig, PeerInfo, PresharedKey, PrivateKey, PublicKey};

/// An AllowedIP with its host bits cleared.
type Prefix = (IpAddr, u8);

/// Validates `req` against the current device and applies it atomically: on `Err` nothing
/// changed.
///
/// Semantics (wireguard-go's, line by line): `private_key` changes the identity and drops a
/// peer carrying the new public key; `replace_peers` drops every peer; `public_key` selects a
/// peer, creating it if missing; a peer equal to our own public key is ignored with all its
/// lines, as wireguard-go and the kernel do (so one peer list can be pushed to every member of
/// a mesh); `update_only` drops a peer this section created (so it only updates existing
/// ones); `remove` drops the peer and ignores the rest of its section; `allowed_ip` moves a
/// prefix from whichever peer held it, and `allowed_ip=-prefix` removes it only from this
/// peer. A peer removed and added again in one request comes back fresh (no sessions).
/// Errors: EINVAL when the request would leave more than `MAX_PEERS` peers.
pub fn apply_set(
    req: &SetRequest,
    device: &mut Device,
    state: &mut InterfaceState,
    now: Now,
) -> Result<SetOutcome, UapiError> {
    let mut model = Model::of(device, state);
    model.simulate(req)?;
    Ok(model.commit(device, state, now))
}

/// A peer as the request leaves it.
struct ModelPeer {
    public_key: PublicKey,
    /// Index into `Model::originals` of the device peer this continues; `None` for a peer
    /// (re)created by the request.
    origin: Option<usize>,
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
    /// The device's peers before the request.
    originals: Vec<PeerInfo>,
    private_key: Option<PrivateKey>,
    public_key: Option<PublicKey>,
    listen_port: u16,
    fwmark: u32,
    listen_port_set: bool,
    fwmark_set: bool,
    /// Peers in order; removed ones leave `None`.
    peers: Vec<Option<ModelPeer>>,
    by_key: HashMap<PublicKey, usize>,
    /// Which slot holds each prefix (a prefix belongs to one peer at most).
    owner: HashMap<Prefix, usize>,
    live: usize,
}

impl Model {
    fn of(device: &Device, state: &InterfaceState) -> Self {
        let originals = device.peers();
        let mut model = Model {
            private_key: device.private_key().cloned(),
            public_key: device.public_key(),
            listen_port: state.listen_port,
            fwmark: state.fwmark,
            listen_port_set: false,
            fwmark_set: false,
            peers: Vec::with_capacity(originals.len()),
            by_key: HashMap::with_capacity(originals.len()),
            owner: HashMap::new(),
            live: 0,
            originals: Vec::new(),
        };
        for (index, info) in originals.iter().enumerate() {
            let slot = model.peers.len();
            let allowed_ips: BTreeSet<Prefix> = info
                .allowed_ips
                .iter()
                .map(|&(a, c)| (mask(a, c), c))
                .collect();
            for &prefix in &allowed_ips {
                model.owner.insert(prefix, slot);
            }
            model.peers.push(Some(ModelPeer {
                public_key: info.public_key,
                origin: Some(index),
                preshared_key: info.preshared_key.clone().unwrap_or_default(),
                endpoint: info.endpoint,
                keepalive: info.persistent_keepalive,
                allowed_ips,
            }));
            model.by_key.insert(info.public_key, slot);
            model.live += 1;
        }
        model.originals = originals;
        model
    }

    fn simulate(&mut self, req: &SetRequest) -> Result<(), UapiError> {
        let mut section = Section {
            slot: None,
            created: false,
        };
        for (number, op) in &req.ops {
            match op {
                Op::PrivateKey(key) => self.set_private_key(key.as_ref()),
                Op::ListenPort(port) => {
                    self.listen_port = *port;
                    self.listen_port_set = true;
                }
                Op::Fwmark(mark) => {
                    self.fwmark = *mark;
                    self.fwmark_set = true;
                }
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
                        return Err(UapiError::invalid(format!(
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
                Op::AllowedIp { addr, cidr, remove } => {
                    if let Some(slot) = section.slot {
                        let prefix = (*addr, *cidr);
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
    fn select(&mut self, number: usize, key: &PublicKey) -> Result<Section, UapiError> {
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
        if self.live >= MAX_PEERS {
            return Err(UapiError::invalid(format!(
                "line {number}: too many peers (at most {MAX_PEERS})"
            )));
        }
        let slot = self.peers.len();
        self.peers.push(Some(ModelPeer {
            public_key: *key,
            origin: None,
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

    /// Makes the device match the model, with calls that cannot fail: every value was
    /// checked while parsing, no peer carries our own key, and no prefix is too long.
    fn commit(self, device: &mut Device, state: &mut InterfaceState, now: Now) -> SetOutcome {
        // Device peers the request removed (or removed and created again: those come back
        // fresh, as in wireguard-go).
        let mut kept = vec![false; self.originals.len()];
        for origin in self.peers.iter().flatten().filter_map(|p| p.origin) {
            if let Some(k) = kept.get_mut(origin) {
                *k = true;
            }
        }
        for (info, _) in self.originals.iter().zip(&kept).filter(|(_, k)| !**k) {
            device.remove_peer(&info.public_key);
        }

        let private_key_changed = device.private_key() != self.private_key.as_ref();
        if private_key_changed {
            device.set_private_key(self.private_key.clone());
        }

        let outcome = SetOutcome {
            listen_port_set: self.listen_port_set,
            listen_port_changed: state.listen_port != self.listen_port,
            fwmark_set: self.fwmark_set,
            fwmark_changed: state.fwmark != self.fwmark,
            private_key_changed,
        };
        state.listen_port = self.listen_port;
        state.fwmark = self.fwmark;

        // Prefixes that move between peers come out right in any order: adding one takes it
        // from its old owner, and removing one from a peer drops it only if that peer holds it.
        for peer in self.peers.iter().flatten() {
            let psk = (!peer.preshared_key.is_zero()).then(|| peer.preshared_key.clone());
            match peer.origin.and_then(|o| self.originals.get(o)) {
                None => {
                    let config = PeerConfig {
                        public_key: peer.public_key,
                        preshared_key: psk,
                        endpoint: peer.endpoint,
                        persistent_keepalive: 0,
                        allowed_ips: Vec::new(),
                    };
                    // Cannot fail: our own key was excluded and there are no prefixes yet.
                    let Ok(id) = device.upsert_peer(&config) else {
                        continue;
                    };
                    // Set afterwards so a new peer with a keepalive sends one at once, as
                    // wireguard-go does.
                    if peer.keepalive != 0 {
                        device.set_persistent_keepalive(id, peer.keepalive, now);
                    }
                    for &(addr, cidr) in &peer.allowed_ips {
                        // Cannot fail: the length was checked while parsing.
                        let _ = device.add_allowed_ip(id, addr, cidr);
                    }
                }
                Some(info) => {
                    let id = info.id;
                    if info.preshared_key != psk {
                        device.set_preshared_key(id, psk);
                    }
                    if info.endpoint != peer.endpoint {
                        device.set_endpoint(id, peer.endpoint);
                    }
                    if info.persistent_keepalive != peer.keepalive {
                        device.set_persistent_keepalive(id, peer.keepalive, now);
                    }
                    let before: BTreeSet<Prefix> = info
                        .allowed_ips
                        .iter()
                        .map(|&(a, c)| (mask(a, c), c))
                        .collect();
                    // Only the difference, so a large request that changes little costs
                    // little. Removing leaves a prefix alone if another peer took it already.
                    for &(addr, cidr) in before.difference(&peer.allowed_ips) {
                        device.remove_allowed_ip(id, addr, cidr);
                    }
                    for &(addr, cidr) in peer.allowed_ips.difference(&before) {
                        let _ = device.add_allowed_ip(id, addr, cidr);
                    }
                }
            }
        }
        outcome
    }
}
