//! Correctness at scale through the real UAPI socket (needs root): a bare `tandem -f` in a
//! namespace of the test's own gets 10,000 peers with two AllowedIPs each in one `set`, every
//! peer and prefix reads back exactly through `get` (and `wg show dump` counts them), and one
//! `set` with `replace_peers` removes them all. Timing targets live in benches, not here.

mod common;
use common::{kit, netns};

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use kit::{Daemon, wait_until};
use netns::{Netns, require_root};

const PEERS: u32 = 10_000;

fn public_hex(i: u32) -> String {
    let mut key = [0x5au8; 32];
    key[..4].copy_from_slice(&i.to_le_bytes());
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Peer i's two prefixes, written as `get` writes them (canonical addresses).
fn prefixes(i: u32) -> [String; 2] {
    let [_, _, b, c] = (i + 1).to_be_bytes();
    let v6: std::net::Ipv6Addr = format!("fd00:{i:x}::").parse().expect("address");
    [format!("10.{b}.{c}.0/24"), format!("{v6}/64")]
}

/// One request on a fresh connection; the whole reply.
fn uapi(socket: &str, request: &str) -> String {
    kit::uapi_exchange(Path::new(socket), request, Duration::from_secs(120))
}

/// `(public key, prefix)` pairs of a `get` reply, and the number of peers.
fn read_back(reply: &str) -> (usize, BTreeSet<(String, String)>) {
    let mut peers = 0;
    let mut current = String::new();
    let mut pairs = BTreeSet::new();
    for line in reply.lines() {
        if let Some(key) = line.strip_prefix("public_key=") {
            peers += 1;
            current = key.to_owned();
        } else if let Some(prefix) = line.strip_prefix("allowed_ip=") {
            assert!(
                pairs.insert((current.clone(), prefix.to_owned())),
                "{prefix} listed twice"
            );
        }
    }
    (peers, pairs)
}

#[test]
fn ten_thousand_peers_load_read_back_and_go_through_the_uapi_socket() {
    require_root();
    let ns = Netns::new("tnd-scale");
    let ifname = format!("tsc{}", std::process::id() % 100_000);
    let socket = format!("/var/run/wireguard/{ifname}.sock");
    let daemon = Daemon::start(&ns, &["-f", &ifname], &[]);
    assert!(
        wait_until(Duration::from_secs(15), || UnixStream::connect(&socket)
            .is_ok()),
        "no UAPI socket; log:\n{}",
        daemon.log()
    );

    let mut set = String::from("set=1\nprivate_key=");
    set += &"11".repeat(32);
    set += "\nlisten_port=0\n";
    let mut expected = BTreeSet::new();
    for i in 0..PEERS {
        let key = public_hex(i);
        set += &format!("public_key={key}\n");
        for prefix in prefixes(i) {
            set += &format!("allowed_ip={prefix}\n");
            expected.insert((key.clone(), prefix));
        }
    }
    set += "\n";
    assert_eq!(uapi(&socket, &set), "errno=0\n\n", "log:\n{}", daemon.log());

    let (peers, got) = read_back(&uapi(&socket, "get=1\n\n"));
    assert_eq!(peers, PEERS as usize);
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "the prefixes read back differ from those set"
    );
    // The stock tool sees the same number of peers.
    let dump = ns.exec_ok("wg", &["show", &ifname, "dump"]);
    assert_eq!(dump.lines().count(), PEERS as usize + 1);

    // Moving one prefix between two peers shows on both, and nowhere else.
    let moved = prefixes(7)[0].clone();
    let reply = uapi(
        &socket,
        &format!(
            "set=1\npublic_key={}\nallowed_ip={moved}\n\n",
            public_hex(9)
        ),
    );
    assert_eq!(reply, "errno=0\n\n");
    let (_, got) = read_back(&uapi(&socket, "get=1\n\n"));
    assert!(!got.contains(&(public_hex(7), moved.clone())));
    assert!(got.contains(&(public_hex(9), moved)));
    assert_eq!(got.len(), expected.len());

    // All of them go in one set.
    assert_eq!(
        uapi(&socket, "set=1\nreplace_peers=true\n\n"),
        "errno=0\n\n"
    );
    let (peers, got) = read_back(&uapi(&socket, "get=1\n\n"));
    assert_eq!((peers, got.len()), (0, 0));
    daemon.stop(Duration::from_secs(10));
}
