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
//! them.
//!
//! The fast path (see `batch`, `crypto_pool`): both directions first prepare the whole batch
//! in order (the core's sequential half), then seal or open it, spread over the crypto
//! threads when it is large, then send or finish it in the original order. UDP goes out in
//! `sendmmsg` batches with GSO (equal-length datagrams to one endpoint as one send) and comes
//! in through `recvmmsg` with GRO (a receive split by its stride). `offload = false` (a TUN
//! device without IFF_VNET_HDR) turns the UDP offloads off too; `TANDEM_CRYPTO_THREADS`
//! (1 = only the loop's thread) overrides the number of crypto threads.
//!
//! [`Driver::run`] is cancel safe in the sense the daemon needs: it only waits at points where
//! no half-processed state is held, so the daemon can drop the future (on a signal), change
//! the device or sockets, and call `run` again.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tun_rs::{AsyncDevice, GROTable, VIRTIO_NET_HDR_LEN};

use super::batch::{self, Sealed};
use super::clock::Clock;
use super::crypto_pool::{CryptoPool, Item, Job};
use super::sys::{self, RecvMeta};
use super::tun::Tun;
use super::udp::{UdpOffloads, UdpSockets};
use crate::control::server::{self as control, ControlRequest};
use crate::proto::{
    Decapsulated, Device, Event, HEADROOM, Now, PeerId, PreparedReceive, PreparedSend, PublicKey,
    TAILROOM, Transmit,
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

/// Most datagrams one UDP_GRO receive holds (the kernel's UDP_GRO_CNT_MAX).
const MAX_GRO_SEGMENTS: usize = 64;

/// Most packets one UDP batch may carry: every message of the batch a full GRO batch.
const MAX_UDP_ITEMS: usize = BATCH * MAX_GRO_SEGMENTS;

/// Decrypted packets gathered for one `send_multiple` to the TUN device (with offload).
const TUN_OUT: usize = 2 * BATCH;

/// Environment variable that sets the number of crypto threads (the loop's included).
pub const CRYPTO_THREADS_ENV: &str = "TANDEM_CRYPTO_THREADS";

/// Most datagrams sent from one `poll_transmit` drain before the loop looks at its inputs
/// again (the rest go on the next turn).
const MAX_DRAIN: usize = 4 * BATCH;

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
    /// UDP sends that carried several datagrams (GSO).
    pub udp_gso_sends: u64,
    /// UDP receives that held several datagrams (GRO).
    pub udp_gro_receives: u64,
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
    /// UDP reads (with GRO, each may hold several datagrams back to back).
    udp: Vec<Box<[u8]>>,
    udp_meta: [RecvMeta; BATCH],
    /// Offload only: decrypted packets gathered for one `send_multiple`, each at HEADROOM
    /// (room for the virtio-net header), as growable buffers since GRO appends to them.
    tun_out: Vec<Vec<u8>>,
    gro: GROTable,
    /// The crypto jobs of the current batch, in order.
    items: Vec<Item>,
    /// Sealed datagrams of the current TUN batch, in order.
    sealed: Vec<Sealed>,
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
            udp_meta: [RecvMeta::default(); BATCH],
            tun_out: if offload {
                (0..TUN_OUT).map(|_| Vec::with_capacity(BUF_LEN)).collect()
            } else {
                Vec::new()
            },
            gro: GROTable::new(),
            items: Vec::with_capacity(MAX_UDP_ITEMS.max(tun_count)),
            sealed: Vec::with_capacity(tun_count),
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
    crypto: CryptoPool,
    /// Whether UDP offloads are wanted (they follow the TUN device's `offload`).
    offload: bool,
    /// Most datagrams per GSO send now (0: off, also after the kernel refused GSO).
    udp_gso: usize,
    /// The kernel refused a GSO send: no more GSO, even on new sockets.
    gso_refused: bool,
    out: Box<[u8]>,
    stats: DriverStats,
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

/// Crypto threads (the loop's included): `TANDEM_CRYPTO_THREADS` if set and valid, else one
/// per core up to two (the loop's thread and one worker).
fn crypto_threads() -> usize {
    if let Ok(v) = std::env::var(CRYPTO_THREADS_ENV) {
        match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => return n,
            _ => tracing::warn!(value = %v, "ignoring {CRYPTO_THREADS_ENV}: not a positive number"),
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

impl Driver {
    /// A driver for `device` over `tun` and `udp`. The UDP offloads (GSO, GRO) are used when
    /// the TUN device has offload on (the config's `offload`) and the kernel has them; one
    /// log line says what is in force.
    pub fn new(device: Device, tun: Tun, mut udp: UdpSockets, clock: Clock) -> Self {
        let offload = tun.offload;
        let found = udp.configure_offloads(offload);
        let pool = Pool::new(tun.offload);
        let crypto = CryptoPool::new(
            crypto_threads(),
            pool.tun.len().max(BATCH),
            MAX_UDP_ITEMS.max(pool.tun.len()),
            BUF_LEN,
        );
        let gso = if found.gso_segments > 1 {
            format!("on({})", found.gso_segments)
        } else {
            "off".to_owned()
        };
        tracing::info!(
            "offloads: tun_vnet_hdr={} udp_gso={gso} udp_gro={} crypto_threads={} \
             udp_rcvbuf={}KiB udp_sndbuf={}KiB",
            on_off(tun.offload),
            on_off(found.gro),
            crypto.threads(),
            found.rcvbuf / 1024,
            found.sndbuf / 1024,
        );
        Driver {
            pool,
            crypto,
            offload,
            udp_gso: found.gso_segments,
            gso_refused: false,
            device,
            tun,
            udp,
            clock,
            out: vec![0u8; BUF_LEN].into_boxed_slice(),
            stats: DriverStats::default(),
            control: None,
        }
    }

    /// Applies the offload setting to the current sockets (new ones after a reload start
    /// without GRO) and returns what is in force.
    pub(crate) fn configure_udp(&mut self) -> UdpOffloads {
        let found = self.udp.configure_offloads(self.offload);
        self.udp_gso = if self.gso_refused {
            0
        } else {
            found.gso_segments
        };
        found
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
        self.configure_udp();
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
            self.log_events();
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
        // Sequential half, in order: routing, counters, timers.
        let items = &mut self.pool.items;
        items.clear();
        for (i, (buf, &len)) in self
            .pool
            .tun
            .iter()
            .zip(&self.pool.tun_lens)
            .take(count)
            .enumerate()
        {
            match self.device.prepare_encapsulate(buf, len, now) {
                PreparedSend::Seal { endpoint, job } => items.push(Item {
                    buf: i,
                    range: 0..buf.len(),
                    job: Job::Seal { job, endpoint },
                    result: None,
                }),
                // Queued: an initiation may now wait in poll_transmit; drained after the batch.
                PreparedSend::Queued | PreparedSend::Dropped(_) => {}
            }
        }
        // Sealing, on several cores for a large batch.
        self.crypto.run(&mut self.pool.tun, items);
        let sealed = &mut self.pool.sealed;
        sealed.clear();
        for item in items.iter() {
            match (&item.job, item.result) {
                (Job::Seal { endpoint, .. }, Some(len)) => sealed.push(Sealed {
                    buf: item.buf,
                    len,
                    endpoint: *endpoint,
                }),
                // prepare_encapsulate checked the room: cannot happen.
                _ => tracing::debug!("a packet could not be sealed"),
            }
        }
        // Sending, in the order prepared (per-peer counters ascend).
        let outcome =
            batch::send_sealed(&self.udp, &mut self.udp_gso, &self.pool.tun, sealed).await;
        self.count_sent(outcome);
        Ok(())
    }

    fn count_sent(&mut self, outcome: batch::SendOutcome) {
        self.stats.udp_tx_datagrams += outcome.sent;
        self.stats.udp_tx_errors += outcome.errors;
        self.stats.udp_gso_sends += outcome.gso_messages;
        if self.udp_gso == 0 && !self.gso_refused && self.offload {
            // send_sealed turned GSO off: the kernel refused it; keep it off.
            self.gso_refused = true;
        }
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

    /// Reads up to BATCH messages (with GRO, each possibly several datagrams) from one socket,
    /// tells the core about a handshake backlog, then decrypts every datagram and writes the
    /// packets to the TUN device, in arrival order.
    async fn udp_batch(&mut self, family: Family) {
        let socket = match family {
            Family::V4 => self.udp.v4.as_ref(),
            Family::V6 => self.udp.v6.as_ref(),
        };
        let Some(socket) = socket else {
            return;
        };
        let received = socket.try_io(Interest::READABLE, || {
            sys::recv_mmsg(socket, &mut self.pool.udp, &mut self.pool.udp_meta)
        });
        let count = match received {
            Ok(n) => n,
            // WouldBlock: readiness is cleared, the loop waits again. EINTR: it comes back.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => {
                // ICMP errors reported on the socket and the like: not fatal.
                tracing::debug!(error = %e, "UDP receive error");
                return;
            }
        };
        let mut datagrams = 0u64;
        let mut handshakes = 0;
        for (buf, meta) in self.pool.udp.iter().zip(&self.pool.udp_meta).take(count) {
            if meta.truncated || meta.src.is_none() {
                continue;
            }
            if meta.stride < meta.len {
                self.stats.udp_gro_receives += 1;
            }
            for seg in batch::segments(meta.len, meta.stride) {
                datagrams += 1;
                let (kind, n) = (buf.get(seg.start).copied(), seg.len());
                if n == 148 && kind == Some(MSG_INITIATION) || n == 92 && kind == Some(MSG_RESPONSE)
                {
                    handshakes += 1;
                }
            }
        }
        self.stats.udp_rx_datagrams += datagrams;
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
        // Sequential half, in arrival order: framing, handshakes, replay check.
        let items = &mut self.pool.items;
        items.clear();
        for (i, (buf, meta)) in self
            .pool
            .udp
            .iter_mut()
            .zip(&self.pool.udp_meta)
            .take(count)
            .enumerate()
        {
            let Some(src) = meta.src.filter(|_| !meta.truncated).map(normalize) else {
                continue;
            };
            for seg in batch::segments(meta.len, meta.stride) {
                let Some(datagram) = buf.get_mut(seg.clone()) else {
                    continue;
                };
                let len = datagram.len();
                if let PreparedReceive::Open(job) =
                    self.device.prepare_decapsulate(src, datagram, len, now)
                {
                    items.push(Item {
                        buf: i,
                        range: seg,
                        job: Job::Open(job),
                        result: None,
                    });
                }
            }
        }
        // Decryption, on several cores for a large batch.
        self.crypto.run(&mut self.pool.udp, items);
        // Finishing in arrival order: replay window, session, roaming, cryptokey routing.
        let mut gathered = 0;
        for item in items.iter() {
            let Job::Open(job) = &item.job else {
                continue;
            };
            let Some(datagram) = self
                .pool
                .udp
                .get(item.buf)
                .and_then(|b| b.get(item.range.clone()))
            else {
                continue;
            };
            let Decapsulated::Deliver { range, .. } =
                self.device
                    .finish_decapsulate(job, item.result, datagram, now)
            else {
                continue;
            };
            let Some(packet) = datagram.get(range) else {
                continue;
            };
            if !self.tun.offload {
                match self.tun.device.send(packet).await {
                    Ok(_) => self.stats.tun_tx_packets += 1,
                    Err(e) => {
                        self.stats.tun_tx_errors += 1;
                        tracing::debug!(error = %e, "TUN write failed");
                    }
                }
                continue;
            }
            // Gathered for one send_multiple, which coalesces TCP segments (GRO).
            let Some(out) = self.pool.tun_out.get_mut(gathered) else {
                continue;
            };
            out.clear();
            out.extend_from_slice(&[0u8; HEADROOM]);
            out.extend_from_slice(packet);
            gathered += 1;
            if gathered == self.pool.tun_out.len() {
                write_tun_multiple(
                    &self.tun.device,
                    &mut self.pool.gro,
                    &mut self.pool.tun_out[..gathered],
                    &mut self.stats,
                )
                .await;
                gathered = 0;
            }
        }
        if gathered > 0 {
            write_tun_multiple(
                &self.tun.device,
                &mut self.pool.gro,
                &mut self.pool.tun_out[..gathered],
                &mut self.stats,
            )
            .await;
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
    /// Logs the handshakes the core completed since the last turn (no scan of the peers).
    fn log_events(&mut self) {
        while let Some(event) = self.device.poll_event() {
            match event {
                Event::HandshakeCompleted {
                    public_key,
                    endpoint,
                    ..
                } => {
                    self.stats.handshakes += 1;
                    match endpoint {
                        Some(endpoint) => {
                            tracing::info!(peer = %public_key, %endpoint, "handshake completed")
                        }
                        None => tracing::info!(peer = %public_key, "handshake completed"),
                    }
                }
            }
        }
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

/// Writes decrypted packets (each at HEADROOM in its buffer) to the TUN device with one
/// `send_multiple`, which coalesces TCP segments of one flow (GRO) first.
async fn write_tun_multiple(
    device: &AsyncDevice,
    gro: &mut GROTable,
    bufs: &mut [Vec<u8>],
    stats: &mut DriverStats,
) {
    let n = bufs.len() as u64;
    match device.send_multiple(gro, bufs, HEADROOM).await {
        Ok(_) => stats.tun_tx_packets += n,
        Err(e) => {
            stats.tun_tx_errors += n;
            tracing::debug!(error = %e, "TUN write failed");
        }
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
