//! Peer files and provisioning against running daemons in network namespaces: a server
//! (`tandem up`) in one namespace, clients in two others, each joined to the server by a veth
//! pair. Needs root, `ping`, and for the phone `wireguard-go` and `wg`; fails saying so
//! otherwise. Namespaces, processes and files are removed even when a test fails; every wait
//! is bounded; traffic stays inside the namespaces.
//!
//! - `include`: a broken peer file is reported as `peers.d/b.toml:3: ...` by `tandem check`
//!   and refused by a reload; a fixed one, after SIGHUP, makes its peer ping while the other
//!   peer's session (its handshake time, no new handshake) stays.
//! - `tandem peer add`: the printed `.conf` brings wireguard-go up in a third namespace and it
//!   pings the server; the QR image decodes to the same text; the server's TOML keeps its
//!   comments; `tandem peer remove` makes the phone's pings fail and leaves alice's session.

mod common;
use common::{kit, netns, peers};

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use kit::{BIN, Daemon, TempDir, ping_once, unique, wait_until};
use netns::{Netns, require_root, veth_pair};
use peers::{PeerKind, RealPeer, require_wg};
use tandem::control::show::{DeviceStatus, parse_get_reply};
use tandem::proto::PrivateKey;
use tandem::testkit::key;

/// A server and two client namespaces, each client on its own veth link to the server.
/// Field order is drop order: processes stop before their namespaces go.
struct Star {
    daemons: Vec<Daemon>,
    phone: Option<RealPeer>,
    server: Netns,
    a: Netns,
    b: Netns,
    dir: TempDir,
    /// Distinguishes this test's subnets, names and ports from the others'.
    n: u32,
    port: u16,
    server_key: PrivateKey,
}

impl Drop for Star {
    /// Stops the daemons with SIGTERM (they remove their sockets and interfaces), killing
    /// what does not stop, and removes any socket left behind under this test's names.
    fn drop(&mut self) {
        for d in &mut self.daemons {
            d.terminate(Duration::from_secs(5));
        }
        self.phone = None;
        for side in ["s", "a", "b", "p"] {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname(side)));
        }
    }
}

impl Star {
    fn new(tag: &str) -> Star {
        require_root();
        let n = unique() + 1;
        let server = Netns::new(&format!("{tag}-srv"));
        let a = Netns::new(&format!("{tag}-a"));
        let b = Netns::new(&format!("{tag}-b"));
        veth_pair(
            &server,
            &a,
            &[&format!("100.66.{n}.1/24")],
            &[&format!("100.66.{n}.2/24")],
        );
        veth_pair(
            &server,
            &b,
            &[&format!("100.67.{n}.1/24")],
            &[&format!("100.67.{n}.2/24")],
        );
        let port = 52100 + u16::try_from(n).expect("few tests");
        Star {
            daemons: Vec::new(),
            phone: None,
            server,
            a,
            b,
            dir: TempDir::new(tag),
            n,
            port,
            server_key: key(u8::try_from(100 + n).expect("few tests")),
        }
    }

    /// Interface names: unique per test binary run (the UAPI socket directory is shared).
    fn ifname(&self, side: &str) -> String {
        format!("tpv{}{}{side}", std::process::id() % 10000, self.n)
    }

    fn tunnel_ip(&self, host: u8) -> String {
        format!("10.88.{}.{host}", self.n)
    }

    /// The server's config, with the user's comments, `extra` after the interface keys and
    /// `peers` after that.
    fn server_config(&self, extra: &str, peers: &str) -> String {
        format!(
            "# Road-warrior server for the provisioning test.\n\
             # Hand-written: tandem peer add must keep these lines.\n\
             [interface]\n\
             name = \"{}\"\n\
             private_key = \"{}\"   # keep secret\n\
             listen_port = {}\n\
             address = [\"{}/24\"]\n\
             {extra}\n\
             {peers}",
            self.ifname("s"),
            self.server_key.to_base64(),
            self.port,
            self.tunnel_ip(1),
        )
    }

    /// A `[[peer]]` block for a client with key `k` and tunnel address `.host`.
    fn peer_block(&self, name: &str, k: &PrivateKey, host: u8) -> String {
        format!(
            "# {name}'s device\n[[peer]]\nname = \"{name}\"\npublic_key = \"{}\"\n\
             allowed_ips = [\"{}/32\"]\n",
            k.public_key().to_base64(),
            self.tunnel_ip(host)
        )
    }

    /// A tandem client in `ns` (reaching the server at `server_ip`) with address `.host`.
    fn client_config(&self, side: &str, k: &PrivateKey, host: u8, server_ip: &str) -> String {
        format!(
            "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\naddress = [\"{}/24\"]\n\n\
             [[peer]]\nname = \"server\"\npublic_key = \"{}\"\nendpoint = \"{server_ip}:{}\"\n\
             allowed_ips = [\"10.88.{}.0/24\"]\n",
            self.ifname(side),
            k.to_base64(),
            self.tunnel_ip(host),
            self.server_key.public_key().to_base64(),
            self.port,
            self.n
        )
    }

    fn start(&mut self, ns_is: &str, config: &Path) -> usize {
        let ns = match ns_is {
            "server" => &self.server,
            "a" => &self.a,
            _ => &self.b,
        };
        let mut d = Daemon::up(ns, config);
        d.wait_log("interface up", Duration::from_secs(15));
        self.daemons.push(d);
        self.daemons.len() - 1
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for (i, d) in self.daemons.iter().enumerate() {
            all.push_str(&format!("--- daemon {i}:\n{}\n", d.log()));
        }
        if let Some(p) = &self.phone {
            all.push_str(&format!("--- phone:\n{}\n{}\n", p.log(), p.dump()));
        }
        all
    }

    fn ping_within(&self, ns: &Netns, to: &str, limit: Duration) {
        let ok = wait_until(limit, || ping_once(ns, to));
        assert!(
            ok,
            "no answer from {to} (from {}) within {limit:?}\n{}",
            ns.name(),
            self.logs()
        );
    }

    /// The server's view (UAPI `get=1`).
    fn server_state(&self) -> DeviceStatus {
        let socket = PathBuf::from(format!("/var/run/wireguard/{}.sock", self.ifname("s")));
        let reply = kit::uapi_exchange(&socket, "get=1\n\n", Duration::from_secs(5));
        parse_get_reply(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"))
    }

    /// The latest handshake of the server's peer with key `k`.
    fn handshake_of(&self, k: &PrivateKey) -> (u64, u32) {
        let state = self.server_state();
        state
            .peers
            .iter()
            .find(|p| p.public_key == k.public_key())
            .unwrap_or_else(|| panic!("the server has no such peer: {state:?}"))
            .last_handshake
    }

    fn tandem(&self, args: &[&str]) -> Output {
        std::process::Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .unwrap_or_else(|e| panic!("cannot run tandem {args:?}: {e}"))
    }
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn include_files_are_checked_with_their_own_lines_and_reloaded_without_disturbing_others() {
    let mut t = Star::new("tpinc");
    let (ka, kb) = (key(31), key(32));
    let config = t.dir.file(
        "srv.toml",
        &t.server_config("include = [\"peers.d/*.toml\"]", ""),
    );
    std::fs::create_dir_all(t.dir.path("peers.d")).expect("mkdir");
    std::fs::write(t.dir.path("peers.d/a.toml"), t.peer_block("alice", &ka, 2)).expect("a");
    let ca = t.dir.file(
        "a.toml",
        &t.client_config("a", &ka, 2, &format!("100.66.{}.1", t.n)),
    );
    let cb = t.dir.file(
        "b.toml",
        &t.client_config("b", &kb, 3, &format!("100.67.{}.1", t.n)),
    );
    let srv = t.start("server", &config);
    let a = t.start("a", &ca);
    t.ping_within(&t.a, &t.tunnel_ip(1), Duration::from_secs(10));
    let alice_handshake = t.handshake_of(&ka);
    assert_ne!(alice_handshake, (0, 0));
    let alice_handshakes = t.daemons[a].count("handshake completed");

    // A broken peer file: `tandem check` names it and its line; a reload refuses it.
    let broken = format!(
        "# bob's phone\n[[peer]]\npublic_key = \"{}x\"\nallowed_ips = [\"{}/32\"]\n",
        kb.public_key().to_base64(),
        t.tunnel_ip(3)
    );
    std::fs::write(t.dir.path("peers.d/b.toml"), &broken).expect("b");
    let out = t.tandem(&["check", &config.to_string_lossy()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("peers.d/b.toml:3: peer[1].public_key: "),
        "{err}"
    );
    t.daemons[srv].signal("HUP");
    t.daemons[srv].wait_log("reload failed", Duration::from_secs(10));
    assert!(t.daemons[srv].log().contains("peers.d/b.toml:3:"));

    // Fixed: `check` lists both files, a reload adds bob, and bob's tandem pings.
    std::fs::write(t.dir.path("peers.d/b.toml"), t.peer_block("bob", &kb, 3)).expect("b");
    let out = t.tandem(&["check", &config.to_string_lossy()]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(shown.contains("2 peer(s)"), "{shown}");
    assert!(shown.contains("peers.d/a.toml (1 peer(s))"), "{shown}");
    assert!(shown.contains("peers.d/b.toml (1 peer(s))"), "{shown}");
    t.daemons[srv].signal("HUP");
    t.daemons[srv].wait_log("configuration reloaded", Duration::from_secs(10));
    let b = t.start("b", &cb);
    t.ping_within(&t.b, &t.tunnel_ip(1), Duration::from_secs(10));
    assert_ne!(t.handshake_of(&kb), (0, 0));

    // Alice's session was not touched: the same handshake, none new, and it still carries
    // traffic.
    assert!(ping_once(&t.a, &t.tunnel_ip(1)), "{}", t.logs());
    assert_eq!(t.handshake_of(&ka), alice_handshake, "{}", t.logs());
    assert_eq!(t.daemons[a].count("handshake completed"), alice_handshakes);

    // Removing the file and reloading drops bob only.
    std::fs::remove_file(t.dir.path("peers.d/b.toml")).expect("rm b");
    t.daemons[srv].signal("HUP");
    t.daemons[srv].wait_log_n("configuration reloaded", 2, Duration::from_secs(10));
    assert!(
        !t.server_state()
            .peers
            .iter()
            .any(|p| p.public_key == kb.public_key()),
        "bob is still configured"
    );
    assert!(
        !(0..3).any(|_| ping_once(&t.b, &t.tunnel_ip(1))),
        "bob still pings: {}",
        t.logs()
    );
    assert!(ping_once(&t.a, &t.tunnel_ip(1)), "{}", t.logs());
    assert_eq!(t.handshake_of(&ka), alice_handshake);
    let _ = b;
}

/// Decodes the QR code in a greyscale or RGB(A) PNG.
fn decode_qr(path: &Path) -> String {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img =
        rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[(y * w + x) * channels]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in {}", path.display());
    let (_, content) = grids[0].decode().expect("the QR code decodes");
    content
}

/// Sets up the client `.conf` the way wg-quick does on a wireguard-go interface: `wg
/// setconf` with the wg-quick-only keys stripped, the addresses, the link up, a route to the
/// server's subnet.
fn wg_quick_up(ns: &Netns, phone: &RealPeer, conf: &str, dir: &Path, subnet: &str) {
    let mut addresses = Vec::new();
    let mut stripped = String::new();
    for line in conf.lines() {
        match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("Address", v)) => addresses.extend(v.split(',').map(|a| a.trim().to_owned())),
            Some(("DNS", _)) => {}
            _ => {
                stripped.push_str(line);
                stripped.push('\n');
            }
        }
    }
    let file = dir.join("phone-stripped.conf");
    std::fs::write(&file, stripped).expect("write");
    if let Err(e) = phone.wg(&["setconf", phone.ifname(), &file.to_string_lossy()]) {
        panic!("{e}\n{}", phone.log());
    }
    for a in &addresses {
        ns.ip(&["addr", "add", a, "dev", phone.ifname()]);
    }
    ns.ip(&["link", "set", "dev", phone.ifname(), "mtu", "1420", "up"]);
    ns.ip(&["route", "add", subnet, "dev", phone.ifname()]);
}

#[test]
fn peer_add_brings_a_wireguard_go_phone_up_and_peer_remove_cuts_it_off() {
    require_root();
    require_wg();
    let program = PeerKind::WireguardGo.program();
    assert!(program.is_file());
    let mut t = Star::new("tpadd");
    let ka = key(41);
    let original = t.server_config("", &t.peer_block("alice", &ka, 2));
    let config = t.dir.file("srv.toml", &original);
    let ca = t.dir.file(
        "a.toml",
        &t.client_config("a", &ka, 2, &format!("100.66.{}.1", t.n)),
    );
    t.start("server", &config);
    let a = t.start("a", &ca);
    t.ping_within(&t.a, &t.tunnel_ip(1), Duration::from_secs(10));
    let alice_handshake = t.handshake_of(&ka);
    let alice_handshakes = t.daemons[a].count("handshake completed");

    let qr = t.dir.path("phone.png");
    let endpoint = format!("100.67.{}.1:{}", t.n, t.port);
    let out = t.tandem(&[
        "peer",
        "add",
        &config.to_string_lossy(),
        "--name",
        "phone",
        "--endpoint",
        &endpoint,
        "--qr-file",
        &qr.to_string_lossy(),
    ]);
    let (conf, err) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{err}\n{}", t.logs());
    assert!(err.contains("reloaded: the peer is live"), "{err}");
    // The next free address after the server (.1) and alice (.2).
    assert!(
        conf.contains(&format!("Address = {}/32\n", t.tunnel_ip(3))),
        "{conf}"
    );
    assert!(conf.contains("AllowedIPs = 0.0.0.0/0, ::/0\n"), "{conf}");
    assert!(conf.contains(&format!("Endpoint = {endpoint}\n")), "{conf}");
    // The QR image holds exactly the printed text.
    assert_eq!(decode_qr(&qr), conf);
    // The server's TOML still has every line it had, comments included, and now the phone.
    let now = std::fs::read_to_string(&config).expect("read srv.toml");
    assert!(now.starts_with(&original), "{now}");
    assert!(now.contains("name = \"phone\""), "{now}");
    // Duplicates are refused and change nothing.
    let again = t.tandem(&["peer", "add", &config.to_string_lossy(), "--name", "phone"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(&config).expect("read"), now);

    // The phone: wireguard-go in the third namespace, set up from the printed .conf.
    let phone = RealPeer::start(PeerKind::WireguardGo, &t.b, &t.ifname("p"), t.dir.root());
    wg_quick_up(
        &t.b,
        &phone,
        &conf,
        t.dir.root(),
        &format!("10.88.{}.0/24", t.n),
    );
    t.phone = Some(phone);
    t.ping_within(&t.b, &t.tunnel_ip(1), Duration::from_secs(10));

    // A config whose interface is served by something else (here the phone's wireguard-go,
    // which would exit on SIGHUP) is written but its daemon is not signalled.
    let other = t.dir.file(
        "other.toml",
        &format!(
            "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\naddress = [\"10.99.0.1/24\"]\n",
            t.ifname("p"),
            key(60).to_base64()
        ),
    );
    let out = t.tandem(&["peer", "add", &other.to_string_lossy(), "--name", "x"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("which is not `tandem up"), "{err}");
    assert!(err.contains("not signalled"), "{err}");
    assert!(
        text(&out.stdout).contains("PrivateKey = "),
        "the .conf is still printed"
    );
    assert!(
        ping_once(&t.b, &t.tunnel_ip(1)),
        "wireguard-go survived: {}",
        t.logs()
    );

    // Adding it did not disturb alice.
    assert!(ping_once(&t.a, &t.tunnel_ip(1)), "{}", t.logs());
    assert_eq!(t.handshake_of(&ka), alice_handshake);

    // Removed: the server forgets it at once, the phone's pings fail, alice's do not.
    let out = t.tandem(&["peer", "remove", &config.to_string_lossy(), "phone"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("reloaded: the peer is gone"));
    assert_eq!(std::fs::read_to_string(&config).expect("read"), original);
    assert!(
        !(0..3).any(|_| ping_once(&t.b, &t.tunnel_ip(1))),
        "the removed phone still pings: {}",
        t.logs()
    );
    assert!(ping_once(&t.a, &t.tunnel_ip(1)), "{}", t.logs());
    assert_eq!(t.handshake_of(&ka), alice_handshake);
    assert_eq!(t.daemons[a].count("handshake completed"), alice_handshakes);
}

#[test]
fn import_of_export_is_the_same_config_for_every_example() {
    let dir = TempDir::new("tpexp");
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&configs).expect("configs/") {
        let path = entry.expect("entry").path();
        let out = std::process::Command::new(BIN)
            .args(["export", &path.to_string_lossy()])
            .output()
            .expect("run tandem export");
        assert!(out.status.success(), "{}", text(&out.stderr));
        // Saved under the interface's name, as wg-quick expects, then imported.
        let original = tandem::config::load(&path).expect("loads");
        let conf = dir.file(
            &format!("{}.conf", original.interface.name),
            &text(&out.stdout),
        );
        let out = std::process::Command::new(BIN)
            .args(["import", &conf.to_string_lossy()])
            .output()
            .expect("run tandem import");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let toml = dir.file(
            &format!("{}.toml", original.interface.name),
            &text(&out.stdout),
        );
        let again = tandem::config::load(&toml).expect("the import loads");
        assert_eq!(again.interface, original.interface, "{}", path.display());
        assert_eq!(again.peers, original.peers, "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} example configs");
}
