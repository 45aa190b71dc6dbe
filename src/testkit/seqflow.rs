//! Sequence-numbered UDP traffic for fault tests and the fault bench: a paced sender, and a
//! receiver that tells lost, duplicated and reordered datagrams apart (which a ping or a TCP
//! stream hides: TCP repairs loss and order, ping only counts).
//!
//! Each datagram starts with a run tag (so that stray datagrams of an earlier run are not
//! counted) and its sequence number, both big-endian `u64`s, then padding up to the length.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Bytes of tag and sequence number at the start of each datagram.
pub const HEADER: usize = 16;

/// What arrived of `sent` datagrams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    pub sent: u64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Datagrams whose sequence number had already arrived.
    pub duplicates: u64,
    /// Datagrams that arrived after a higher sequence number.
    pub reordered: u64,
}

impl Delivery {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.unique)
    }
}

/// Sends `count` datagrams of `len` bytes (at least [`HEADER`]) tagged `tag` to `to`, paced
/// at about `rate` datagrams per second (in bursts of one millisecond's worth). A full send
/// buffer is waited out, not counted as sent. Returns how many were sent.
pub fn send_sequence(
    sock: &UdpSocket,
    to: SocketAddr,
    tag: u64,
    count: u64,
    rate: u64,
    len: usize,
) -> io::Result<u64> {
    let mut datagram = vec![0u8; len.max(HEADER)];
    datagram[..8].copy_from_slice(&tag.to_be_bytes());
    let per_ms = (rate / 1000).max(1);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        // Bursts on a millisecond schedule: never ahead of `rate`, catching up after a stall.
        let due = (u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1)
            .saturating_mul(per_ms)
            .min(count);
        while sent < due {
            datagram[8..16].copy_from_slice(&sent.to_be_bytes());
            match sock.send_to(&datagram, to) {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(100))
                }
                Err(e) => return Err(e),
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(sent)
}

/// Counts what arrives of a sequence.
#[derive(Debug, Clone)]
pub struct SeqReceiver {
    tag: u64,
    seen: Vec<bool>,
    highest: Option<u64>,
    delivery: Delivery,
}

impl SeqReceiver {
    /// A receiver for sequence numbers `0..count` tagged `tag`.
    pub fn new(tag: u64, count: u64) -> SeqReceiver {
        SeqReceiver {
            tag,
            seen: vec![false; usize::try_from(count).unwrap_or(usize::MAX)],
            highest: None,
            delivery: Delivery {
                sent: count,
                ..Delivery::default()
            },
        }
    }

    /// Records one received datagram; anything not of this sequence is ignored.
    pub fn record(&mut self, datagram: &[u8]) {
        let (Some(tag), Some(seq)) = (datagram.get(..8), datagram.get(8..16)) else {
            return;
        };
        let tag = u64::from_be_bytes(tag.try_into().expect("8 bytes"));
        let seq = u64::from_be_bytes(seq.try_into().expect("8 bytes"));
        let Some(slot) = usize::try_from(seq).ok().and_then(|i| self.seen.get_mut(i)) else {
            return;
        };
        if tag != self.tag {
            return;
        }
        if *slot {
            self.delivery.duplicates += 1;
            return;
        }
        *slot = true;
        self.delivery.unique += 1;
        match self.highest {
            Some(h) if seq < h => self.delivery.reordered += 1,
            _ => self.highest = Some(seq),
        }
    }

    /// Whether every datagram of the sequence has arrived.
    pub fn complete(&self) -> bool {
        self.delivery.unique == self.delivery.sent
    }

    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// Receives on `sock` until the sequence is complete, nothing has arrived for `quiet`, or
    /// `limit` has passed since the call.
    pub fn receive(&mut self, sock: &UdpSocket, quiet: Duration, limit: Duration) -> Delivery {
        let start = Instant::now();
        let mut last = Instant::now();
        let mut buf = vec![0u8; 65536];
        let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
        while !self.complete() && start.elapsed() < limit && last.elapsed() < quiet {
            if let Ok(n) = sock.recv(&mut buf) {
                self.record(&buf[..n]);
                last = Instant::now();
            }
        }
        self.delivery
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(tag: u64, seq: u64) -> Vec<u8> {
        let mut d = tag.to_be_bytes().to_vec();
        d.extend_from_slice(&seq.to_be_bytes());
        d
    }

    #[test]
    fn tells_loss_duplicates_and_reordering_apart() {
        let mut r = SeqReceiver::new(7, 5);
        for seq in [0, 2, 1, 2, 4] {
            r.record(&datagram(7, seq));
        }
        r.record(&datagram(8, 3)); // another run
        r.record(&datagram(7, 99)); // out of range
        r.record(b"short");
        let d = r.delivery();
        assert_eq!(
            d,
            Delivery {
                sent: 5,
                unique: 4,
                duplicates: 1,
                reordered: 1
            }
        );
        assert_eq!(d.lost(), 1);
        assert!(!r.complete());
    }

    #[test]
    fn paced_sequence_over_loopback_arrives_whole() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let mut r = SeqReceiver::new(1, 200);
        let sender = std::thread::spawn(move || send_sequence(&tx, to, 1, 200, 20_000, 64));
        let d = r.receive(&rx, Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(sender.join().expect("sender").expect("sent"), 200);
        assert_eq!(d.unique, 200);
        assert_eq!(d.duplicates, 0);
    }
}
