//! The many-peer bench's load generator: one process that plays N real WireGuard peers, each
//! a tandem `Device` (the pure core) with its own static key and its own UDP source port,
//! against a real server daemon (tandem or wireguard-go) through real sockets.
//!
//!   loadgen peers N SEED               `[Peer]` blocks for the server's `wg setconf`: peer i's
//!                                      public key and its inner address as AllowedIPs
//!   loadgen private-key SEED I         peer I's private key (for a real client daemon)
//!   loadgen address I                  peer I's inner address
//!   loadgen run SERVER SERVER_PUBLIC SERVER_INNER N SEED [--from F] [--ping K] [--rounds R]
//!                                      [--timeout S] [--sources PREFIX] [--start-at UNIX_S]
//!       peers F..F+N all start a handshake at once (each queues one ICMP echo request to
//!       SERVER_INNER, which makes it initiate); prints the time until every one of them has a
//!       session (or how many had one at the timeout), then, with --ping K, K of them send R
//!       rounds of echo requests through their sessions and it prints the round trips.
//!
//! One process holds at most as many peers as it may open sockets (`ulimit -n`; 20000 on the
//! machines here, which deny raising it): the bench runs one process per 15000 peers with
//! `--from` and a common `--start-at`, and takes the latest finish.
//!
//! With `--sources 10.91.0.0/16` each played peer sends from its own address of that prefix
//! (the bench makes the prefix local with `ip route add local 10.91.0.0/16 dev lo`), as N
//! laptops would: servers rate-limit handshakes per source address.
//!
//! Peer i's inner address is 10.64.0.0 + i + 1 (so up to 2^22 - 2 peers fit in 10.64.0.0/10).
//! Keys derive from SEED and i, so the server's config and this process agree without
//! exchanging anything. Built with `cargo build --release --example loadgen`.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::UdpSocket as MioUdp;
use mio::{Events, Interest, Poll, Token};
use tandem::driver::clock::Clock;
use tandem::proto::prefix::Prefix;
use tandem::proto::{
    Decapsulated, Device, Encapsulated, Event, HEADROOM, Now, PeerConfig, PrivateKey, PublicKey,
    TAILROOM,
};
use tandem::testkit::rng::SplitMix64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn usage() -> String {
    "usage: loadgen peers N SEED | private-key SEED I | address I | run SERVER SERVER_PUBLIC \
     SERVER_INNER N SEED [--from F] [--ping K] [--rounds R] [--timeout S]"
        .to_owned()
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    let s = args
        .get(i)
        .ok_or_else(|| format!("missing {what}\n{}", usage()))?;
    s.parse().map_err(|_| format!("bad {what}: {s:?}"))
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("peers") => {
            let n: u32 = arg(args, 1, "N")?;
            let seed: u64 = arg(args, 2, "SEED")?;
            let mut out = String::with_capacity(n as usize * 110);
            for i in 0..n {
                out.push_str(&format!(
                    "[Peer]\nPublicKey = {}\nAllowedIPs = {}/32\n\n",
                    private_key(seed, i).public_key().to_base64(),
                    address(i)
                ));
            }
            print!("{out}");
            Ok(())
        }
        Some("private-key") => {
            let seed: u64 = arg(args, 1, "SEED")?;
            let i: u32 = arg(args, 2, "I")?;
            println!("{}", private_key(seed, i).to_base64());
            Ok(())
        }
        Some("address") => {
            println!("{}", address(arg(args, 1, "I")?));
            Ok(())
        }
        Some("run") => load(args),
        _ => Err(usage()),
    }
}

/// Peer `i`'s static key: 32 bytes of splitmix64 output from a per-peer seed, clamped.
fn private_key(seed: u64, i: u32) -> PrivateKey {
    let mut g = SplitMix64::new(seed ^ u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&g.next_u64().to_le_bytes());
    }
    PrivateKey::from_bytes(bytes).clamped()
}

/// The source address of played peer `k`: with `--sources P`, the `k`-th host address of
/// P, wrapping around (servers rate-limit handshakes per source address, as the kernel does:
/// 20 per second, so peers that share one address queue behind each other); else any.
fn source_address(sources: Option<Prefix>, k: u32) -> Ipv4Addr {
    match sources {
        Some(p) => {
            let base = match p.addr() {
                std::net::IpAddr::V4(a) => u32::from(a),
                std::net::IpAddr::V6(_) => return Ipv4Addr::UNSPECIFIED,
            };
            let hosts = (1u64 << (32 - u32::from(p.len()))).saturating_sub(2).max(1);
            Ipv4Addr::from(base + 1 + (u64::from(k) % hosts) as u32)
        }
        None => Ipv4Addr::UNSPECIFIED,
    }
}

fn address(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + i + 1)
}

/// One played peer.
struct Played {
    dev: Device,
    sock: MioUdp,
    inner: Ipv4Addr,
    established: bool,
}

fn load(args: &[String]) -> Result<(), String> {
    let server: SocketAddr = arg(args, 1, "SERVER")?;
    let server_public = PublicKey::from_base64(args.get(2).ok_or_else(usage)?)
        .map_err(|e| format!("SERVER_PUBLIC: {e}"))?;
    let server_inner: Ipv4Addr = arg(args, 3, "SERVER_INNER")?;
    let n: u32 = arg(args, 4, "N")?;
    let seed: u64 = arg(args, 5, "SEED")?;
    let (mut from, mut ping, mut rounds, mut timeout) = (0u32, 0u32, 20u32, 60u64);
    let mut sources: Option<Prefix> = None;
    let mut start_at: Option<f64> = None;
    let mut i = 6;
    while i < args.len() {
        match args[i].as_str() {
            "--from" => from = arg(args, i + 1, "--from")?,
            "--ping" => ping = arg(args, i + 1, "--ping")?,
            "--rounds" => rounds = arg(args, i + 1, "--rounds")?,
            "--timeout" => timeout = arg(args, i + 1, "--timeout")?,
            "--sources" => sources = Some(arg(args, i + 1, "--sources")?),
            "--start-at" => start_at = Some(arg(args, i + 1, "--start-at")?),
            other => return Err(format!("unknown option {other}")),
        }
        i += 2;
    }

    let clock = Clock::new();
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut peers = Vec::with_capacity(n as usize);
    let setup = Instant::now();
    for k in 0..n {
        let idx = from + k;
        let key = private_key(seed, idx);
        let mut rng_seed = [0u8; 32];
        rng_seed[..8].copy_from_slice(&(seed ^ u64::from(idx)).to_le_bytes());
        rng_seed[8..12].copy_from_slice(&idx.to_le_bytes());
        let mut dev = Device::new(Some(key), rng_seed);
        let mut config = PeerConfig::new(server_public);
        config.endpoint = Some(server);
        config.allowed_ips = vec![Prefix::host(server_inner.into())];
        dev.upsert_peer(&config)
            .map_err(|e| format!("peer {idx}: {e}"))?;
        let bind = SocketAddr::new(source_address(sources, idx).into(), 0);
        let std_sock = UdpSocket::bind(bind).map_err(|e| {
            format!(
                "peer {idx}: cannot open a UDP socket on {bind} ({e}); raise `ulimit -n` \
                 above N, and make the --sources prefix local (ip route add local P dev lo)"
            )
        })?;
        std_sock
            .set_nonblocking(true)
            .map_err(|e| format!("nonblocking: {e}"))?;
        let mut sock = MioUdp::from_std(std_sock);
        poll.registry()
            .register(&mut sock, Token(k as usize), Interest::READABLE)
            .map_err(|e| format!("register: {e}"))?;
        peers.push(Played {
            dev,
            sock,
            inner: address(idx),
            established: false,
        });
    }
    eprintln!(
        "loadgen: {n} peers set up in {:.2} s",
        setup.elapsed().as_secs_f64()
    );

    let mut buf = vec![0u8; HEADROOM + 2048 + TAILROOM];
    let mut out = vec![0u8; 4096];

    // Several processes (see the bench) start together at a wall-clock time.
    if let Some(at) = start_at {
        let wait = at - unix_seconds();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
    // Everyone queues one echo request at once: with no session yet, each initiates.
    let start = Instant::now();
    for (k, p) in peers.iter_mut().enumerate() {
        let now = clock.now();
        let len = echo_request(&mut buf[HEADROOM..], p.inner, server_inner, 0, k as u16);
        let _ = p.dev.encapsulate(&mut buf, len, now);
        flush(p, &mut out, now);
    }
    let mut established = 0u32;
    let mut events = Events::with_capacity(1024);
    let limit = Duration::from_secs(timeout);
    let mut last_tick = Instant::now();
    while established < n && start.elapsed() < limit {
        let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
        let now = clock.now();
        for ev in events.iter() {
            let Some(p) = peers.get_mut(ev.token().0) else {
                continue;
            };
            established += receive(p, &mut buf, &mut out, now, |_, _| {});
        }
        // Retransmissions (and initiations with a cookie's mac2) come from the peers' timers.
        if last_tick.elapsed() >= Duration::from_millis(100) {
            last_tick = Instant::now();
            for p in peers.iter_mut().filter(|p| !p.established) {
                p.dev.update_timers(now);
                flush(p, &mut out, now);
            }
        }
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "handshakes {established} of {n} in {took:.3} s, done at {:.3}",
        unix_seconds()
    );
    if established < n {
        return Err(format!("only {established} of {n} peers got a session"));
    }

    if ping > 0 {
        let active = ping.min(n) as usize;
        let mut rtts = Vec::with_capacity(active * rounds as usize);
        for round in 1..=rounds {
            let mut waiting: HashSet<usize> = (0..active).collect();
            let sent_at = Instant::now();
            for (k, p) in peers.iter_mut().take(active).enumerate() {
                let now = clock.now();
                let len = echo_request(
                    &mut buf[HEADROOM..],
                    p.inner,
                    server_inner,
                    round as u16,
                    k as u16,
                );
                if let Encapsulated::Send { endpoint, len, .. } =
                    p.dev.encapsulate(&mut buf, len, now)
                {
                    let _ = p.sock.send_to(&buf[..len], endpoint);
                }
                flush(p, &mut out, now);
            }
            while !waiting.is_empty() && sent_at.elapsed() < Duration::from_secs(1) {
                let _ = poll.poll(&mut events, Some(Duration::from_millis(10)));
                let now = clock.now();
                for ev in events.iter() {
                    let k = ev.token().0;
                    let Some(p) = peers.get_mut(k) else { continue };
                    receive(p, &mut buf, &mut out, now, |packet, _| {
                        if is_echo_reply(packet, round as u16) && waiting.remove(&k) {
                            rtts.push(sent_at.elapsed());
                        }
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        rtts.sort();
        let expected = active * rounds as usize;
        if let (Some(min), Some(max)) = (rtts.first(), rtts.last()) {
            println!(
                "ping {} of {expected} answered, rtt min/median/max = {:.3}/{:.3}/{:.3} ms",
                rtts.len(),
                min.as_secs_f64() * 1e3,
                rtts[rtts.len() / 2].as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            );
        } else {
            return Err("no echo reply".into());
        }
    }
    Ok(())
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Sends what the peer's core has queued.
fn flush(p: &mut Played, out: &mut [u8], now: Now) {
    while let Some(t) = p.dev.poll_transmit(out, now) {
        let _ = p.sock.send_to(&out[..t.len], t.endpoint);
    }
}

/// Drains the peer's socket through its core; `deliver` sees each inner packet. Returns 1
/// when this made the peer's first session.
fn receive(
    p: &mut Played,
    buf: &mut [u8],
    out: &mut [u8],
    now: Now,
    mut deliver: impl FnMut(&[u8], Now),
) -> u32 {
    let mut newly = 0;
    while let Ok((len, src)) = p.sock.recv_from(buf) {
        if let Decapsulated::Deliver { range, .. } = p.dev.decapsulate(src, buf, len, now) {
            deliver(&buf[range], now);
        }
        flush(p, out, now);
        while let Some(ev) = p.dev.poll_event() {
            if matches!(ev, Event::HandshakeCompleted { .. }) && !p.established {
                p.established = true;
                newly = 1;
            }
        }
    }
    newly
}

/// Writes an IPv4 ICMP echo request (checksums filled in, so the server's kernel answers it)
/// into `buf`; its length.
fn echo_request(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, seq: u16, id: u16) -> usize {
    const PAYLOAD: usize = 56;
    let total = 20 + 8 + PAYLOAD;
    let p = &mut buf[..total];
    p.fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 1; // ICMP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 8; // echo request
    p[24..26].copy_from_slice(&id.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    total
}

fn is_echo_reply(packet: &[u8], seq: u16) -> bool {
    packet.len() >= 28
        && packet[0] >> 4 == 4
        && packet[9] == 1
        && packet[20] == 0
        && packet[26..28] == seq.to_be_bytes()
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
