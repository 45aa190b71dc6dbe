//! Back in a second after a restart (issue 13): a daemon that lost its sessions (kill -9,
//! SIGTERM, a reboot) answers the first transport packet a configured peer sends into the
//! dead session with a handshake initiation, instead of leaving that peer to notice through
//! its keepalive and rekey timers (~15 s in the kernel, wireguard-go and boringtun alike).
//!
//! The trigger is a transport message whose receiver index we do not know, arriving from
//! the exact address and port that is a peer's endpoint, while we have no usable session with
//! that peer. Such a message cannot be authenticated (its key died with the old process), so
//! anyone can forge one; what it can make us do is bounded:
//! - the endpoint must be the peer's current one (configured, or learned from an
//!   authenticated packet before), so a forger must spoof that address and port exactly;
//! - `send_initiation` sends at most one initiation per peer per REKEY_TIMEOUT (5 s), the
//!   rate the kernel allows traffic itself to trigger;
//! - nothing is sent while the peer has a session we can still receive on (so stale packets
//!   of an old session, or forged ones, do nothing to a working tunnel).
//!
//! So a forger can make us send at most one 148-byte initiation per configured peer per 5 s,
//! and only to that peer's own endpoint. Each costs us the X25519 work of one initiation: a
//! fresh ephemeral key and its Diffie-Hellmans. The initiation is larger than the smallest
//! forged trigger (32 bytes), but the forger cannot aim it at an address of its choosing,
//! nor send it more often than once per 5 s per peer, however many triggers it sends.
//!
//! The lookup from address to peer is one hash per unknown-index packet: [`EndpointOwners`]
//! follows every endpoint change (configuration, roaming), so no peer is walked.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::proto::endpoint::Endpoint;
use crate::proto::peer::PeerId;
use crate::proto::time::Now;

use super::Device;

/// Which peer an address is the endpoint of. Kept in step with the peers' endpoints; an
/// entry is only trusted after checking the peer still has that endpoint.
#[derive(Debug, Default)]
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub(crate) struct EndpointOwners(HashMap<SocketAddr, PeerId>);

impl EndpointOwners {
    /// Room for `peers` entries, so that roaming (one entry per peer) never allocates on the
    /// packet path; called when peers are added.
    pub(crate) fn reserve_for(&mut self, peers: usize) {
        self.0.reserve(peers.saturating_sub(self.0.len()));
    }

    /// Peer `id`'s endpoint moved from `from` to `to` (either may be None).
    pub(crate) fn moved(&mut self, id: PeerId, from: Option<SocketAddr>, to: Option<SocketAddr>) {
        if from == to {
            return;
        }
        if let Some(from) = from
            && self.0.get(&from) == Some(&id)
        {
            self.0.remove(&from);
        }
        if let Some(to) = to {
            // Two peers behind one address (a NAT giving both the same port cannot happen;
            // a misconfiguration can): the latest wins, which only affects this shortcut.
            self.0.insert(to, id);
        }
    }

    pub(super) fn owner(&self, addr: &SocketAddr) -> Option<PeerId> {
        self.0.get(addr).copied()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

impl Device {
    /// A transport message for an unknown receiver index came from `src`: if that is a
    /// peer's endpoint and we have no session with it, start a handshake (see the module
    /// documentation for why this is safe).
    pub(super) fn revive_from(&mut self, src: Endpoint, now: Now) {
        let Some(id) = self.endpoint_owners.owner(&src.remote) else {
            return;
        };
        let Some(peer) = self.peers.get(id) else {
            return;
        };
        if peer.endpoint.map(|e| e.remote) != Some(src.remote) {
            return;
        }
        let has_session = [&peer.current, &peer.next]
            .into_iter()
            .flatten()
            .any(|k| k.can_receive(now.monotonic));
        // Checked here too, not only in `send_initiation`: a call that sends nothing must
        // not restart the retry series either.
        if has_session || !self.initiation_due(id, now) {
            return;
        }
        tracing::debug!(peer = %peer.public_key, "transport for an unknown session from the peer's endpoint: initiating");
        self.send_initiation(id, false, now);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    use super::*;
    use crate::proto::messages::INITIATION_LEN;
    use crate::proto::prefix::Prefix;
    use crate::proto::{DropReason, PeerConfig};
    use crate::testkit::key;
    use crate::testkit::packet::{ipv4, ty};
    use crate::testkit::pair::{ADDR_A, INNER4_A, INNER4_B, Pair};

    /// b loses everything (kill -9) and starts again from its config: a as its peer, at
    /// a's endpoint when `knows_a`.
    fn restart_b(p: &mut Pair, knows_a: bool) {
        let mut dev = Device::new(Some(key(2)), [9; 32]);
        let mut c = PeerConfig::new(key(1).public_key());
        c.endpoint = knows_a.then_some(ADDR_A);
        c.allowed_ips = vec![Prefix::host(IpAddr::from(INNER4_A))];
        p.b.peer = dev.upsert_peer(&c).expect("b's peer");
        p.b.dev = dev;
    }

    /// A datagram a seals under its current session (dead at a restarted b).
    fn sealed_by_a(p: &mut Pair, tag: &[u8]) -> Vec<u8> {
        p.send_ip(true, &ipv4(INNER4_A, INNER4_B, tag));
        let wire = p.take_wire();
        assert_eq!(wire.len(), 1, "one transport datagram from a");
        wire[0].1.clone()
    }

    fn initiations(datagrams: &[Vec<u8>]) -> usize {
        datagrams
            .iter()
            .filter(|d| ty(d) == 1 && d.len() == INITIATION_LEN)
            .count()
    }

    #[test]
    fn restarted_side_answers_the_dead_session_at_once() {
        let mut p = Pair::established();
        restart_b(&mut p, true);
        let dead = sealed_by_a(&mut p, b"into the dead session");
        // b drops it but starts a handshake to a; no time passes from here on.
        assert_eq!(
            p.deliver(true, &dead),
            crate::proto::Decapsulated::Dropped(DropReason::UnknownReceiverIndex)
        );
        assert_eq!(initiations(&p.sent_b), 1, "b initiated");
        p.run();
        let probe = ipv4(INNER4_A, INNER4_B, b"after the restart");
        p.send_ip(true, &probe);
        p.run();
        assert_eq!(p.delivered_b.last(), Some(&probe), "a -> b works again");
    }

    #[test]
    fn at_most_one_initiation_per_rekey_timeout_and_none_while_a_session_works() {
        let mut p = Pair::established();
        restart_b(&mut p, true);
        let dead = sealed_by_a(&mut p, b"x");
        let before = initiations(&p.sent_b);
        // A flood of dead-session datagrams (or forgeries of them) from a's endpoint for
        // 4 s; what b sends is recorded and lost.
        for _ in 0..100 {
            p.deliver(true, &dead);
            p.tick_timers(Duration::from_millis(40));
            p.take_wire();
        }
        assert_eq!(initiations(&p.sent_b) - before, 1, "one initiation in 4 s");
        // Past REKEY_TIMEOUT the retransmit timer sends one more, and the flood none besides.
        for _ in 0..50 {
            p.deliver(true, &dead);
            p.tick_timers(Duration::from_millis(40));
            p.take_wire();
        }
        assert_eq!(initiations(&p.sent_b) - before, 2, "one more after 6 s");

        // Once b has a session, stale or forged datagrams from a's endpoint change nothing.
        let mut q = Pair::established();
        q.assert_works();
        let mut stale = sealed_by_a(&mut q, b"y");
        stale[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        let before = initiations(&q.sent_b);
        q.deliver(true, &stale);
        assert_eq!(initiations(&q.sent_b), before);
    }

    #[test]
    fn nothing_for_other_addresses_or_unknown_endpoints() {
        let mut p = Pair::established();
        restart_b(&mut p, true);
        let dead = sealed_by_a(&mut p, b"x");
        let elsewhere: SocketAddr = "192.0.2.9:1".parse().expect("literal");
        let mut buf = dead.clone();
        let now = p.now;
        p.b.dev.decapsulate(elsewhere, &mut buf, dead.len(), now);
        assert!(!p.b.dev.has_transmit(), "no initiation for another address");

        // A restarted side that never knew a's endpoint (a road warrior's server) waits.
        let mut q = Pair::established();
        restart_b(&mut q, false);
        let dead = sealed_by_a(&mut q, b"x");
        let before = initiations(&q.sent_b);
        q.deliver(true, &dead);
        assert_eq!(initiations(&q.sent_b), before);
    }

    #[test]
    fn owners_follow_configuration_roaming_and_removal() {
        let mut d = Device::new(Some(key(2)), [3; 32]);
        let a: SocketAddr = "192.0.2.1:1".parse().expect("literal");
        let b: SocketAddr = "192.0.2.1:2".parse().expect("literal");
        let mut c = PeerConfig::new(key(1).public_key());
        c.endpoint = Some(a);
        let id = d.upsert_peer(&c).expect("peer");
        assert_eq!(d.endpoint_owners.owner(&a), Some(id));
        d.set_endpoint(id, Some(b));
        assert_eq!(d.endpoint_owners.owner(&a), None);
        assert_eq!(d.endpoint_owners.owner(&b), Some(id));
        c.endpoint = Some(a);
        d.upsert_peer(&c).expect("update");
        assert_eq!(d.endpoint_owners.owner(&a), Some(id));
        assert_eq!(d.endpoint_owners.len(), 1);
        assert!(d.remove_peer(&key(1).public_key()));
        assert_eq!(d.endpoint_owners.len(), 0);
    }
}
