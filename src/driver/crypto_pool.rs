//! Sealing and opening a batch of packets on several cores, with the batch's order kept.
//!
//! The core splits each packet into a sequential half (routing, counters, replay window:
//! `prepare_encapsulate` / `prepare_decapsulate`) and a pure, `Send` job (`SealJob` /
//! `ReceiveJob`). The event loop prepares a whole batch in order, hands the jobs to
//! [`CryptoPool::run`], and then sends (or finishes) them in the same order, so per-peer order
//! and replay protection are exactly those of the one-thread path.
//!
//! `run` cuts a large batch into a few chunks on buffer boundaries. The loop's own thread keeps
//! the first chunk; the others go, with the buffers they touch (moved, not copied: a `Box`
//! changes hands), onto a queue that long-lived worker threads and the loop's thread both take
//! from. So a worker that the scheduler has not woken yet costs nothing: the loop's thread
//! takes its chunks itself and only waits for chunks a worker has actually started. Small
//! batches never leave the loop's thread (a hand-over costs a few microseconds, about what
//! sealing 8 KiB costs). Nothing is allocated per batch: chunks, queues and their vectors are
//! reused.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::os::privilege;
use crate::proto::{PeerId, ReceiveJob, SealJob};

/// Batches whose crypto work is smaller than this stay on the loop's thread.
pub const MIN_PARALLEL_BYTES: usize = 32 * 1024;

/// Roughly how much crypto work one chunk carries.
const CHUNK_BYTES: usize = 16 * 1024;

/// Most threads (the loop's included) the pool uses.
pub const MAX_THREADS: usize = 8;

/// Most chunks one batch is cut into.
const MAX_CHUNKS: usize = 2 * MAX_THREADS;

/// What to do with one packet.
#[derive(Debug)]
pub enum Job {
    /// Seal the IP packet at `HEADROOM` in the buffer; the message then goes to `endpoint`
    /// from `local` (see `PreparedSend::Seal`).
    Seal {
        job: SealJob,
        endpoint: SocketAddr,
        local: Option<IpAddr>,
        peer: PeerId,
    },
    /// Open the transport message that is the item's range of the buffer.
    Open(ReceiveJob),
}

/// One packet of a batch: a job on `bufs[buf][range]`, and its result once run (the sealed
/// message length, or the padded plaintext length; None when it failed).
#[derive(Debug)]
pub struct Item {
    pub buf: usize,
    pub range: Range<usize>,
    pub job: Job,
    pub result: Option<usize>,
}

impl Item {
    pub fn run(&mut self, bufs: &mut [Box<[u8]>]) {
        let data = bufs
            .get_mut(self.buf)
            .and_then(|b| b.get_mut(self.range.clone()));
        self.result = match (data, &self.job) {
            (Some(d), Job::Seal { job, .. }) => job.seal(d),
            (Some(d), Job::Open(job)) => job.open(d),
            (None, _) => None,
        };
    }

    /// Bytes of AEAD work, to balance chunks.
    fn cost(&self) -> usize {
        match &self.job {
            Job::Seal { job, .. } => job.message_len(),
            Job::Open(_) => self.range.len(),
        }
    }
}

/// Part of a batch handed to another thread, with the buffers it touches
/// (`bufs[j]` is the batch's buffer `first_buf + j`; items' `buf` are relative to it).
#[derive(Debug)]
struct Chunk {
    seq: usize,
    first_buf: usize,
    bufs: Vec<Box<[u8]>>,
    items: Vec<Item>,
}

impl Chunk {
    fn run(&mut self) {
        for item in &mut self.items {
            item.run(&mut self.bufs);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Chunk>,
    done: Vec<Chunk>,
    /// Chunks a worker has taken and not yet put in `done`.
    busy: usize,
    /// Workers still running (one that panicked is gone, and so is the chunk it held).
    alive: usize,
    shutdown: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; should it, the state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks its worker gone when the worker returns or unwinds.
struct AliveGuard<'a>(&'a Shared);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.alive = st.alive.saturating_sub(1);
        if std::thread::panicking() {
            // The chunk it held is lost; the loop must stop waiting for it.
            st.busy = st.busy.saturating_sub(1);
        }
        drop(st);
        self.0.done.notify_all();
    }
}

fn worker(shared: Arc<Shared>) {
    let _alive = AliveGuard(&shared);
    // Before touching any work: drop to the daemon's privilege plan, if one is in force. A
    // worker that cannot ends here (the pool goes on with fewer threads) rather than run on
    // with privileges the daemon gave up.
    if let Err(e) = privilege::enter_thread() {
        tracing::error!("a crypto thread cannot drop its privileges and stops: {e}");
        return;
    }
    loop {
        let mut chunk = {
            let mut st = shared.lock();
            loop {
                if st.shutdown {
                    return;
                }
                if let Some(c) = st.queue.pop_front() {
                    st.busy += 1;
                    break c;
                }
                st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        chunk.run();
        let mut st = shared.lock();
        st.busy = st.busy.saturating_sub(1);
        st.done.push(chunk);
        drop(st);
        shared.done.notify_one();
    }
}

/// The loop's crypto helpers: `threads - 1` worker threads (none for 1).
#[derive(Debug)]
pub struct CryptoPool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    spare: Vec<Chunk>,
    /// Length of the batch buffers, to replace any lost with a worker that died.
    buf_len: usize,
    min_parallel_bytes: usize,
    /// Batches that were spread over threads.
    splits: u64,
}

impl CryptoPool {
    /// A pool of `threads` threads in all (clamped to 1..=MAX_THREADS; the loop's thread is
    /// one of them) for batches of at most `max_bufs` buffers of `buf_len` bytes and
    /// `max_items` packets. A worker that cannot be started leaves fewer threads.
    pub fn new(threads: usize, max_bufs: usize, max_items: usize, buf_len: usize) -> Self {
        let threads = threads.clamp(1, MAX_THREADS);
        let shared = Arc::new(Shared::default());
        {
            let mut st = shared.lock();
            st.queue.reserve(MAX_CHUNKS);
            st.done.reserve(MAX_CHUNKS);
        }
        let mut workers = Vec::new();
        for n in 1..threads {
            let s = Arc::clone(&shared);
            shared.lock().alive += 1;
            match std::thread::Builder::new()
                .name(format!("tandem-crypto{n}"))
                .spawn(move || worker(s))
            {
                Ok(h) => workers.push(h),
                Err(e) => {
                    shared.lock().alive -= 1;
                    tracing::warn!(error = %e, "cannot start a crypto thread");
                    break;
                }
            }
        }
        let threads = workers.len() + 1;
        let spare = if threads > 1 {
            (0..(2 * threads).min(MAX_CHUNKS))
                .map(|_| Chunk {
                    seq: 0,
                    first_buf: 0,
                    bufs: Vec::with_capacity(max_bufs),
                    items: Vec::with_capacity(max_items),
                })
                .collect()
        } else {
            Vec::new()
        };
        CryptoPool {
            threads,
            shared,
            workers,
            spare,
            buf_len,
            min_parallel_bytes: MIN_PARALLEL_BYTES,
            splits: 0,
        }
    }

    /// Threads that work on a large batch (the loop's included).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// How many batches were spread over threads so far.
    pub fn splits(&self) -> u64 {
        self.splits
    }

    /// Sets the smallest batch (in bytes of crypto work) that is spread over threads.
    pub fn set_min_parallel_bytes(&mut self, bytes: usize) {
        self.min_parallel_bytes = bytes;
    }

    /// Runs every item's job on `bufs` and leaves `items` in their original order with their
    /// results. Items must be ordered by buffer (`buf` never decreasing), as a batch read
    /// into consecutive buffers is; otherwise, or when the batch is small, all runs here.
    /// Should a worker die mid-chunk, that chunk's items are missing afterwards (their
    /// packets are lost, as in any drop) and its buffers are replaced.
    pub fn run(&mut self, bufs: &mut [Box<[u8]>], items: &mut Vec<Item>) {
        let total: usize = items.iter().map(Item::cost).sum();
        let ordered = items.windows(2).all(|w| w[0].buf <= w[1].buf);
        if self.threads == 1 || total < self.min_parallel_bytes || items.len() < 2 || !ordered {
            for item in items.iter_mut() {
                item.run(bufs);
            }
            return;
        }
        // Cut points on buffer boundaries, about `total / chunks` bytes of work apart.
        let chunks = (total / CHUNK_BYTES).clamp(2, (2 * self.threads).min(MAX_CHUNKS));
        let mut cuts = [0usize; MAX_CHUNKS + 1];
        let mut ncuts = 1; // cuts[0] = 0
        let mut acc = 0;
        for (i, item) in items.iter().enumerate() {
            if i > 0
                && ncuts < chunks
                && acc >= total * ncuts / chunks
                && items[i - 1].buf != item.buf
            {
                cuts[ncuts] = i;
                ncuts += 1;
            }
            acc += item.cost();
        }
        if ncuts < 2 {
            // All in one buffer: nothing to hand over.
            for item in items.iter_mut() {
                item.run(bufs);
            }
            return;
        }
        cuts[ncuts] = items.len();
        // Hand chunks 1.. over, last first so the drains leave earlier indices in place.
        let mut sent = 0;
        {
            let mut st = self.shared.lock();
            for c in (1..ncuts).rev() {
                let Some(mut chunk) = self.spare.pop() else {
                    break;
                };
                let (start, end) = (cuts[c], cuts[c + 1]);
                let first_buf = items[start].buf;
                let last_buf = items[end - 1].buf;
                chunk.seq = c;
                chunk.first_buf = first_buf;
                chunk.bufs.clear();
                for b in bufs.iter_mut().take(last_buf + 1).skip(first_buf) {
                    chunk.bufs.push(std::mem::take(b));
                }
                chunk.items.clear();
                chunk.items.extend(items.drain(start..).map(|mut it| {
                    it.buf -= first_buf;
                    it
                }));
                st.queue.push_front(chunk);
                sent += 1;
            }
        }
        self.shared.work.notify_all();
        self.splits += 1;
        // Our own chunk (and anything left if the spares ran out, which they cannot).
        for item in items.iter_mut() {
            item.run(bufs);
        }
        // Then help with the queue, and wait only for chunks a worker has started.
        let mut st = self.shared.lock();
        loop {
            if let Some(mut chunk) = st.queue.pop_front() {
                drop(st);
                chunk.run();
                st = self.shared.lock();
                st.done.push(chunk);
                continue;
            }
            if st.busy == 0 || st.alive == 0 {
                break;
            }
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        // Put buffers and items back, in chunk order.
        st.done.sort_unstable_by_key(|c| c.seq);
        let returned = st.done.len();
        for mut chunk in st.done.drain(..) {
            for (j, b) in chunk.bufs.drain(..).enumerate() {
                if let Some(slot) = bufs.get_mut(chunk.first_buf + j) {
                    *slot = b;
                }
            }
            let first_buf = chunk.first_buf;
            items.extend(chunk.items.drain(..).map(|mut it| {
                it.buf += first_buf;
                it
            }));
            self.spare.push(chunk);
        }
        drop(st);
        if returned < sent {
            tracing::error!("a crypto thread died; its packets are lost");
            self.threads = 1 + self.shared.lock().alive;
            for b in bufs.iter_mut().filter(|b| b.is_empty()) {
                *b = vec![0u8; self.buf_len].into_boxed_slice();
            }
            // Chunks lost with their thread are replaced, so later batches can still split.
            while self.spare.len() < (2 * self.threads).min(MAX_CHUNKS) {
                self.spare.push(Chunk {
                    seq: 0,
                    first_buf: 0,
                    bufs: Vec::new(),
                    items: Vec::new(),
                });
            }
        }
    }
}

impl Drop for CryptoPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Decapsulated, Device, HEADROOM, Now, PreparedReceive, PreparedSend};
    use crate::proto::{PeerConfig, PrivateKey, TAILROOM};
    use std::time::Duration;

    const BUF: usize = 2048;

    /// Two devices with a session between them (a handshake run by hand).
    fn pair() -> (Device, Device, SocketAddr, SocketAddr) {
        let ka = PrivateKey::from_bytes([1; 32]);
        let kb = PrivateKey::from_bytes([2; 32]);
        let mut a = Device::new(Some(ka.clone()), [3; 32]);
        let mut b = Device::new(Some(kb.clone()), [4; 32]);
        let addr_a: SocketAddr = "192.0.2.1:1000".parse().expect("addr");
        let addr_b: SocketAddr = "192.0.2.2:2000".parse().expect("addr");
        let ip_a: IpAddr = "10.0.0.1".parse().expect("ip");
        let ip_b: IpAddr = "10.0.0.2".parse().expect("ip");
        let now = Now {
            monotonic: Duration::from_secs(1),
            unix: Duration::from_secs(1_700_000_000),
        };
        let mut pc = PeerConfig::new(kb.public_key());
        pc.endpoint = Some(addr_b);
        pc.allowed_ips = vec![crate::proto::prefix::Prefix::host(ip_b)];
        a.upsert_peer(&pc).expect("peer b");
        let mut pc = PeerConfig::new(ka.public_key());
        pc.endpoint = Some(addr_a);
        pc.allowed_ips = vec![crate::proto::prefix::Prefix::host(ip_a)];
        b.upsert_peer(&pc).expect("peer a");
        // A first packet starts the handshake; shuttle until quiet.
        let mut buf = vec![0u8; BUF];
        let first = ipv4_packet(ip_a, ip_b, 0, 40);
        buf[HEADROOM..HEADROOM + first.len()].copy_from_slice(&first);
        let _ = a.encapsulate(&mut buf, first.len(), now);
        for _ in 0..10 {
            let mut moved = false;
            while let Some(t) = a.poll_transmit(&mut buf, now) {
                let _ = b.decapsulate(addr_a, &mut buf, t.len, now);
                moved = true;
            }
            while let Some(t) = b.poll_transmit(&mut buf, now) {
                let _ = a.decapsulate(addr_b, &mut buf, t.len, now);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        (a, b, addr_a, addr_b)
    }

    /// A minimal IPv4 packet (header checksum not needed by the core) with `tag` in it.
    fn ipv4_packet(src: IpAddr, dst: IpAddr, tag: u16, len: usize) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
            panic!("v4 only");
        };
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&s.octets());
        p[16..20].copy_from_slice(&d.octets());
        p[20..22].copy_from_slice(&tag.to_be_bytes());
        p
    }

    /// Seals `n` packets through `pool`, opens them through a second pool, checks order and
    /// contents; returns how many arrived.
    fn round_trip(threads: usize, n: usize, len: usize) -> usize {
        let (mut a, mut b, addr_a, _) = pair();
        let now = Now {
            monotonic: Duration::from_secs(2),
            unix: Duration::from_secs(1_700_000_001),
        };
        let ip_a: IpAddr = "10.0.0.1".parse().expect("ip");
        let ip_b: IpAddr = "10.0.0.2".parse().expect("ip");
        let mut bufs: Vec<Box<[u8]>> = (0..n).map(|_| vec![0u8; BUF].into_boxed_slice()).collect();
        let mut items = Vec::with_capacity(n);
        let mut pool = CryptoPool::new(threads, n, n, BUF);
        assert_eq!(pool.threads(), threads);
        pool.set_min_parallel_bytes(0);
        for (i, buf) in bufs.iter_mut().enumerate() {
            let p = ipv4_packet(ip_a, ip_b, i as u16, len);
            buf[HEADROOM..HEADROOM + len].copy_from_slice(&p);
            match a.prepare_encapsulate(buf, len, now) {
                PreparedSend::Seal {
                    job,
                    endpoint,
                    local,
                    peer,
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
                other => panic!("{other:?}"),
            }
        }
        assert!(HEADROOM + len + TAILROOM <= BUF);
        pool.run(&mut bufs, &mut items);
        assert_eq!(items.len(), n);
        let sealed: Vec<(usize, usize)> = items
            .iter()
            .map(|it| (it.buf, it.result.expect("sealed")))
            .collect();
        // Receive side: each message at the start of its own buffer, opened by another pool.
        let mut rx_pool = CryptoPool::new(threads, n, n, BUF);
        rx_pool.set_min_parallel_bytes(0);
        let mut rx_items = Vec::with_capacity(n);
        for (i, &(buf, mlen)) in sealed.iter().enumerate() {
            assert_eq!(buf, i, "order kept");
            match b.prepare_decapsulate(addr_a, &mut bufs[i], mlen, now) {
                PreparedReceive::Open(job) => rx_items.push(Item {
                    buf: i,
                    range: 0..mlen,
                    job: Job::Open(job),
                    result: None,
                }),
                other => panic!("{other:?}"),
            }
        }
        rx_pool.run(&mut bufs, &mut rx_items);
        let mut delivered = 0;
        for (i, it) in rx_items.iter().enumerate() {
            assert_eq!(it.buf, i);
            let Job::Open(job) = &it.job else {
                panic!("open job");
            };
            let d = &bufs[it.buf][it.range.clone()];
            match b.finish_decapsulate(job, it.result, d, now) {
                Decapsulated::Deliver { range, .. } => {
                    assert_eq!(d[range.clone()].len(), len);
                    assert_eq!(
                        d[range.start + 20..range.start + 22],
                        (i as u16).to_be_bytes()
                    );
                    delivered += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        delivered
    }

    #[test]
    fn one_thread_seals_and_opens_in_order() {
        assert_eq!(round_trip(1, 40, 1400), 40);
    }

    #[test]
    fn several_threads_give_the_same_result_in_order() {
        for threads in [2, 3, 4] {
            assert_eq!(round_trip(threads, 200, 1400), 200);
            assert_eq!(round_trip(threads, 300, 64), 300);
        }
    }

    /// `n` open jobs on `n` buffers (the jobs fail: the data is not a real message; only
    /// where they run matters here).
    fn dummy_items(n: usize, len: usize) -> (Vec<Box<[u8]>>, Vec<Item>) {
        let (_, mut b, addr_a, _) = pair();
        let now = Now {
            monotonic: Duration::from_secs(2),
            unix: Duration::from_secs(1_700_000_001),
        };
        // A transport header for b's current session, taken from a real message of a.
        let (mut a2, _, _, _) = pair();
        let mut msg = vec![0u8; BUF];
        let p = ipv4_packet(
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
            0,
            len,
        );
        msg[HEADROOM..HEADROOM + len].copy_from_slice(&p);
        let crate::proto::Encapsulated::Send { len: mlen, .. } = a2.encapsulate(&mut msg, len, now)
        else {
            panic!("no session");
        };
        let mut bufs = Vec::new();
        let mut items = Vec::new();
        for i in 0..n {
            let mut buf = vec![0u8; BUF].into_boxed_slice();
            buf[..mlen].copy_from_slice(&msg[..mlen]);
            // Distinct counters, so the replay check lets every one through to a job.
            buf[8..16].copy_from_slice(&(i as u64 + 1000).to_le_bytes());
            if let PreparedReceive::Open(job) = b.prepare_decapsulate(addr_a, &mut buf, mlen, now) {
                items.push(Item {
                    buf: i,
                    range: 0..mlen,
                    job: Job::Open(job),
                    result: Some(1),
                });
            }
            bufs.push(buf);
        }
        assert_eq!(items.len(), n);
        (bufs, items)
    }

    #[test]
    fn only_large_ordered_batches_are_split() {
        let mut pool = CryptoPool::new(2, 64, 64, BUF);
        // Empty: nothing happens, nothing breaks.
        let mut bufs: Vec<Box<[u8]>> = Vec::new();
        let mut items = Vec::new();
        pool.run(&mut bufs, &mut items);
        assert_eq!(pool.splits(), 0);
        // Small: stays here, every job still runs (and fails: wrong key material).
        let (mut bufs, mut items) = dummy_items(4, 100);
        pool.run(&mut bufs, &mut items);
        assert_eq!(pool.splits(), 0);
        assert!(items.iter().all(|it| it.result.is_none()));
        // Large and ordered: split, and everything comes back in order.
        let (mut bufs, mut items) = dummy_items(48, 1400);
        pool.run(&mut bufs, &mut items);
        assert_eq!(pool.splits(), 1);
        assert_eq!(items.len(), 48);
        assert!(
            items
                .iter()
                .enumerate()
                .all(|(i, it)| it.buf == i && it.result.is_none())
        );
        assert!(bufs.iter().all(|b| b.len() == BUF));
        // Large but out of order: stays here.
        let (mut bufs, mut items) = dummy_items(48, 1400);
        items.swap(0, 47);
        pool.run(&mut bufs, &mut items);
        assert_eq!(pool.splits(), 1);
        assert_eq!(items[0].buf, 47);
        // One thread: never split.
        let mut single = CryptoPool::new(1, 64, 64, BUF);
        let (mut bufs, mut items) = dummy_items(48, 1400);
        single.run(&mut bufs, &mut items);
        assert_eq!(single.splits(), 0);
    }
}
