//! The event loop: moves batches of packets between the TUN device and the UDP sockets
//! through the sans-IO core, and fires its timers.
//!
//! One task owns everything (device, TUN, sockets, buffers), so the core needs no lock. Each
//! turn waits for one source to become ready, then reads up to [`BATCH`] packets from it into
//! a pool of buffers allocated once (with the core's HEADROOM and TAILROOM), hands them to the
//! core, writes what comes out, and finally drains [`Device::poll_transmit`].
//!
//! With TUN offload (IFF_VNET_HDR), one TUN read may be a 64 KiB GSO packet that tun-rs splits
//! into MTU-sized segments in the pool, and the packets decrypted from one UDP batch are
//! written with one `send_multiple`, which coalesces TCP segments (GRO) before the kernel sees
//! them. UDP still goes one datagram per system call (no sendmmsg/GSO yet).
//!
//! [`Driver::run`] is cancel safe in the sense the daemon needs: it only waits at points where
//! no half-processed state is held, so the daemon can drop the future (on a signal), change
//! the device or sockets, and call `run` again.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tun_rs::{GROTable, VIRTIO_NET_HDR_LEN};

use super::clock::Clock;
use super::tun::Tun;
use super::udp::UdpSockets;
use crate::control::server::{self as control, ControlRequest};
use crate::proto::{
    Decapsulated, Device, Encapsulated, HEADROOM, Now, PeerId, PublicKey, TAILROOM, Transmit,
};

/// Most packets read from one source before they are processed and output is drained.
pub const BATCH: usize = 64;

/// More handshake messages than this in one UDP batch means a backlog: the core is told it is
/// under load (cookies and per-source rate limits for the next second).
pub const UNDER_LOAD_HANDSHAKES: usize = 16;

/// Largest IP packet a buffer holds: the largest MTU a config may give.
const MAX_PACKET: usize = 65535;

/// One buffer: room for a whole transport message around the largest packet.
const BUF_LEN: usize = HEADROOM + MAX_PACKET + TAILROOM;

/// Most datagrams sent from one `poll_transmit` drain before the loop looks at its inputs
/// again (the rest go on the next turn).
const MAX_DRAIN: usize = 4 * BATCH;

/// How long after a handshake message the driver watches for the handshake to complete (to
/// log it): a responder's session is confirmed by the initiator's first data packet.
const HANDSHAKE_WATCH: Duration = Duration::from_secs(15);

/// How long the loop waits before firing timers again when the core reports a deadline that
/// is already past right after firing them.
const STALE_DEADLINE_BACKOFF: Duration = Duration::from_millis(5);

/// Message type bytes of handshake initiation and response (the whitepaper's 1 and 2).
const MSG_INITIATION: u8 = 1;
const MSG_RESPONSE: u8 = 2;

/// Counters of what the driver itself saw (the core counts its own drops).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub tun_rx_packets: u64,
    pub tun_tx_packets: u64,
    pub udp_rx_datagrams: u64,
    pub udp_tx_datagrams: u64,
    /// Datagrams that could not be sent (no socket of that family, or the kernel refused).
    pub udp_tx_errors: u64,
    /// Packets the TUN device refused.
    pub tun_tx_errors: u64,
    /// Handshakes completed (initiator or responder), as seen in the peers' stats.
    pub handshakes: u64,
    /// Batches in which the core was told it is under load.
    pub under_load_batches: u64,
}

/// Why the event loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("reading from the TUN device failed")]
    TunRead(#[source] io::Error),
    #[error("waiting on a UDP socket failed")]
    UdpWait(#[source] io::Error),
}

/// TUN-side buffers with offload: room for a batch plus one whole GSO packet's segments.
const TUN_POOL_OFFLOAD: usize = BATCH + MAX_SEGMENTS_PER_READ;

/// Most segments one offload read may produce (the kernel's UDP_MAX_SEGMENTS; TCP stays
/// below it at any MTU): a read is only made while this many buffers are free.
const MAX_SEGMENTS_PER_READ: usize = 128;

/// Packet buffers, allocated once. Each is `BUF_LEN` long; the kernel only backs the pages
/// that are touched, so the large size costs address space, not memory.
struct Pool {
    /// TUN reads (with offload, the segments of GSO packets).
    tun: Vec<Box<[u8]>>,
    tun_lens: Vec<usize>,
    /// Offload only: one raw TUN read, virtio-net header and up to 64 KiB of packet.
    tun_raw: Vec<u8>,
    /// UDP reads.
    udp: Vec<Box<[u8]>>,
    udp_lens: [usize; BATCH],
    udp_srcs: [SocketAddr; BATCH],
    /// Offload only: decrypted packets gathered for one `send_multiple`, each at HEADROOM
    /// (room for the virtio-net header), as growable buffers since GRO appends to them.
    tun_out: Vec<Vec<u8>>,
    gro: GROTable,
}

fn boxed_buffers(n: usize) -> Vec<Box<[u8]>> {
    (0..n)
        .map(|_| vec![0u8; BUF_LEN].into_boxed_slice())
        .collect()
}

impl Pool {
    fn new(offload: bool) -> Self {
        let tun_count = if offload { TUN_POOL_OFFLOAD } else { BATCH };
        Pool {
            tun: boxed_buffers(tun_count),
            tun_lens: vec![0; tun_count],
            tun_raw: if offload {
                vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET]
            } else {
                Vec::new()
            },
            udp: boxed_buffers(BATCH),
            udp_lens: [0; BATCH],
            udp_srcs: [SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            tun_out: if offload {
                (0..BATCH).map(|_| Vec::with_capacity(BUF_LEN)).collect()
            } else {
                Vec::new()
            },
            gro: GROTable::new(),
        }
    }
}

/// What woke the loop.
enum Wake {
    Tun(io::Result<()>),
    Udp(Family, io::Result<()>),
    Timer,
    Output,
    /// A UAPI request (control hook, see [`Driver::attach_control`]).
    Control(ControlRequest),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// The running data plane of one interface.
pub struct Driver {
    pub device: Device,
    pub tun: Tun,
    pub udp: UdpSockets,
    clock: Clock,
    pool: Pool,
    out: Box<[u8]>,
    stats: DriverStats,
    watch_handshakes_until: Option<Duration>,
    last_handshake: HashMap<PublicKey, Duration>,
    /// Control hook: UAPI requests, answered on this task between two batches (the device
    /// has no lock). See `control::server`.
    control: Option<mpsc::Receiver<ControlRequest>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("tun", &self.tun)
            .field("udp", &self.udp)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Waits until `socket` is readable; never, if there is no socket.
async fn readable(socket: Option<&UdpSocket>) -> io::Result<()> {
    match socket {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

/// Waits until the monotonic `deadline`, if there is one.
async fn sleep_until(clock: &Clock, deadline: Option<Duration>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(clock.instant(d).into()).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    pub fn new(device: Device, tun: Tun, udp: UdpSockets, clock: Clock) -> Self {
        Driver {
            pool: Pool::new(tun.offload),
            device,
            tun,
            udp,
            clock,
            out: vec![0u8; BUF_LEN].into_boxed_slice(),
            stats: DriverStats::default(),
            watch_handshakes_until: None,
            last_handshake: HashMap::new(),
            control: None,
        }
    }

    pub fn now(&self) -> Now {
        self.clock.now()
    }

    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// Runs until the TUN device fails. Dropping the future stops it between two steps (see
    /// the module notes).
    pub async fn run(&mut self) -> Result<(), DriverError> {
        loop {
            let now = self.clock.now();
            if self
                .device
                .next_deadline()
                .is_some_and(|d| d <= now.monotonic)
            {
                self.device.update_timers(now);
            }
            if self.device.has_transmit() {
                self.drain_transmit().await;
            }
            let wake = {
                let mut deadline = self.device.next_deadline();
                // A deadline that is still due after `update_timers` would make this loop spin;
                // the core should never leave one, but the loop must not burn a core if it does.
                if let Some(d) = deadline
                    && d <= now.monotonic
                {
                    tracing::debug!(?d, "timer still due after update_timers");
                    deadline = Some(now.monotonic + STALE_DEADLINE_BACKOFF);
                }
                let pending_output = self.device.has_transmit();
                tokio::select! {
                    r = self.tun.device.readable() => Wake::Tun(r),
                    r = readable(self.udp.v4.as_ref()) => Wake::Udp(Family::V4, r),
                    r = readable(self.udp.v6.as_ref()) => Wake::Udp(Family::V6, r),
                    () = sleep_until(&self.clock, deadline) => Wake::Timer,
                    // Output left over from a drain cut short: go round again at once.
                    () = std::future::ready(()), if pending_output => Wake::Output,
                    // Control hook: one UAPI request per turn.
                    r = next_control(&mut self.control) => Wake::Control(r),
                }
            };
            match wake {
                Wake::Tun(r) => {
                    r.map_err(DriverError::TunRead)?;
                    self.tun_batch().await?;
                }
                Wake::Udp(family, r) => {
                    r.map_err(DriverError::UdpWait)?;
                    self.udp_batch(family).await;
                }
                Wake::Timer => self.device.update_timers(self.clock.now()),
                Wake::Output => {}
                Wake::Control(request) => control::handle(self, request),
            }
            self.drain_transmit().await;
            self.watch_handshakes();
        }
    }

    /// Reads up to BATCH packets from the TUN device (with offload: up to BATCH reads, each
    /// split into its segments) and encrypts and sends each.
    async fn tun_batch(&mut self) -> Result<(), DriverError> {
        let count = if self.tun.offload {
            self.read_tun_offload()?
        } else {
            self.read_tun_plain()?
        };
        self.stats.tun_rx_packets += count as u64;
        let now = self.clock.now();
        for i in 0..count {
            let len = self.pool.tun_lens[i];
            let buf = &mut self.pool.tun[i];
            match self.device.encapsulate(buf, len, now) {
                Encapsulated::Send { endpoint, len } => {
                    let datagram = &self.pool.tun[i][..len];
                    send_datagram(&self.udp, &mut self.stats, endpoint, datagram).await;
                }
                // Queued: an initiation may now wait in poll_transmit; drained after the batch.
                Encapsulated::Queued | Encapsulated::Dropped(_) => {}
            }
        }
        Ok(())
    }

    fn read_tun_plain(&mut self) -> Result<usize, DriverError> {
        let mut count = 0;
        while count < BATCH {
            let buf = &mut self.pool.tun[count];
            match self
                .tun
                .device
                .try_recv(&mut buf[HEADROOM..HEADROOM + MAX_PACKET])
            {
                Ok(0) => break,
                Ok(n) => {
                    self.pool.tun_lens[count] = n;
                    count += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DriverError::TunRead(e)),
            }
        }
        Ok(count)
    }

    /// With IFF_VNET_HDR: each read is one packet with a virtio-net header, possibly a GSO
    /// packet of many segments, which tun-rs splits (and checksums) into the pool at HEADROOM.
    fn read_tun_offload(&mut self) -> Result<usize, DriverError> {
        let mut count = 0;
        for _ in 0..BATCH {
            if self.pool.tun.len() - count < MAX_SEGMENTS_PER_READ {
                break;
            }
            match self.tun.device.try_recv_multiple(
                &mut self.pool.tun_raw,
                &mut self.pool.tun[count..],
                &mut self.pool.tun_lens[count..],
                HEADROOM,
            ) {
                Ok(n) => count += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The kernel refused the read: the device is gone or broken.
                Err(e) if e.raw_os_error().is_some() => return Err(DriverError::TunRead(e)),
                // tun-rs could not parse or split this one packet: drop it, go on.
                Err(e) => tracing::debug!(error = %e, "malformed packet from the TUN device"),
            }
        }
        Ok(count)
    }

    /// Reads up to BATCH datagrams from one socket, tells the core about a handshake backlog,
    /// then decrypts each and writes the packets to the TUN device.
    async fn udp_batch(&mut self, family: Family) {
        let socket = match family {
            Family::V4 => self.udp.v4.as_ref(),
            Family::V6 => self.udp.v6.as_ref(),
        };
        let Some(socket) = socket else {
            return;
        };
        let mut count = 0;
        let mut handshakes = 0;
        while count < BATCH {
            let buf = &mut self.pool.udp[count];
            match socket.try_recv_from(buf) {
                Ok((n, src)) => {
                    if n == 148 && buf[0] == MSG_INITIATION || n == 92 && buf[0] == MSG_RESPONSE {
                        handshakes += 1;
                    }
                    self.pool.udp_lens[count] = n;
                    self.pool.udp_srcs[count] = src;
                    count += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors reported on the socket and the like: not fatal.
                    tracing::debug!(error = %e, "UDP receive error");
                    break;
                }
            }
        }
        self.stats.udp_rx_datagrams += count as u64;
        let now = self.clock.now();
        if handshakes > UNDER_LOAD_HANDSHAKES {
            if !self.device.is_under_load(now) {
                tracing::warn!(
                    handshakes,
                    "handshake backlog: answering with cookies and rate limiting for a while"
                );
            }
            self.stats.under_load_batches += 1;
            self.device.set_under_load(now);
        }
        if handshakes > 0 {
            self.watch_handshakes_until = Some(now.monotonic + HANDSHAKE_WATCH);
        }
        let mut gathered = 0;
        for i in 0..count {
            let len = self.pool.udp_lens[i];
            let src = normalize(self.pool.udp_srcs[i]);
            let buf = &mut self.pool.udp[i];
            let Decapsulated::Deliver { range, .. } = self.device.decapsulate(src, buf, len, now)
            else {
                continue;
            };
            let Some(packet) = self.pool.udp[i].get(range) else {
                continue;
            };
            if self.tun.offload {
                // Gathered for one send_multiple, which coalesces TCP segments (GRO).
                let Some(out) = self.pool.tun_out.get_mut(gathered) else {
                    continue;
                };
                out.clear();
                out.extend_from_slice(&[0u8; HEADROOM]);
                out.extend_from_slice(packet);
                gathered += 1;
                continue;
            }
            match self.tun.device.send(packet).await {
                Ok(_) => self.stats.tun_tx_packets += 1,
                Err(e) => {
                    self.stats.tun_tx_errors += 1;
                    tracing::debug!(error = %e, "TUN write failed");
                }
            }
        }
        if gathered > 0 {
            let result = self
                .tun
                .device
                .send_multiple(
                    &mut self.pool.gro,
                    &mut self.pool.tun_out[..gathered],
                    HEADROOM,
                )
                .await;
            match result {
                Ok(_) => self.stats.tun_tx_packets += gathered as u64,
                Err(e) => {
                    self.stats.tun_tx_errors += gathered as u64;
                    tracing::debug!(error = %e, "TUN write failed");
                }
            }
        }
    }

    /// Sends what the core has queued (handshakes, cookie replies, keepalives, packets that
    /// waited for a session).
    async fn drain_transmit(&mut self) {
        let now = self.clock.now();
        for _ in 0..MAX_DRAIN {
            let Some(Transmit { endpoint, len }) = self.device.poll_transmit(&mut self.out, now)
            else {
                return;
            };
            let Some(datagram) = self.out.get(..len) else {
                continue;
            };
            send_datagram(&self.udp, &mut self.stats, endpoint, datagram).await;
        }
    }

    /// Logs handshakes that completed since the last look, while handshake messages were
    /// recently seen (the scan reads every peer, so it is not done all the time).
    fn watch_handshakes(&mut self) {
        let Some(until) = self.watch_handshakes_until else {
            return;
        };
        let now = self.clock.now();
        if now.monotonic > until {
            self.watch_handshakes_until = None;
        }
        for peer in self.device.peers() {
            let Some(at) = peer.stats.last_handshake else {
                continue;
            };
            if self.last_handshake.insert(peer.public_key, at) != Some(at) {
                self.stats.handshakes += 1;
                match peer.endpoint {
                    Some(endpoint) => tracing::info!(
                        peer = %peer.public_key,
                        %endpoint,
                        "handshake completed"
                    ),
                    None => tracing::info!(peer = %peer.public_key, "handshake completed"),
                }
            }
        }
    }

    /// Forgets what `watch_handshakes` knew of a removed peer.
    pub fn forget_peer(&mut self, key: &PublicKey) {
        self.last_handshake.remove(key);
    }

    /// Fires due timers and sends their output: for use right after a reconfiguration (a
    /// peer with persistent keepalive may have a keepalive or initiation waiting).
    pub async fn flush(&mut self) {
        self.drain_transmit().await;
    }

    /// Control hook: from now on the loop also answers the requests arriving on `requests`
    /// (see `control::server`).
    pub fn attach_control(&mut self, requests: mpsc::Receiver<ControlRequest>) {
        self.control = Some(requests);
    }

    /// The id of a peer, for callers that only know its key.
    pub fn peer_id(&self, key: &PublicKey) -> Option<PeerId> {
        self.device.peer_id(key)
    }
}

/// Control hook: the next request, or never when there is no control channel (or it closed).
async fn next_control(requests: &mut Option<mpsc::Receiver<ControlRequest>>) -> ControlRequest {
    if let Some(rx) = requests {
        if let Some(request) = rx.recv().await {
            return request;
        }
        *requests = None;
    }
    std::future::pending().await
}

/// An IPv4-mapped source (from a dual-stack socket elsewhere) becomes plain IPv4, so the
/// endpoint the core learns is the one the IPv4 socket can answer.
fn normalize(src: SocketAddr) -> SocketAddr {
    match src {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, a.port())),
            None => src,
        },
        SocketAddr::V4(_) => src,
    }
}

/// Sends one datagram from the socket of `endpoint`'s family. Failures are counted and logged
/// at debug level: UDP is lossy anyway, and the core's timers retry what matters.
async fn send_datagram(
    udp: &UdpSockets,
    stats: &mut DriverStats,
    endpoint: SocketAddr,
    datagram: &[u8],
) {
    let Some((socket, to)) = udp.route(endpoint) else {
        stats.udp_tx_errors += 1;
        tracing::debug!(%endpoint, "no UDP socket of this address family");
        return;
    };
    match socket.send_to(datagram, to).await {
        Ok(_) => stats.udp_tx_datagrams += 1,
        Err(e) => {
            stats.udp_tx_errors += 1;
            tracing::debug!(%endpoint, error = %e, "UDP send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_sources_become_v4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5000".parse().expect("addr");
        assert_eq!(normalize(mapped), "10.0.0.1:5000".parse().expect("addr"));
        let v6: SocketAddr = "[fd00::1]:5000".parse().expect("addr");
        assert_eq!(normalize(v6), v6);
    }

    #[test]
    fn buffers_hold_the_largest_transport_message() {
        // A full-size packet padded to 16 plus header and tag fits.
        let padded = MAX_PACKET.next_multiple_of(16).min(MAX_PACKET + 15);
        assert!(HEADROOM + padded + 16 <= BUF_LEN);
    }
}
