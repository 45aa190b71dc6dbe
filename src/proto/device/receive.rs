//! UDP -> TUN, as the kernel's `receive.c`: classify a datagram, hand handshake messages to
//! `handshake.rs`, and take a transport message through the replay check, decryption,
//! session confirmation, roaming and the cryptokey-routing check on its inner source.

use crate::proto::endpoint::Endpoint;
use crate::proto::error::DropReason;
use crate::proto::ip::{self, Addr};
use crate::proto::messages::{MessageKind, classify};
use crate::proto::time::Now;
use crate::proto::timers::REKEY_ON_RECEIVE_AGE;

use super::{Decapsulated, Device, Event, HEADROOM, PreparedReceive, ReceiveJob};

impl Device {
    /// Handles the datagram `buf[..len]` from `src`. A transport packet is decrypted in place
    /// (`buf` needs no extra room); the IP packet is then `buf[range]`. `src` is the sender's
    /// address, and with it, when the driver knows it, the local address the datagram was
    /// sent to ([`Endpoint`]; a bare `SocketAddr` converts): replies leave from there.
    pub fn decapsulate(
        &mut self,
        src: impl Into<Endpoint>,
        buf: &mut [u8],
        len: usize,
        now: Now,
    ) -> Decapsulated {
        let src = src.into();
        let Some(datagram) = buf.get_mut(..len) else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::BufferTooSmall));
        };
        let result = match classify(datagram) {
            Err(reason) => Err(reason),
            Ok(MessageKind::Transport { receiver, counter }) => {
                return self.consume_transport(src, datagram, receiver, counter, now);
            }
            Ok(MessageKind::Initiation) => match (&*datagram).try_into() {
                Ok(msg) => self.consume_initiation(src, msg, now),
                Err(_) => Err(DropReason::Truncated),
            },
            Ok(MessageKind::Response) => match (&*datagram).try_into() {
                Ok(msg) => self.consume_response(src, msg, now),
                Err(_) => Err(DropReason::Truncated),
            },
            Ok(MessageKind::CookieReply) => match (&*datagram).try_into() {
                Ok(msg) => self.consume_cookie_reply(msg, now),
                Err(_) => Err(DropReason::Truncated),
            },
        };
        match result {
            Ok(()) => Decapsulated::Done,
            Err(reason) => Decapsulated::Dropped(self.drop_reason(reason)),
        }
    }

    /// The sequential half of [`Device::decapsulate`]: frames and handshake messages are
    /// handled here entirely; a transport message yields a [`ReceiveJob`] whose decryption
    /// may run on another core, followed by [`Device::finish_decapsulate`] in arrival order.
    pub fn prepare_decapsulate(
        &mut self,
        src: impl Into<Endpoint>,
        buf: &mut [u8],
        len: usize,
        now: Now,
    ) -> PreparedReceive {
        let src = src.into();
        let Some(datagram) = buf.get(..len) else {
            return PreparedReceive::Dropped(self.drop_reason(DropReason::BufferTooSmall));
        };
        match classify(datagram) {
            Ok(MessageKind::Transport { receiver, counter }) => {
                match self.prepare_transport(src, receiver, counter, now) {
                    Ok(job) => PreparedReceive::Open(job),
                    Err(reason) => PreparedReceive::Dropped(self.drop_reason(reason)),
                }
            }
            _ => match self.decapsulate(src, buf, len, now) {
                Decapsulated::Dropped(reason) => PreparedReceive::Dropped(reason),
                _ => PreparedReceive::Done,
            },
        }
    }

    fn prepare_transport(
        &mut self,
        src: Endpoint,
        receiver: u32,
        counter: u64,
        now: Now,
    ) -> Result<ReceiveJob, DropReason> {
        let Some(id) = self.index.get(receiver) else {
            self.initiate_on_unknown_index(src, now);
            return Err(DropReason::UnknownReceiverIndex);
        };
        let keypair = self
            .peers
            .get_mut(id)
            .and_then(|p| p.keypair_mut(receiver))
            .ok_or(DropReason::UnknownReceiverIndex)?;
        if !keypair.can_receive(now.monotonic) {
            return Err(DropReason::KeypairExpired);
        }
        let open = keypair
            .prepare_open(counter)
            .map_err(|_| DropReason::ReplayedCounter)?;
        Ok(ReceiveJob {
            open,
            peer: id,
            receiver,
            src,
        })
    }

    /// Completes a transport message after its [`ReceiveJob`] ran (`opened` is what
    /// `job.open` returned): replay marking, session confirmation, roaming, timers and the
    /// cryptokey-routing check, exactly as [`Device::decapsulate`] does.
    pub fn finish_decapsulate(
        &mut self,
        job: &ReceiveJob,
        opened: Option<usize>,
        datagram: &[u8],
        now: Now,
    ) -> Decapsulated {
        let Some(len) = opened else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::DecryptFailed));
        };
        let (src, receiver, id) = (job.src, job.receiver, job.peer);
        let Some(peer) = self.peers.get_mut(id) else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::UnknownReceiverIndex));
        };
        let Some(keypair) = peer.keypair_mut(receiver) else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::UnknownReceiverIndex));
        };
        // Marked only after authentication, so a forged packet cannot move the window.
        if !keypair.mark(job.open.counter()) {
            return Decapsulated::Dropped(self.drop_reason(DropReason::ReplayedCounter));
        }

        // Authenticated.
        let is_initiator = keypair.i_am_initiator;
        let birth = keypair.birth;
        // Roaming: the endpoint, with the local address it reached us on, follows the
        // latest authenticated packet.
        let old_remote = peer.endpoint.replace(src).map(|e| e.remote);
        peer.stats.rx_bytes += datagram.len() as u64;
        let ka = peer.persistent_keepalive;
        peer.timers.on_authenticated_received();
        peer.timers.on_authenticated_traversal(now.monotonic, ka);
        // The first packet under `next` confirms it: it becomes current.
        let mut confirmed = false;
        let mut dropped = None;
        if peer
            .next
            .as_ref()
            .is_some_and(|k| k.local_index == receiver)
        {
            let next = peer.next.take();
            let old_current = std::mem::replace(&mut peer.current, next);
            dropped = std::mem::replace(&mut peer.previous, old_current);
            peer.timers.on_handshake_complete();
            peer.stats.last_handshake = Some(now.unix);
            confirmed = true;
            tracing::debug!(peer = %peer.public_key, "handshake complete (responder)");
        }
        // An initiator rekeys before its session could expire under a peer that only receives.
        let rekey = is_initiator
            && !peer.timers.sent_lastminute_handshake
            && now.monotonic.saturating_sub(birth) > REKEY_ON_RECEIVE_AGE
            && peer
                .current
                .as_ref()
                .is_some_and(|k| k.local_index == receiver);
        if rekey {
            peer.timers.sent_lastminute_handshake = true;
        }
        let has_staged = !peer.staged.is_empty();
        let peer_key = peer.public_key;
        if let Some(k) = dropped {
            self.index.remove(k.local_index);
        }
        if old_remote != Some(src.remote) {
            // A roam: rare, so the endpoint map is touched only then, never per packet.
            self.endpoint_moved(id, old_remote, src.remote);
        }
        if confirmed {
            self.push_event(Event::HandshakeCompleted {
                peer: id,
                public_key: peer_key,
                endpoint: Some(src.remote),
            });
            if has_staged {
                self.schedule_flush(id);
            }
        }
        if rekey {
            self.send_initiation(id, false, now);
        }
        if len == 0 {
            return Decapsulated::Done; // keepalive
        }
        let Some(plaintext) = datagram.get(HEADROOM..HEADROOM + len) else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::InvalidInnerPacket));
        };
        let Some((source, real_len)) = ip::source_and_len(plaintext) else {
            return Decapsulated::Dropped(self.drop_reason(DropReason::InvalidInnerPacket));
        };
        let owner = match source {
            Addr::V4(a) => self.allowed_ips.lookup_v4(a),
            Addr::V6(a) => self.allowed_ips.lookup_v6(&a),
        };
        if owner != Some(id) {
            return Decapsulated::Dropped(self.drop_reason(DropReason::SourceNotAllowed));
        }
        if let Some(peer) = self.peers.get_mut(id) {
            peer.timers.on_data_received(now.monotonic);
        }
        Decapsulated::Deliver {
            peer: id,
            range: HEADROOM..HEADROOM + real_len,
        }
    }

    /// Transport data for a receiver index we do not know, from the current endpoint of a
    /// configured peer: most likely we restarted (or erased our sessions) and the peer still
    /// sends under a session we have forgotten, and would keep doing so until its own
    /// keepalive and rekey timers fire (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT, about 15 s). So we
    /// start a handshake to that peer at once, and the link is back within a round trip.
    ///
    /// What this lets a stranger do: the packet is unauthenticated, so anyone who knows (or
    /// guesses) a peer's endpoint can spoof it. The most it can make us do is what
    /// `send_initiation` allows anyway: one initiation per peer per REKEY_TIMEOUT (5 s),
    /// checked here before anything changes, so the retry count of a handshake already in
    /// flight is not reset either. Sources that are no peer's endpoint cause nothing; the
    /// lookup is one hash-map probe (`by_endpoint`), never a walk over the peers.
    fn initiate_on_unknown_index(&mut self, src: Endpoint, now: Now) {
        let Some(id) = self.peer_at(src.remote) else {
            return;
        };
        if self.initiation_due(id, now) {
            tracing::debug!("data under an unknown index from a peer's endpoint: initiating");
            self.send_initiation(id, false, now);
        }
    }

    fn consume_transport(
        &mut self,
        src: Endpoint,
        datagram: &mut [u8],
        receiver: u32,
        counter: u64,
        now: Now,
    ) -> Decapsulated {
        let job = match self.prepare_transport(src, receiver, counter, now) {
            Ok(job) => job,
            Err(reason) => return Decapsulated::Dropped(self.drop_reason(reason)),
        };
        let opened = job.open(datagram);
        self.finish_decapsulate(&job, opened, datagram, now)
    }
}
