//! `tandem demo-helper`: a small TCP sender and receiver that the demo and the end-to-end
//! tests run inside network namespaces (`ip netns exec`) to move data through the tunnel.
//!
//! The sender writes a file, or a deterministic pseudo-random stream the receiver can check
//! byte for byte without a copy. Every wait is bounded.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Bytes per read/write call.
const CHUNK: usize = 64 * 1024;

/// A reproducible byte stream (xorshift64*), so that the receiver can check what arrived
/// without the sender's data.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        // xorshift needs a non-zero state.
        Pattern { state: seed | 1 }
    }

    /// Fills `buf` with the next bytes of the stream. `buf.len()` must be a multiple of 8 for
    /// the stream to be the same however it is cut; the helpers use fixed chunks.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            let n = word.len();
            word.copy_from_slice(&v[..n]);
        }
    }
}

/// What one transfer measured.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Transfer {
    pub fn mbit_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        self.bytes as f64 * 8.0 / secs / 1e6
    }
}

impl std::fmt::Display for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes in {:.3} s: {:.1} Mbit/s",
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.mbit_per_s()
        )
    }
}

/// Where the receiver puts what arrives.
#[derive(Debug, Clone, Copy)]
pub enum Sink<'a> {
    /// Write it to this file.
    File(&'a Path),
    /// Check it against `Pattern::new(seed)` and expect exactly `bytes`.
    Pattern { seed: u64, bytes: u64 },
}

/// Accepts one connection on `listen` (within `timeout`), reads until the sender closes (each
/// read within `timeout`), and stores or checks the data. Prints `listening on ADDR` to
/// stdout once bound, so a caller knows when to start the sender.
pub fn receive(listen: SocketAddr, sink: Sink<'_>, timeout: Duration) -> anyhow::Result<Transfer> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    bail!("no connection on {listen} within {timeout:?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("accept failed"),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    let start = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    match sink {
        Sink::File(path) => {
            let mut out = BufWriter::new(
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
            );
            loop {
                let n = read_some(&mut stream, &mut buf)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
                total += n as u64;
            }
            out.flush()?;
        }
        Sink::Pattern { seed, bytes } => {
            let mut pattern = Pattern::new(seed);
            let mut expected = vec![0u8; CHUNK];
            // Bytes of `expected` not compared yet (reads do not follow chunk boundaries).
            let mut have = 0usize;
            let mut used = 0usize;
            loop {
                let n = read_some(&mut stream, &mut buf)?;
                if n == 0 {
                    break;
                }
                let mut got = &buf[..n];
                while !got.is_empty() {
                    if used == have {
                        pattern.fill(&mut expected);
                        have = CHUNK;
                        used = 0;
                    }
                    let take = got.len().min(have - used);
                    if got[..take] != expected[used..used + take] {
                        bail!("data corrupted near byte {}", total);
                    }
                    used += take;
                    total += take as u64;
                    got = &got[take..];
                }
            }
            if total != bytes {
                bail!("received {total} bytes, expected {bytes}");
            }
        }
    }
    Ok(Transfer {
        bytes: total,
        elapsed: start.elapsed(),
    })
}

fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<usize> {
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receive failed (or timed out)"),
        }
    }
}

/// What the sender sends.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    File(&'a Path),
    Pattern { seed: u64, bytes: u64 },
}

/// Connects to `to` (retrying for up to `timeout`, as the receiver or the tunnel may not be
/// up yet), sends everything and closes.
pub fn send(to: SocketAddr, source: Source<'_>, timeout: Duration) -> anyhow::Result<Transfer> {
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "connect failed, retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot connect to {to}")),
        }
    };
    stream.set_write_timeout(Some(timeout))?;
    let start = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    match source {
        Source::File(path) => {
            let mut file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).context("send failed")?;
                total += n as u64;
            }
        }
        Source::Pattern { seed, bytes } => {
            let mut pattern = Pattern::new(seed);
            while total < bytes {
                pattern.fill(&mut buf);
                let n = usize::try_from(bytes - total).map_or(CHUNK, |left| left.min(CHUNK));
                stream.write_all(&buf[..n]).context("send failed")?;
                total += n as u64;
            }
        }
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    // Wait for the receiver to close, so the time covers delivery, not just buffering.
    stream.set_read_timeout(Some(timeout))?;
    let mut sink = [0u8; 64];
    while read_some(&mut stream, &mut sink)? > 0 {}
    Ok(Transfer {
        bytes: total,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_seeded() {
        let mut a = Pattern::new(7);
        let mut b = Pattern::new(7);
        let mut c = Pattern::new(8);
        let (mut x, mut y, mut z) = ([0u8; 64], [0u8; 64], [0u8; 64]);
        a.fill(&mut x);
        b.fill(&mut y);
        c.fill(&mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(x, [0u8; 64]);
    }

    #[test]
    fn pattern_transfer_over_loopback_is_checked() {
        let bytes = 3 * CHUNK as u64 + 12_345;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let receiver = std::thread::spawn(move || {
            receive(
                addr,
                Sink::Pattern { seed: 42, bytes },
                Duration::from_secs(10),
            )
        });
        let sent = send(
            addr,
            Source::Pattern { seed: 42, bytes },
            Duration::from_secs(10),
        )
        .expect("send");
        assert_eq!(sent.bytes, bytes);
        let got = receiver.join().expect("thread").expect("receive");
        assert_eq!(got.bytes, bytes);
    }

    #[test]
    fn corrupted_or_short_streams_are_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let receiver = std::thread::spawn(move || {
            receive(
                addr,
                Sink::Pattern {
                    seed: 1,
                    bytes: 1000,
                },
                Duration::from_secs(10),
            )
        });
        // Another seed: the first bytes already differ.
        send(
            addr,
            Source::Pattern {
                seed: 2,
                bytes: 1000,
            },
            Duration::from_secs(10),
        )
        .ok();
        let err = receiver.join().expect("thread").expect_err("must fail");
        assert!(err.to_string().contains("corrupted"), "{err:#}");
    }
}
