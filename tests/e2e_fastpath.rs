//! End to end through the fast path: two `tandem up` daemons (the real binary) in two network
//! namespaces joined by a veth pair, with the offloads (TUN vnet_hdr, UDP GSO and GRO) on and
//! off and the crypto threads at their default or forced to one. Bulk TCP both ways (sha256
//! checked) and a flood of small UDP datagrams (each one checked, counted at the receiver).
//!
//! Needs root (namespaces, TUN devices); each test fails with a clear message otherwise.
//! Namespaces, processes and files are removed even when a test fails, every wait is bounded,
//! and traffic stays inside the namespaces each test creates.

mod common;
use common::{kit, netns};

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use kit::{
    BIN, Daemon, TempDir, Transfer, ping_once, rx_packets, start_transfer, unique, wait_until,
    write_pattern_file,
};
use netns::{Netns, require_root, veth_pair};
use sha2::{Digest, Sha256};
use tandem::daemon::helper::Pattern;
use tandem::proto::PrivateKey;
use tandem::testkit::key;

/// How the daemons run.
#[derive(Clone, Copy, Debug)]
struct Mode {
    offload: bool,
    /// TANDEM_CRYPTO_THREADS for both daemons (None: the default).
    crypto_threads: Option<u32>,
}

const A4: &str = "10.66.0.1";
const B4: &str = "10.66.0.2";

/// Two namespaces, a veth pair, a daemon in each. Field order is drop order: daemons stop
/// before their namespaces go.
struct Tunnel {
    da: Daemon,
    db: Daemon,
    a: Netns,
    b: Netns,
    dir: TempDir,
    veth_a: String,
    veth_b: String,
}

impl Tunnel {
    fn start(tag: &str, mode: Mode) -> Tunnel {
        require_root();
        let n = unique();
        let a = Netns::new(&format!("tnd-fp-{tag}-a"));
        let b = Netns::new(&format!("tnd-fp-{tag}-b"));
        let veth = veth_pair(&a, &b, &["10.98.0.1/24"], &["10.98.0.2/24"]);
        let dir = TempDir::new(tag);
        let ifname = format!("tndf{}x{n}", std::process::id() % 1000);
        let (port_a, port_b) = (42_000 + n as u16 * 2, 42_001 + n as u16 * 2);
        let seed = (n % 100) as u8;
        let (ka, kb) = (key(2 * seed + 1), key(2 * seed + 2));
        let offload = if mode.offload {
            ""
        } else {
            "offload = false\n"
        };
        // Side a turns offloads off with `tandem up --no-offload` over a config that leaves
        // them on; side b with `offload = false` in its config.
        let config = |me: &PrivateKey, port: u16, addr: &str, peer: &PrivateKey, ep: String| {
            let peer_ip = if addr == A4 { B4 } else { A4 };
            let offload = if addr == A4 { "" } else { offload };
            format!(
                "[interface]\nname = \"{ifname}\"\nprivate_key = \"{}\"\nlisten_port = {port}\n\
                 {offload}address = [\"{addr}/24\"]\n\n[[peer]]\npublic_key = \"{}\"\n\
                 endpoint = \"{ep}\"\nallowed_ips = [\"{peer_ip}/32\"]\n",
                me.to_base64(),
                peer.public_key().to_base64(),
            )
        };
        std::fs::write(
            dir.path("a.toml"),
            config(&ka, port_a, A4, &kb, format!("10.98.0.2:{port_b}")),
        )
        .expect("write a.toml");
        std::fs::write(
            dir.path("b.toml"),
            config(&kb, port_b, B4, &ka, format!("10.98.0.1:{port_a}")),
        )
        .expect("write b.toml");
        let da = start_daemon(&a, &dir.path("a.toml"), mode, !mode.offload);
        let db = start_daemon(&b, &dir.path("b.toml"), mode, false);
        let t = Tunnel {
            da,
            db,
            a,
            b,
            dir,
            veth_a: veth.a,
            veth_b: veth.b,
        };
        t.wait_log_both("interface up");
        let ok = wait_until(Duration::from_secs(10), || ping_once(&t.a, B4));
        assert!(ok, "no ping through the tunnel\n{}", t.logs());
        t
    }

    fn logs(&self) -> String {
        format!("--- a:\n{}\n--- b:\n{}", self.da.log(), self.db.log())
    }

    fn wait_log_both(&self, needle: &str) {
        let ok = wait_until(Duration::from_secs(15), || {
            self.da.log().contains(needle) && self.db.log().contains(needle)
        });
        assert!(ok, "{needle:?} not logged by both daemons\n{}", self.logs());
    }

    /// The daemons' one line about offloads (both must have logged the same).
    fn offload_line(&self) -> String {
        let line = |log: String| {
            log.lines()
                .find(|l| l.contains("offloads:"))
                .map(|l| l[l.find("offloads:").unwrap_or(0)..].to_owned())
                .unwrap_or_default()
        };
        let (la, lb) = (line(self.da.log()), line(self.db.log()));
        assert!(!la.is_empty(), "no offloads line\n{}", self.logs());
        assert_eq!(la, lb);
        la
    }

    fn rx_packets(&self, side_a: bool) -> u64 {
        let (ns, dev) = if side_a {
            (&self.a, &self.veth_a)
        } else {
            (&self.b, &self.veth_b)
        };
        rx_packets(ns, dev)
    }

    /// Sends `size` pseudo-random bytes over TCP through the tunnel, from a to b or b to a,
    /// and checks the sha256 of what arrived.
    fn tcp_transfer(&self, from_a: bool, size: usize, port: u16) {
        let (src_ns, dst_ns, dst_ip) = if from_a {
            (&self.a, &self.b, B4)
        } else {
            (&self.b, &self.a, A4)
        };
        let tag = if from_a { "ab" } else { "ba" };
        let src = self.dir.path(&format!("send-{tag}.bin"));
        let dst = self.dir.path(&format!("recv-{tag}.bin"));
        let want = write_pattern_file(&src, size, 0xfa57 + u64::from(port));
        let listen = format!("{dst_ip}:{port}");
        let Transfer { sender, receiver } = start_transfer(src_ns, dst_ns, &listen, &src, &dst, 60);
        let sent = sender.output_timeout(Duration::from_secs(120));
        assert!(
            sent.status.success(),
            "sender failed: {}\n{}",
            String::from_utf8_lossy(&sent.stderr),
            self.logs()
        );
        let received = receiver.output_timeout(Duration::from_secs(30));
        assert!(
            received.status.success(),
            "receiver failed: {}",
            String::from_utf8_lossy(&received.stderr)
        );
        let got = std::fs::read(&dst).expect("read received data");
        assert_eq!(got.len(), size, "{tag}: length");
        assert_eq!(Sha256::digest(&got), want, "{tag}: sha256 differs");
        eprintln!(
            "{tag}: {}",
            String::from_utf8_lossy(&received.stdout).trim()
        );
    }
}

fn start_daemon(ns: &Netns, config: &std::path::Path, mode: Mode, no_offload_flag: bool) -> Daemon {
    let config = config.to_string_lossy();
    let mut args = vec!["up", &config];
    if no_offload_flag {
        args.push("--no-offload");
    }
    let mut cmd = ns.command(BIN, &args);
    cmd.env_remove("TANDEM_CRYPTO_THREADS");
    if let Some(n) = mode.crypto_threads {
        cmd.env("TANDEM_CRYPTO_THREADS", n.to_string());
    }
    Daemon::spawn(cmd, &format!("tandem in {}", ns.name()))
}

/// Datagrams of the flood: sequence number, then bytes derived from it, then a checksum.
const FLOOD_LEN: usize = 64;

fn flood_datagram(seq: u32) -> [u8; FLOOD_LEN] {
    let mut d = [0u8; FLOOD_LEN];
    d[..4].copy_from_slice(&seq.to_be_bytes());
    let mut p = Pattern::new(u64::from(seq));
    p.fill(&mut d[8..FLOOD_LEN - 8]);
    let sum = Sha256::digest(&d[..FLOOD_LEN - 8]);
    d[FLOOD_LEN - 8..].copy_from_slice(&sum[..8]);
    d
}

/// Sends `count` 64-byte datagrams from a to b through the tunnel in paced bursts; the
/// receiver checks each one and counts the distinct ones. Returns how many arrived.
fn udp_flood(t: &Tunnel, count: u32, port: u16) -> usize {
    let to: SocketAddr = format!("{B4}:{port}").parse().expect("addr");
    let b_path = t.b.path();
    let a_path = t.a.path();
    // Receiver: its own thread in b's namespace, ready before the sender starts.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || -> Result<(usize, usize), String> {
        tandem::os::enter_netns(&b_path).map_err(|e| format!("enter netns: {e}"))?;
        let sock = UdpSocket::bind(to).map_err(|e| format!("bind {to}: {e}"))?;
        // Room for the whole flood (root may pass rmem_max).
        let _ = tandem::os::force_buffer_sizes(&sock, 16 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let mut seen = HashSet::new();
        let mut bad = 0;
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(60);
        // Until everything arrived, or 1.5 s of silence, or the deadline.
        while seen.len() < count as usize && Instant::now() < deadline {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let seq = buf
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(u32::MAX);
                    if n == FLOOD_LEN && seq < count && buf[..n] == flood_datagram(seq) {
                        seen.insert(seq);
                    } else {
                        bad += 1;
                    }
                }
                Err(_) => break,
            }
        }
        Ok((seen.len(), bad))
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("receiver ready");
    let sender = std::thread::spawn(move || -> Result<(), String> {
        tandem::os::enter_netns(&a_path).map_err(|e| format!("enter netns: {e}"))?;
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        // Bursts of 25, then a pause (at most ~12k packets/s): fast enough for batches,
        // slow enough not to overflow the TUN queue (500 packets) while a busy machine
        // schedules a debug-build daemon (bursts of 50 per ms lost 20% under load).
        for burst in 0..count.div_ceil(25) {
            for seq in burst * 25..((burst + 1) * 25).min(count) {
                sock.send_to(&flood_datagram(seq), to)
                    .map_err(|e| format!("send {seq}: {e}"))?;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    });
    sender
        .join()
        .expect("sender thread")
        .expect("sender in namespace a");
    let (arrived, bad) = receiver
        .join()
        .expect("receiver thread")
        .expect("receiver in namespace b");
    assert_eq!(bad, 0, "corrupted or foreign datagrams arrived");
    eprintln!("flood: {arrived} of {count} datagrams arrived intact");
    arrived
}

/// The flood over a lossy medium (UDP, kernel queues) may lose a few on a loaded machine;
/// anything beyond 1% is a driver problem.
fn assert_flood_arrived(arrived: usize, count: u32, t: &Tunnel) {
    assert!(
        arrived * 100 >= count as usize * 99,
        "only {arrived} of {count} datagrams arrived\n{}\n--- links in a:\n{}\n--- links in b:\n{}",
        t.logs(),
        t.a.ip(&["-s", "link"]),
        t.b.ip(&["-s", "link"]),
    );
}

#[test]
fn tcp_both_ways_with_offloads_and_parallel_crypto() {
    let t = Tunnel::start(
        "on",
        Mode {
            offload: true,
            crypto_threads: Some(2),
        },
    );
    let line = t.offload_line();
    assert!(
        line.contains("tun_vnet_hdr=on")
            && line.contains("udp_gso=on(")
            && line.contains("udp_gro=on")
            && line.contains("crypto_threads=2"),
        "{line}"
    );
    let size = 32 << 20;
    let before = t.rx_packets(false);
    t.tcp_transfer(true, size, 5101);
    // ~1452-byte datagrams: without GSO, b's veth would see one packet per datagram; with
    // it, the segments travel as a few large packets.
    let datagrams = size as u64 / 1400;
    let seen = t.rx_packets(false) - before;
    assert!(
        seen < datagrams / 2,
        "b's veth saw {seen} packets for ~{datagrams} datagrams: GSO not in use?"
    );
    t.tcp_transfer(false, size, 5102);
}

#[test]
fn tcp_both_ways_without_offloads_on_one_crypto_thread() {
    let t = Tunnel::start(
        "off",
        Mode {
            offload: false,
            crypto_threads: Some(1),
        },
    );
    let line = t.offload_line();
    assert!(
        line.contains("tun_vnet_hdr=off")
            && line.contains("udp_gso=off")
            && line.contains("udp_gro=off")
            && line.contains("crypto_threads=1"),
        "{line}"
    );
    let size = 16 << 20;
    let before = t.rx_packets(false);
    t.tcp_transfer(true, size, 5103);
    // One veth packet per datagram now.
    let datagrams = size as u64 / 1420;
    let seen = t.rx_packets(false) - before;
    assert!(
        seen >= datagrams * 9 / 10,
        "b's veth saw only {seen} packets for ~{datagrams} datagrams"
    );
    t.tcp_transfer(false, size, 5104);
}

#[test]
fn tcp_with_offloads_on_one_crypto_thread() {
    let t = Tunnel::start(
        "onc1",
        Mode {
            offload: true,
            crypto_threads: Some(1),
        },
    );
    assert!(t.offload_line().contains("crypto_threads=1"));
    t.tcp_transfer(true, 16 << 20, 5105);
    t.tcp_transfer(false, 16 << 20, 5106);
}

#[test]
fn udp_flood_of_small_packets_with_offloads() {
    let t = Tunnel::start(
        "fl-on",
        Mode {
            offload: true,
            crypto_threads: None,
        },
    );
    let arrived = udp_flood(&t, 10_000, 6101);
    assert_flood_arrived(arrived, 10_000, &t);
}

#[test]
fn udp_flood_of_small_packets_without_offloads() {
    let t = Tunnel::start(
        "fl-off",
        Mode {
            offload: false,
            crypto_threads: Some(1),
        },
    );
    let arrived = udp_flood(&t, 10_000, 6102);
    assert_flood_arrived(arrived, 10_000, &t);
}
