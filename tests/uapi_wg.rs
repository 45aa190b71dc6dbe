//! The WireGuard ecosystem against tandem: `wg` (show, show dump, showconf, set, setconf,
//! syncconf) and `wg-quick` talking to tandem's UAPI socket, the wireguard-go command line
//! `tandem [-f] IFNAME`, `tandem up` with a wg-quick file, `tandem show` and `tandem import`.
//!
//! Needs root (namespaces, TUN devices) and wireguard-tools (`wg`, `wg-quick`); tests fail
//! with a message saying so otherwise. The socket directory /var/run/wireguard is shared by
//! every network namespace, so each test uses interface names of its own. Every daemon,
//! namespace and file is removed even when a test fails; every wait is bounded; traffic stays
//! in the namespaces a test creates.

mod common;
use common::{kit, netns};

use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kit::{BIN, Daemon, Detached, TempDir, detached_pid, ping_once, unique, wait_until_every};
use netns::{ChildGuard, Netns, require_root, veth_pair};
use tandem::config;
use tandem::proto::PresharedKey;
use tandem::testkit::key;

const SOCKET_DIR: &str = "/var/run/wireguard";

/// An interface name no other test (in this or another test process) uses: the socket
/// directory is shared between namespaces.
fn ifname(tag: char) -> String {
    format!("tu{}{tag}{}", std::process::id() % 100_000, unique())
}

fn socket(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

fn public(seed: u8) -> String {
    key(seed).public_key().to_base64()
}

/// Panics with a clear message unless root, `ip`, `wg` and `wg-quick` are there.
fn require_tools() {
    require_root();
    for tool in ["wg", "wg-quick"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "this test needs `{tool}` from wireguard-tools: install it with \
             `apt-get install wireguard-tools`"
        );
    }
}

/// Polls `check` every 25 ms for at most `limit`: sockets and links come and go quickly.
fn wait_until(limit: Duration, check: impl FnMut() -> bool) -> bool {
    wait_until_every(limit, Duration::from_millis(25), check)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A tandem process (started by the test, in a namespace) serving the UAPI socket of
/// `ifname`, with its stderr collected. Drop stops it (SIGTERM, then SIGKILL by PID) and
/// removes a socket file it may have left.
struct Served {
    daemon: Daemon,
    ifname: String,
}

impl Deref for Served {
    type Target = Daemon;

    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl Served {
    fn spawn(ns: &Netns, args: &[&str], ifname: &str) -> Served {
        Served::spawn_env(ns, args, ifname, &[])
    }

    fn spawn_env(ns: &Netns, args: &[&str], ifname: &str, env: &[(&str, &str)]) -> Served {
        Served {
            daemon: Daemon::start(ns, args, env),
            ifname: ifname.to_owned(),
        }
    }

    /// `tandem -f IFNAME`, waiting until its socket answers.
    fn bare(ns: &Netns, ifname: &str) -> Served {
        let mut d = Served::spawn(ns, &["-f", ifname], ifname);
        d.wait_socket();
        d
    }

    /// `tandem up CONFIG`, waiting until its socket answers.
    fn up(ns: &Netns, config: &Path, ifname: &str) -> Served {
        let mut d = Served::spawn(ns, &["up", &config.to_string_lossy()], ifname);
        d.wait_socket();
        d
    }

    fn wait_socket(&mut self) {
        let path = socket(&self.ifname);
        let ok = wait_until(Duration::from_secs(15), || {
            UnixStream::connect(&path).is_ok() || self.exited().is_some()
        }) && UnixStream::connect(&path).is_ok();
        assert!(
            ok,
            "{} has no answering socket within 15 s; log:\n{}",
            path.display(),
            self.log()
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.daemon.terminate(Duration::from_secs(3));
        // A daemon killed hard leaves its socket: the name was this test's.
        let path = socket(&self.ifname);
        if UnixStream::connect(&path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs `cmd args` in `ns`; panics with stderr unless it succeeds; returns stdout.
fn ok(ns: &Netns, cmd: &str, args: &[&str]) -> String {
    ns.exec_ok(cmd, args)
}

fn wg(ns: &Netns, args: &[&str]) -> String {
    ok(ns, "wg", args)
}

fn tandem_show(ns: &Netns, args: &[&str]) -> Output {
    let mut full = vec!["show"];
    full.extend_from_slice(args);
    ns.exec(BIN, &full)
}

/// Sends raw bytes to the socket and reads the reply until the daemon closes.
fn uapi(ifname: &str, request: &str) -> String {
    kit::uapi_exchange(&socket(ifname), request, Duration::from_secs(10))
}

/// `wg show IFNAME dump` without the columns that move with traffic (handshake time and
/// byte counters), for comparing configurations.
fn config_dump(ns: &Netns, ifname: &str) -> String {
    let (iface, peers) = dump(ns, ifname);
    let mut out = iface.join("\t") + "\n";
    for mut peer in peers {
        for column in 4..=6 {
            if let Some(c) = peer.get_mut(column) {
                c.clear();
            }
        }
        out += &(peer.join("\t") + "\n");
    }
    out
}

/// `wg show IFNAME dump`, as (interface fields, peer rows).
fn dump(ns: &Netns, ifname: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let out = wg(ns, &["show", ifname, "dump"]);
    let mut lines = out
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>());
    let iface = lines.next().expect("an interface line");
    (iface, lines.collect())
}

/// `wg show` and `tandem show` print the same for `ifname`, apart from tandem's `name:`
/// lines. Retried a few times, since counters and "N seconds ago" may move between the two.
fn assert_show_matches_wg(ns: &Netns, ifname: &str) -> String {
    let mut last = (String::new(), String::new());
    for _ in 0..5 {
        let ours = tandem_show(ns, &[ifname]);
        assert!(
            ours.status.success(),
            "tandem show {ifname}: {}",
            text(&ours.stderr)
        );
        let ours = text(&ours.stdout);
        let theirs = wg(ns, &["show", ifname]);
        let without_names: String = ours
            .lines()
            .filter(|l| !l.starts_with("  name: "))
            .map(|l| format!("{l}\n"))
            .collect();
        if without_names == theirs {
            return ours;
        }
        last = (ours, theirs);
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "tandem show differs from wg show\n--- tandem:\n{}\n--- wg:\n{}",
        last.0, last.1
    );
}

/// A config-mode daemon's TOML: two peers, one named, one with a preshared key.
fn named_config(ifname: &str, psk: &PresharedKey) -> String {
    format!(
        "[interface]\nname = \"{ifname}\"\nprivate_key = \"{}\"\nlisten_port = 51820\n\
         fwmark = 4660\naddress = [\"10.31.0.1/24\"]\n\n\
         [[peer]]\nname = \"site-b\"\npublic_key = \"{}\"\npreshared_key = \"{}\"\n\
         endpoint = \"192.0.2.1:51820\"\nallowed_ips = [\"10.31.0.2/32\", \"192.168.31.0/24\"]\n\n\
         [[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"fd31::3/128\"]\npersistent_keepalive = 25\n",
        key(1).to_base64(),
        public(2),
        psk.to_base64(),
        public(3),
    )
}

#[test]
fn wg_show_dump_and_showconf_against_a_config_file_daemon() {
    require_tools();
    let ns = Netns::new("tuw-show");
    let dir = TempDir::new("show");
    let name = ifname('s');
    let psk = PresharedKey::from_bytes([9; 32]);
    let conf = dir.file("a.toml", &named_config(&name, &psk));
    let daemon = Served::up(&ns, &conf, &name);

    // The socket: owned by root, srwx------, in a 0755 directory.
    let meta = std::fs::metadata(socket(&name)).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let dir_mode = std::fs::metadata(SOCKET_DIR)
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o755);

    // The peer with an endpoint got one initiation at start (148 bytes; the next attempt is
    // REKEY_TIMEOUT away, after these checks).
    let expected = format!(
        "interface: {name}\n  public key: {}\n  private key: (hidden)\n  listening port: 51820\n  \
         fwmark: 0x1234\n\npeer: {}\n  preshared key: (hidden)\n  endpoint: 192.0.2.1:51820\n  \
         allowed ips: 10.31.0.2/32, 192.168.31.0/24\n  transfer: 0 B received, 148 B sent\n\n\
         peer: {}\n  allowed ips: fd31::3/128\n  persistent keepalive: every 25 seconds\n",
        public(1),
        public(2),
        public(3)
    );
    assert_eq!(wg(&ns, &["show", &name]), expected);

    // The same through `tandem show`, with the config's peer name.
    let named = expected.replace(
        &format!("peer: {}\n", public(2)),
        &format!("peer: {}\n  name: site-b\n", public(2)),
    );
    assert_eq!(assert_show_matches_wg(&ns, &name), named);
    // Without IFACE: every interface with a socket, ours among them.
    let all = tandem_show(&ns, &[]);
    assert!(text(&all.stdout).contains(&named), "{}", text(&all.stdout));

    let (iface, peers) = dump(&ns, &name);
    assert_eq!(
        iface,
        [
            key(1).to_base64(),
            public(1),
            "51820".into(),
            "0x1234".into()
        ]
    );
    assert_eq!(
        peers,
        [
            vec![
                public(2),
                psk.to_base64(),
                "192.0.2.1:51820".into(),
                "10.31.0.2/32,192.168.31.0/24".into(),
                "0".into(),
                "0".into(),
                "148".into(),
                "off".into()
            ],
            vec![
                public(3),
                "(none)".into(),
                "(none)".into(),
                "fd31::3/128".into(),
                "0".into(),
                "0".into(),
                "0".into(),
                "25".into()
            ]
        ]
    );
    // `wg show all dump` (other tests' interfaces may be listed too: only ours is checked).
    let all: Vec<String> = wg(&ns, &["show", "all", "dump"])
        .lines()
        .filter(|l| l.split('\t').next() == Some(name.as_str()))
        .map(str::to_owned)
        .collect();
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(
        all[0],
        format!(
            "{name}\t{}\t{}\t51820\t0x1234",
            key(1).to_base64(),
            public(1)
        )
    );

    assert_eq!(
        wg(&ns, &["showconf", &name]),
        format!(
            "[Interface]\nListenPort = 51820\nFwMark = 0x1234\nPrivateKey = {}\n\n\
             [Peer]\nPublicKey = {}\nPresharedKey = {}\nAllowedIPs = 10.31.0.2/32, 192.168.31.0/24\n\
             Endpoint = 192.0.2.1:51820\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = fd31::3/128\nPersistentKeepalive = 25\n",
            key(1).to_base64(),
            public(2),
            psk.to_base64(),
            public(3)
        )
    );

    // wg set and wg syncconf work on a config-file daemon too: syncconf with its own
    // showconf changes nothing; a removed peer disappears from both shows.
    let before = config_dump(&ns, &name);
    let own = dir.file("own.conf", &wg(&ns, &["showconf", &name]));
    wg(&ns, &["syncconf", &name, &own.to_string_lossy()]);
    assert_eq!(config_dump(&ns, &name), before);
    wg(&ns, &["set", &name, "peer", &public(3), "remove"]);
    assert_eq!(dump(&ns, &name).1.len(), 1);
    assert!(!assert_show_matches_wg(&ns, &name).contains(&public(3)));

    // SIGHUP still reloads a config-mode daemon (its peers come back), and the new name
    // shows.
    std::fs::write(&conf, named_config(&name, &psk).replace("site-b", "site-c"))
        .expect("rewrite config");
    daemon.signal("HUP");
    let renamed = wait_until(Duration::from_secs(10), || {
        text(&tandem_show(&ns, &[&name]).stdout).contains("  name: site-c\n")
    });
    assert!(renamed, "name not reloaded; log:\n{}", daemon.log());
    assert_eq!(config_dump(&ns, &name), before);
}

#[test]
fn wg_set_every_key_and_refused_sets_change_nothing() {
    require_tools();
    let ns = Netns::new("tuw-set");
    let dir = TempDir::new("set");
    let name = ifname('e');
    let _daemon = Served::bare(&ns, &name);

    // A fresh interface: no key, a random port, no peers.
    let (iface, peers) = dump(&ns, &name);
    assert_eq!(iface[0], "(none)");
    assert_ne!(iface[2], "0", "a port is bound from the start");
    assert!(peers.is_empty());

    let private = dir.file("private", &key(11).to_base64());
    let psk = PresharedKey::from_bytes([7; 32]);
    let psk_file = dir.file("psk", &psk.to_base64());
    wg(
        &ns,
        &[
            "set",
            &name,
            "listen-port",
            "41000",
            "fwmark",
            "0x77",
            "private-key",
            &private.to_string_lossy(),
            "peer",
            &public(12),
            "preshared-key",
            &psk_file.to_string_lossy(),
            "endpoint",
            "127.0.0.1:41001",
            "persistent-keepalive",
            "0",
            "allowed-ips",
            "10.40.0.0/16,fd40::/64",
            "peer",
            &public(13),
            "endpoint",
            "[fd41::1]:41002",
            "allowed-ips",
            "10.41.0.1/32",
        ],
    );
    let (iface, peers) = dump(&ns, &name);
    assert_eq!(
        iface,
        [
            key(11).to_base64(),
            public(11),
            "41000".into(),
            "0x77".into()
        ]
    );
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert_eq!(
        peers[0][..5],
        [
            public(12),
            psk.to_base64(),
            "127.0.0.1:41001".into(),
            "10.40.0.0/16,fd40::/64".into(),
            "0".into()
        ]
    );
    assert_eq!(peers[0][7], "off");
    assert_eq!(
        peers[1][..4],
        [
            public(13),
            "(none)".into(),
            "[fd41::1]:41002".into(),
            "10.41.0.1/32".into()
        ]
    );
    // The new port is really the one bound.
    let ss = ok(&ns, "ss", &["-uln"]);
    assert!(ss.contains(":41000"), "{ss}");

    // Keepalive on, allowed IPs replaced and cleared, preshared key removed (empty file),
    // a peer removed, fwmark off.
    let empty = dir.file("empty", "");
    wg(
        &ns,
        &[
            "set",
            &name,
            "fwmark",
            "off",
            "peer",
            &public(12),
            "persistent-keepalive",
            "30",
            "preshared-key",
            &empty.to_string_lossy(),
            "allowed-ips",
            "10.42.0.0/24",
            "peer",
            &public(13),
            "remove",
        ],
    );
    let (iface, peers) = dump(&ns, &name);
    assert_eq!(iface[3], "off");
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(
        (
            peers[0][1].as_str(),
            peers[0][3].as_str(),
            peers[0][7].as_str()
        ),
        ("(none)", "10.42.0.0/24", "30")
    );
    wg(&ns, &["set", &name, "peer", &public(12), "allowed-ips", ""]);
    assert_eq!(dump(&ns, &name).1[0][3], "(none)");
    // A link-local endpoint: wg sends the zone by interface name, which tandem resolves.
    wg(
        &ns,
        &[
            "set",
            &name,
            "peer",
            &public(12),
            "endpoint",
            "[fe80::1%lo]:41003",
        ],
    );
    assert_eq!(dump(&ns, &name).1[0][2], "[fe80::1%lo]:41003");
    assert!(
        uapi(&name, "get=1\n\n").contains("endpoint=[fe80::1%1]:41003\n"),
        "stored with lo's index"
    );
    // tandem show prints what wg show prints.
    assert_show_matches_wg(&ns, &name);
    // An empty private key file removes the key.
    wg(
        &ns,
        &["set", &name, "private-key", &empty.to_string_lossy()],
    );
    assert_eq!(dump(&ns, &name).0[..2], ["(none)", "(none)"]);
    wg(
        &ns,
        &["set", &name, "private-key", &private.to_string_lossy()],
    );

    // A port that is taken: EADDRINUSE, and nothing of the request applies.
    let before = config_dump(&ns, &name);
    let holder = ns.run(|| std::net::UdpSocket::bind("0.0.0.0:41500").expect("hold a port"));
    let refused = ns.exec(
        "wg",
        &[
            "set",
            &name,
            "listen-port",
            "41500",
            "peer",
            &public(14),
            "allowed-ips",
            "10.50.0.0/24",
        ],
    );
    assert!(!refused.status.success(), "binding a taken port must fail");
    assert!(
        text(&refused.stderr).contains("Address in use")
            || text(&refused.stderr).contains("Address already in use"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(config_dump(&ns, &name), before);
    drop(holder);

    // An invalid line after a port change: nothing applies, and the port the request would
    // have moved to is not held.
    let reply = uapi(
        &name,
        &format!(
            "set=1\nlisten_port=41600\npublic_key={}\nallowed_ip=10.60.0.0/24\n\
             allowed_ip=10.60.0.0/99\n\n",
            key(15).public_key().to_hex()
        ),
    );
    assert_eq!(reply, "errno=-22\n\n");
    assert_eq!(config_dump(&ns, &name), before);
    ns.run(|| std::net::UdpSocket::bind("0.0.0.0:41600").expect("41600 was left free"));
    // Unknown operations close the connection without an answer; get works on.
    assert_eq!(uapi(&name, "delete=1\n\n"), "");
    assert!(uapi(&name, "get=1\n\n").ends_with("errno=0\n\n"));
}

/// A wg(8) config (no wg-quick keys) for a bare interface.
fn wg_conf(me: u8, port: u16, peers: &[(u8, &str, Option<&str>)]) -> String {
    let mut out = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {port}\n",
        key(me).to_base64()
    );
    for (seed, allowed, endpoint) in peers {
        out.push_str(&format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {allowed}\n",
            public(*seed)
        ));
        if let Some(e) = endpoint {
            out.push_str(&format!("Endpoint = {e}\n"));
        }
    }
    out
}

#[test]
fn wg_setconf_and_syncconf_on_a_bare_daemon() {
    require_tools();
    let ns = Netns::new("tuw-conf");
    let dir = TempDir::new("conf");
    let name = ifname('c');
    let _daemon = Served::bare(&ns, &name);

    let first = dir.file(
        "first.conf",
        &wg_conf(
            21,
            42000,
            &[
                (22, "10.70.0.2/32", Some("192.0.2.22:1")),
                (23, "10.70.0.3/32, fd70::3/128", None),
                (24, "10.70.0.4/32", None),
            ],
        ),
    );
    wg(&ns, &["setconf", &name, &first.to_string_lossy()]);
    assert_eq!(
        wg(&ns, &["showconf", &name]),
        format!(
            "[Interface]\nListenPort = 42000\nPrivateKey = {}\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = 10.70.0.2/32\nEndpoint = 192.0.2.22:1\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = 10.70.0.3/32, fd70::3/128\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = 10.70.0.4/32\n",
            key(21).to_base64(),
            public(22),
            public(23),
            public(24)
        )
    );

    // syncconf: 24 goes, 25 comes, 23 changes its prefixes; 22 stays as it was.
    let second = dir.file(
        "second.conf",
        &wg_conf(
            21,
            42000,
            &[
                (22, "10.70.0.2/32", Some("192.0.2.22:1")),
                (23, "10.70.0.33/32", None),
                (25, "10.70.0.5/32", None),
            ],
        ),
    );
    wg(&ns, &["syncconf", &name, &second.to_string_lossy()]);
    let (iface, peers) = dump(&ns, &name);
    assert_eq!(iface[2], "42000");
    let rows: Vec<(String, String)> = peers.iter().map(|p| (p[0].clone(), p[3].clone())).collect();
    assert_eq!(
        rows,
        [
            (public(22), "10.70.0.2/32".into()),
            (public(23), "10.70.0.33/32".into()),
            (public(25), "10.70.0.5/32".into()),
        ]
    );

    // setconf replaces everything: one peer left, the port moved.
    let third = dir.file(
        "third.conf",
        &wg_conf(26, 42001, &[(27, "10.71.0.0/24", None)]),
    );
    wg(&ns, &["setconf", &name, &third.to_string_lossy()]);
    let (iface, peers) = dump(&ns, &name);
    assert_eq!(
        iface[..3],
        [key(26).to_base64(), public(26), "42001".into()]
    );
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0][0], public(27));
}

#[test]
fn socket_and_interface_lifecycle_of_a_bare_daemon() {
    require_tools();
    let ns = Netns::new("tuw-life");

    // SIGHUP is ignored without a config; SIGTERM stops it, removing socket and interface
    // (and the WG_TUN_NAME_FILE it wrote, as wireguard-go does).
    let name = ifname('l');
    let dir = TempDir::new("life");
    let name_file = dir.path("name");
    let mut d = Served::spawn_env(
        &ns,
        &["-f", &name],
        &name,
        &[("WG_TUN_NAME_FILE", &name_file.to_string_lossy())],
    );
    d.wait_socket();
    assert_eq!(
        std::fs::read_to_string(&name_file).expect("WG_TUN_NAME_FILE written"),
        format!("{name}\n")
    );
    let link = ok(&ns, "ip", &["link", "show", "dev", &name]);
    assert!(
        link.contains("mtu 1420"),
        "wireguard-go's default MTU: {link}"
    );
    assert!(
        link.contains("state DOWN"),
        "left down for wg-quick: {link}"
    );
    d.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log()
            .contains("SIGHUP ignored")),
        "{}",
        d.log()
    );
    assert!(UnixStream::connect(socket(&name)).is_ok(), "still serving");
    d.signal("TERM");
    assert!(
        d.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        d.log()
    );
    assert!(!socket(&name).exists(), "socket removed on exit");
    assert!(
        !ns.exec("ip", &["link", "show", "dev", &name])
            .status
            .success()
    );
    assert!(!name_file.exists(), "WG_TUN_NAME_FILE removed on exit");

    // Deleting the socket file stops the daemon (cleanly) within a few seconds.
    let name = ifname('l');
    let mut d = Served::bare(&ns, &name);
    std::fs::remove_file(socket(&name)).expect("delete the socket");
    assert!(d.wait_exit(Duration::from_secs(5)).success(), "{}", d.log());
    assert!(d.log().contains("was removed"), "{}", d.log());
    assert!(
        !ns.exec("ip", &["link", "show", "dev", &name])
            .status
            .success()
    );

    // Deleting the interface (as `wg-quick down` does) stops it and removes the socket.
    let name = ifname('l');
    let mut d = Served::bare(&ns, &name);
    ok(&ns, "ip", &["link", "del", "dev", &name]);
    assert!(d.wait_exit(Duration::from_secs(5)).success(), "{}", d.log());
    assert!(!socket(&name).exists(), "socket removed on exit");

    // A second daemon for a served interface fails and leaves the first alone.
    let name = ifname('l');
    let _first = Served::bare(&ns, &name);
    let other = Netns::new("tuw-life2");
    let mut second = Served::spawn(&other, &["-f", &name], &name);
    let status = second.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(second.log().contains("in use"), "{}", second.log());
    assert!(uapi(&name, "get=1\n\n").ends_with("errno=0\n\n"));
}

#[test]
fn without_foreground_it_returns_once_the_socket_answers() {
    require_tools();
    let ns = Netns::new("tuw-detach");
    let name = ifname('d');
    let guard = Detached(name.clone());
    // A socket file left by a daemon that was killed is replaced.
    drop(std::os::unix::net::UnixListener::bind(socket(&name)).expect("stale socket"));
    let started = Instant::now();
    let out = ns.exec(BIN, &[&name]);
    assert!(out.status.success(), "tandem {name}: {}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(20));
    // At once, no waiting: the socket answers and the interface exists.
    assert!(uapi(&name, "get=1\n\n").ends_with("errno=0\n\n"));
    ok(&ns, "ip", &["link", "show", "dev", &name]);
    let pid = detached_pid(&name).expect("the detached daemon runs");
    // In a session of its own, with stdio on /dev/null.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        fields.get(3),
        Some(&pid.to_string().as_str()),
        "session id: {stat}"
    );
    let stderr = std::fs::read_link(format!("/proc/{pid}/fd/2")).expect("fd 2");
    assert_eq!(stderr, Path::new("/dev/null"));
    // It still logs (to nowhere) without dying: a set and a get after the parent left.
    wg(&ns, &["set", &name, "listen-port", "43000"]);
    assert_eq!(dump(&ns, &name).0[2], "43000");

    // Deleting the interface stops it.
    ok(&ns, "ip", &["link", "del", "dev", &name]);
    assert!(
        wait_until(Duration::from_secs(5), || detached_pid(&name).is_none()),
        "the detached daemon did not exit"
    );
    assert!(!socket(&name).exists());
    drop(guard);

    // A failure before the socket exists is reported by the parent, with the child's log:
    // here the name is taken by a device that is not a TUN device.
    let name = ifname('d');
    let _guard = Detached(name.clone());
    let peer_end = format!("{name}p");
    ok(
        &ns,
        "ip",
        &[
            "link", "add", &name, "type", "veth", "peer", "name", &peer_end,
        ],
    );
    let out = ns.exec(BIN, &[&name]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cannot create interface"), "{err}");
    assert!(err.contains("exited"), "{err}");
    assert!(!socket(&name).exists());
}

#[test]
fn two_bare_daemons_configured_by_wg_and_ip_pass_a_ping() {
    require_tools();
    let a = Netns::new("tuw-ping-a");
    let b = Netns::new("tuw-ping-b");
    veth_pair(&a, &b, &["10.88.0.1/24"], &["10.88.0.2/24"]);
    let dir = TempDir::new("ping");
    let (name_a, name_b) = (ifname('a'), ifname('b'));
    let da = Served::bare(&a, &name_a);
    let db = Served::bare(&b, &name_b);
    let conf_a = dir.file(
        "a.conf",
        &wg_conf(31, 44001, &[(32, "10.89.0.2/32", Some("10.88.0.2:44002"))]),
    );
    let conf_b = dir.file(
        "b.conf",
        &wg_conf(32, 44002, &[(31, "10.89.0.1/32", Some("10.88.0.1:44001"))]),
    );
    for (ns, name, conf, addr) in [
        (&a, &name_a, &conf_a, "10.89.0.1/24"),
        (&b, &name_b, &conf_b, "10.89.0.2/24"),
    ] {
        wg(ns, &["setconf", name, &conf.to_string_lossy()]);
        ok(ns, "ip", &["address", "add", addr, "dev", name]);
        ok(ns, "ip", &["link", "set", "mtu", "1420", "up", "dev", name]);
    }
    let pinged = wait_until(Duration::from_secs(15), || ping_once(&a, "10.89.0.2"));
    assert!(
        pinged,
        "no ping through two bare tandems\n--- a:\n{}\n--- b:\n{}",
        da.log(),
        db.log()
    );
    // Both sides show the handshake and the traffic, as wg prints it.
    let shown = assert_show_matches_wg(&a, &name_a);
    assert!(shown.contains("  latest handshake: "), "{shown}");
    assert!(shown.contains(" received, "), "{shown}");
}

/// A wg-quick file for NAME (Address, MTU, a peer behind a subnet).
fn wg_quick_conf(
    me: u8,
    port: u16,
    address: &str,
    peer: u8,
    allowed: &str,
    endpoint: &str,
) -> String {
    format!(
        "[Interface]\nPrivateKey = {}\nAddress = {address}\nListenPort = {port}\nMTU = 1380\n\n\
         [Peer]\nPublicKey = {}\nAllowedIPs = {allowed}\nEndpoint = {endpoint}\n",
        key(me).to_base64(),
        public(peer)
    )
}

/// A peer for the tunnels of the wg-quick tests: `tandem up` with a TOML config in `ns`.
fn toml_peer(dir: &TempDir, ns: &Netns, name: &str, me: u8, peer: u8, endpoint: &str) -> Served {
    let conf = dir.file(
        "peer.toml",
        &format!(
            "[interface]\nname = \"{name}\"\nprivate_key = \"{}\"\nlisten_port = 45002\n\
             address = [\"10.91.0.2/24\"]\n\n[[peer]]\nname = \"quick\"\npublic_key = \"{}\"\n\
             endpoint = \"{endpoint}\"\nallowed_ips = [\"10.91.0.1/32\"]\n",
            key(me).to_base64(),
            public(peer)
        ),
    );
    Served::up(ns, &conf, name)
}

#[test]
fn wg_quick_up_and_down_with_tandem_as_userspace_implementation() {
    require_tools();
    let a = Netns::new("tuw-quick-a");
    let b = Netns::new("tuw-quick-b");
    veth_pair(&a, &b, &["10.90.0.1/24"], &["10.90.0.2/24"]);
    let dir = TempDir::new("quick");
    let name = ifname('q');
    let guard = Detached(name.clone());
    // wg-quick takes the interface name from the file name.
    let conf = dir.file(
        &format!("{name}.conf"),
        &wg_quick_conf(
            41,
            45001,
            "10.91.0.1/24",
            42,
            "10.91.0.2/32, 10.92.0.0/16",
            "10.90.0.2:45002",
        ),
    );
    let name_b = ifname('r');
    let _db = toml_peer(&dir, &b, &name_b, 42, 41, "10.90.0.1:45001");

    let up = a
        .command("wg-quick", &["up", &conf.to_string_lossy()])
        .env("WG_QUICK_USERSPACE_IMPLEMENTATION", BIN)
        .stdin(Stdio::null())
        .output()
        .expect("run wg-quick");
    assert!(
        up.status.success(),
        "wg-quick up failed: {}",
        text(&up.stderr)
    );
    assert!(
        text(&up.stderr).contains(&format!("{BIN} {name}")),
        "wg-quick ran tandem: {}",
        text(&up.stderr)
    );
    let link = ok(&a, "ip", &["link", "show", "dev", &name]);
    assert!(link.contains("mtu 1380") && link.contains(",UP"), "{link}");
    let addr = ok(&a, "ip", &["-4", "address", "show", "dev", &name]);
    assert!(addr.contains("10.91.0.1/24"), "{addr}");
    // The AllowedIPs outside the address's subnet became routes, in this namespace only.
    let routes = ok(&a, "ip", &["route", "show", "dev", &name]);
    assert!(routes.contains("10.92.0.0/16"), "{routes}");
    let host = Command::new("ip")
        .args(["route", "show", "10.92.0.0/16"])
        .output()
        .expect("ip route");
    assert!(
        text(&host.stdout).trim().is_empty(),
        "no route in the host namespace"
    );
    let pinged = wait_until(Duration::from_secs(15), || ping_once(&a, "10.91.0.2"));
    assert!(pinged, "no ping through the wg-quick tunnel");

    let down = a
        .command("wg-quick", &["down", &conf.to_string_lossy()])
        .stdin(Stdio::null())
        .output()
        .expect("run wg-quick down");
    assert!(
        down.status.success(),
        "wg-quick down failed: {}",
        text(&down.stderr)
    );
    assert!(
        !a.exec("ip", &["link", "show", "dev", &name])
            .status
            .success()
    );
    assert!(
        wait_until(Duration::from_secs(5), || detached_pid(&name).is_none()),
        "tandem did not exit after wg-quick down"
    );
    assert!(!socket(&name).exists());
    drop(guard);
}

#[test]
fn tandem_up_runs_a_wg_quick_file() {
    require_tools();
    let a = Netns::new("tuw-upconf-a");
    let b = Netns::new("tuw-upconf-b");
    veth_pair(&a, &b, &["10.90.0.1/24"], &["10.90.0.2/24"]);
    let dir = TempDir::new("upconf");
    let name = ifname('u');
    let conf = dir.file(
        &format!("{name}.conf"),
        // SaveConfig is wg-quick's alone: accepted with a warning. (DNS and the hooks are
        // applied: tests/e2e_hooks.rs.)
        &wg_quick_conf(
            51,
            45001,
            "10.91.0.1/24",
            52,
            "10.91.0.2/32, 10.93.0.0/16",
            "10.90.0.2:45002",
        )
        .replace("MTU = 1380\n", "MTU = 1380\nSaveConfig = true\n"),
    );
    let name_b = ifname('v');
    let _db = toml_peer(&dir, &b, &name_b, 52, 51, "10.90.0.1:45001");
    let da = Served::up(&a, &conf, &name);
    assert!(
        da.log().contains("SaveConfig"),
        "the ignored SaveConfig is reported: {}",
        da.log()
    );
    let link = ok(&a, "ip", &["link", "show", "dev", &name]);
    assert!(link.contains("mtu 1380") && link.contains(",UP"), "{link}");
    let routes = ok(&a, "ip", &["route", "show", "dev", &name]);
    assert!(
        routes.contains("10.93.0.0/16") && routes.contains("10.91.0.2"),
        "{routes}"
    );
    let pinged = wait_until(Duration::from_secs(15), || ping_once(&a, "10.91.0.2"));
    assert!(pinged, "no ping; log:\n{}", da.log());
    // wg sees the interface of a config-file daemon too.
    let shown = assert_show_matches_wg(&a, &name);
    assert!(shown.contains("listening port: 45001"), "{shown}");
}

#[test]
fn tandem_show_falls_back_to_get_for_wireguard_go() {
    require_tools();
    let found = Command::new("sh")
        .args(["-c", "command -v wireguard-go"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "this test needs wireguard-go: install it with `apt-get install wireguard-go`"
    );
    let ns = Netns::new("tuw-wggo");
    let dir = TempDir::new("wggo");
    let name = ifname('g');
    let mut cmd = ns.command("wireguard-go", &["-f", &name]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _wggo = ChildGuard::new(cmd.spawn().expect("start wireguard-go"));
    let _cleanup = Detached(name.clone()); // removes the socket afterwards
    assert!(
        wait_until(Duration::from_secs(10), || UnixStream::connect(socket(
            &name
        ))
        .is_ok()),
        "wireguard-go did not create its socket"
    );
    let conf = dir.file(
        "go.conf",
        &wg_conf(61, 46000, &[(62, "10.95.0.2/32", Some("192.0.2.62:1"))]),
    );
    wg(&ns, &["setconf", &name, &conf.to_string_lossy()]);
    let shown = assert_show_matches_wg(&ns, &name);
    assert!(shown.contains(&format!("peer: {}", public(62))), "{shown}");
}

#[test]
fn tandem_import_prints_toml_and_warns_per_line() {
    let dir = TempDir::new("import");
    let conf = dir.file(
        "wg7.conf",
        &format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.96.0.1/24\nListenPort = 47000\n\
             DNS = 10.96.0.53\nPostUp = echo up\nSaveConfig = true\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = 10.96.0.2/32\nEndpoint = 192.0.2.1:47000\n",
            key(71).to_base64(),
            public(72)
        ),
    );
    let out = Command::new(BIN)
        .args(["import", &conf.to_string_lossy()])
        .output()
        .expect("run tandem import");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let path = conf.display().to_string();
    // DNS and PostUp are taken over; SaveConfig, which tandem does not do, is warned about.
    assert!(
        stderr.contains(&format!("warning: {path}:7: Interface.SaveConfig: ")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // The TOML on stdout is the same configuration.
    let toml = text(&out.stdout);
    let imported = config::parse_toml(Path::new("wg7.toml"), &toml)
        .unwrap_or_else(|e| panic!("{e}\n---\n{toml}"));
    let original = config::load(&conf).expect("load the .conf");
    assert_eq!(
        (&imported.interface, &imported.peers),
        (&original.interface, &original.peers)
    );
    assert_eq!(imported.interface.name, "wg7");
    assert_eq!(imported.interface.listen_port, Some(47000));
    assert_eq!(imported.interface.hooks.post_up, ["echo up"]);
    assert_eq!(imported.interface.dns.len(), 1);

    // A broken file: status 78 and FILE:LINE errors, nothing on stdout.
    let bad = dir.file("bad.conf", "[Interface]\nPrivateKey = nope\n");
    let out = Command::new(BIN)
        .args(["import", &bad.to_string_lossy()])
        .output()
        .expect("run tandem import");
    assert_eq!(out.status.code(), Some(78));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains(&format!("{}:2:", bad.display())),
        "{}",
        text(&out.stderr)
    );
}
