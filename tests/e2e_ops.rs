//! Operations end to end (issue 11): `tandem show --json` checked against `wg show dump`, and
//! the Prometheus metrics endpoint, on two `tandem up` daemons in two network namespaces
//! joined by a veth pair. Needs root (namespaces, TUN devices) and the `wg` tool; each test
//! fails saying so otherwise. Namespaces and processes are removed even when a test fails,
//! every wait is bounded, and traffic stays inside the namespaces (and their loopbacks).

mod common;
use common::{kit, netns};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use kit::{BIN, Daemon, TempDir, unique, wait_until};
use netns::{Netns, require_root, veth_pair};
use tandem::proto::{PresharedKey, PrivateKey};
use tandem::testkit::key;

const A4: &str = "10.78.0.1";
const B4: &str = "10.78.0.2";

/// Two namespaces, a veth pair, and a tandem daemon in each; a names its peer "site-b".
/// Field order is drop order: daemons stop before their namespaces are deleted.
struct Tunnel {
    da: Daemon,
    db: Daemon,
    a: Netns,
    b: Netns,
    _dir: TempDir,
    ifname: String,
    port_a: u16,
    port_b: u16,
    key_a: PrivateKey,
    key_b: PrivateKey,
}

impl Tunnel {
    /// `tail_a`: TOML appended to a's config (after its peer), e.g. a `[metrics]` table.
    fn start(tag: &str, tail_a: &str) -> Tunnel {
        require_root();
        let n = unique();
        let a = Netns::new(&format!("tnd-ops-{tag}-a"));
        let b = Netns::new(&format!("tnd-ops-{tag}-b"));
        veth_pair(&a, &b, &["10.98.0.1/24"], &["10.98.0.2/24"]);
        let dir = TempDir::new(tag);
        let ifname = format!("tndo{}x{n}", std::process::id() % 1000);
        // Ports of their own (other test binaries use 40000+): namespaces keep them apart
        // anyway, but the UAPI sockets share /var/run/wireguard, hence the unique ifname.
        let port_a = 43_000 + (n as u16) * 2;
        let port_b = port_a + 1;
        let seed = 200 + (n % 20) as u8 * 2;
        let (key_a, key_b) = (key(seed), key(seed + 1));
        let psk = PresharedKey::from_bytes([0x5a; 32]).to_base64();
        let conf_a = dir.file(
            "a.toml",
            &format!(
                "[interface]\nname = \"{ifname}\"\nprivate_key = \"{}\"\nlisten_port = {port_a}\n\
                 address = [\"{A4}/24\"]\n\n\
                 [[peer]]\nname = \"site-b\"\npublic_key = \"{}\"\npreshared_key = \"{psk}\"\n\
                 endpoint = \"10.98.0.2:{port_b}\"\nallowed_ips = [\"{B4}/32\"]\n\
                 persistent_keepalive = 25\n{tail_a}",
                key_a.to_base64(),
                key_b.public_key().to_base64(),
            ),
        );
        let conf_b = dir.file(
            "b.toml",
            &format!(
                "[interface]\nname = \"{ifname}\"\nprivate_key = \"{}\"\nlisten_port = {port_b}\n\
                 address = [\"{B4}/24\"]\n\n\
                 [[peer]]\npublic_key = \"{}\"\npreshared_key = \"{psk}\"\n\
                 endpoint = \"10.98.0.1:{port_a}\"\nallowed_ips = [\"{A4}/32\"]\n",
                key_b.to_base64(),
                key_a.public_key().to_base64(),
            ),
        );
        let mut da = Daemon::up(&a, &conf_a);
        da.wait_log("interface up", Duration::from_secs(15));
        let mut db = Daemon::up(&b, &conf_b);
        db.wait_log("interface up", Duration::from_secs(15));
        Tunnel {
            da,
            db,
            a,
            b,
            _dir: dir,
            ifname,
            port_a,
            port_b,
            key_a,
            key_b,
        }
    }

    /// Waits until a's log holds `needle`; panics with the log otherwise.
    fn da_log_has(&self, needle: &str) {
        let ok = wait_until(Duration::from_secs(10), || self.da.log().contains(needle));
        assert!(ok, "{needle:?} not in a's log:\n{}", self.da.log());
    }

    /// `count` pings from a to b (0.2 s apart); panics unless every one is answered.
    fn pings(&self, count: u32) {
        let ok = wait_until(Duration::from_secs(15), || {
            self.a
                .exec("ping", &["-n", "-c", "1", "-W", "1", B4])
                .status
                .success()
        });
        assert!(
            ok,
            "no ping through the tunnel within 15 s\n--- a:\n{}\n--- b:\n{}",
            self.da.log(),
            self.db.log()
        );
        let c = count.to_string();
        self.a
            .exec_ok("ping", &["-n", "-q", "-c", &c, "-i", "0.2", "-W", "2", B4]);
    }
}

/// `tandem show --json IFACE` in `ns`, parsed.
fn show_json(ns: &Netns, ifname: &str) -> serde_json::Value {
    let text = ns.exec_ok(BIN, &["show", "--json", ifname]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{text}"))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `tandem show --json` has every field of `wg show dump` (but the private key), with the
/// same values, plus the peer's name, `connected` and the drop counters.
#[test]
fn show_json_matches_wg_show_dump_field_by_field() {
    common::peers::require_wg();
    let t = Tunnel::start("json", "");
    t.pings(10);

    // The counters move on their own (keepalives): compare a JSON document with the dumps
    // taken just before and after it, when those two agree.
    let (dump, json) = (0..10)
        .find_map(|_| {
            let before = t.a.exec_ok("wg", &["show", &t.ifname, "dump"]);
            let json = show_json(&t.a, &t.ifname);
            let after = t.a.exec_ok("wg", &["show", &t.ifname, "dump"]);
            (before == after).then_some((before, json))
        })
        .expect("wg show dump kept changing");
    assert_eq!(json["schema"], 1, "{json:#}");
    let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{dump}");

    // Interface: private-key public-key listen-port fwmark.
    let (dev, iface) = (&lines[0], &json["interfaces"][0]);
    assert_eq!(iface["name"], t.ifname.as_str());
    assert_eq!(iface["public_key"], dev[1]);
    assert_eq!(dev[1], t.key_a.public_key().to_base64());
    assert_eq!(iface["listen_port"].to_string(), dev[2]);
    assert_eq!(iface["listen_port"], t.port_a);
    assert_eq!(dev[3], "off");
    assert_eq!(iface["fwmark"], 0);
    let text = json.to_string();
    assert!(!text.contains(dev[0]), "the private key is never printed");

    // Peer: public-key preshared-key endpoint allowed-ips latest-handshake transfer-rx
    // transfer-tx persistent-keepalive.
    let (p, peer) = (&lines[1], &iface["peers"][0]);
    assert_eq!(peer["public_key"], p[0]);
    assert_eq!(p[0], t.key_b.public_key().to_base64());
    assert_eq!(peer["preshared_key"], p[1] != "(none)");
    assert_eq!(peer["preshared_key"], true);
    assert!(!text.contains(p[1]), "the preshared key is never printed");
    assert_eq!(peer["endpoint"], p[2]);
    assert_eq!(p[2], format!("10.98.0.2:{}", t.port_b));
    let allowed: Vec<&str> = peer["allowed_ips"]
        .as_array()
        .expect("allowed_ips is an array")
        .iter()
        .map(|v| v.as_str().expect("a string"))
        .collect();
    assert_eq!(allowed.join(","), p[3]);
    assert_eq!(peer["latest_handshake"].to_string(), p[4]);
    assert_eq!(peer["transfer_rx"].to_string(), p[5]);
    assert_eq!(peer["transfer_tx"].to_string(), p[6]);
    assert_eq!(peer["persistent_keepalive"].to_string(), p[7]);
    assert_eq!(p[7], "25");

    // And what dump does not have.
    assert_eq!(peer["name"], "site-b");
    assert!(peer["transfer_rx"].as_u64().expect("rx") > 0, "{peer:#}");
    let age = now_unix().saturating_sub(peer["latest_handshake"].as_u64().expect("handshake"));
    assert!(age < 5, "handshake {age} s old");
    assert_eq!(peer["connected"], true);
    let drops = iface["drops"].as_object().expect("drops is an object");
    for reason in tandem::proto::DropReason::ALL {
        assert!(
            drops[reason.as_str()].is_u64(),
            "{reason} missing: {drops:?}"
        );
    }
    assert!(iface["handshakes_completed"].as_u64().expect("count") >= 1);
    // Nothing gave up: the failed counters are there, at 0 (their counting is checked in
    // virtual time in proto::device::events).
    assert_eq!(iface["handshakes_failed"], 0, "{iface:#}");
    assert_eq!(peer["handshakes_failed"], 0, "{peer:#}");
    assert_eq!(iface["under_load"], false);

    // All interfaces: the same document shape, ours among them.
    // (Other tests' daemons come and go meanwhile: one that vanishes between the listing and
    // its query is reported on stderr and makes the status non-zero, so only stdout counts.)
    let all = t.a.exec(BIN, &["show", "--json"]);
    let all = String::from_utf8_lossy(&all.stdout);
    let all: serde_json::Value = serde_json::from_str(&all).unwrap_or_else(|e| {
        panic!(
            "invalid JSON ({e}):
{all}"
        )
    });
    assert!(
        all["interfaces"]
            .as_array()
            .expect("array")
            .iter()
            .any(|i| i["name"] == t.ifname.as_str()),
        "{all:#}"
    );
}

/// A blocking HTTP/1.0 GET of /metrics at `addr` from the calling thread's namespace (every
/// wait bounded); the body of a 200 answer.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("cannot connect to the metrics endpoint {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: tandem\r\n\r\n")
        .expect("send the request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.contains(" 200 "), "{reply}");
    body.to_owned()
}

/// The value of the sample line that starts with `name{` and holds every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<u64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `[metrics] listen` serves the exporter's names with the peer's config name; garbage
/// datagrams raise their drop counter by exactly their number; a silent client does not hold
/// up other scrapes or the tunnel.
#[test]
fn metrics_count_bytes_by_name_and_drops_exactly() {
    let metrics_port = 19_586 + (unique() as u16);
    let listen: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().expect("addr");
    let t = Tunnel::start("metrics", &format!("\n[metrics]\nlisten = \"{listen}\"\n"));
    t.da_log_has("serving metrics");
    t.pings(10);

    let pk_b = t.key_b.public_key().to_base64();
    let peer = [
        format!("interface=\"{}\"", t.ifname),
        format!("public_key=\"{pk_b}\""),
        "name=\"site-b\"".to_owned(),
        format!("allowed_ips=\"{B4}/32\""),
    ];
    let peer: Vec<&str> = peer.iter().map(String::as_str).collect();
    let text = t.a.run(|| scrape(listen));
    for counter in [
        "wireguard_sent_bytes_total",
        "wireguard_received_bytes_total",
    ] {
        let n = sample(&text, counter, &peer).unwrap_or_else(|| panic!("no {counter}:\n{text}"));
        assert!(n > 0, "{counter} is 0:\n{text}");
    }
    let latest = sample(&text, "wireguard_latest_handshake_seconds", &peer).expect("handshake");
    assert!(now_unix().saturating_sub(latest) < 60, "{text}");
    assert_eq!(
        sample(&text, "tandem_peer_connected", &peer),
        Some(1),
        "{text}"
    );
    assert_eq!(sample(&text, "tandem_peers", &[]), Some(1), "{text}");
    assert_eq!(sample(&text, "tandem_under_load", &[]), Some(0), "{text}");
    assert!(sample(&text, "tandem_handshakes_completed_total", &[]).expect("count") >= 1);
    assert_eq!(
        sample(&text, "tandem_handshakes_failed_total", &[]),
        Some(0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tandem_peer_handshakes_failed_total", &peer),
        Some(0),
        "{text}"
    );
    assert!(!text.contains(&t.key_a.to_base64()), "no private key");

    // 5 datagrams of an unknown message type, from b's side of the veth to a's port.
    let reason = ["reason=\"unknown_type\""];
    let before = sample(&text, "tandem_drops_total", &reason).expect("unknown_type counter");
    let target: SocketAddr = format!("10.98.0.1:{}", t.port_a).parse().expect("addr");
    t.b.run(|| {
        let socket = UdpSocket::bind("10.98.0.2:0").expect("bind in b");
        for _ in 0..5 {
            socket
                .send_to(&[9, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], target)
                .expect("send garbage");
        }
    });
    let want = before + 5;
    let seen = wait_until(Duration::from_secs(5), || {
        sample(&t.a.run(|| scrape(listen)), "tandem_drops_total", &reason) == Some(want)
    });
    assert!(seen, "unknown_type did not reach {want}");
    std::thread::sleep(Duration::from_millis(500));
    let text = t.a.run(|| scrape(listen));
    assert_eq!(
        sample(&text, "tandem_drops_total", &reason),
        Some(want),
        "exactly 5 more:\n{text}"
    );

    // A client that connects and sends nothing holds one connection, not the endpoint nor
    // the tunnel.
    t.a.run(|| {
        let _silent = TcpStream::connect_timeout(&listen, Duration::from_secs(2)).expect("connect");
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let text = scrape(listen);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a scrape waited {:?} behind a silent client",
            started.elapsed()
        );
        assert!(text.contains("tandem_peers"), "{text}");
    });
    t.pings(3);
}

/// `tandem -f IFNAME --metrics ADDR` (the wireguard-go command line) serves metrics too.
#[test]
fn bare_mode_serves_metrics_with_the_flag() {
    require_root();
    let ns = Netns::new("tnd-ops-bare");
    let ifname = format!("tndob{}x{}", std::process::id() % 1000, unique());
    let listen: SocketAddr = format!("127.0.0.1:{}", 19_700 + (unique() as u16))
        .parse()
        .expect("addr");
    let listen_s = listen.to_string();
    let mut d = Daemon::start(&ns, &["-f", &ifname, "--metrics", &listen_s], &[]);
    // (Daemon's drop kills it by PID should an assertion below fail.)
    d.wait_log("serving metrics", Duration::from_secs(15));
    let text = ns.run(|| scrape(listen));
    assert_eq!(
        sample(&text, "tandem_peers", &[&format!("interface=\"{ifname}\"")]),
        Some(0),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    // A clean stop also removes its UAPI socket and closes the endpoint.
    d.stop(Duration::from_secs(10));
    assert!(ns.run(|| TcpStream::connect_timeout(&listen, Duration::from_secs(1)).is_err()));
}
