//! Logs an operator can act on (issue 11), end to end: `tandem up` daemons in network
//! namespaces, their stderr (info level) collected by the test kit. A peer with a wrong
//! public key is named in "handshake not answered"; a peer whose address moves gives exactly
//! one "endpoint changed"; a flood of 10,000 garbage datagrams gives one summary line with
//! the right count, not a line per datagram. Needs root (namespaces, TUN devices); fails
//! saying so otherwise. Namespaces and processes go even when a test fails, every wait is
//! bounded, and traffic stays inside the test's namespaces.

mod common;
use common::{kit, netns, topology};

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use kit::{Daemon, TempDir, ping_once, uapi_exchange, unique, wait_until};
use netns::{Netns, require_root, veth_pair};
use tandem::proto::PrivateKey;
use tandem::testkit::key;

/// Ports of this file's own (other test binaries use other ranges).
fn ports() -> (u16, u16) {
    let base = 46_000 + (unique() as u16 % 200) * 2;
    (base, base + 1)
}

fn ifname() -> String {
    format!("tndl{}x{}", std::process::id() % 1000, unique() % 100)
}

/// A tandem config: one interface, one peer.
#[allow(clippy::too_many_arguments)]
fn config(
    ifname: &str,
    own: &PrivateKey,
    port: u16,
    address: &str,
    peer_name: Option<&str>,
    peer: &str,
    endpoint: Option<String>,
    allowed: &str,
    extra: &str,
) -> String {
    let name = peer_name.map_or(String::new(), |n| format!("name = \"{n}\"\n"));
    let endpoint = endpoint.map_or(String::new(), |e| format!("endpoint = \"{e}\"\n"));
    format!(
        "[interface]\nname = \"{ifname}\"\nprivate_key = \"{}\"\nlisten_port = {port}\n\
         address = [\"{address}\"]\n\n[[peer]]\n{name}public_key = \"{peer}\"\n{endpoint}\
         allowed_ips = [\"{allowed}\"]\n{extra}",
        own.to_base64(),
    )
}

/// The lines of `log` that contain `needle`.
fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// A peer configured with a wrong public key: its initiations reach a live daemon that
/// cannot answer them. "handshake not answered" names the peer (its config name) within
/// 20 s, comes once, and the log never holds a whole key.
#[test]
fn wrong_key_peer_is_named_in_handshake_not_answered() {
    require_root();
    let a = Netns::new("tnd-logs-key-a");
    let b = Netns::new("tnd-logs-key-b");
    veth_pair(&a, &b, &["10.97.1.1/24"], &["10.97.1.2/24"]);
    let dir = TempDir::new("logs-key");
    let name = ifname();
    let (port_a, port_b) = ports();
    let (key_a, key_b) = (key(231), key(232));
    let wrong = key(233).public_key();
    let conf_a = dir.file(
        "a.toml",
        &config(
            &name,
            &key_a,
            port_a,
            "10.79.1.1/24",
            Some("office"),
            &wrong.to_base64(),
            Some(format!("10.97.1.2:{port_b}")),
            "10.79.1.2/32",
            // Initiates at once, with no traffic needed.
            "persistent_keepalive = 5\n",
        ),
    );
    let conf_b = dir.file(
        "b.toml",
        &config(
            &name,
            &key_b,
            port_b,
            "10.79.1.2/24",
            None,
            &key_a.public_key().to_base64(),
            None,
            "10.79.1.1/32",
            "",
        ),
    );
    let mut db = Daemon::up(&b, &conf_b);
    db.wait_log("interface up", Duration::from_secs(15));
    let started = Instant::now();
    let mut da = Daemon::up(&a, &conf_a);
    da.wait_log("handshake not answered", Duration::from_secs(20));
    let waited = started.elapsed();
    // The start's summary names the peer too.
    assert!(
        da.log()
            .contains("configuration applied: added office; private key changed"),
        "{}",
        da.log()
    );
    let lines = lines_with(&da.log(), "handshake not answered");
    assert_eq!(lines.len(), 1, "{}", da.log());
    assert!(lines[0].contains("peer=office"), "{}", lines[0]);
    assert!(
        lines[0].contains(&format!("endpoint=10.97.1.2:{port_b}")),
        "{}",
        lines[0]
    );
    // Three more retransmissions: still one line.
    std::thread::sleep(
        Duration::from_secs(16)
            .saturating_sub(waited)
            .max(Duration::from_secs(11)),
    );
    assert_eq!(da.count("handshake not answered"), 1, "{}", da.log());
    assert_eq!(da.count("handshake completed"), 0, "{}", da.log());
    for key in [&wrong, &key_a.public_key(), &key_b.public_key()] {
        assert!(!da.log().contains(&key.to_base64()), "{}", da.log());
        assert!(!db.log().contains(&key.to_base64()), "{}", db.log());
    }
    da.stop(Duration::from_secs(10));
    db.stop(Duration::from_secs(10));
}

/// The peer's address moves (its old one is deleted, the kernel sends from the one left):
/// the first authenticated packet from the new address gives exactly one "endpoint changed"
/// line naming the peer, with both addresses; the traffic after it gives none.
#[test]
fn moving_a_peer_logs_one_endpoint_changed() {
    require_root();
    let a = Netns::new("tnd-logs-roam-a");
    let b = Netns::new("tnd-logs-roam-b");
    // The second address survives the first's removal (as its secondary, promoted).
    topology::sysctl(&b, "net.ipv4.conf.all.promote_secondaries=1");
    let veth = veth_pair(&a, &b, &["10.97.2.1/24"], &["10.97.2.2/24", "10.97.2.3/24"]);
    let dir = TempDir::new("logs-roam");
    let name = ifname();
    let (port_a, port_b) = ports();
    let (key_a, key_b) = (key(234), key(235));
    let conf_a = dir.file(
        "a.toml",
        &config(
            &name,
            &key_a,
            port_a,
            "10.79.2.1/24",
            Some("laptop"),
            &key_b.public_key().to_base64(),
            Some(format!("10.97.2.2:{port_b}")),
            "10.79.2.2/32",
            "",
        ),
    );
    let conf_b = dir.file(
        "b.toml",
        &config(
            &name,
            &key_b,
            port_b,
            "10.79.2.2/24",
            Some("server"),
            &key_a.public_key().to_base64(),
            Some(format!("10.97.2.1:{port_a}")),
            "10.79.2.1/32",
            "",
        ),
    );
    let mut da = Daemon::up(&a, &conf_a);
    da.wait_log("interface up", Duration::from_secs(15));
    let mut db = Daemon::up(&b, &conf_b);
    db.wait_log("interface up", Duration::from_secs(15));
    let tunnel = wait_until(Duration::from_secs(15), || ping_once(&b, "10.79.2.1"));
    assert!(
        tunnel,
        "no ping\n--- a:\n{}\n--- b:\n{}",
        da.log(),
        db.log()
    );
    assert_eq!(da.count("endpoint changed"), 0, "{}", da.log());

    b.ip(&["addr", "del", "10.97.2.2/24", "dev", &veth.b]);
    let moved = wait_until(Duration::from_secs(15), || {
        ping_once(&b, "10.79.2.1") && da.log().contains("endpoint changed")
    });
    assert!(
        moved,
        "no endpoint change\n--- a:\n{}\n--- b:\n{}",
        da.log(),
        db.log()
    );
    for _ in 0..5 {
        assert!(ping_once(&b, "10.79.2.1"), "{}", db.log());
    }
    std::thread::sleep(Duration::from_millis(500));
    let lines = lines_with(&da.log(), "endpoint changed");
    assert_eq!(lines.len(), 1, "{}", da.log());
    let line = &lines[0];
    assert!(line.contains("peer=laptop"), "{line}");
    assert!(line.contains(&format!("from=10.97.2.2:{port_b}")), "{line}");
    assert!(line.contains(&format!("to=10.97.2.3:{port_b}")), "{line}");
    da.stop(Duration::from_secs(10));
    db.stop(Duration::from_secs(10));
}

/// Sends `count` copies of `datagram` to `to` from `from`, paced so the daemon's receive
/// buffer does not overflow (the count is then exact).
fn flood(from: &str, to: &str, datagram: &[u8], count: usize) {
    let socket = UdpSocket::bind(from).expect("bind");
    for i in 0..count {
        socket.send_to(datagram, to).expect("send");
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// 10,000 garbage datagrams from three addresses: no line per datagram, one summary line
/// after the window (shortened to 2 s for the test with TANDEM_LOG_SUMMARY_SECS) with the
/// exact count, the reason and the three sources, matching the daemon's drop counter.
#[test]
fn garbage_flood_gives_one_summary_line() {
    require_root();
    let a = Netns::new("tnd-logs-flood");
    let dir = TempDir::new("logs-flood");
    let name = ifname();
    let (port, _) = ports();
    let conf = dir.file(
        "a.toml",
        &config(
            &name,
            &key(236),
            port,
            "10.79.3.1/24",
            Some("site"),
            &key(237).public_key().to_base64(),
            None,
            "10.79.3.2/32",
            "",
        ),
    );
    let mut da = Daemon::start(
        &a,
        &["up", &conf.to_string_lossy()],
        &[("TANDEM_LOG_SUMMARY_SECS", "2")],
    );
    da.wait_log("interface up", Duration::from_secs(15));
    let before = da.log().lines().count();
    // Not a WireGuard message type: dropped as unknown_type before any cryptography.
    let garbage = [0xffu8; 40];
    let to = format!("127.0.0.1:{port}");
    a.run(|| {
        for (i, from) in ["127.0.0.1:0", "127.0.0.2:0", "127.0.0.3:0"]
            .iter()
            .enumerate()
        {
            let n = if i == 0 { 3334 } else { 3333 };
            flood(from, &to, &garbage, n);
        }
    });
    da.wait_log("malformed datagrams dropped", Duration::from_secs(10));
    // Another window's worth of quiet: nothing more.
    std::thread::sleep(Duration::from_secs(3));
    let log = da.log();
    let new: Vec<&str> = log.lines().skip(before).collect();
    assert!(
        new.len() <= 3,
        "{} new lines:\n{}",
        new.len(),
        new.join("\n")
    );
    let lines = lines_with(&log, "malformed datagrams dropped");
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].ends_with(
            "malformed datagrams dropped: 10000 in the last 2 s from 3 sources (unknown_type 10000)"
        ),
        "{}",
        lines[0]
    );
    // The daemon's own counter agrees.
    let socket = Path::new("/var/run/wireguard").join(format!("{name}.sock"));
    let reply = uapi_exchange(&socket, "get=tandem\n\n", Duration::from_secs(5));
    assert!(
        reply.contains("tandem_drop_unknown_type=10000\n"),
        "{reply}"
    );

    // A peer added over UAPI has no name: the summary shows its short fingerprint only.
    let added = key(238).public_key();
    let set = format!(
        "set=1\npublic_key={}\nallowed_ip=10.79.3.9/32\n\n",
        added.to_hex()
    );
    assert_eq!(
        uapi_exchange(&socket, &set, Duration::from_secs(5)),
        "errno=0\n\n"
    );
    let want = format!("configuration changed over UAPI: added {added}; 1 peer(s) unchanged");
    da.wait_log(&want, Duration::from_secs(5));
    assert!(!da.log().contains(&added.to_base64()), "{}", da.log());
    da.stop(Duration::from_secs(10));
}
