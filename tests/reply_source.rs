//! Replies from the address the peer contacted, end to end: a server with two addresses, a
//! laptop that dials the secondary one. tandem's sockets are bound to the wildcard, so
//! without the sticky source (IP_PKTINFO / IPV6_PKTINFO, see `driver::mmsg`) the server's
//! kernel answers from its primary address, which is what the routes pick for the laptop.
//!
//! - IPv4: the laptop drops anything from the server's primary address (strict reverse-path
//!   filtering, `rp_filter=1`, against an `unreachable` route to it), so the handshake
//!   completes and pings pass only if every reply leaves from the secondary.
//! - IPv6 has no reverse-path filter; there the laptop's own roaming is the witness: its
//!   endpoint for the server follows the source of the server's authenticated packets, so
//!   after the handshake and pings it must still be the secondary address (read over the
//!   UAPI socket, as `wg show dump` does).
//!
//! Both then remove the secondary address from the server and ping the laptop from the
//! server: the remembered source no longer works, the send is refused, tandem forgets it and
//! sends from the primary (the laptop, whose filter is lifted for IPv4, roams to it).
//!
//! Needs root (namespaces, TUN devices) and iproute2. Namespaces and daemons are removed even
//! when a test fails; every wait is bounded; traffic stays on the veth pair each test creates.

mod common;
use common::{kit, netns};

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use kit::{Daemon, TempDir, ping_once, wait_until};
use netns::{Netns, require_root, veth_pair};
use tandem::testkit::key;

const UP: Duration = Duration::from_secs(15);

/// One test's world: two namespaces on a veth pair, a daemon in each.
struct World {
    laptop_d: Option<Daemon>,
    server_d: Option<Daemon>,
    laptop: Netns,
    server: Netns,
    server_veth: String,
    dir: TempDir,
    n: u8,
    laptop_if: String,
    server_if: String,
    port: u16,
}

/// The addresses of one family's test.
struct Plan {
    /// The laptop's and the server's address on the veth (the server's primary).
    laptop: String,
    primary: String,
    /// The server's second address, the one the laptop dials.
    secondary: String,
    /// Tunnel addresses (laptop, server).
    inner: (String, String),
}

impl Plan {
    fn v4(n: u8) -> Plan {
        Plan {
            laptop: format!("100.66.{n}.2"),
            primary: format!("100.66.{n}.1"),
            secondary: format!("100.66.{n}.9"),
            inner: (format!("10.11.{n}.2"), format!("10.11.{n}.1")),
        }
    }

    fn v6(n: u8) -> Plan {
        Plan {
            laptop: format!("fd66:{n}::2"),
            primary: format!("fd66:{n}::1"),
            secondary: format!("fd67:{n}::9"),
            inner: (format!("fd11:{n}::2"), format!("fd11:{n}::1")),
        }
    }

    fn is_v6(&self) -> bool {
        self.laptop.contains(':')
    }

    /// `addr:port` as an endpoint is written.
    fn endpoint(addr: &str, port: u16) -> String {
        if addr.contains(':') {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        }
    }
}

impl World {
    fn new(tag: &str, n: u8, plan: &Plan) -> World {
        let laptop = Netns::new(&format!("{tag}-lap"));
        let server = Netns::new(&format!("{tag}-srv"));
        let (prefix, family) = if plan.is_v6() { (64, "-6") } else { (24, "-4") };
        let pair = veth_pair(
            &laptop,
            &server,
            &[&format!("{}/{prefix}", plan.laptop)],
            &[&format!("{}/{prefix}", plan.primary)],
        );
        if plan.is_v6() {
            // IPv6: the secondary on the server's loopback (another prefix), reached by the
            // laptop through the primary. The server's routes answer the laptop from the
            // primary: the address on the outgoing interface (RFC 6724 rule 5).
            server.ip(&[
                "addr",
                "add",
                &format!("{}/128", plan.secondary),
                "dev",
                "lo",
            ]);
            laptop.ip(&[
                family,
                "route",
                "add",
                &format!("{}/128", plan.secondary),
                "via",
                &plan.primary,
            ]);
        } else {
            // IPv4: the secondary in the same subnet on the veth, where the kernel flags it
            // secondary and never picks it as a source by itself.
            server.ip(&[
                "addr",
                "add",
                &format!("{}/{prefix}", plan.secondary),
                "dev",
                &pair.b,
            ]);
            // The laptop refuses anything from the primary: strict reverse-path filtering
            // (the stricter of `all` and the device's value counts) against a route that
            // says the primary cannot be reached.
            laptop.exec_ok("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=1"]);
            laptop.exec_ok(
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{}.rp_filter=1", pair.a)],
            );
            laptop.ip(&[
                family,
                "route",
                "add",
                "unreachable",
                &format!("{}/32", plan.primary),
            ]);
        }
        let pid = std::process::id() % 1000;
        World {
            laptop_d: None,
            server_d: None,
            laptop,
            server,
            server_veth: pair.b,
            dir: TempDir::new(tag),
            n,
            laptop_if: format!("rsl{pid}x{n}"),
            server_if: format!("rss{pid}x{n}"),
            port: 47_000 + u16::from(n),
        }
    }

    fn laptop_key(&self) -> tandem::proto::PrivateKey {
        key(150 + 2 * self.n)
    }

    fn server_key(&self) -> tandem::proto::PrivateKey {
        key(151 + 2 * self.n)
    }

    fn config(&self, name: &str, text: String) -> PathBuf {
        self.dir.file(name, &text)
    }

    /// Both daemons: the server listens (the laptop is its peer, no endpoint), the laptop
    /// dials the server's secondary address.
    fn start(&mut self, plan: &Plan) {
        let bits = if plan.is_v6() { 128 } else { 32 };
        let server = self.config(
            "server.toml",
            format!(
                "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\nlisten_port = {}\n\
                 address = [\"{}/{bits}\"]\n\n\
                 [[peer]]\nname = \"laptop\"\npublic_key = \"{}\"\n\
                 allowed_ips = [\"{}/{bits}\"]\n",
                self.server_if,
                self.server_key().to_base64(),
                self.port,
                plan.inner.1,
                self.laptop_key().public_key().to_base64(),
                plan.inner.0,
            ),
        );
        let laptop = self.config(
            "laptop.toml",
            format!(
                "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\n\
                 address = [\"{}/{bits}\"]\n\n\
                 [[peer]]\nname = \"server\"\npublic_key = \"{}\"\nendpoint = \"{}\"\n\
                 allowed_ips = [\"{}/{bits}\"]\n",
                self.laptop_if,
                self.laptop_key().to_base64(),
                plan.inner.0,
                self.server_key().public_key().to_base64(),
                Plan::endpoint(&plan.secondary, self.port),
                plan.inner.1,
            ),
        );
        let mut s = Daemon::up(&self.server, &server);
        s.wait_log("interface up", UP);
        self.server_d = Some(s);
        let mut l = Daemon::up(&self.laptop, &laptop);
        l.wait_log("interface up", UP);
        self.laptop_d = Some(l);
    }

    fn logs(&self) -> String {
        let log = |d: &Option<Daemon>| d.as_ref().map(Daemon::log).unwrap_or_default();
        format!(
            "--- laptop log:\n{}\n--- server log:\n{}\n--- server addresses:\n{}",
            log(&self.laptop_d),
            log(&self.server_d),
            self.server.ip(&["addr", "show", "dev", &self.server_veth]),
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Daemons before namespaces (field order does the rest).
        for d in [self.laptop_d.take(), self.server_d.take()]
            .into_iter()
            .flatten()
        {
            let mut d = d;
            d.terminate(Duration::from_secs(5));
        }
    }
}

/// The endpoint of the (only) peer of interface `ifname`, as its UAPI `get` reports it (what
/// `wg show IFNAME dump` prints). The socket is a file, reachable from any namespace.
fn peer_endpoint(ifname: &str) -> Option<String> {
    let mut s = UnixStream::connect(format!("/var/run/wireguard/{ifname}.sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"get=1\n\n").ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    // Bounded: the answer ends with an empty line, the timeout ends a silent socket.
    for _ in 0..64 {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if text.ends_with("\n\n") {
            break;
        }
    }
    text.lines()
        .find_map(|l| l.strip_prefix("endpoint="))
        .map(str::to_owned)
}

/// The whole scenario for one family.
fn replies_follow_the_contacted_address(tag: &str, n: u8, plan: &Plan) {
    require_root();
    let mut w = World::new(tag, n, plan);
    w.start(plan);
    let server_endpoint = Plan::endpoint(&plan.secondary, w.port);

    // The handshake and pings complete...
    let ok = wait_until(UP, || ping_once(&w.laptop, &plan.inner.1));
    assert!(ok, "no answer through the tunnel\n{}", w.logs());
    // ...and the laptop, which roams to the source of each authenticated packet, still has
    // the secondary address: every reply came from it.
    let seen = peer_endpoint(&w.laptop_if);
    assert_eq!(
        seen.as_deref(),
        Some(server_endpoint.as_str()),
        "the laptop's endpoint for the server moved: a reply left from another address\n{}",
        w.logs()
    );
    // A few more round trips, the data path now (GSO batches share the source too).
    for _ in 0..3 {
        assert!(ping_once(&w.laptop, &plan.inner.1), "{}", w.logs());
    }
    assert_eq!(
        peer_endpoint(&w.laptop_if).as_deref(),
        Some(server_endpoint.as_str())
    );

    // The secondary address goes away. The server's remembered source fails, is forgotten,
    // and its packets leave from the primary; the laptop (its IPv4 filter lifted) roams there.
    if !plan.is_v6() {
        w.laptop.ip(&[
            "-4",
            "route",
            "del",
            "unreachable",
            &format!("{}/32", plan.primary),
        ]);
    }
    let (bits, dev) = if plan.is_v6() {
        (128, "lo")
    } else {
        (24, w.server_veth.as_str())
    };
    w.server.ip(&[
        "addr",
        "del",
        &format!("{}/{bits}", plan.secondary),
        "dev",
        dev,
    ]);
    let ok = wait_until(UP, || ping_once(&w.server, &plan.inner.0));
    assert!(
        ok,
        "the server could not reach the laptop once its source address was gone\n{}",
        w.logs()
    );
    assert_eq!(
        peer_endpoint(&w.laptop_if),
        Some(Plan::endpoint(&plan.primary, w.port)),
        "the laptop should now hear the server from its primary address\n{}",
        w.logs()
    );
}

#[test]
fn ipv4_replies_leave_from_the_secondary_address_the_laptop_dialled() {
    replies_follow_the_contacted_address("trs4", 1, &Plan::v4(1));
}

#[test]
fn ipv6_replies_leave_from_the_secondary_address_the_laptop_dialled() {
    replies_follow_the_contacted_address("trs6", 2, &Plan::v6(2));
}
