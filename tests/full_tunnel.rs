//! Full tunnel the wg-quick way, end to end, in the road-warrior topology `laptop — isp —
//! server` (see `common/topology.rs`): `tandem up` of a laptop config whose peer owns
//! `0.0.0.0/0` and `::/0` (TOML and wg-quick `.conf`), and the same through `wg-quick` with
//! tandem as its userspace implementation. The server's "public" addresses exist only on the
//! server, so reaching them proves the packets went through the tunnel; the laptop's rules
//! and routing tables must come back exactly as they were after SIGTERM, after `kill -9` and
//! a restart, after a failed start, and (per family) after a reload that drops `::/0`.
//!
//! Needs root (namespaces, TUN devices), iproute2 and `sysctl`; the wg-quick test needs
//! wireguard-tools. Every namespace and process is removed even when a test fails, every
//! wait is bounded, and traffic stays inside the namespaces each test creates.

mod common;
use common::{kit, netns, topology};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kit::{BIN, Daemon, Detached, TempDir, detached_pid, ping_once, rx_packets, wait_until};
use netns::require_root;
use tandem::testkit::key;
use topology::{PUBLIC4, PUBLIC6, Topology};

const UP: Duration = Duration::from_secs(15);

/// The mark (and table) wg-quick and tandem pick first: 51820 = 0xca6c.
const MARK_HEX: &str = "0xca6c";

/// Panics with a clear message unless root, `ip` and `sysctl` are there.
fn require_tools(extra: &[&str]) {
    require_root();
    for tool in std::iter::once(&"sysctl").chain(extra) {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "this test needs `{tool}` on PATH (apt-get install procps wireguard-tools)"
        );
    }
}

/// One test's world: the topology, a server daemon, the laptop's files and names.
struct World {
    laptop: Option<Daemon>,
    server: Option<Daemon>,
    topo: Topology,
    dir: TempDir,
    n: u8,
    /// Interface names: unique, since /var/run/wireguard is shared by all namespaces.
    laptop_if: String,
    server_if: String,
    port: u16,
}

impl World {
    fn new(tag: &str, n: u8) -> World {
        let topo = Topology::new(tag, n);
        let pid = std::process::id() % 1000;
        World {
            laptop: None,
            server: None,
            topo,
            dir: TempDir::new(tag),
            n,
            laptop_if: format!("ftl{pid}x{n}"),
            server_if: format!("fts{pid}x{n}"),
            port: 46_000 + u16::from(n),
        }
    }

    fn laptop_key(&self) -> tandem::proto::PrivateKey {
        key(100 + 2 * self.n)
    }

    fn server_key(&self) -> tandem::proto::PrivateKey {
        key(101 + 2 * self.n)
    }

    /// Starts the server: the laptop is its peer, with the laptop's tunnel addresses.
    fn start_server(&mut self) {
        let n = self.n;
        let conf = self.dir.file(
            "server.toml",
            &format!(
                "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\nlisten_port = {}\n\
                 address = [\"10.10.{n}.1/24\", \"fd10:{n}::1/64\"]\n\n\
                 [[peer]]\nname = \"laptop\"\npublic_key = \"{}\"\n\
                 allowed_ips = [\"10.10.{n}.2/32\", \"fd10:{n}::2/128\"]\n",
                self.server_if,
                self.server_key().to_base64(),
                self.port,
                self.laptop_key().public_key().to_base64(),
            ),
        );
        let mut d = Daemon::up(&self.topo.server, &conf);
        d.wait_log("interface up", UP);
        self.server = Some(d);
    }

    /// The laptop's config as TOML, its peer owning `allowed`.
    fn laptop_toml(&self, allowed: &str, extra: &str) -> PathBuf {
        let n = self.n;
        self.dir.file(
            "laptop.toml",
            &format!(
                "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\n{extra}\
                 address = [\"10.10.{n}.2/32\", \"fd10:{n}::2/128\"]\n\n\
                 [[peer]]\nname = \"server\"\npublic_key = \"{}\"\nendpoint = \"{}:{}\"\n\
                 allowed_ips = [{allowed}]\n",
                self.laptop_if,
                self.laptop_key().to_base64(),
                self.server_key().public_key().to_base64(),
                self.topo.server4,
                self.port,
            ),
        )
    }

    /// The laptop's config as a wg-quick file named after the interface.
    fn laptop_conf(&self, allowed: &str) -> PathBuf {
        let n = self.n;
        self.dir.file(
            &format!("{}.conf", self.laptop_if),
            &format!(
                "[Interface]\nPrivateKey = {}\nAddress = 10.10.{n}.2/32, fd10:{n}::2/128\n\n\
                 [Peer]\nPublicKey = {}\nEndpoint = {}:{}\nAllowedIPs = {allowed}\n",
                self.laptop_key().to_base64(),
                self.server_key().public_key().to_base64(),
                self.topo.server4,
                self.port,
            ),
        )
    }

    fn start_laptop(&mut self, config: &Path) {
        let mut d = Daemon::up(&self.topo.laptop, config);
        d.wait_log("interface up", UP);
        self.laptop = Some(d);
    }

    fn stop_laptop(&mut self) {
        if let Some(d) = self.laptop.take() {
            d.stop(Duration::from_secs(10));
        }
    }

    /// Pings `to` from the laptop until it answers (bounded), and checks that the server's
    /// tunnel interface received packets meanwhile: the answer came through the tunnel.
    fn reaches_through_the_tunnel(&self, to: &str) {
        let before = rx_packets(&self.topo.server, &self.server_if);
        let ok = wait_until(UP, || ping_once(&self.topo.laptop, to));
        let log = self.laptop.as_ref().map(Daemon::log).unwrap_or_default();
        assert!(
            ok,
            "no answer from {to} through the tunnel; laptop log:\n{log}"
        );
        let after = rx_packets(&self.topo.server, &self.server_if);
        assert!(
            after > before,
            "the server's tunnel interface received nothing ({before} -> {after})"
        );
    }

    /// The device the laptop's route to the server's endpoint uses, with `mark` (tandem's
    /// own packets) or without (everything else).
    fn endpoint_route_dev(&self, mark: Option<&str>) -> String {
        let mut args = vec!["-j", "route", "get", self.topo.server4.as_str()];
        if let Some(m) = mark {
            args.extend(["mark", m]);
        }
        let got = self.topo.laptop.ip_json(&args);
        got[0]["dev"].as_str().unwrap_or_default().to_owned()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Daemons before namespaces (field order does the rest).
        for d in [self.laptop.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let mut d = d;
            d.terminate(Duration::from_secs(5));
        }
    }
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn tandem_up_full_tunnel_reaches_the_far_side_and_leaves_routing_as_it_was() {
    require_tools(&[]);
    let mut w = World::new("tft-up", 1);
    let before = w.topo.laptop_routing();
    // Only the tunnel knows the way to the server's public addresses.
    assert!(!ping_once(&w.topo.laptop, PUBLIC4));
    w.start_server();
    let config = w.laptop_toml("\"0.0.0.0/0\", \"::/0\"", "");
    w.start_laptop(&config);

    w.reaches_through_the_tunnel(PUBLIC4);
    w.reaches_through_the_tunnel(PUBLIC6);
    // Everything unmarked goes into the tunnel, even to the endpoint's address; tandem's own
    // packets (marked 51820) still leave by the laptop's veth.
    assert_eq!(w.endpoint_route_dev(None), w.laptop_if);
    assert_eq!(w.endpoint_route_dev(Some("51820")), w.topo.laptop_veth);
    for family in ["-4", "-6"] {
        let rules = w.topo.laptop_rules(family);
        assert_eq!(count(&rules, MARK_HEX), 2, "{family}: {rules}");
        assert!(rules.contains("suppress_prefixlength 0"), "{rules}");
    }
    assert_eq!(
        w.topo
            .laptop
            .exec_ok("sysctl", &["-n", "net.ipv4.conf.all.src_valid_mark"])
            .trim(),
        "1"
    );

    // SIGTERM: everything tandem added is gone, nothing else changed.
    w.stop_laptop();
    assert_eq!(w.topo.laptop_routing(), before);

    // kill -9 leaves the rules (the routes go with the interface); the next start replaces
    // them, and its SIGTERM removes them.
    w.start_laptop(&config);
    w.reaches_through_the_tunnel(PUBLIC4);
    let mut killed = w.laptop.take().expect("laptop daemon");
    killed.signal("KILL");
    killed.wait_exit(Duration::from_secs(10));
    assert_eq!(count(&w.topo.laptop_rules("-4"), MARK_HEX), 2);
    w.start_laptop(&config);
    for family in ["-4", "-6"] {
        let rules = w.topo.laptop_rules(family);
        assert_eq!(count(&rules, MARK_HEX), 2, "replaced, not doubled: {rules}");
    }
    w.reaches_through_the_tunnel(PUBLIC4);
    w.reaches_through_the_tunnel(PUBLIC6);
    w.stop_laptop();
    assert_eq!(w.topo.laptop_routing(), before);
}

#[test]
fn a_reload_that_drops_v6_removes_only_the_v6_rules() {
    require_tools(&[]);
    let mut w = World::new("tft-rl", 2);
    let before = w.topo.laptop_routing();
    let rules4 = w.topo.laptop_rules("-4");
    let rules6 = w.topo.laptop_rules("-6");
    w.start_server();
    // A wg-quick file through `tandem up`: the same full tunnel as from TOML.
    let conf = w.laptop_conf("0.0.0.0/0, ::/0");
    w.start_laptop(&conf);
    w.reaches_through_the_tunnel(PUBLIC6);
    assert_ne!(w.topo.laptop_rules("-6"), rules6);

    w.laptop_conf("0.0.0.0/0");
    let laptop = w.laptop.as_mut().expect("laptop daemon");
    laptop.signal("HUP");
    laptop.wait_log("configuration reloaded", UP);
    assert_eq!(w.topo.laptop_rules("-6"), rules6, "the IPv6 rules are gone");
    assert!(
        w.topo
            .laptop
            .ip(&["-6", "route", "show", "table", "51820"])
            .trim()
            .is_empty()
    );
    assert_eq!(count(&w.topo.laptop_rules("-4"), MARK_HEX), 2);
    w.reaches_through_the_tunnel(PUBLIC4);

    // And back: the IPv6 part returns in place.
    w.laptop_conf("0.0.0.0/0, ::/0");
    let laptop = w.laptop.as_mut().expect("laptop daemon");
    laptop.signal("HUP");
    laptop.wait_log_n("configuration reloaded", 2, UP);
    assert_eq!(count(&w.topo.laptop_rules("-6"), MARK_HEX), 2);
    w.reaches_through_the_tunnel(PUBLIC6);

    w.stop_laptop();
    assert_eq!(w.topo.laptop_rules("-4"), rules4);
    assert_eq!(w.topo.laptop_routing(), before);
}

#[test]
fn a_taken_table_moves_the_full_tunnel_to_the_next_free_one() {
    require_tools(&[]);
    let mut w = World::new("tft-next", 5);
    // Someone else's route in table 51820: wg-quick (and tandem) take 51821 instead.
    w.topo
        .laptop
        .ip(&["route", "add", "blackhole", "10.1.2.0/24", "table", "51820"]);
    let before = w.topo.laptop_routing();
    w.start_server();
    let config = w.laptop_toml("\"0.0.0.0/0\"", "");
    w.start_laptop(&config);
    let rules = w.topo.laptop_rules("-4");
    assert_eq!(count(&rules, "0xca6d"), 2, "{rules}");
    assert_eq!(count(&rules, MARK_HEX), 0, "{rules}");
    assert_eq!(w.endpoint_route_dev(Some("51821")), w.topo.laptop_veth);
    w.reaches_through_the_tunnel(PUBLIC4);
    w.stop_laptop();
    assert_eq!(w.topo.laptop_routing(), before);
}

#[test]
fn a_failed_start_leaves_routing_as_it_was() {
    require_tools(&[]);
    let w = World::new("tft-fail", 3);
    // Table 51900 already has an IPv6 default route (someone else's): the IPv4 half of the
    // full tunnel goes in, then the IPv6 default route is refused and the start fails.
    w.topo.laptop.ip(&[
        "-6",
        "route",
        "add",
        "blackhole",
        "default",
        "table",
        "51900",
    ]);
    let before = w.topo.laptop_routing();
    let config = w.laptop_toml("\"0.0.0.0/0\", \"::/0\"", "fwmark = 51900\n");
    let mut d = Daemon::up(&w.topo.laptop, &config);
    let status = d.wait_exit(UP);
    assert!(!status.success(), "started anyway; log:\n{}", d.log());
    assert!(
        d.log().contains("File exists") || d.log().contains("exists"),
        "{}",
        d.log()
    );
    assert_eq!(w.topo.laptop_routing(), before);
}

#[test]
fn wg_quick_full_tunnel_with_tandem_as_userspace_implementation() {
    require_tools(&["wg", "wg-quick"]);
    let mut w = World::new("tft-wgq", 4);
    let _guard = Detached(w.laptop_if.clone());
    // wg-quick's add_default also installs firewall rules (a raw-table anti-spoofing drop and
    // CONNMARK save/restore) with nft or iptables-restore; this kind of machine has neither,
    // so a stub iptables-restore that records its input stands in. Routing, which is what
    // this test checks, does not depend on them.
    let stubs = w.dir.path("stubs");
    std::fs::create_dir_all(&stubs).expect("stub dir");
    for name in ["iptables-restore", "ip6tables-restore"] {
        let path = stubs.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\ncat >> '{}'\n", w.dir.path("firewall").display()),
        )
        .expect("write stub");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod stub");
    }
    let path = format!(
        "{}:{}",
        stubs.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let before = w.topo.laptop_routing();
    w.start_server();
    let conf = w.laptop_conf("0.0.0.0/0, ::/0");
    let wg_quick = |w: &World, verb: &str| {
        let out = w
            .topo
            .laptop
            .command("wg-quick", &[verb, &conf.to_string_lossy()])
            .env("WG_QUICK_USERSPACE_IMPLEMENTATION", BIN)
            .env("PATH", &path)
            .stdin(Stdio::null())
            .output()
            .expect("run wg-quick");
        assert!(
            out.status.success(),
            "wg-quick {verb} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let up = wg_quick(&w, "up");
    assert!(up.contains("wg set") && up.contains("fwmark 51820"), "{up}");
    w.reaches_through_the_tunnel(PUBLIC4);
    w.reaches_through_the_tunnel(PUBLIC6);
    assert_eq!(w.endpoint_route_dev(Some("51820")), w.topo.laptop_veth);
    wg_quick(&w, "down");
    assert!(
        wait_until(Duration::from_secs(5), || detached_pid(&w.laptop_if)
            .is_none()),
        "tandem did not exit after wg-quick down"
    );
    assert_eq!(w.topo.laptop_routing(), before);
}
