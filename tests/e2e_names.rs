//! End to end: endpoint names that never take the interface down. Daemon a has two peers,
//! b by name (`server-b.tandem.test`) and c by IP literal, each reached over a veth pair
//! from a's namespace. The name is answered by a per-namespace hosts file:
//! `/etc/netns/NAME/hosts`, which `ip netns exec NAME` bind-mounts over /etc/hosts (and
//! glibc re-reads on every lookup), with a resolv.conf that points DNS at a closed port on
//! the namespace's own loopback, so a missing entry fails at once and never leaves the
//! namespace. Needs root; every namespace, process and file (the /etc/netns entry too) is
//! removed even when a test fails, and every wait is bounded.

mod common;
use common::{kit, netns};

use std::path::{Path, PathBuf};
use std::time::Duration;

use kit::{Daemon, TempDir, ping_once, unique, wait_until};
use netns::{Netns, require_root, veth_pair};
use tandem::daemon::endpoints::TEST_STALE_ENV;
use tandem::proto::PrivateKey;
use tandem::testkit::key;

const NAME_B: &str = "server-b.tandem.test";
const A_IN: &str = "10.70.0.1";
const B_IN: &str = "10.70.0.2";
const C_IN: &str = "10.70.0.3";
/// b's outer address, and the one it moves to.
const B_OUT: &str = "10.61.0.2";
const B_OUT_MOVED: &str = "10.61.0.3";
const C_OUT: &str = "10.62.0.2";
const PORT_B: u16 = 51_802;
const PORT_C: u16 = 51_803;

/// `/etc/netns/NS/` with a hosts file and a resolv.conf, removed on drop (and /etc/netns
/// itself when this left it empty).
struct NetnsEtc {
    dir: PathBuf,
}

impl NetnsEtc {
    fn new(ns: &Netns) -> NetnsEtc {
        let dir = Path::new("/etc/netns").join(ns.name());
        // Another test may remove an empty /etc/netns between the two steps: try again.
        let made = (0..3).any(|_| std::fs::create_dir_all(&dir).is_ok());
        assert!(made, "cannot create {}", dir.display());
        let etc = NetnsEtc { dir };
        // DNS goes to a closed port on the namespace's loopback: refused at once.
        std::fs::write(
            etc.dir.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .expect("write resolv.conf");
        etc.hosts(None);
        etc
    }

    /// Rewrites the hosts file in place (the bind mount holds the inode, so no rename), with
    /// `NAME_B` at `b` when given.
    fn hosts(&self, b: Option<&str>) {
        let mut text = String::from("127.0.0.1 localhost\n");
        if let Some(addr) = b {
            text += &format!("{addr} {NAME_B}\n");
        }
        std::fs::write(self.dir.join("hosts"), text).expect("write hosts");
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
        // Only succeeds when empty: other tests' entries stay.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// Three namespaces: a with veth pairs to b and c, a tandem config for each. Field order is
/// drop order: daemons first, then a's /etc/netns entry, then the namespaces.
struct Sites {
    da: Option<Daemon>,
    db: Option<Daemon>,
    dc: Option<Daemon>,
    etc: NetnsEtc,
    a: Netns,
    b: Netns,
    c: Netns,
    dir: TempDir,
    ifname: String,
    keys: [PrivateKey; 3],
    veth_b: String,
}

impl Sites {
    fn new(tag: &str) -> Sites {
        require_root();
        let n = unique();
        let a = Netns::new(&format!("tnd-dns-{tag}-a"));
        let b = Netns::new(&format!("tnd-dns-{tag}-b"));
        let c = Netns::new(&format!("tnd-dns-{tag}-c"));
        let ab = veth_pair(&a, &b, &["10.61.0.1/24"], &[&format!("{B_OUT}/24")]);
        veth_pair(&a, &c, &["10.62.0.1/24"], &[&format!("{C_OUT}/24")]);
        let seed = (n % 40) as u8 * 3 + 100;
        let s = Sites {
            da: None,
            db: None,
            dc: None,
            etc: NetnsEtc::new(&a),
            a,
            b,
            c,
            dir: TempDir::new(tag),
            ifname: format!("tndn{}x{n}", std::process::id() % 1000),
            keys: [key(seed), key(seed + 1), key(seed + 2)],
            veth_b: ab.b,
        };
        s.write_a(true);
        for (file, me, port, inner) in [("b.toml", 1, PORT_B, B_IN), ("c.toml", 2, PORT_C, C_IN)] {
            let text = format!(
                "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\nlisten_port = {port}\n\
                 address = [\"{inner}/24\"]\n\n\
                 [[peer]]\nname = \"a\"\npublic_key = \"{}\"\nallowed_ips = [\"{A_IN}/32\"]\n",
                s.ifname,
                s.keys[me].to_base64(),
                s.keys[0].public_key().to_base64(),
            );
            std::fs::write(s.dir.path(file), text).expect("write config");
        }
        s
    }

    /// a's config: b by name, and c by literal when `with_c`.
    fn write_a(&self, with_c: bool) {
        let mut text = format!(
            "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\naddress = [\"{A_IN}/24\"]\n\n\
             [[peer]]\nname = \"b\"\npublic_key = \"{}\"\nendpoint = \"{NAME_B}:{PORT_B}\"\n\
             allowed_ips = [\"{B_IN}/32\"]\n",
            self.ifname,
            self.keys[0].to_base64(),
            self.keys[1].public_key().to_base64(),
        );
        if with_c {
            text += &format!(
                "\n[[peer]]\nname = \"c\"\npublic_key = \"{}\"\nendpoint = \"{C_OUT}:{PORT_C}\"\n\
                 allowed_ips = [\"{C_IN}/32\"]\n",
                self.keys[2].public_key().to_base64(),
            );
        }
        std::fs::write(self.dir.path("a.toml"), text).expect("write a.toml");
    }

    /// Starts b and c, then a (with `env`), each up to "interface up".
    fn start(&mut self, env: &[(&str, &str)]) {
        for (ns, file, slot) in [
            (&self.b, "b.toml", &mut self.db),
            (&self.c, "c.toml", &mut self.dc),
        ] {
            let mut d = Daemon::up(ns, &self.dir.path(file));
            d.wait_log("interface up", Duration::from_secs(15));
            *slot = Some(d);
        }
        let config = self.dir.path("a.toml");
        let mut d = Daemon::start(&self.a, &["up", &config.to_string_lossy()], env);
        // "interface up" is logged right before READY=1.
        d.wait_log("interface up", Duration::from_secs(15));
        self.da = Some(d);
    }

    fn daemon_a(&mut self) -> &mut Daemon {
        self.da.as_mut().expect("daemon a started")
    }

    /// SIGTERM to a and a clean exit (tearing down with a resolver running).
    fn stop_a(&mut self) {
        if let Some(d) = self.da.take() {
            d.stop(Duration::from_secs(10));
        }
    }

    fn log_a(&self) -> String {
        self.da.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// Pings `to` from a until an answer comes, for at most `limit`; panics with a's log.
    fn ping_within(&self, to: &str, limit: Duration) {
        let ok = wait_until(limit, || ping_once(&self.a, to));
        assert!(
            ok,
            "no ping answer from {to} within {limit:?}; a's log:\n{}",
            self.log_a()
        );
    }
}

const FAILING: &str = "endpoint name does not resolve";

#[test]
fn a_name_that_does_not_resolve_yet_leaves_the_others_up_and_is_retried() {
    let mut s = Sites::new("late");
    s.start(&[]);
    // Up and serving the other peer while the name fails.
    assert!(s.log_a().contains(FAILING), "{}", s.log_a());
    s.ping_within(C_IN, Duration::from_secs(10));

    // The name appears: the background retries find it and the handshake follows.
    s.etc.hosts(Some(B_OUT));
    s.ping_within(B_IN, Duration::from_secs(30));
    let log = s.log_a();
    assert!(log.contains("endpoint name resolves now"), "{log}");
    assert!(log.contains(&format!("address={B_OUT}:{PORT_B}")), "{log}");
    // Several tries failed (1 s, 2 s, ...), one line said so.
    assert_eq!(log.matches(FAILING).count(), 1, "{log}");
    assert!(
        !log.contains(&s.keys[1].public_key().to_base64()),
        "no keys in logs"
    );
    s.stop_a();
}

#[test]
fn a_moved_name_is_followed_without_a_reload() {
    let mut s = Sites::new("move");
    s.etc.hosts(Some(B_OUT));
    // Peers silent for 1.5 s count as stale (135 s outside tests).
    s.start(&[(TEST_STALE_ENV, "1500")]);
    s.ping_within(B_IN, Duration::from_secs(10));
    // Stale already (no handshake since), so looked up again, to the same address: nothing.
    std::thread::sleep(Duration::from_secs(4));
    assert!(ping_once(&s.a, B_IN), "{}", s.log_a());
    assert!(!s.log_a().contains("endpoint name moved"), "{}", s.log_a());

    // b moves to another address; the old one is gone. Only the name says where.
    // Deleted first: deleting a primary address also deletes the secondaries of its subnet
    // (promote_secondaries is off in a new namespace).
    let moved = format!("{B_OUT_MOVED}/24");
    s.b.ip(&["addr", "del", &format!("{B_OUT}/24"), "dev", &s.veth_b]);
    s.b.ip(&["addr", "add", &moved, "dev", &s.veth_b]);
    s.etc.hosts(Some(B_OUT_MOVED));
    s.ping_within(B_IN, Duration::from_secs(30));
    let log = s.log_a();
    assert!(log.contains("endpoint name moved"), "{log}");
    assert!(log.contains(&format!("to={B_OUT_MOVED}:{PORT_B}")), "{log}");
    assert!(!log.contains("configuration reloaded"), "{log}");
    s.stop_a();
}

#[test]
fn a_reload_with_an_unresolvable_name_applies_the_rest_and_keeps_the_address() {
    let mut s = Sites::new("reload");
    s.etc.hosts(Some(B_OUT));
    s.start(&[]);
    s.ping_within(B_IN, Duration::from_secs(10));
    s.ping_within(C_IN, Duration::from_secs(10));

    // The name stops resolving, and c leaves the config.
    s.etc.hosts(None);
    s.write_a(false);
    s.daemon_a().signal("HUP");
    s.daemon_a()
        .wait_log("configuration reloaded", Duration::from_secs(15));
    let log = s.log_a();
    assert!(log.contains(FAILING), "{log}");
    assert!(log.contains("configuration reloaded: removed c"), "{log}");
    assert!(!log.contains("reload failed"), "{log}");
    // b keeps the address it had; c is gone.
    assert!(ping_once(&s.a, B_IN), "b after the reload; {log}");
    assert!(!ping_once(&s.a, C_IN), "c still answers after its removal");
    s.stop_a();
}
