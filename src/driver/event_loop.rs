//! The event loop: moves batches of packets between the TUN device and the UDP sockets
//! through the sans-IO core, and fires its timers.
//!
//! One thread owns everything (device, TUN, sockets, buffers), so the core needs no lock. Each
//! turn waits in `epoll_wait` (through mio) until a source is ready or the core's next timer
//! is due, then reads up to [`BATCH`] packets from each ready source into a pool of buffers
//! allocated once (with the core's HEADROOM and TAILROOM), hands them to the core, writes
//! what comes out, and finally drains [`Device::poll_transmit`].
//!
//! Why a plain epoll loop on a thread of its own rather than a tokio task: an idle ping costs
//! four wakeups (TUN and UDP on each side), and on each one tokio's dispatch and the futures
//! of a `select!` over every source cost microseconds before the first read; tokio also
//! registers UDP sockets for write readiness, so every send woke the loop once more. Here
//! the sockets and the TUN device are registered for read readiness only (edge-triggered; a
//! source stays "ready" until a read finds it empty), a full send buffer is waited out with
//! `poll(2)` on that one socket, and the daemon's tokio runtime (signals, the UAPI socket,
//! netlink, reloads) runs on another thread and talks to this one through the control channel
//! ([`Driver::control_channel`], a bounded queue plus a `mio::Waker`).
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
//! [`Driver::run`] returns when the TUN device fails or a `Stop` request arrives; requests
//! are taken between two batches, so they never see half-processed state.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::mpsc::{self, error::TryRecvError};
use tun_rs::{GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

use super::batch::{self, Sealed};
use super::clock::Clock;
use super::control::{CONTROL_QUEUE, ControlRequest, ControlSender};
use super::crypto_pool::{CryptoPool, Item, Job};
use super::job::{self, Change, Progress, Reply};
use super::mmsg::{self, RecvMeta};
use super::oplog::{self, PeerNames, Summaries};
use super::tun::Tun;
use super::udp::{UdpError, UdpOffloads, UdpSockets};
use super::vnet;
use crate::proto::{
    Decapsulated, Device, Endpoint, Event, HEADROOM, Now, PeerId, PreparedReceive, PreparedSend,
    PublicKey, TAILROOM, Transmit,
};
use crate::reconcile::SetRequest;

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

/// Most control requests answered in one turn, so that a burst of them cannot starve traffic.
const CONTROL_PER_TURN: usize = 8;

/// Most turns in a row that work on sources already known to be ready without asking
/// `epoll_wait` whether others became ready (a bound on how long a busy source can hide
/// another).
const TURNS_WITHOUT_POLL: usize = 2;

/// Receive errors in a row after which a socket waits for its next readiness event.
const MAX_UDP_ERRORS_IN_A_ROW: u8 = 4;

/// Readiness events taken from one `epoll_wait`.
const EVENTS: usize = 16;

/// The event loop's sources.
const TOKEN_TUN: Token = Token(0);
const TOKEN_V4: Token = Token(1);
const TOKEN_V6: Token = Token(2);
const TOKEN_CONTROL: Token = Token(3);

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
    #[error("waiting for the TUN device and the UDP sockets failed")]
    Poll(#[source] io::Error),
    #[error("the data plane thread cannot drop its privileges")]
    Privileges(#[source] crate::os::privilege::PrivilegeError),
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

/// UDP sockets registered with a driver's loop, ready for [`Driver::install_udp`].
#[derive(Debug)]
pub struct RegisteredUdp(UdpSockets);

impl RegisteredUdp {
    pub fn port(&self) -> u16 {
        self.0.port()
    }
}

/// What the loop remembers of one UDP socket between receives.
#[derive(Debug, Clone, Copy)]
struct SocketState {
    /// The last receive emptied it with at most one message: the next asks for a few only
    /// (see `udp_batch`).
    quiet: bool,
    /// Receive errors in a row.
    errors: u8,
}

impl Default for SocketState {
    fn default() -> Self {
        SocketState {
            quiet: true,
            errors: 0,
        }
    }
}

/// Sources that may have more to read: set by a readiness event (edge-triggered), cleared
/// when a read finds the source empty.
#[derive(Debug, Clone, Copy, Default)]
struct Ready {
    tun: bool,
    v4: bool,
    v6: bool,
    control: bool,
}

impl Ready {
    fn any(self) -> bool {
        self.tun || self.v4 || self.v6 || self.control
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4 = 0,
    V6 = 1,
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
    /// The last TUN batch had at most one packet: the next reads only one (see `tun_batch`).
    quiet_tun: bool,
    /// The IPv4 and IPv6 sockets' receive state, by `Family`.
    udp_state: [SocketState; 2],
    /// A send waited SEND_WAIT in vain this turn: the turn's other sends do not wait, and the
    /// clock is read again before the next.
    stalled: bool,
    /// Most datagrams per GSO send now (0: off, also after the kernel refused GSO).
    udp_gso: usize,
    /// The kernel refused a GSO send: no more GSO, even on new sockets.
    gso_refused: bool,
    out: Box<[u8]>,
    stats: DriverStats,
    /// Control hook: requests (UAPI, reloads, stop), answered on this thread between two
    /// batches (the device has no lock). See `driver::control`.
    control: Option<mpsc::Receiver<ControlRequest>>,
    /// The epoll instance the loop waits on, and the waker of the control channel.
    poll: Poll,
    pub(super) waker: Option<Arc<Waker>>,
    /// The config's peer names, for log lines (see `oplog`).
    pub(super) names: PeerNames,
    /// Summaries of hostile drops (see `oplog`).
    summaries: Summaries,
    /// The control request in progress, served in slices between batches (see `job.rs`);
    /// the next waits in the mailbox until it is answered.
    pub(super) job: Option<job::Job>,
    /// How long the request in progress has held the loop, turn by turn (for the log).
    pub(super) job_timing: job::Timing,
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

/// Registers the UDP sockets for read readiness (edge-triggered).
fn register_udp(poll: &Poll, udp: &UdpSockets) -> io::Result<()> {
    for (socket, token) in [(&udp.v4, TOKEN_V4), (&udp.v6, TOKEN_V6)] {
        if let Some(s) = socket {
            poll.registry()
                .register(&mut SourceFd(&s.as_raw_fd()), token, Interest::READABLE)?;
        }
    }
    Ok(())
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
    /// log line says what is in force. Fails only when the kernel cannot give an epoll
    /// instance or register the descriptors with it.
    pub fn new(
        device: Device,
        tun: Tun,
        mut udp: UdpSockets,
        clock: Clock,
    ) -> Result<Self, DriverError> {
        let poll = Poll::new().map_err(DriverError::Poll)?;
        poll.registry()
            .register(
                &mut SourceFd(&tun.device.as_raw_fd()),
                TOKEN_TUN,
                Interest::READABLE,
            )
            .map_err(DriverError::Poll)?;
        register_udp(&poll, &udp).map_err(DriverError::Poll)?;
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
        Ok(Driver {
            pool,
            crypto,
            offload,
            quiet_tun: true,
            udp_state: [SocketState::default(); 2],
            stalled: false,
            udp_gso: found.gso_segments,
            gso_refused: false,
            device,
            tun,
            udp,
            clock,
            out: vec![0u8; BUF_LEN].into_boxed_slice(),
            stats: DriverStats::default(),
            control: None,
            poll,
            waker: None,
            names: PeerNames::new(),
            summaries: Summaries::from_env(),
            job: None,
            job_timing: job::Timing::default(),
        })
    }

    /// The UDP sockets in use.
    pub fn udp(&self) -> &UdpSockets {
        &self.udp
    }

    /// First step of a socket change (a new listen port): registers `sockets` with the loop,
    /// the step that can fail. Dropped unused, they leave the loop as they close.
    pub fn register_udp(&self, sockets: UdpSockets) -> Result<RegisteredUdp, UdpError> {
        register_udp(&self.poll, &sockets).map_err(UdpError::Register)?;
        Ok(RegisteredUdp(sockets))
    }

    /// Second step: puts the sockets in place of the current ones, with the same offloads and
    /// buffer sizes. The old sockets leave the loop as they close.
    pub fn install_udp(&mut self, sockets: RegisteredUdp) {
        self.udp = sockets.0;
        self.configure_udp();
    }

    /// Sets (or with 0 clears) the fwmark of the UDP sockets.
    pub fn set_fwmark(&mut self, mark: u32) -> Result<(), UdpError> {
        self.udp.set_fwmark(mark)
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

    /// Runs until the TUN device fails or a [`ControlRequest::Stop`] arrives.
    pub fn run(&mut self) -> Result<(), DriverError> {
        self.configure_udp();
        let mut events = Events::with_capacity(EVENTS);
        // Every source may hold data already (queued before the loop started, or left by an
        // earlier run): look once before sleeping.
        let mut ready = Ready {
            tun: true,
            v4: true,
            v6: true,
            control: true,
        };
        let mut turns_without_poll = 0;
        // The clock is read after each `epoll_wait` only: the turns in between take
        // microseconds, far below the core's timer resolution, and after a sleep a clock read
        // is one more cold cache miss on the way to the first packet.
        let mut now = self.clock.now();
        loop {
            // A turn that waited for a full send buffer took up to SEND_WAIT.
            if std::mem::take(&mut self.stalled) {
                now = self.clock.now();
            }
            let mut deadline = self.device.next_deadline();
            if deadline.is_some_and(|d| d <= now.monotonic) {
                self.device.update_timers(now);
                deadline = self.device.next_deadline();
            }
            if self.device.has_transmit() {
                self.drain_transmit(now);
            }
            let busy = ready.any() || self.device.has_transmit();
            // Work at hand: skip `epoll_wait` for a few turns (what it reports waits in the
            // kernel meanwhile); then look for news without sleeping.
            if busy && turns_without_poll < TURNS_WITHOUT_POLL {
                turns_without_poll += 1;
                // The last poll's events are handled already.
                events.clear();
            } else {
                // The core's timers, or the end of a hostile-drop summary window.
                let wake = match (deadline, self.summaries.deadline()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let timeout = if busy {
                    Some(Duration::ZERO)
                } else {
                    wake.map(|d| {
                        // A deadline still due after `update_timers` would make this loop
                        // spin; the core should never leave one, but the loop must not burn
                        // a core.
                        if d <= now.monotonic {
                            tracing::debug!(?d, "timer still due after update_timers");
                            STALE_DEADLINE_BACKOFF
                        } else {
                            d - now.monotonic
                        }
                    })
                };
                match self.poll.poll(&mut events, timeout) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(DriverError::Poll(e)),
                }
                turns_without_poll = 0;
                now = self.clock.now();
            }
            for event in events.iter() {
                match event.token() {
                    TOKEN_TUN => ready.tun = true,
                    TOKEN_V4 => ready.v4 = true,
                    TOKEN_V6 => ready.v6 = true,
                    TOKEN_CONTROL => ready.control = true,
                    _ => {}
                }
            }
            if ready.control {
                match self.control_requests() {
                    Control::Stop => return Ok(()),
                    Control::More => {}
                    Control::Idle => ready.control = false,
                }
                // A request (a reload's closure, a set that binds sockets) may take a while.
                now = self.clock.now();
            }
            if ready.tun {
                ready.tun = self.tun_batch(now)?;
            }
            for (family, flag) in [(Family::V4, &mut ready.v4), (Family::V6, &mut ready.v6)] {
                if *flag {
                    let (more, wrote_tun) = self.udp_batch(family, now);
                    *flag = more;
                    // The kernel often answers a packet written to the TUN device at once,
                    // within the write (an echo reply, a TCP ACK): read it without first
                    // asking epoll, which saves a system call on the round trip.
                    ready.tun |= wrote_tun;
                }
            }
            self.drain_transmit(now);
            self.log_events();
            self.summaries.flush_due(now.monotonic);
        }
    }

    /// Answers up to [`CONTROL_PER_TURN`] waiting control requests, one at a time, spending
    /// at most [`job::SLICE`] units of per-peer work on them this turn (see `job.rs`).
    fn control_requests(&mut self) -> Control {
        // Clock reads per turn that has control work (never per packet): the length of each
        // turn is what forwarding waits for.
        let started = (self.now().monotonic, crate::os::thread_cpu_time());
        let mut budget = job::SLICE;
        let control = self.control_turn(&mut budget);
        self.note_control_turn(started, job::SLICE.saturating_sub(budget));
        control
    }

    fn control_turn(&mut self, budget: &mut usize) -> Control {
        for _ in 0..CONTROL_PER_TURN {
            match self.step_job(budget) {
                Progress::Done => {}
                Progress::Working => return Control::More,
                // The planning thread wakes the loop (the control token) when it is done.
                Progress::Waiting => return Control::Idle,
            }
            let Some(rx) = self.control.as_mut() else {
                return Control::Idle;
            };
            match rx.try_recv() {
                Ok(ControlRequest::Stop) => return Control::Stop,
                Ok(request) => self.answer(request),
                Err(TryRecvError::Empty) => return Control::Idle,
                Err(TryRecvError::Disconnected) => {
                    self.control = None;
                    return Control::Idle;
                }
            }
        }
        Control::More
    }

    /// Reads up to BATCH packets from the TUN device (with offload: up to BATCH reads, each
    /// split into its segments; after a quiet turn, one) and encrypts and sends each. Returns
    /// whether the device may hold more (no read found it empty).
    fn tun_batch(&mut self, now: Now) -> Result<bool, DriverError> {
        // Adaptive batching, as NAPI does: after a quiet turn (at most one packet) the first
        // packet goes out alone, at once, instead of waiting for one more read that would
        // only report the device empty; a burst switches back to whole batches on the next
        // turn (the device stays "ready", so the loop comes straight back).
        let reads = if self.quiet_tun { 1 } else { BATCH };
        let (count, more) = if self.tun.offload {
            self.read_tun_offload(reads)?
        } else {
            self.read_tun_plain(reads)?
        };
        // Quiet: the device was found empty with at most one packet read.
        self.quiet_tun = !more && count <= 1;
        self.stats.tun_rx_packets += count as u64;
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
                PreparedSend::Seal {
                    endpoint,
                    local,
                    peer,
                    job,
                } => items.push(Item {
                    buf: i,
                    range: 0..buf.len(),
                    job: Job::Seal {
                        job,
                        endpoint,
                        local,
                        peer,
                    },
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
                (
                    Job::Seal {
                        endpoint,
                        local,
                        peer,
                        ..
                    },
                    Some(len),
                ) => sealed.push(Sealed {
                    buf: item.buf,
                    len,
                    endpoint: *endpoint,
                    local: *local,
                    peer: Some(*peer),
                }),
                // prepare_encapsulate checked the room: cannot happen.
                _ => tracing::debug!("a packet could not be sealed"),
            }
        }
        // Sending, in the order prepared (per-peer counters ascend).
        let device = &mut self.device;
        let outcome = batch::send_sealed(
            &self.udp,
            &mut self.udp_gso,
            &self.pool.tun,
            sealed,
            &mut |s: &Sealed| {
                if let Some(peer) = s.peer {
                    device.clear_endpoint_src(peer);
                }
            },
        );
        self.count_sent(outcome);
        Ok(more)
    }

    fn count_sent(&mut self, outcome: batch::SendOutcome) {
        self.stalled |= outcome.stalled;
        self.stats.udp_tx_datagrams += outcome.sent;
        self.stats.udp_tx_errors += outcome.errors;
        self.stats.udp_gso_sends += outcome.gso_messages;
        if self.udp_gso == 0 && !self.gso_refused && self.offload {
            // send_sealed turned GSO off: the kernel refused it; keep it off.
            self.gso_refused = true;
        }
    }

    /// Reads up to `reads` packets (at most BATCH), until the device is empty: (packets,
    /// whether it may hold more).
    fn read_tun_plain(&mut self, reads: usize) -> Result<(usize, bool), DriverError> {
        let mut count = 0;
        while count < reads.min(BATCH) {
            let buf = &mut self.pool.tun[count];
            match self
                .tun
                .device
                .recv(&mut buf[HEADROOM..HEADROOM + MAX_PACKET])
            {
                Ok(0) => return Ok((count, false)),
                Ok(n) => {
                    self.pool.tun_lens[count] = n;
                    count += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((count, false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DriverError::TunRead(e)),
            }
        }
        Ok((count, true))
    }

    /// With IFF_VNET_HDR: each read is one packet with a virtio-net header, possibly a GSO
    /// packet of many segments, which tun-rs splits (and checksums) into the pool at HEADROOM.
    /// Up to `reads` reads (at most BATCH). Returns (packets, whether the device may hold
    /// more).
    fn read_tun_offload(&mut self, reads: usize) -> Result<(usize, bool), DriverError> {
        let mut count = 0;
        for _ in 0..reads.min(BATCH) {
            if self.pool.tun.len() - count < MAX_SEGMENTS_PER_READ {
                break;
            }
            // After a quiet turn, the one packet expected is read straight into its buffer
            // (see `vnet`): a small working set for the first packet after a sleep.
            let read = if reads == 1 && count == 0 {
                vnet::read_one(
                    &self.tun.device,
                    &mut self.pool.tun_raw,
                    &mut self.pool.tun,
                    &mut self.pool.tun_lens,
                )
            } else {
                self.tun.device.recv_multiple(
                    &mut self.pool.tun_raw,
                    &mut self.pool.tun[count..],
                    &mut self.pool.tun_lens[count..],
                    HEADROOM,
                )
            };
            match read {
                Ok(n) => count += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((count, false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The kernel refused the read: the device is gone or broken.
                Err(e) if e.raw_os_error().is_some() => return Err(DriverError::TunRead(e)),
                // tun-rs could not parse or split this one packet: drop it, go on.
                Err(e) => tracing::debug!(error = %e, "malformed packet from the TUN device"),
            }
        }
        Ok((count, true))
    }

    /// Reads up to BATCH messages (with GRO, each possibly several datagrams) from one socket,
    /// tells the core about a handshake backlog, then decrypts every datagram and writes the
    /// packets to the TUN device, in arrival order. Returns whether the socket may hold more,
    /// and whether anything was written to the TUN device.
    fn udp_batch(&mut self, family: Family, now: Now) -> (bool, bool) {
        let socket = match family {
            Family::V4 => self.udp.v4.as_ref(),
            Family::V6 => self.udp.v6.as_ref(),
        };
        let Some(socket) = socket else {
            return (false, false);
        };
        let state = &mut self.udp_state[family as usize];
        // Adaptive, as for the TUN device: a socket that was quiet is asked for a few
        // messages (small scratch for recvmmsg), one that was busy for a whole batch.
        let want = if state.quiet { mmsg::SMALL_MMSG } else { BATCH };
        let received = mmsg::recv_mmsg(
            socket,
            &mut self.pool.udp[..want],
            &mut self.pool.udp_meta[..want],
        );
        let count = match received {
            Ok(n) => {
                state.quiet = n <= 1 && n < want;
                state.errors = 0;
                n
            }
            // Empty: wait for the next readiness event.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (false, false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return (true, false),
            Err(e) => {
                // An error queued on the socket (ICMP and the like) is not fatal, and
                // datagrams may wait behind it: look again, but not forever, or a socket that
                // keeps failing would spin the loop; its next readiness event brings it back.
                state.errors += 1;
                if state.errors >= MAX_UDP_ERRORS_IN_A_ROW {
                    tracing::warn!(
                        error = %e,
                        "UDP receive keeps failing; waiting for the next event"
                    );
                    state.errors = 0;
                    return (false, false);
                }
                tracing::debug!(error = %e, "UDP receive error");
                return (true, false);
            }
        };
        // A non-blocking recvmmsg that returns fewer than asked emptied the socket.
        let more = count == want;
        let written_before = self.stats.tun_tx_packets;
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
            // The sender, and the local address it sent to: the core remembers both for the
            // replies (see proto::Endpoint).
            let Some(src) = meta
                .src
                .filter(|_| !meta.truncated)
                .map(|src| Endpoint::new(normalize(src), meta.local))
            else {
                continue;
            };
            for seg in batch::segments(meta.len, meta.stride) {
                let Some(datagram) = buf.get_mut(seg.clone()) else {
                    continue;
                };
                let len = datagram.len();
                match self.device.prepare_decapsulate(src, datagram, len, now) {
                    PreparedReceive::Open(job) => items.push(Item {
                        buf: i,
                        range: seg,
                        job: Job::Open(job),
                        result: None,
                    }),
                    PreparedReceive::Dropped(reason) => {
                        self.summaries
                            .dropped(reason, src.remote.ip(), now.monotonic)
                    }
                    PreparedReceive::Done => {}
                }
            }
        }
        // Decryption, on several cores for a large batch.
        self.crypto.run(&mut self.pool.udp, items);
        // Finishing in arrival order: replay window, session, roaming, cryptokey routing.
        let mut gathered = 0;
        // One packet has nothing to coalesce with: written from where it was decrypted.
        let single = self.tun.offload && items.len() == 1;
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
            let range = match self
                .device
                .finish_decapsulate(job, item.result, datagram, now)
            {
                Decapsulated::Deliver { range, .. } => range,
                Decapsulated::Dropped(reason) => {
                    if let Some(src) = self.pool.udp_meta.get(item.buf).and_then(|m| m.src) {
                        let ip = normalize(src).ip();
                        self.summaries.dropped(reason, ip, now.monotonic);
                    }
                    continue;
                }
                Decapsulated::Done => continue,
            };
            if single {
                let start = item.range.start + range.start;
                let end = item.range.start + range.end;
                if let Some(buf) = self.pool.udp.get_mut(item.buf) {
                    match vnet::write_one(&self.tun.device, buf, start..end) {
                        Ok(()) => self.stats.tun_tx_packets += 1,
                        Err(e) => {
                            self.stats.tun_tx_errors += 1;
                            tracing::debug!(error = %e, "TUN write failed");
                        }
                    }
                }
                continue;
            }
            let Some(packet) = datagram.get(range) else {
                continue;
            };
            if !self.tun.offload {
                match self.tun.device.send(packet) {
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
                );
                gathered = 0;
            }
        }
        if gathered > 0 {
            write_tun_multiple(
                &self.tun.device,
                &mut self.pool.gro,
                &mut self.pool.tun_out[..gathered],
                &mut self.stats,
            );
        }
        (more, self.stats.tun_tx_packets != written_before)
    }

    /// Sends what the core has queued (handshakes, cookie replies, keepalives, packets that
    /// waited for a session).
    fn drain_transmit(&mut self, now: Now) {
        for _ in 0..MAX_DRAIN {
            let Some(Transmit {
                endpoint,
                local,
                peer,
                len,
            }) = self.device.poll_transmit(&mut self.out, now)
            else {
                return;
            };
            let Some(datagram) = self.out.get(..len) else {
                continue;
            };
            let local_gone = send_datagram(
                &self.udp,
                &mut self.stats,
                &mut self.stalled,
                endpoint,
                local,
                datagram,
            );
            if local_gone && let Some(peer) = peer {
                self.device.clear_endpoint_src(peer);
            }
        }
    }

    /// Logs what the core reported since the last turn, naming the peers (no scan of the
    /// peers).
    fn log_events(&mut self) {
        while let Some(event) = self.device.poll_event() {
            if matches!(event, Event::HandshakeCompleted { .. }) {
                self.stats.handshakes += 1;
            }
            oplog::log_event(&self.names, &event);
        }
    }

    /// Sends what the core has queued: for use right after a reconfiguration (a peer with
    /// persistent keepalive may have a keepalive or initiation waiting).
    pub fn flush(&mut self) {
        self.drain_transmit(self.clock.now());
    }

    /// Closes the control channel: queued requests are dropped (their reply channels with
    /// them) and later sends fail. For when the loop has ended.
    pub fn close_control(&mut self) {
        if let Some(mut rx) = self.control.take() {
            rx.close();
            while rx.try_recv().is_ok() {}
        }
    }

    /// Control hook: a new channel whose requests the loop answers from now on (see
    /// `driver::control`); a channel made earlier is closed.
    pub fn control_channel(&mut self) -> io::Result<ControlSender> {
        let waker = match &self.waker {
            Some(w) => Arc::clone(w),
            None => {
                let w = Arc::new(Waker::new(self.poll.registry(), TOKEN_CONTROL)?);
                self.waker = Some(Arc::clone(&w));
                w
            }
        };
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        self.control = Some(rx);
        Ok(ControlSender::new(tx, Some(waker)))
    }

    /// Answers one control request, on the loop's thread: the one dispatch. Called only
    /// with no request in progress (`control_turn` waits for it to end first).
    pub fn answer(&mut self, request: ControlRequest) {
        match request {
            // Those that visit every peer start a job, served in slices (see `job.rs`).
            ControlRequest::Get { reply } => self.start_get(reply),
            ControlRequest::Set { request, reply } => {
                self.start_change(Change::Set(request), Reply::Uapi(reply));
            }
            ControlRequest::Apply { desired, reply } => {
                self.start_change(Change::Apply(desired), Reply::Apply(reply));
            }
            // Logged by the daemon's resolver, which knows the name.
            ControlRequest::Endpoint {
                public_key,
                endpoint,
                reply,
            } => {
                let request = SetRequest::update_endpoint(public_key, endpoint);
                self.start_change(Change::Set(request), Reply::Endpoint(reply));
            }
            // The event loop stops before it gets here.
            ControlRequest::Stop => {}
            ControlRequest::SyncMtu => self.sync_mtu(),
            ControlRequest::Names(names) => self.names = names,
        }
    }

    /// The peer names log lines use from now on (see `oplog`).
    pub fn set_names(&mut self, names: PeerNames) {
        self.names = names;
    }

    pub fn names(&self) -> &PeerNames {
        &self.names
    }

    /// The id of a peer, for callers that only know its key.
    pub fn peer_id(&self, key: &PublicKey) -> Option<PeerId> {
        self.device.peer_id(key)
    }
}

/// What the control channel holds after a turn.
enum Control {
    /// Nothing more for now.
    Idle,
    /// Requests left for the next turn.
    More,
    /// The loop is asked to stop.
    Stop,
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
fn write_tun_multiple(
    device: &SyncDevice,
    gro: &mut GROTable,
    bufs: &mut [Vec<u8>],
    stats: &mut DriverStats,
) {
    let n = bufs.len() as u64;
    match device.send_multiple(gro, bufs, HEADROOM) {
        Ok(_) => stats.tun_tx_packets += n,
        Err(e) => {
            stats.tun_tx_errors += n;
            tracing::debug!(error = %e, "TUN write failed");
        }
    }
}

/// Sends one datagram from the socket of `endpoint`'s family, from `local` when set.
/// Failures are counted and logged at debug level: UDP is lossy anyway, and the core's
/// timers retry what matters. When the kernel refuses `local` (the address went away), the
/// datagram goes again without it, and the result says so (true) for the caller to tell the
/// core.
fn send_datagram(
    udp: &UdpSockets,
    stats: &mut DriverStats,
    stalled: &mut bool,
    endpoint: SocketAddr,
    local: Option<IpAddr>,
    datagram: &[u8],
) -> bool {
    let Some((socket, to)) = udp.route(endpoint) else {
        stats.udp_tx_errors += 1;
        tracing::debug!(%endpoint, "no UDP socket of this address family");
        return false;
    };
    let mut result = batch::send_one(socket, to, local, datagram, stalled);
    let mut local_gone = false;
    if let Err(e) = &result
        && local.is_some()
        && batch::local_unusable(e)
    {
        tracing::debug!(%endpoint, ?local, error = %e, "source address refused, sending without it");
        local_gone = true;
        result = batch::send_one(socket, to, None, datagram, stalled);
    }
    match result {
        Ok(_) => stats.udp_tx_datagrams += 1,
        Err(e) => {
            stats.udp_tx_errors += 1;
            tracing::debug!(%endpoint, error = %e, "UDP send failed");
        }
    }
    local_gone
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
