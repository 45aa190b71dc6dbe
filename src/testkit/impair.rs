//! An impaired link for fault tests and the fault bench: a UDP relay that loses, duplicates,
//! reorders and delays datagrams with a seeded generator, one setting per direction, changed
//! while it runs.
//!
//! Why not `tc qdisc … netem`: the kernels this project's CI runs on are built without
//! `sch_netem`, and a relay in userspace also counts exactly what it did to each direction, so
//! a test can check "delivered ≥ sent − dropped by the link" instead of guessing what netem
//! did. The price is a hop through userspace, the same for every implementation measured.
//!
//! ```text
//!  client (e.g. tandem A) ──▶ front socket ─[impair ToBack]─▶ back socket ──▶ server (tandem B)
//!                        ◀── front socket ◀─[impair ToFront]─ back socket ◀──
//! ```
//! The client is whoever last sent to the front socket (WireGuard peers roam, so the server
//! learns the relay's back address as the client's endpoint).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::rng::SplitMix64;

/// What the link does to one direction. Probabilities are in `0.0..=1.0`; the default is a
/// perfect link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Dropped datagrams.
    pub loss: f64,
    /// Datagrams sent twice (the copy right after the original).
    pub duplicate: f64,
    /// Datagrams held back by `reorder_delay`, so that later ones overtake them.
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Every datagram is delayed by a uniform random time in `0..=jitter` (this reorders too,
    /// as netem's jitter does).
    pub jitter: Duration,
}

/// One direction of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client (front socket) to the server.
    ToBack = 0,
    /// From the server back to the client.
    ToFront = 1,
}

/// What the relay did, per direction (index with `Direction as usize`).
#[derive(Debug, Default)]
pub struct RelayStats {
    pub received: [AtomicU64; 2],
    pub sent: [AtomicU64; 2],
    pub dropped: [AtomicU64; 2],
    pub duplicated: [AtomicU64; 2],
    pub delayed: [AtomicU64; 2],
}

impl RelayStats {
    pub fn get(&self, counter: &[AtomicU64; 2], dir: Direction) -> u64 {
        counter[dir as usize].load(Ordering::Relaxed)
    }
}

/// A running relay; stopped (threads joined) on drop.
pub struct Relay {
    front: SocketAddr,
    settings: Arc<Mutex<[Impairment; 2]>>,
    stats: Arc<RelayStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How long a relay thread sleeps in `recv` at most, so that it sees `stop` and releases
/// delayed datagrams on time.
const POLL: Duration = Duration::from_millis(1);

impl Relay {
    /// Listens on `front` and forwards to `back`, starting as a perfect link. The sockets are
    /// opened in the calling thread's network namespace.
    pub fn start(front: SocketAddr, back: SocketAddr, seed: u64) -> io::Result<Relay> {
        let front_sock = UdpSocket::bind(front)?;
        let front = front_sock.local_addr()?;
        let any: SocketAddr = if back.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let back_sock = UdpSocket::bind(any)?;
        back_sock.connect(back)?;
        front_sock.set_read_timeout(Some(POLL))?;
        back_sock.set_read_timeout(Some(POLL))?;

        let settings = Arc::new(Mutex::new([Impairment::default(); 2]));
        let stats = Arc::new(RelayStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let client = Arc::new(Mutex::new(None::<SocketAddr>));

        let to_back = Half {
            dir: Direction::ToBack,
            from: front_sock.try_clone()?,
            to: back_sock.try_clone()?,
            client: Arc::clone(&client),
            settings: Arc::clone(&settings),
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            rng: SplitMix64::new(seed),
        };
        let to_front = Half {
            dir: Direction::ToFront,
            from: back_sock,
            to: front_sock,
            client,
            settings: Arc::clone(&settings),
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            rng: SplitMix64::new(seed ^ 0x5eed),
        };
        let threads = vec![
            std::thread::Builder::new()
                .name("relay-to-back".into())
                .spawn(move || to_back.run())?,
            std::thread::Builder::new()
                .name("relay-to-front".into())
                .spawn(move || to_front.run())?,
        ];
        Ok(Relay {
            front,
            settings,
            stats,
            stop,
            threads,
        })
    }

    /// Where clients send to.
    pub fn front(&self) -> SocketAddr {
        self.front
    }

    /// Changes what the link does to `dir` from the next datagram on.
    pub fn set(&self, dir: Direction, impairment: Impairment) {
        self.settings.lock().unwrap_or_else(PoisonError::into_inner)[dir as usize] = impairment;
    }

    /// Both directions at once.
    pub fn set_both(&self, impairment: Impairment) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = [impairment; 2];
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One direction: receives, decides, queues what is delayed, sends what is due.
struct Half {
    dir: Direction,
    from: UdpSocket,
    to: UdpSocket,
    client: Arc<Mutex<Option<SocketAddr>>>,
    settings: Arc<Mutex<[Impairment; 2]>>,
    stats: Arc<RelayStats>,
    stop: Arc<AtomicBool>,
    rng: SplitMix64,
}

/// A datagram waiting for its release time (ties keep arrival order through `seq`).
type Held = Reverse<(Instant, u64, Vec<u8>)>;

impl Half {
    fn run(mut self) {
        let d = self.dir as usize;
        let mut buf = vec![0u8; 65536];
        let mut held: BinaryHeap<Held> = BinaryHeap::new();
        let mut seq = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            self.release(&mut held);
            let (len, src) = match self.from.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                // ICMP port unreachable from a peer that is down, for example: keep relaying.
                Err(_) => continue,
            };
            if self.dir == Direction::ToBack {
                *self.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(src);
            }
            self.stats.received[d].fetch_add(1, Ordering::Relaxed);
            let imp = self.settings.lock().unwrap_or_else(PoisonError::into_inner)[d];
            if self.chance(imp.loss) {
                self.stats.dropped[d].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let copies = if self.chance(imp.duplicate) {
                self.stats.duplicated[d].fetch_add(1, Ordering::Relaxed);
                2
            } else {
                1
            };
            let mut delay = Duration::ZERO;
            if !imp.jitter.is_zero() {
                let nanos = u64::try_from(imp.jitter.as_nanos()).unwrap_or(u64::MAX);
                delay += Duration::from_nanos(self.rng.below(nanos.saturating_add(1)));
            }
            if self.chance(imp.reorder) {
                delay += imp.reorder_delay;
            }
            for _ in 0..copies {
                if delay.is_zero() && held.is_empty() {
                    self.send(&buf[..len]);
                } else {
                    if !delay.is_zero() {
                        self.stats.delayed[d].fetch_add(1, Ordering::Relaxed);
                    }
                    seq += 1;
                    held.push(Reverse((Instant::now() + delay, seq, buf[..len].to_vec())));
                }
            }
        }
    }

    /// Sends every held datagram whose time has come.
    fn release(&mut self, held: &mut BinaryHeap<Held>) {
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
            if let Some(Reverse((_, _, datagram))) = held.pop() {
                self.send(&datagram);
            }
        }
    }

    fn send(&self, datagram: &[u8]) {
        let sent = match self.dir {
            Direction::ToBack => self.to.send(datagram),
            Direction::ToFront => {
                let client = *self.client.lock().unwrap_or_else(PoisonError::into_inner);
                match client {
                    Some(addr) => self.to.send_to(datagram, addr),
                    None => return,
                }
            }
        };
        if sent.is_ok() {
            self.stats.sent[self.dir as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a uniform number in [0, 1).
        p > 0.0 && ((self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().expect("literal")
    }

    /// The u32s of every datagram until none came for the socket's read timeout (read while
    /// the sender sends, so that the socket buffer never overflows).
    fn receive_all(server: &UdpSocket) -> Vec<u32> {
        let mut buf = [0u8; 16];
        let mut seen = Vec::new();
        while let Ok((n, _)) = server.recv_from(&mut buf) {
            assert_eq!(n, 4);
            seen.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
        }
        seen
    }

    /// Datagrams 0..n (big-endian u32s), 20 at a time with a pause between, so that a
    /// relay thread that a busy machine does not schedule for a while loses none in its
    /// socket buffer (those would be counted nowhere).
    fn send_paced(client: &UdpSocket, to: SocketAddr, n: u32) {
        for i in 0..n {
            client.send_to(&i.to_be_bytes(), to).expect("send");
            if i % 20 == 19 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// A perfect link forwards both ways; a lossy one drops about what it says and counts it.
    #[test]
    fn relays_both_ways_and_counts_what_it_drops() {
        let server = UdpSocket::bind(local()).expect("server");
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let relay = Relay::start(local(), server.local_addr().expect("addr"), 1).expect("relay");
        let client = UdpSocket::bind(local()).expect("client");
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");

        client.send_to(b"hello", relay.front()).expect("send");
        let mut buf = [0u8; 64];
        let (n, via) = server.recv_from(&mut buf).expect("server receives");
        assert_eq!(&buf[..n], b"hello");
        server.send_to(b"back", via).expect("reply");
        let (n, _) = client.recv_from(&mut buf).expect("client receives");
        assert_eq!(&buf[..n], b"back");

        relay.set(
            Direction::ToBack,
            Impairment {
                loss: 0.5,
                ..Impairment::default()
            },
        );
        let got = std::thread::scope(|s| {
            let receiver = s.spawn(|| receive_all(&server));
            send_paced(&client, relay.front(), 400);
            receiver.join().expect("receiver").len() as u64
        });
        let s = relay.stats();
        let dropped = s.get(&s.dropped, Direction::ToBack);
        assert_eq!(
            got + dropped,
            400,
            "every datagram delivered or counted as dropped"
        );
        assert!(
            (100..300).contains(&dropped),
            "about half dropped: {dropped}"
        );
    }

    /// Duplication sends copies; reordering makes later datagrams overtake held ones.
    #[test]
    fn duplicates_and_reorders() {
        let server = UdpSocket::bind(local()).expect("server");
        server
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let relay = Relay::start(local(), server.local_addr().expect("addr"), 2).expect("relay");
        relay.set(
            Direction::ToBack,
            Impairment {
                duplicate: 0.2,
                reorder: 0.25,
                reorder_delay: Duration::from_millis(5),
                ..Impairment::default()
            },
        );
        let client = UdpSocket::bind(local()).expect("client");
        let seen = std::thread::scope(|s| {
            let receiver = s.spawn(|| receive_all(&server));
            send_paced(&client, relay.front(), 300);
            receiver.join().expect("receiver")
        });
        let s = relay.stats();
        let dups = s.get(&s.duplicated, Direction::ToBack);
        assert_eq!(seen.len() as u64, 300 + dups);
        assert!(dups > 20, "some duplicated: {dups}");
        assert!(
            seen.windows(2).any(|w| w[1] < w[0]),
            "some datagrams overtaken"
        );
    }
}
