//! Interop with real WireGuard implementations: tandem (`tandem up`, the real binary) in one
//! network namespace, `wireguard-go` or `boringtun-cli` (configured with the stock `wg` tool)
//! in another, joined by a veth pair.
//!
//! For each implementation, two cases run with a preshared key:
//! - tandem initiates, over an IPv4 outer path: pings both ways (IPv4 and IPv6 inside), a TCP
//!   transfer from tandem checked by sha256, tandem restarted on another port (the peer follows
//!   the new source port), and the peer killed and restarted without an endpoint (tandem must
//!   notice the dead session and handshake again);
//! - the peer initiates, over an IPv6 outer path: the same pings, a TCP transfer towards
//!   tandem, tandem's port moved by SIGHUP with the session kept (the peer follows), and the
//!   peer killed and restarted (tandem must accept its new handshake).
//!
//! Needs root, `wg`, `wireguard-go` and `boringtun-cli`; each test fails with a message naming
//! what is missing. Every namespace, process and socket file is removed even when a test
//! fails, every wait is bounded, and traffic stays inside the namespaces each test creates.

mod common;
use common::{kit, netns, peers};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kit::{
    Daemon, TempDir, Transfer, ping_once, start_transfer, unique, wait_until, write_pattern_file,
};
use netns::{Netns, require_root, veth_pair};
use peers::{PeerKind, RealPeer, WgConf, require_wg};
use sha2::{Digest, Sha256};
use tandem::proto::{PresharedKey, PrivateKey};
use tandem::testkit::key;

/// Inner (tunnel) addresses: tandem's and the peer's.
const T4: &str = "10.78.0.1";
const P4: &str = "10.78.0.2";
const T6: &str = "fd78::1";
const P6: &str = "fd78::2";
/// Outer (veth) addresses.
const T4_OUT: &str = "10.98.0.1";
const P4_OUT: &str = "10.98.0.2";
const T6_OUT: &str = "fd98::1";
const P6_OUT: &str = "fd98::2";

/// Bytes moved through each tunnel by TCP.
const TRANSFER: usize = 16 << 20;

/// Which side has the other's endpoint and so starts the first handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Initiator {
    Tandem,
    Peer,
}

/// Two namespaces joined by veth: tandem in `t`, a real peer in `p`.
/// Field order is drop order: processes stop before their namespaces go.
struct Case {
    tandem: Option<Daemon>,
    peer: Option<RealPeer>,
    t: Netns,
    p: Netns,
    dir: TempDir,
    kind: PeerKind,
    initiator: Initiator,
    outer_v6: bool,
    t_if: String,
    p_if: String,
    t_port: u16,
    p_port: u16,
    key_t: PrivateKey,
    key_p: PrivateKey,
    psk: PresharedKey,
    started: Instant,
    name: String,
}

impl Case {
    fn new(kind: PeerKind, initiator: Initiator, outer_v6: bool) -> Case {
        require_root();
        require_wg();
        // Panics with what to install when the implementation is missing.
        kind.program();
        let n = unique();
        let tag = match kind {
            PeerKind::WireguardGo => "wggo",
            PeerKind::Boringtun => "btun",
        };
        let t = Netns::new(&format!("tnd-ir-{tag}{n}-t"));
        let p = Netns::new(&format!("tnd-ir-{tag}{n}-p"));
        veth_pair(
            &t,
            &p,
            &[&format!("{T4_OUT}/24"), &format!("{T6_OUT}/64")],
            &[&format!("{P4_OUT}/24"), &format!("{P6_OUT}/64")],
        );
        // Interface names are global through /var/run/wireguard/NAME.sock: PID and counter
        // make them unique across parallel tests and test binaries (at most 15 bytes).
        let pid = std::process::id() % 100_000;
        let seed = (n % 60) as u8 * 2 + 1;
        let name = format!(
            "{} ({} initiates, IPv{} outer)",
            kind.label(),
            match initiator {
                Initiator::Tandem => "tandem",
                Initiator::Peer => "peer",
            },
            if outer_v6 { 6 } else { 4 }
        );
        let mut psk = [0x5a; 32];
        psk[0] = seed;
        Case {
            tandem: None,
            peer: None,
            t,
            p,
            dir: TempDir::new(tag),
            kind,
            initiator,
            outer_v6,
            t_if: format!("ir{pid}t{n}"),
            p_if: format!("ir{pid}p{n}"),
            t_port: 41_000,
            p_port: 42_000,
            key_t: key(seed),
            key_p: key(seed + 1),
            psk: PresharedKey::from_bytes(psk),
            started: Instant::now(),
            name,
        }
    }

    fn step(&self, what: &str) {
        eprintln!(
            "[{} +{:.1}s] {what}",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn outer_addr(&self, tandem_side: bool) -> &'static str {
        match (self.outer_v6, tandem_side) {
            (false, true) => T4_OUT,
            (false, false) => P4_OUT,
            (true, true) => T6_OUT,
            (true, false) => P6_OUT,
        }
    }

    /// "ADDR:PORT" / "[ADDR]:PORT" of one side's outer socket.
    fn outer_endpoint(&self, tandem_side: bool) -> String {
        let port = if tandem_side {
            self.t_port
        } else {
            self.p_port
        };
        let addr = self.outer_addr(tandem_side);
        if self.outer_v6 {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        }
    }

    fn tandem_config(&self) -> String {
        let endpoint = match self.initiator {
            Initiator::Tandem => format!("endpoint = \"{}\"\n", self.outer_endpoint(false)),
            Initiator::Peer => String::new(),
        };
        format!(
            "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\nlisten_port = {}\n\
             address = [\"{T4}/24\", \"{T6}/64\"]\n\n\
             [[peer]]\nname = \"{}\"\npublic_key = \"{}\"\npreshared_key = \"{}\"\n{endpoint}\
             allowed_ips = [\"{P4}/32\", \"{P6}/128\"]\n",
            self.t_if,
            self.key_t.to_base64(),
            self.t_port,
            self.kind.label(),
            self.key_p.public_key().to_base64(),
            self.psk.to_base64(),
        )
    }

    fn peer_conf(&self) -> WgConf {
        WgConf {
            private_key: self.key_p.to_base64(),
            listen_port: self.p_port,
            peer_public_key: self.key_t.public_key().to_base64(),
            preshared_key: Some(self.psk.to_base64()),
            peer_endpoint: match self.initiator {
                Initiator::Tandem => None,
                Initiator::Peer => Some(self.outer_endpoint(true)),
            },
            allowed_ips: vec![format!("{T4}/32"), format!("{T6}/128")],
        }
    }

    fn write_tandem_config(&self) -> PathBuf {
        let path = self.dir.path("tandem.toml");
        std::fs::write(&path, self.tandem_config())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    fn start_tandem(&mut self) {
        let config = self.write_tandem_config();
        let mut tandem = Daemon::up(&self.t, &config);
        tandem.wait_log("interface up", Duration::from_secs(15));
        self.tandem = Some(tandem);
        self.step(&format!("tandem up on port {}", self.t_port));
    }

    fn tandem(&mut self) -> &mut Daemon {
        self.tandem.as_mut().expect("tandem started")
    }

    fn peer(&self) -> &RealPeer {
        self.peer.as_ref().expect("peer started")
    }

    fn start_peer(&mut self) {
        let peer = RealPeer::start(self.kind, &self.p, &self.p_if, self.dir.root());
        self.peer = Some(peer);
        self.configure_peer();
    }

    fn configure_peer(&self) {
        self.peer().configure(
            &self.p,
            &self.peer_conf(),
            &[&format!("{P4}/24"), &format!("{P6}/64")],
        );
        self.step(&format!("{} up on port {}", self.kind.label(), self.p_port));
    }

    /// Everything worth seeing when a check fails.
    fn diagnostics(&self) -> String {
        format!(
            "--- tandem log:\n{}\n--- {} `wg show dump`:\n{}\n--- {} output:\n{}",
            self.tandem.as_ref().map(Daemon::log).unwrap_or_default(),
            self.kind.label(),
            self.peer.as_ref().map(RealPeer::dump).unwrap_or_default(),
            self.kind.label(),
            self.peer.as_ref().map(RealPeer::log).unwrap_or_default(),
        )
    }

    fn ping_once(&self, from_tandem: bool, to: &str) -> bool {
        ping_once(if from_tandem { &self.t } else { &self.p }, to)
    }

    /// Pings until one answer comes, for at most `limit`; returns how long it took, or
    /// panics with both sides' logs.
    fn ping_within(&self, from_tandem: bool, to: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        let ok = wait_until(limit, || self.ping_once(from_tandem, to));
        assert!(
            ok,
            "{}: no ping answer from {to} (sent from {}) within {limit:?}\n{}",
            self.name,
            if from_tandem {
                "tandem"
            } else {
                self.kind.label()
            },
            self.diagnostics()
        );
        start.elapsed()
    }

    /// IPv4 and IPv6 inside, both ways.
    fn ping_all_ways(&self) {
        for (from_tandem, to) in [(true, P4), (false, T4), (true, P6), (false, T6)] {
            self.ping_within(from_tandem, to, Duration::from_secs(10));
        }
        self.step("pings both ways, IPv4 and IPv6 inside");
    }

    /// The port of the peer's endpoint for tandem, as `wg show IFACE endpoints` reports it.
    fn peer_sees_tandem_at(&self) -> String {
        let shown = self.peer().endpoints();
        shown
            .split_whitespace()
            .nth(1)
            .unwrap_or("(none)")
            .to_owned()
    }

    /// Waits until the peer's endpoint for tandem is tandem's current outer socket.
    fn wait_peer_follows(&self, limit: Duration) {
        let want = self.outer_endpoint(true);
        let ok = wait_until(limit, || self.peer_sees_tandem_at() == want);
        assert!(
            ok,
            "{}: the peer's endpoint for tandem is {}, not {want}, {limit:?} after tandem \
             sent from there\n{}",
            self.name,
            self.peer_sees_tandem_at(),
            self.diagnostics()
        );
    }

    /// Sends TRANSFER pseudo-random bytes over TCP through the tunnel (the `demo-helper`
    /// subcommands) and checks the sha256 of what arrived.
    fn transfer_checked(&self, from_tandem: bool) {
        let src = self.dir.path("send.bin");
        let dst = self.dir.path("recv.bin");
        let want = write_pattern_file(&src, TRANSFER, 0x1e7e_7ea1);

        let (send_ns, recv_ns, recv_addr) = if from_tandem {
            (&self.t, &self.p, P4)
        } else {
            (&self.p, &self.t, T4)
        };
        let listen = format!("{recv_addr}:5001");
        let Transfer { sender, receiver } =
            start_transfer(send_ns, recv_ns, &listen, &src, &dst, 30);
        let sent = sender.output_timeout(Duration::from_secs(60));
        assert!(
            sent.status.success(),
            "{}: sender failed: {}\n{}",
            self.name,
            String::from_utf8_lossy(&sent.stderr),
            self.diagnostics()
        );
        let received = receiver.output_timeout(Duration::from_secs(30));
        assert!(
            received.status.success(),
            "{}: receiver failed: {}\n{}",
            self.name,
            String::from_utf8_lossy(&received.stderr),
            self.diagnostics()
        );
        let got = std::fs::read(&dst).unwrap_or_else(|e| panic!("read {}: {e}", dst.display()));
        assert_eq!(got.len(), TRANSFER, "{}: bytes received", self.name);
        assert!(
            Sha256::digest(&got) == want,
            "{}: sha256 of the received data differs",
            self.name
        );
        self.step(&format!(
            "TCP {} -> {}: {} (sha256 ok)",
            if from_tandem {
                "tandem"
            } else {
                self.kind.label()
            },
            if from_tandem {
                self.kind.label()
            } else {
                "tandem"
            },
            String::from_utf8_lossy(&received.stdout).trim()
        ));
    }

    /// Waits (2 s) until tandem logged a completed handshake with the peer, at the peer's
    /// outer endpoint.
    fn wait_handshake_logged(&mut self) {
        let want = format!("handshake completed peer={} ", self.kind.label());
        self.tandem().wait_log(&want, Duration::from_secs(2));
        let want = format!("endpoint={}", self.outer_endpoint(false));
        self.tandem().wait_log(&want, Duration::from_secs(2));
    }

    /// Kills the peer (SIGKILL: it says goodbye to nobody), starts it again and configures
    /// it the same way.
    fn restart_peer(&mut self) {
        let old = self.peer().pid();
        let mut peer = self.peer.take().expect("peer started");
        peer.kill(&self.p);
        peer.restart();
        assert_ne!(peer.pid(), old);
        self.peer = Some(peer);
        self.configure_peer();
        self.step(&format!("{} killed and restarted", self.kind.label()));
    }
}

/// tandem has the peer's endpoint, the peer has none for tandem: only tandem can start.
fn tandem_initiates(kind: PeerKind) {
    let mut c = Case::new(kind, Initiator::Tandem, false);
    c.start_peer();
    c.start_tandem();

    // The first packet from tandem starts the handshake.
    c.ping_within(true, P4, Duration::from_secs(10));
    c.wait_handshake_logged();
    c.ping_all_ways();
    // The peer learned tandem's address and port from the handshake.
    c.wait_peer_follows(Duration::from_secs(2));
    c.transfer_checked(true);

    // tandem restarts on another port: its first packet is a new initiation from there, and
    // the peer's endpoint follows.
    let old_port = c.t_port;
    c.tandem
        .take()
        .expect("tandem started")
        .stop(Duration::from_secs(10));
    c.t_port += 500;
    c.start_tandem();
    let took = c.ping_within(true, P4, Duration::from_secs(10));
    c.wait_peer_follows(Duration::from_secs(5));
    c.ping_within(false, T4, Duration::from_secs(5));
    c.ping_within(false, T6, Duration::from_secs(5));
    c.step(&format!(
        "tandem moved from port {old_port} to {}: peer follows ({}), first answer after {took:?}",
        c.t_port,
        c.peer_sees_tandem_at()
    ));

    // The peer crashes and comes back knowing nothing, with no endpoint for tandem. tandem's
    // session is dead without it knowing: data it sends gets no answer, so after
    // KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (15 s) it must start a new handshake.
    let hs = c.tandem().count("handshake completed");
    c.restart_peer();
    let took = c.ping_within(true, P4, Duration::from_secs(30));
    assert!(
        c.tandem().count("handshake completed") > hs,
        "{}: traffic without a new handshake?\n{}",
        c.name,
        c.diagnostics()
    );
    c.ping_within(false, T4, Duration::from_secs(5));
    c.step(&format!(
        "tunnel back after the peer restart: first answer to tandem after {took:?}"
    ));
}

/// The peer has tandem's endpoint, tandem has none for the peer: only the peer can start.
fn peer_initiates(kind: PeerKind) {
    let mut c = Case::new(kind, Initiator::Peer, true);
    c.start_tandem();
    c.start_peer();

    c.ping_within(false, T4, Duration::from_secs(10));
    // tandem learned the peer's address and port from the initiation.
    c.wait_handshake_logged();
    c.ping_all_ways();
    c.transfer_checked(false);

    // tandem's listen port moves on SIGHUP; the session survives, the peer sees packets from
    // the new port and follows (roaming).
    let hs = c.tandem().count("handshake completed");
    let old_port = c.t_port;
    c.t_port += 500;
    c.write_tandem_config();
    c.tandem().signal("HUP");
    c.tandem()
        .wait_log("configuration reloaded", Duration::from_secs(10));
    let log = c.tandem().log();
    assert!(
        log.contains("listen port changed") && log.contains(&format!("to={}", c.t_port)),
        "{}: {log}",
        c.name
    );
    let took = c.ping_within(true, P4, Duration::from_secs(5));
    c.wait_peer_follows(Duration::from_secs(5));
    c.ping_within(false, T4, Duration::from_secs(5));
    c.ping_within(false, T6, Duration::from_secs(5));
    assert_eq!(
        c.tandem().count("handshake completed"),
        hs,
        "{}: the port change should keep the session",
        c.name
    );
    c.step(&format!(
        "SIGHUP moved tandem from port {old_port} to {}: peer follows ({}), first answer after \
         {took:?}",
        c.t_port,
        c.peer_sees_tandem_at()
    ));

    // The peer crashes and comes back; it knows tandem's (new) endpoint and initiates at
    // once. tandem must take the new handshake over its old session, both ways.
    c.restart_peer();
    let took = c.ping_within(false, T4, Duration::from_secs(10));
    c.tandem()
        .wait_log_n("handshake completed", hs + 1, Duration::from_secs(2));
    c.ping_within(true, P4, Duration::from_secs(5));
    c.ping_within(true, P6, Duration::from_secs(5));
    c.step(&format!(
        "tunnel back after the peer restart: first answer to the peer after {took:?}"
    ));
}

#[test]
fn wireguard_go_tandem_initiates_over_ipv4() {
    tandem_initiates(PeerKind::WireguardGo);
}

#[test]
fn wireguard_go_initiates_over_ipv6() {
    peer_initiates(PeerKind::WireguardGo);
}

#[test]
fn boringtun_tandem_initiates_over_ipv4() {
    tandem_initiates(PeerKind::Boringtun);
}

#[test]
fn boringtun_initiates_over_ipv6() {
    peer_initiates(PeerKind::Boringtun);
}
