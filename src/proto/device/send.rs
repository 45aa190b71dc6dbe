//! TUN -> UDP, as the kernel's `send.c`: route an IP packet to its peer by AllowedIPs,
//! seal it under the current session or stage it while a handshake runs, keepalives, and the
//! queue of datagrams that `poll_transmit` drains.

use std::time::Duration;

use crate::proto::endpoint::Endpoint;
use crate::proto::error::DropReason;
use crate::proto::ip::{self, Addr};
use crate::proto::messages::MAX_HANDSHAKE_LEN;
use crate::proto::peer::{MAX_STAGED_PACKETS, PeerId};
use crate::proto::time::Now;

use super::{Control, Device, Encapsulated, HEADROOM, MAX_SPARE_BUFFERS, PreparedSend, Transmit};

impl Device {
    /// Encrypts the IP packet at `buf[HEADROOM..HEADROOM + len]` for the peer whose
    /// AllowedIPs hold its destination. `buf` needs `TAILROOM` bytes after the packet.
    pub fn encapsulate(&mut self, buf: &mut [u8], len: usize, now: Now) -> Encapsulated {
        match self.prepare_encapsulate(buf, len, now) {
            PreparedSend::Seal {
                endpoint,
                local,
                job,
                ..
            } => match job.seal(buf) {
                Some(len) => Encapsulated::Send {
                    endpoint,
                    local,
                    len,
                },
                None => Encapsulated::Dropped(self.drop_reason(DropReason::BufferTooSmall)),
            },
            PreparedSend::Queued => Encapsulated::Queued,
            PreparedSend::Dropped(reason) => Encapsulated::Dropped(reason),
        }
    }

    /// The sequential half of [`Device::encapsulate`]: routing, session choice, counter and
    /// timers. The returned [`SealJob`](crate::proto::SealJob) does the encryption and may run on another core;
    /// jobs of one peer carry increasing counters, so order within a batch is kept by
    /// sending the sealed messages in the order they were prepared.
    pub fn prepare_encapsulate(&mut self, buf: &[u8], len: usize, now: Now) -> PreparedSend {
        let Some(packet) = buf.get(HEADROOM..HEADROOM + len) else {
            return PreparedSend::Dropped(self.drop_reason(DropReason::BufferTooSmall));
        };
        let peer_id = match ip::destination(packet) {
            Some(Addr::V4(a)) => self.allowed_ips.lookup_v4(a),
            Some(Addr::V6(a)) => self.allowed_ips.lookup_v6(&a),
            None => return PreparedSend::Dropped(self.drop_reason(DropReason::InvalidInnerPacket)),
        };
        let Some(id) = peer_id else {
            return PreparedSend::Dropped(self.drop_reason(DropReason::NoRoute));
        };
        let mtu = self.mtu;
        let Some(peer) = self.peers.get_mut(id) else {
            return PreparedSend::Dropped(self.drop_reason(DropReason::NoRoute));
        };
        let Some(endpoint) = peer.endpoint else {
            return PreparedSend::Dropped(self.drop_reason(DropReason::NoEndpoint));
        };
        if peer.staged.is_empty() && peer.sendable(now.monotonic) {
            let Some(keypair) = peer.current.as_deref_mut() else {
                return PreparedSend::Dropped(self.drop_reason(DropReason::NoKeypair));
            };
            let Some(job) = keypair.prepare_seal(buf.len(), len, mtu) else {
                return PreparedSend::Dropped(self.drop_reason(DropReason::BufferTooSmall));
            };
            let rekey = keypair.wants_rekey_on_send(now.monotonic);
            self.after_data_sent(id, job.message_len(), rekey, now);
            return PreparedSend::Seal {
                endpoint: endpoint.remote,
                local: endpoint.local,
                peer: id,
                job,
            };
        }
        // No usable session (or packets already waiting: keep their order): stage a copy,
        // dropping the oldest when full as the kernel does, and start a handshake.
        let oldest = if peer.staged.len() >= MAX_STAGED_PACKETS {
            peer.staged.pop_front()
        } else {
            None
        };
        if let Some(oldest) = oldest {
            self.drops.count(DropReason::QueueFull);
            self.recycle(oldest);
        }
        // Staging buffers are recycled, so a long handshake wait allocates only once.
        let mut copy = self.spare.pop().unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(packet);
        let Some(peer) = self.peers.get_mut(id) else {
            return PreparedSend::Queued;
        };
        peer.staged.push_back(copy);
        if peer.sendable(now.monotonic) {
            self.schedule_flush(id);
        } else {
            self.send_initiation(id, false, now);
        }
        PreparedSend::Queued
    }

    fn after_data_sent(&mut self, id: PeerId, bytes: usize, rekey: bool, now: Now) {
        // Draw jitter only when the timer will be armed (not on every packet).
        let needs_jitter = self
            .peers
            .get(id)
            .is_some_and(|p| p.timers.new_handshake.is_none());
        let jitter = if needs_jitter {
            self.jitter()
        } else {
            Duration::ZERO
        };
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        peer.stats.tx_bytes += bytes as u64;
        let ka = peer.persistent_keepalive;
        peer.timers.on_authenticated_traversal(now.monotonic, ka);
        peer.timers.on_authenticated_sent();
        peer.timers.on_data_sent(now.monotonic, jitter);
        if rekey {
            self.send_initiation(id, false, now);
        }
    }

    /// A keepalive if a session is usable (and nothing else waits to go), else a handshake.
    pub(super) fn send_keepalive(&mut self, id: PeerId, now: Now) {
        let mtu = self.mtu;
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if !peer.staged.is_empty() {
            return;
        }
        let Some(endpoint) = peer.endpoint else {
            return;
        };
        if !peer.sendable(now.monotonic) {
            self.send_initiation(id, false, now);
            return;
        }
        let mut bytes = [0u8; MAX_HANDSHAKE_LEN];
        let Some(keypair) = peer.current.as_deref_mut() else {
            return;
        };
        let Some(n) = keypair.seal(&mut bytes, 0, mtu) else {
            return;
        };
        // Like the kernel, a keepalive also keeps the key fresh (REKEY_AFTER_TIME/MESSAGES).
        let rekey = keypair.wants_rekey_on_send(now.monotonic);
        peer.stats.tx_bytes += n as u64;
        let ka = peer.persistent_keepalive;
        peer.timers.on_authenticated_traversal(now.monotonic, ka);
        peer.timers.on_authenticated_sent();
        self.control.push_back(Control {
            to: endpoint,
            peer: Some(id),
            len: n,
            bytes,
        });
        if rekey {
            self.send_initiation(id, false, now);
        }
    }

    pub(super) fn schedule_flush(&mut self, id: PeerId) {
        if !self.flush.contains(&id) {
            self.flush.push_back(id);
        }
    }

    fn recycle(&mut self, buffer: Vec<u8>) {
        if self.spare.len() < MAX_SPARE_BUFFERS {
            self.spare.push(buffer);
        }
    }

    pub(super) fn push_control(&mut self, to: Endpoint, peer: Option<PeerId>, msg: &[u8]) {
        let mut bytes = [0u8; MAX_HANDSHAKE_LEN];
        bytes[..msg.len()].copy_from_slice(msg);
        self.control.push_back(Control {
            to,
            peer,
            len: msg.len(),
            bytes,
        });
    }

    /// The next datagram to send, written to `out` (at least `MAX_HANDSHAKE_LEN` bytes, and
    /// room for a full packet with `HEADROOM` and `TAILROOM` for staged packets). Call until
    /// it returns None after every batch of input.
    pub fn poll_transmit(&mut self, out: &mut [u8], now: Now) -> Option<Transmit> {
        if let Some(c) = self.control.pop_front() {
            out.get_mut(..c.len)?.copy_from_slice(&c.bytes[..c.len]);
            return Some(Transmit {
                endpoint: c.to.remote,
                local: c.to.local,
                peer: c.peer,
                len: c.len,
            });
        }
        let mtu = self.mtu;
        while let Some(&id) = self.flush.front() {
            let Some(peer) = self.peers.get_mut(id) else {
                self.flush.pop_front();
                continue;
            };
            let (Some(endpoint), true) = (peer.endpoint, peer.sendable(now.monotonic)) else {
                self.flush.pop_front();
                continue;
            };
            let Some(packet) = peer.staged.pop_front() else {
                self.flush.pop_front();
                continue;
            };
            let len = packet.len();
            let Some(slot) = out.get_mut(HEADROOM..HEADROOM + len) else {
                self.drops.count(DropReason::BufferTooSmall);
                continue;
            };
            slot.copy_from_slice(&packet);
            if self.spare.len() < MAX_SPARE_BUFFERS {
                self.spare.push(packet);
            }
            let Some(keypair) = peer.current.as_deref_mut() else {
                continue;
            };
            let Some(n) = keypair.seal(out, len, mtu) else {
                self.drops.count(DropReason::BufferTooSmall);
                continue;
            };
            let rekey = keypair.wants_rekey_on_send(now.monotonic);
            self.after_data_sent(id, n, rekey, now);
            return Some(Transmit {
                endpoint: endpoint.remote,
                local: endpoint.local,
                peer: Some(id),
                len: n,
            });
        }
        None
    }

    /// Whether `poll_transmit` has something (cheap check for the driver).
    pub fn has_transmit(&self) -> bool {
        !self.control.is_empty() || !self.flush.is_empty()
    }
}
