//! Test kit: the road-warrior topology `laptop — isp — server`, three network namespaces
//! joined by two veth pairs, with the isp routing between them (no NAT: this kind of machine
//! has no iptables or nft, so every hop has a proper route back instead).
//!
//! - laptop: `LAPTOP4/24`, `LAPTOP6/64` on its veth; its only default routes go via the isp.
//! - isp: forwarding on (its own namespace's sysctls), one address on each side.
//! - server: `SERVER4/24`, `SERVER6/64` on its veth (the tunnel's endpoint), routes back to
//!   the laptop's subnets via the isp, forwarding on, and a "public" address on `lo`
//!   ([`PUBLIC4`], [`PUBLIC6`]: no dummy interfaces on this kernel) that only the server
//!   knows: the laptop can reach it through the tunnel and in no other way.
//!
//! Part of the one test kit: `mod common; use common::topology;`.
//! Every address is inside the namespaces; nothing touches the host's.

// Each test binary uses its own part of the kit.
#![allow(dead_code)]

use super::netns::{Netns, veth_pair};

/// The server's "public" addresses, on its loopback.
pub const PUBLIC4: &str = "198.18.0.1";
pub const PUBLIC6: &str = "2001:db8:18::1";

/// The three namespaces and the addresses on their links. Field order is drop order.
pub struct Topology {
    pub laptop: Netns,
    pub isp: Netns,
    pub server: Netns,
    /// The laptop's veth (towards the isp).
    pub laptop_veth: String,
    /// The server's veth address (the tunnel endpoint's), IPv4 and IPv6.
    pub server4: String,
    pub server6: String,
}

/// Runs `sysctl -qw SETTING` inside `ns` (the namespace's own copy of the setting).
pub fn sysctl(ns: &Netns, setting: &str) {
    ns.exec_ok("sysctl", &["-qw", setting]);
}

impl Topology {
    /// Builds the topology; `n` (0..=255) makes the subnets of parallel tests distinct, `tag`
    /// names the namespaces.
    pub fn new(tag: &str, n: u8) -> Topology {
        let laptop = Netns::new(&format!("{tag}-lap"));
        let isp = Netns::new(&format!("{tag}-isp"));
        let server = Netns::new(&format!("{tag}-srv"));
        let (lap4, isp_l4) = (format!("100.64.{n}.2"), format!("100.64.{n}.1"));
        let (lap6, isp_l6) = (format!("fd64:{n}::2"), format!("fd64:{n}::1"));
        let (srv4, isp_s4) = (format!("100.65.{n}.2"), format!("100.65.{n}.1"));
        let (srv6, isp_s6) = (format!("fd65:{n}::2"), format!("fd65:{n}::1"));
        let left = veth_pair(
            &laptop,
            &isp,
            &[&format!("{lap4}/24"), &format!("{lap6}/64")],
            &[&format!("{isp_l4}/24"), &format!("{isp_l6}/64")],
        );
        veth_pair(
            &isp,
            &server,
            &[&format!("{isp_s4}/24"), &format!("{isp_s6}/64")],
            &[&format!("{srv4}/24"), &format!("{srv6}/64")],
        );
        for ns in [&isp, &server] {
            sysctl(ns, "net.ipv4.ip_forward=1");
            sysctl(ns, "net.ipv6.conf.all.forwarding=1");
        }
        laptop.ip(&["-4", "route", "add", "default", "via", &isp_l4]);
        laptop.ip(&["-6", "route", "add", "default", "via", &isp_l6]);
        server.ip(&[
            "-4",
            "route",
            "add",
            &format!("100.64.{n}.0/24"),
            "via",
            &isp_s4,
        ]);
        server.ip(&[
            "-6",
            "route",
            "add",
            &format!("fd64:{n}::/64"),
            "via",
            &isp_s6,
        ]);
        server.ip(&["addr", "add", &format!("{PUBLIC4}/32"), "dev", "lo"]);
        server.ip(&["addr", "add", &format!("{PUBLIC6}/128"), "dev", "lo"]);
        Topology {
            laptop,
            isp,
            server,
            laptop_veth: left.a,
            server4: srv4,
            server6: srv6,
        }
    }

    /// The laptop's routing policy as `ip` prints it: rules and every table, per family. A
    /// full tunnel's teardown must bring it back to what it was before.
    pub fn laptop_routing(&self) -> String {
        let mut out = String::new();
        for family in ["-4", "-6"] {
            out.push_str(&self.laptop.ip(&[family, "rule", "show"]));
            out.push_str(&self.laptop.ip(&[family, "route", "show", "table", "all"]));
        }
        out
    }

    /// `ip -FAMILY rule show` in the laptop's namespace.
    pub fn laptop_rules(&self, family: &str) -> String {
        self.laptop.ip(&[family, "rule", "show"])
    }
}
