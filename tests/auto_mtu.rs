//! Automatic MTU (wg-quick's rule): without `mtu`, the interface gets the MTU of the path to
//! its peers' endpoints minus 80. In the `laptop — isp — server` topology (namespaces only,
//! needs root) the laptop's link is set to 1400 bytes: its tunnel comes up with 1320, and a
//! 1320-byte packet with "don't fragment" crosses the tunnel while a larger one is refused.

mod common;
use common::{kit, topology};

use std::time::Duration;

use kit::{Daemon, TempDir, ping_once, wait_until};
use tandem::testkit::key;
use topology::Topology;

const UP: Duration = Duration::from_secs(15);

#[test]
fn the_tunnel_mtu_follows_the_path_to_the_endpoint() {
    common::netns::require_root();
    let n = 40u8;
    let topo = Topology::new("tnd-mtu", n);
    topo.laptop
        .ip(&["link", "set", "dev", &topo.laptop_veth, "mtu", "1400"]);
    let dir = TempDir::new("mtu");
    let pid = std::process::id() % 1000;
    let (laptop_if, server_if) = (format!("mtl{pid}"), format!("mts{pid}"));
    let port = 46_400;
    let (lk, sk) = (key(140), key(141));
    let server = dir.file(
        "server.toml",
        &format!(
            "[interface]\nname = \"{server_if}\"\nprivate_key = \"{}\"\nlisten_port = {port}\n\
             address = [\"10.40.{n}.1/24\"]\n\n[[peer]]\npublic_key = \"{}\"\n\
             allowed_ips = [\"10.40.{n}.2/32\"]\n",
            sk.to_base64(),
            lk.public_key().to_base64(),
        ),
    );
    let laptop = dir.file(
        "laptop.toml",
        &format!(
            "[interface]\nname = \"{laptop_if}\"\nprivate_key = \"{}\"\n\
             address = [\"10.40.{n}.2/24\"]\n\n[[peer]]\npublic_key = \"{}\"\n\
             endpoint = \"{}:{port}\"\nallowed_ips = [\"10.40.{n}.1/32\"]\n",
            lk.to_base64(),
            sk.public_key().to_base64(),
            topo.server4,
        ),
    );
    let mut ds = Daemon::up(&topo.server, &server);
    ds.wait_log("interface up", UP);
    let mut dl = Daemon::up(&topo.laptop, &laptop);
    dl.wait_log("interface up", UP);

    // No endpoint on the server: nothing known, 1420. The laptop: 1400 - 80.
    let link = topo.server.ip(&["link", "show", "dev", &server_if]);
    assert!(link.contains("mtu 1420"), "{link}");
    let link = topo.laptop.ip(&["link", "show", "dev", &laptop_if]);
    assert!(link.contains("mtu 1320"), "{link}\n{}", dl.log());

    let peer = format!("10.40.{n}.1");
    assert!(
        wait_until(Duration::from_secs(10), || ping_once(&topo.laptop, &peer)),
        "no ping through the tunnel; log:\n{}",
        dl.log()
    );
    // 1292 bytes of payload + 28 of ICMP and IPv4 headers = 1320: fits, unfragmented.
    let full = topo.laptop.exec(
        "ping",
        &["-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1292", &peer],
    );
    assert!(
        full.status.success(),
        "a full-size packet did not cross: {}",
        String::from_utf8_lossy(&full.stdout)
    );
    // One byte more does not fit the tunnel's MTU.
    let over = topo.laptop.exec(
        "ping",
        &["-n", "-c", "1", "-W", "1", "-M", "do", "-s", "1293", &peer],
    );
    assert!(!over.status.success(), "1321 bytes went through a 1320 MTU");
    dl.stop(Duration::from_secs(10));
    ds.stop(Duration::from_secs(10));
}
