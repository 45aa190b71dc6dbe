//! End to end: two `tandem up` daemons (the real binary) in two network namespaces joined by
//! a veth pair. Needs root (namespaces, TUN devices); each test fails with a clear message
//! otherwise. Every namespace, process and temporary file is removed even when a test fails,
//! every wait is bounded, and traffic stays inside the namespaces each test creates.

mod common;
use common::{kit, netns};

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kit::{
    BIN, Daemon, TempDir, Transfer, ping_once, rx_packets, start_transfer, unique, wait_until,
    write_pattern_file,
};
use netns::{ChildGuard, Netns, require_root, veth_pair};
use sha2::{Digest, Sha256};
use tandem::proto::{self, Device, HEADROOM, Now, PresharedKey, PrivateKey, TAILROOM};
use tandem::testkit::key;

/// Options of a two-site tunnel.
#[derive(Clone, Default)]
struct Opts {
    /// Outer (veth) addresses and endpoints over IPv6 instead of IPv4.
    outer_v6: bool,
    /// Preshared keys of a's and b's peer entries.
    psk_a: Option<PresharedKey>,
    psk_b: Option<PresharedKey>,
    /// b has no endpoint for a (it learns it from a's handshake).
    b_without_endpoint: bool,
    /// a's persistent keepalive towards b.
    keepalive_a: Option<u16>,
    /// Extra allowed prefixes for b in a's config (routes in a's namespace).
    extra_allowed_a: Vec<&'static str>,
    /// Extra TOML appended to a's config (more peers).
    extra_peers_a: String,
    /// Another address for b's interface.
    extra_address_b: Option<&'static str>,
    /// b's fwmark.
    fwmark_b: Option<u32>,
    /// `offload = false` on both sides.
    no_offload: bool,
}

/// Two namespaces with a veth pair between them and a config for a tandem daemon in each.
/// Field order is drop order: daemons stop before their namespaces are deleted.
struct Tunnel {
    da: Option<Daemon>,
    db: Option<Daemon>,
    a: Netns,
    b: Netns,
    dir: TempDir,
    opts: Opts,
    ifname: String,
    port_a: u16,
    port_b: u16,
    key_a: PrivateKey,
    key_b: PrivateKey,
    veth_b: String,
}

const A4: &str = "10.77.0.1";
const B4: &str = "10.77.0.2";
const A6: &str = "fd77::1";
const B6: &str = "fd77::2";

impl Tunnel {
    fn new(tag: &str, opts: Opts) -> Tunnel {
        require_root();
        let n = unique();
        let a = Netns::new(&format!("tnd-e2e-{tag}-a"));
        let b = Netns::new(&format!("tnd-e2e-{tag}-b"));
        let veth = veth_pair(
            &a,
            &b,
            &["10.99.0.1/24", "fd99::1/64"],
            &["10.99.0.2/24", "fd99::2/64"],
        );
        let pid_part = std::process::id() % 1000;
        let seed = (n % 100) as u8;
        let t = Tunnel {
            da: None,
            db: None,
            a,
            b,
            dir: TempDir::new(tag),
            opts,
            ifname: format!("tnde{pid_part}x{n}"),
            port_a: 40_000 + (n as u16) * 2,
            port_b: 40_001 + (n as u16) * 2,
            key_a: key(2 * seed + 1),
            key_b: key(2 * seed + 2),
            veth_b: veth.b,
        };
        t.write_config_a(&t.config_a());
        t.write_config_b();
        t
    }

    fn outer(&self, side_a: bool) -> String {
        match (self.opts.outer_v6, side_a) {
            (false, true) => format!("10.99.0.1:{}", self.port_a),
            (false, false) => format!("10.99.0.2:{}", self.port_b),
            (true, true) => format!("[fd99::1]:{}", self.port_a),
            (true, false) => format!("[fd99::2]:{}", self.port_b),
        }
    }

    fn psk_line(psk: &Option<PresharedKey>) -> String {
        psk.as_ref()
            .map(|p| format!("preshared_key = \"{}\"\n", p.to_base64()))
            .unwrap_or_default()
    }

    fn offload_line(&self) -> &'static str {
        if self.opts.no_offload {
            "offload = false\n"
        } else {
            ""
        }
    }

    fn config_a(&self) -> String {
        let mut allowed = vec![format!("\"{B4}/32\""), format!("\"{B6}/128\"")];
        allowed.extend(self.opts.extra_allowed_a.iter().map(|p| format!("\"{p}\"")));
        let keepalive = self
            .opts
            .keepalive_a
            .map(|k| format!("persistent_keepalive = {k}\n"))
            .unwrap_or_default();
        format!(
            "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\nlisten_port = {}\n{}\
             address = [\"{A4}/24\", \"{A6}/64\"]\n\n\
             [[peer]]\nname = \"b\"\npublic_key = \"{}\"\n{}endpoint = \"{}\"\n\
             allowed_ips = [{}]\n{keepalive}\n{}",
            self.ifname,
            self.key_a.to_base64(),
            self.port_a,
            self.offload_line(),
            self.key_b.public_key().to_base64(),
            Self::psk_line(&self.opts.psk_a),
            self.outer(false),
            allowed.join(", "),
            self.opts.extra_peers_a,
        )
    }

    fn config_b(&self) -> String {
        let endpoint = if self.opts.b_without_endpoint {
            String::new()
        } else {
            format!("endpoint = \"{}\"\n", self.outer(true))
        };
        let extra = self
            .opts
            .extra_address_b
            .map(|a| format!(", \"{a}\""))
            .unwrap_or_default();
        let fwmark = self
            .opts
            .fwmark_b
            .map(|m| format!("fwmark = {m}\n"))
            .unwrap_or_default();
        format!(
            "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\nlisten_port = {}\n{fwmark}{}\
             address = [\"{B4}/24\", \"{B6}/64\"{extra}]\n\n\
             [[peer]]\nname = \"a\"\npublic_key = \"{}\"\n{}{endpoint}\
             allowed_ips = [\"{A4}/32\", \"{A6}/128\"]\n",
            self.ifname,
            self.key_b.to_base64(),
            self.port_b,
            self.offload_line(),
            self.key_a.public_key().to_base64(),
            Self::psk_line(&self.opts.psk_b),
        )
    }

    fn write_config_a(&self, text: &str) {
        std::fs::write(self.dir.path("a.toml"), text).expect("write a.toml");
    }

    fn write_config_b(&self) {
        std::fs::write(self.dir.path("b.toml"), self.config_b()).expect("write b.toml");
    }

    /// The addresses on the tunnel interface in b's namespace, as `ip addr` prints them.
    fn addresses_b(&self) -> String {
        self.b.ip(&["addr", "show", "dev", &self.ifname])
    }

    fn start_a(&mut self) {
        let mut d = Daemon::up(&self.a, &self.dir.path("a.toml"));
        d.wait_log("interface up", Duration::from_secs(15));
        self.da = Some(d);
    }

    fn start_b(&mut self) {
        let mut d = Daemon::up(&self.b, &self.dir.path("b.toml"));
        d.wait_log("interface up", Duration::from_secs(15));
        self.db = Some(d);
    }

    fn start(&mut self) {
        self.start_a();
        self.start_b();
    }

    fn ns(&self, side_a: bool) -> &Netns {
        if side_a { &self.a } else { &self.b }
    }

    /// One ping (1 s timeout) from a or b.
    fn ping_once(&self, from_a: bool, to: &str) -> bool {
        ping_once(self.ns(from_a), to)
    }

    /// Pings until one answer comes, for at most `limit`; panics with both logs otherwise.
    fn ping_within(&self, from_a: bool, to: &str, limit: Duration) {
        let ok = wait_until(limit, || self.ping_once(from_a, to));
        assert!(
            ok,
            "no ping answer from {to} (sent from {}) within {limit:?}\n--- a:\n{}\n--- b:\n{}",
            if from_a { "a" } else { "b" },
            self.da.as_ref().map(Daemon::log).unwrap_or_default(),
            self.db.as_ref().map(Daemon::log).unwrap_or_default(),
        );
    }

    fn ping_all_ways(&self) {
        for (from_a, to) in [(true, B4), (false, A4), (true, B6), (false, A6)] {
            self.ping_within(from_a, to, Duration::from_secs(10));
        }
    }

    fn daemon_a(&mut self) -> &mut Daemon {
        self.da.as_mut().expect("daemon a started")
    }

    fn daemon_b(&mut self) -> &mut Daemon {
        self.db.as_mut().expect("daemon b started")
    }

    /// Whether the tunnel interface exists in a's or b's namespace.
    fn link_exists(&self, side_a: bool) -> bool {
        self.ns(side_a)
            .exec("ip", &["link", "show", "dev", &self.ifname])
            .status
            .success()
    }

    /// Every route (v4 and v6, all tables) in a's namespace that mentions the interface.
    fn routes_a(&self) -> String {
        let mut all = String::new();
        for fam in ["-4", "-6"] {
            all += &self.a.ip(&[fam, "route", "show", "table", "all"]);
        }
        all.lines()
            .filter(|l| l.contains(&self.ifname))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Received packets on b's veth end.
    fn veth_b_rx_packets(&self) -> u64 {
        rx_packets(&self.b, &self.veth_b)
    }
}

#[test]
fn ping_both_ways_over_ipv4_outer() {
    let mut t = Tunnel::new("v4", Opts::default());
    t.start();
    t.ping_all_ways();
    // Each side logged the handshake with the other's config name.
    let log_a = t.daemon_a().log();
    assert!(log_a.contains("handshake completed peer=b "), "{log_a}");
    // No secret in the logs.
    assert!(!log_a.contains(&t.key_a.to_base64()));
    assert!(!log_a.contains(&t.key_b.public_key().to_base64()));
}

#[test]
fn plain_tun_without_offload_carries_traffic_too() {
    let mut t = Tunnel::new(
        "nooff",
        Opts {
            no_offload: true,
            ..Opts::default()
        },
    );
    t.start();
    t.ping_all_ways();
    assert!(t.daemon_a().log().contains("offload=false"));
    transfer_checked(&t, 8 << 20);
}

#[test]
fn ping_both_ways_over_ipv6_outer() {
    let mut t = Tunnel::new(
        "v6",
        Opts {
            outer_v6: true,
            ..Opts::default()
        },
    );
    t.start();
    t.ping_all_ways();
    let log = t.daemon_a().log();
    assert!(log.contains("endpoint=[fd99::2]"), "{log}");
}

#[test]
fn tcp_transfer_of_64_mib_arrives_intact() {
    let mut t = Tunnel::new("tcp", Opts::default());
    t.start();
    // Offload is on by default: GSO reads and GRO writes carry this transfer.
    assert!(t.daemon_a().log().contains("offload=true"));
    t.ping_within(true, B4, Duration::from_secs(10));
    transfer_checked(&t, 64 << 20);
}

/// Sends `size` pseudo-random bytes from a to b over TCP through the tunnel (the helper
/// subcommands) and checks the sha256 of what arrived.
fn transfer_checked(t: &Tunnel, size: usize) {
    let src = t.dir.path("send.bin");
    let dst = t.dir.path("recv.bin");
    let want = write_pattern_file(&src, size, 0x5eed);

    let listen = format!("{B4}:5001");
    let Transfer { sender, receiver } = start_transfer(&t.a, &t.b, &listen, &src, &dst, 60);
    let sent = sender.output_timeout(Duration::from_secs(120));
    assert!(
        sent.status.success(),
        "sender failed: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let received: Output = receiver.output_timeout(Duration::from_secs(30));
    assert!(
        received.status.success(),
        "receiver failed: {}",
        String::from_utf8_lossy(&received.stderr)
    );
    let got = std::fs::read(&dst).expect("read received data");
    assert_eq!(got.len(), size);
    assert_eq!(
        Sha256::digest(&got),
        want,
        "sha256 of the received data differs"
    );
    eprintln!("{}", String::from_utf8_lossy(&received.stdout).trim());
}

#[test]
fn preshared_key_must_match() {
    let psk = PresharedKey::from_bytes([0x42; 32]);
    let mut t = Tunnel::new(
        "psk",
        Opts {
            psk_a: Some(psk.clone()),
            psk_b: Some(psk),
            ..Opts::default()
        },
    );
    t.start();
    t.ping_all_ways();

    let mut bad = Tunnel::new(
        "psk-bad",
        Opts {
            psk_a: Some(PresharedKey::from_bytes([0x42; 32])),
            psk_b: Some(PresharedKey::from_bytes([0x43; 32])),
            ..Opts::default()
        },
    );
    bad.start();
    assert!(
        !wait_until(Duration::from_secs(3), || bad.ping_once(true, B4)),
        "a tunnel with different preshared keys must not carry traffic"
    );
    assert_eq!(bad.daemon_a().count("handshake completed"), 0);
}

#[test]
fn persistent_keepalive_keeps_a_responder_without_endpoint_reachable() {
    let mut t = Tunnel::new(
        "ka",
        Opts {
            b_without_endpoint: true,
            keepalive_a: Some(1),
            ..Opts::default()
        },
    );
    t.start_b();
    t.start_a();
    // Nobody sends anything: the keepalive alone makes a handshake, and b learns a's
    // endpoint from it.
    t.daemon_b()
        .wait_log("handshake completed", Duration::from_secs(10));
    // While a stays silent, its keepalives keep arriving at b.
    let before = t.veth_b_rx_packets();
    std::thread::sleep(Duration::from_secs(4));
    let after = t.veth_b_rx_packets();
    assert!(
        after >= before + 2,
        "expected keepalives from a every second: rx packets {before} -> {after}"
    );
    // b, which has no configured endpoint, reaches a.
    t.ping_within(false, A4, Duration::from_secs(5));
    t.ping_within(false, A6, Duration::from_secs(5));
}

#[test]
fn killed_daemon_restarts_and_the_tunnel_comes_back() {
    let mut t = Tunnel::new("kill", Opts::default());
    t.start();
    t.ping_all_ways();
    t.daemon_a().signal("KILL");
    let status = t.daemon_a().wait_exit(Duration::from_secs(5));
    assert!(!status.success());
    // The kernel removes the TUN device with its last descriptor.
    assert!(
        wait_until(Duration::from_secs(5), || !t.link_exists(true)),
        "interface left behind after kill -9"
    );
    t.da = None;
    let restarted = Instant::now();
    t.start_a();
    t.ping_within(true, B4, Duration::from_secs(10));
    t.ping_within(false, A4, Duration::from_secs(10));
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "tunnel took {:?} to come back",
        restarted.elapsed()
    );
}

#[test]
fn sighup_adding_a_peer_keeps_the_existing_session() {
    let mut t = Tunnel::new("hup", Opts::default());
    t.start();
    t.ping_all_ways();
    let hs_a = t.daemon_a().count("handshake completed");
    let hs_b = t.daemon_b().count("handshake completed");
    assert!(hs_a >= 1 && hs_b >= 1);

    let c = key(250).public_key().to_base64();
    let mut opts = t.opts.clone();
    opts.extra_peers_a =
        format!("[[peer]]\nname = \"c\"\npublic_key = \"{c}\"\nallowed_ips = [\"10.77.0.3/32\"]\n");
    t.opts = opts;
    let text = t.config_a();
    t.write_config_a(&text);
    t.daemon_a().signal("HUP");
    t.daemon_a()
        .wait_log("configuration reloaded", Duration::from_secs(10));
    let log = t.daemon_a().log();
    // The summary names the new peer.
    assert!(
        log.contains("configuration reloaded: added c; 1 peer(s) unchanged"),
        "{log}"
    );
    // The old session carries traffic at once, with no new handshake on either side.
    assert!(t.ping_once(true, B4), "ping right after the reload failed");
    assert!(t.ping_once(false, A6), "ping right after the reload failed");
    assert_eq!(t.daemon_a().count("handshake completed"), hs_a);
    assert_eq!(t.daemon_b().count("handshake completed"), hs_b);
    // The new peer's prefix is routed.
    assert!(t.routes_a().contains("10.77.0.3"), "{}", t.routes_a());

    // A broken config on SIGHUP changes nothing.
    t.write_config_a("[interface]\nmtu = 12\n");
    t.daemon_a().signal("HUP");
    t.daemon_a()
        .wait_log("reload failed", Duration::from_secs(10));
    assert!(t.ping_once(true, B4), "ping after a failed reload");
    assert!(t.routes_a().contains("10.77.0.3"));
}

#[test]
fn sighup_moves_the_listen_port_and_changes_addresses() {
    let mut t = Tunnel::new("port", Opts::default());
    t.start();
    t.ping_all_ways();
    let old_port = t.port_b;
    t.port_b += 1000;
    t.opts.extra_address_b = Some("10.77.5.2/24");
    t.opts.fwmark_b = Some(0x1234);
    t.write_config_b();
    t.daemon_b().signal("HUP");
    t.daemon_b()
        .wait_log("configuration reloaded", Duration::from_secs(10));
    let log = t.daemon_b().log();
    assert!(
        log.contains(&format!("from={old_port}")) && log.contains(&format!("to={}", t.port_b)),
        "{log}"
    );
    assert!(
        t.addresses_b().contains("10.77.5.2/24"),
        "{}",
        t.addresses_b()
    );
    // b now sends from the new port; a follows it (roaming) without a new handshake, since
    // the session survived the reload.
    let hs = t.daemon_a().count("handshake completed");
    t.ping_within(false, A4, Duration::from_secs(5));
    t.ping_within(true, B4, Duration::from_secs(5));
    assert_eq!(t.daemon_a().count("handshake completed"), hs);
    // The old port is closed, the new one open, for both families (`ss` is in iproute2).
    let listening = t.b.exec_ok("ss", &["-H", "-u", "-l", "-n"]);
    assert!(!listening.contains(&format!(":{old_port} ")), "{listening}");
    let on_port = |listening: &str, port: u16| -> Vec<String> {
        listening
            .lines()
            .filter(|l| l.contains(&format!(":{port} ")))
            .map(str::to_owned)
            .collect()
    };
    let sockets = on_port(&listening, t.port_b);
    assert_eq!(sockets.len(), 2, "{listening}");
    // New sockets carry the new fwmark; the IPv6 one is V6ONLY.
    let extended = t.b.exec_ok("ss", &["-H", "-u", "-l", "-n", "-e"]);
    let sockets = on_port(&extended, t.port_b);
    assert!(
        sockets.iter().all(|l| l.contains("fwmark:0x1234")),
        "{extended}"
    );
    assert!(sockets.iter().any(|l| l.contains("v6only:1")), "{extended}");

    // And back: the extra address goes away; the fwmark changes on the same sockets.
    t.opts.extra_address_b = None;
    t.opts.fwmark_b = Some(0x99);
    t.write_config_b();
    t.daemon_b().signal("HUP");
    t.daemon_b()
        .wait_log_n("configuration reloaded", 2, Duration::from_secs(10));
    assert!(
        !t.addresses_b().contains("10.77.5.2"),
        "{}",
        t.addresses_b()
    );
    t.ping_within(true, B6, Duration::from_secs(5));
    let extended = t.b.exec_ok("ss", &["-H", "-u", "-l", "-n", "-e"]);
    let sockets = on_port(&extended, t.port_b);
    assert_eq!(sockets.len(), 2, "{extended}");
    assert!(
        sockets.iter().all(|l| l.contains("fwmark:0x99")),
        "{extended}"
    );
}

/// A burst of handshake initiations is a backlog: the daemon then answers with cookie
/// replies (mac2 required) instead of doing Diffie-Hellman for each.
#[test]
fn handshake_flood_gets_cookie_replies() {
    let mut t = Tunnel::new("flood", Opts::default());
    t.start_b();
    let target: std::net::SocketAddr = format!("10.99.0.2:{}", t.port_b).parse().expect("addr");
    let b4: std::net::IpAddr = B4.parse().expect("addr");
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let now = Now::new(Duration::from_secs(1), unix);
    // Initiations from made-up peers: their mac1 is valid (it needs only b's public key),
    // but b does not know them.
    let mut packet = [0u8; 20];
    packet[0] = 0x45;
    packet[3] = 20;
    packet[16..20].copy_from_slice(&[10, 77, 0, 2]);
    let initiations: Vec<Vec<u8>> = (0..48u8)
        .map(|i| {
            let mut dev = Device::new(Some(key(100 + i)), [i; 32]);
            let mut peer = proto::PeerConfig::new(t.key_b.public_key());
            peer.endpoint = Some(target);
            peer.allowed_ips = vec![proto::prefix::Prefix::host(b4)];
            dev.upsert_peer(&peer).expect("peer");
            let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
            buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
            dev.encapsulate(&mut buf, packet.len(), now);
            let mut out = vec![0u8; 2048];
            let tx = dev.poll_transmit(&mut out, now).expect("an initiation");
            out.truncate(tx.len);
            assert_eq!((out.len(), out[0]), (148, 1));
            out
        })
        .collect();
    let cookie_replies = t.a.run(|| {
        let sock = std::net::UdpSocket::bind("10.99.0.1:0").expect("bind in namespace a");
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        let mut replies = 0;
        // Bounded: a few bursts, each followed by reading answers until a quiet 300 ms.
        for _ in 0..10 {
            for m in &initiations {
                sock.send_to(m, target).expect("send");
            }
            while let Ok(n) = sock.recv(&mut buf) {
                if n == 64 && buf[0] == 3 {
                    replies += 1;
                }
            }
            if replies > 0 {
                break;
            }
        }
        replies
    });
    assert!(
        cookie_replies > 0,
        "no cookie reply to bursts of 48 initiations; log:\n{}",
        t.daemon_b().log()
    );
    assert!(t.daemon_b().log().contains("handshake backlog"));
}

#[test]
fn sigterm_removes_interface_and_routes_and_notifies_systemd() {
    let mut t = Tunnel::new(
        "term",
        Opts {
            extra_allowed_a: vec!["10.66.0.0/24", "fd66::/64"],
            ..Opts::default()
        },
    );
    let sock_path = t.dir.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let config = t.dir.path("a.toml").to_string_lossy().into_owned();
    let notify = sock_path.to_string_lossy().into_owned();
    let mut d = Daemon::start(&t.a, &["up", &config], &[("NOTIFY_SOCKET", &*notify)]);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification within 15 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    // Ready means set up: the link, its address and the routes are there.
    assert!(t.link_exists(true));
    let routes = t.routes_a();
    for want in ["10.66.0.0/24", "fd66::/64", "10.77.0.2"] {
        assert!(routes.contains(want), "no route {want}:\n{routes}");
    }
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}; log:\n{}", d.log());
    let n = sock.recv(&mut buf).expect("STOPPING notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(!t.link_exists(true), "interface left behind");
    assert_eq!(t.routes_a(), "", "routes left behind");
    let all = t.a.ip(&["-4", "route", "show", "table", "all"]);
    assert!(!all.contains("10.66."), "{all}");
    t.da = Some(d);
}

#[test]
fn broken_configs_give_file_line_key_errors_and_status_78() {
    let dir = TempDir::new("badconf");
    let bad = dir.path("bad.toml");
    std::fs::write(
        &bad,
        "[interface]\nprivate_key = \"xyz\"\nmtu = 100\n\n[[peer]]\npublic_key = \"abc\"\n\
         allowed_ips = [\"10.0.0.0/33\"]\n",
    )
    .expect("write");
    let shown = bad.display().to_string();
    for cmd in ["check", "up"] {
        let out = Command::new(BIN)
            .args([cmd, &shown])
            .stdin(Stdio::null())
            .output()
            .expect("run tandem");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "tandem {cmd}: {stderr}");
        for want in [
            format!("{shown}:2: interface.private_key: "),
            format!("{shown}:3: interface.mtu: "),
            format!("{shown}:6: peer[1].public_key: "),
            format!("{shown}:7: peer[1].allowed_ips: "),
        ] {
            assert!(
                stderr.contains(&want),
                "tandem {cmd}: no {want:?} in:\n{stderr}"
            );
        }
        assert!(!stderr.contains("error: error"), "{stderr}");
    }

    let good = dir.path("good.toml");
    std::fs::write(
        &good,
        format!(
            "[interface]\nprivate_key = \"{}\"\n\n[[peer]]\npublic_key = \"{}\"\n\
             allowed_ips = [\"10.0.0.2/32\"]\n",
            key(1).to_base64(),
            key(2).public_key().to_base64()
        ),
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check", &good.to_string_lossy()])
        .output()
        .expect("run tandem");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn genkey_pubkey_genpsk_speak_base64_like_wg() {
    let run = |args: &[&str], input: Option<&str>| -> Output {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tandem");
        if let Some(text) = input {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().expect("wait")
    };
    let private = run(&["genkey"], None);
    assert!(private.status.success());
    let private = String::from_utf8(private.stdout).expect("utf8");
    assert_eq!(private.trim().len(), 44);
    let public = run(&["pubkey"], Some(&private));
    assert!(public.status.success());
    let want = PrivateKey::from_base64(private.trim())
        .expect("valid key")
        .public_key()
        .to_base64();
    assert_eq!(String::from_utf8_lossy(&public.stdout).trim(), want);
    let psk = run(&["genpsk"], None);
    assert!(PresharedKey::from_base64(String::from_utf8_lossy(&psk.stdout).trim()).is_ok());
    let bad = run(&["pubkey"], Some("nonsense\n"));
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error: "));
}

/// The unit file: the settings the deployment relies on, and (when systemd-analyze is
/// installed, as scripts/test.sh does) systemd's own check with no warnings.
#[test]
fn systemd_unit_is_valid_and_locked_down() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/tandem@.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read systemd/tandem@.service");
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |k: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(key, _)| *key == k)
            .map(|(_, v)| *v)
            .collect()
    };
    for (k, v) in [
        ("Type", "notify"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("AmbientCapabilities", "CAP_NET_ADMIN"),
        ("CapabilityBoundingSet", "CAP_NET_ADMIN"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        // The one exception, for a full tunnel's src_valid_mark.
        (
            "ReadWritePaths",
            "-/proc/sys/net/ipv4/conf/all/src_valid_mark",
        ),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        ),
        ("DeviceAllow", "/dev/net/tun rw"),
        ("DevicePolicy", "closed"),
        ("RuntimeDirectory", "wireguard"),
        ("RestartPreventExitStatus", "78"),
        // Least privilege: a user of its own from the start (systemd/tandem.sysusers).
        ("User", "tandem"),
        ("Group", "tandem"),
        // A tunnel whose network is not up at boot is retried for as long as it takes.
        ("Restart", "on-failure"),
        ("RestartSec", "5"),
        ("StartLimitIntervalSec", "0"),
    ] {
        assert_eq!(get(k), vec![v], "{k}");
    }
    assert_eq!(
        get("ExecStart"),
        vec!["/usr/bin/tandem up /etc/tandem/%i.toml"]
    );
    // ProcSubset=pid would hide /proc/sys, and src_valid_mark with it.
    assert!(get("ProcSubset").is_empty());

    // systemd's own check, on a copy whose ExecStart points at the binary just built (verify
    // insists that the program exists).
    let version = Command::new("systemd-analyze").arg("--version").output();
    let version = version.unwrap_or_else(|e| {
        panic!(
            "this test needs systemd-analyze ({e}): install it with `apt-get install systemd` \
             (scripts/test.sh does)"
        )
    });
    assert!(version.status.success());
    let dir = TempDir::new("unit");
    let copy = dir.path("tandem@e2e.service");
    std::fs::write(&copy, unit.replace("/usr/bin/tandem", BIN)).expect("write unit copy");
    let out = Command::new("systemd-analyze")
        .args(["verify", &copy.to_string_lossy()])
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("tandem@")).collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );

    // The user the unit runs as: systemd-sysusers creates it from systemd/tandem.sysusers
    // (here in a scratch root, not on this machine), a system user with a group of its own
    // and no login shell.
    let sysusers = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/tandem.sysusers");
    let root = TempDir::new("sysusers");
    std::fs::create_dir_all(root.path("etc")).expect("etc");
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.root().display()))
        .arg(&sysusers)
        .output()
        .expect("run systemd-sysusers (systemd)");
    assert!(
        out.status.success(),
        "systemd-sysusers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path("etc/passwd")).expect("passwd");
    let entry: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("tandem:"))
        .unwrap_or_else(|| panic!("no tandem user in {passwd}"))
        .split(':')
        .collect();
    let (uid, gid): (u32, u32) = (
        entry[2].parse().expect("uid"),
        entry[3].parse().expect("gid"),
    );
    assert!(uid > 0 && uid < 1000, "a system user: {entry:?}");
    assert_eq!(entry[6], "/usr/sbin/nologin");
    let group = std::fs::read_to_string(root.path("etc/group")).expect("group");
    assert!(
        group
            .lines()
            .any(|l| l.starts_with(&format!("tandem:x:{gid}:"))),
        "{group}"
    );
}

/// The README's main command, end to end (small transfer), and nothing left behind.
#[test]
fn demo_runs_and_cleans_up() {
    require_root();
    // An empty PATH (no `ip`, no `ping`, no `wg`): the demo needs nothing but tandem itself,
    // so the README's first command works on a bare machine.
    let bare = TempDir::new("demo-path");
    let demo = ChildGuard::new(
        Command::new(BIN)
            .args(["demo", "--mib", "4"])
            .env("PATH", bare.root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tandem demo"),
    );
    let demo_pid = demo.id();
    let out = demo.output_timeout(Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tandem demo failed:\n{stdout}\n{stderr}"
    );
    for want in [
        "handshake completed",
        "-> 10.88.0.2: rtt",
        "-> fd88::1: rtt",
        "received 4194304 bytes",
        "every byte checked",
        "removed",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }
    // Its namespaces are anonymous (nothing in /run/netns, ever), reached by its daemons
    // through /proc/PID/fd/N: once no process names them and the demo is gone, they are too.
    let names = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&demo_pid.to_string()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        names.is_empty(),
        "the demo's namespaces in /run/netns: {names:?}"
    );
    let marker = format!("/proc/{demo_pid}/fd/");
    let holders: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(
        holders.is_empty(),
        "demo daemons still running: {holders:?}"
    );
}

/// Without privileges, `demo` and `up` say what they need instead of failing obscurely.
#[test]
fn unprivileged_commands_explain_what_they_need() {
    require_root(); // to drop to another user
    let dir = TempDir::new("unpriv");
    let conf = dir.path("wg9.toml");
    std::fs::write(
        &conf,
        format!(
            "[interface]\nname = \"tndunpriv{}\"\nprivate_key = \"{}\"\n",
            unique(),
            key(9).to_base64()
        ),
    )
    .expect("write config");
    // Inside a namespace of the test's own, so that nothing could touch the host's even if
    // the privilege drop failed.
    let ns = Netns::new("tnd-e2e-unpriv");
    let as_nobody = |args: &[&str]| -> Output {
        let mut full = vec!["--reuid=65534", "--regid=65534", "--clear-groups", BIN];
        full.extend_from_slice(args);
        ns.command("setpriv", &full)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("this test needs setpriv (util-linux): {e}"))
    };
    let demo = as_nobody(&["demo"]);
    assert_eq!(demo.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&demo.stderr);
    assert!(stderr.contains("needs root"), "{stderr}");

    let up = as_nobody(&["up", &conf.to_string_lossy()]);
    assert_eq!(up.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");
    assert_eq!(
        stderr.matches("error:").count(),
        1,
        "error printed once:\n{stderr}"
    );
}

/// The interface of a as seen from outside: `wg show dump` (keys, peers, endpoints, latest
/// handshakes, byte counters, keepalives), its addresses, its routes in every table, and its
/// UDP sockets with their fwmark.
fn outside_state_a(t: &Tunnel) -> String {
    let dump = t.a.exec_ok("wg", &["show", &t.ifname, "dump"]);
    let addresses = t.a.ip(&["addr", "show", "dev", &t.ifname]);
    let sockets: Vec<String> =
        t.a.exec_ok("ss", &["-H", "-u", "-l", "-n", "-e"])
            .lines()
            .map(|l| {
                // Keep the address, port and mark; drop counters that move on their own.
                l.split_whitespace()
                    .filter(|w| w.contains(':') && !w.starts_with("uid:"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
    format!(
        "--- wg show dump\n{dump}\n--- ip addr\n{addresses}\n--- routes\n{}\n--- sockets\n{}",
        t.routes_a(),
        sockets.join("\n")
    )
}

/// A reload or a UAPI set that cannot be applied whole changes nothing, checked from outside:
/// a new listen port that is taken (SIGHUP and `wg set`), and a reload whose netlink part
/// fails half way (an IPv6 address on a link with IPv6 turned off, after a new IPv4 address
/// went on). Each carried other changes too (a new peer, a new route, a
/// new fwmark), none of which may show; the running session keeps carrying traffic with no
/// new handshake.
#[test]
fn failed_reloads_and_sets_change_nothing() {
    let mut t = Tunnel::new("atomic", Opts::default());
    t.start();
    t.ping_all_ways();
    let hs = t.daemon_a().count("handshake completed");
    let original = t.config_a();
    let c = key(251).public_key().to_base64();
    let extra_peer =
        format!("[[peer]]\nname = \"c\"\npublic_key = \"{c}\"\nallowed_ips = [\"10.78.0.3/32\"]\n");

    // 1. SIGHUP with a taken port (and a new peer, a new address and a fwmark).
    let holder =
        t.a.run(|| std::net::UdpSocket::bind("0.0.0.0:0").expect("hold a port"));
    let busy = holder.local_addr().expect("addr").port();
    let before = outside_state_a(&t);
    let text = original
        .replace(
            &format!("listen_port = {}\n", t.port_a),
            &format!("listen_port = {busy}\nfwmark = 77\n"),
        )
        .replace(
            &format!("address = [\"{A4}/24\""),
            &format!("address = [\"10.78.0.1/24\", \"{A4}/24\""),
        )
        + &extra_peer;
    assert!(text.contains(&format!("listen_port = {busy}")), "{text}");
    t.write_config_a(&text);
    t.daemon_a().signal("HUP");
    t.daemon_a()
        .wait_log_n("reload failed", 1, Duration::from_secs(10));
    assert!(
        t.daemon_a()
            .log()
            .contains(&format!("cannot listen on UDP port {busy}")),
        "{}",
        t.daemon_a().log()
    );
    assert_eq!(
        outside_state_a(&t),
        before,
        "a reload with a taken port changed something"
    );

    // 2. The same request over UAPI.
    let refused = t.a.exec(
        "wg",
        &[
            "set",
            &t.ifname,
            "listen-port",
            &busy.to_string(),
            "fwmark",
            "77",
            "peer",
            &c,
            "allowed-ips",
            "10.78.0.3/32",
        ],
    );
    assert!(!refused.status.success(), "binding a taken port must fail");
    assert_eq!(
        outside_state_a(&t),
        before,
        "a refused UAPI set changed something"
    );
    drop(holder);

    // 3. A reload whose netlink part fails after one of its steps went through.
    t.a.exec_ok(
        "sysctl",
        &[
            "-q",
            "-w",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", t.ifname),
        ],
    );
    let before = outside_state_a(&t);
    let text = original
        .replace(
            &format!("address = [\"{A4}/24\", \"{A6}/64\"]"),
            "address = [\"10.78.0.1/24\", \"fd78::1/64\"]",
        )
        .replace(
            &format!("listen_port = {}\n", t.port_a),
            &format!("listen_port = {}\nfwmark = 78\n", t.port_a),
        )
        + &extra_peer;
    assert!(text.contains("fd78::1/64"), "{text}");
    t.write_config_a(&text);
    t.daemon_a().signal("HUP");
    t.daemon_a()
        .wait_log_n("reload failed", 2, Duration::from_secs(10));
    assert!(
        t.daemon_a().log().contains("cannot add address fd78::1/64"),
        "{}",
        t.daemon_a().log()
    );
    assert_eq!(
        outside_state_a(&t),
        before,
        "a reload refused by netlink changed something"
    );

    // The session survived all three: traffic flows with no new handshake.
    t.ping_within(true, B4, Duration::from_secs(5));
    t.ping_within(false, A4, Duration::from_secs(5));
    assert_eq!(t.daemon_a().count("handshake completed"), hs);

    // And the daemon still reloads: back to the original file, then with the new peer.
    t.write_config_a(&(original.clone() + &extra_peer));
    t.daemon_a().signal("HUP");
    t.daemon_a()
        .wait_log("configuration reloaded", Duration::from_secs(10));
    assert!(t.routes_a().contains("10.78.0.3"), "{}", t.routes_a());
}
