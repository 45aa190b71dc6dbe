//! Correctness at scale through the real UAPI socket (needs root): a bare `tandem -f` in a
//! namespace of the test's own gets 10,000 peers with two AllowedIPs each in one `set`, every
//! peer and prefix reads back exactly through `get` (and `wg show dump` counts them), and one
//! `set` with `replace_peers` removes them all. Then the work that visits every peer, which
//! the data plane does in slices between batches (`driver/job.rs`): a `get` during a large
//! `set` sees all of it or none of it, and one refused (port taken) changes nothing; dumps of
//! 10,000 peers lose no packet of a flow through the tunnel; and a device takes more than
//! wireguard-go's 2^16 peers. Timing targets live in benches, not here.

mod common;
use common::{kit, netns};

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kit::{Daemon, wait_until};
use netns::{Netns, require_root, veth_pair};

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

/// A bare `tandem -f` in a namespace of its own, and its UAPI socket.
fn bare_daemon(tag: &str, n: u32) -> (Netns, String, String, Daemon) {
    let ns = Netns::new(tag);
    let ifname = format!("tsc{n}{}", std::process::id() % 10_000);
    let socket = format!("/var/run/wireguard/{ifname}.sock");
    let daemon = Daemon::start(&ns, &["-f", &ifname], &[]);
    assert!(
        wait_until(Duration::from_secs(15), || UnixStream::connect(&socket)
            .is_ok()),
        "no UAPI socket; log:\n{}",
        daemon.log()
    );
    (ns, ifname, socket, daemon)
}

/// The `set` lines of peers `range` (keys offset by `key_base`), with their two prefixes.
fn peer_lines(range: std::ops::Range<u32>, key_base: u32) -> String {
    let mut lines = String::new();
    for i in range {
        lines += &format!("public_key={}\n", public_hex(key_base + i));
        for prefix in prefixes(i) {
            lines += &format!("allowed_ip={prefix}\n");
        }
    }
    lines
}

/// The public keys a `get` lists.
fn keys_of(reply: &str) -> BTreeSet<String> {
    reply
        .lines()
        .filter_map(|l| l.strip_prefix("public_key="))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_get_during_a_large_set_sees_all_of_it_or_none() {
    require_root();
    const N: u32 = 10_000;
    let (ns, _ifname, socket, daemon) = bare_daemon("tnd-scale-atomic", 1);
    let set_a = format!(
        "set=1\nprivate_key={}\n{}\n",
        "11".repeat(32),
        peer_lines(0..N, 0)
    );
    assert_eq!(
        uapi(&socket, &set_a),
        "errno=0\n\n",
        "log:\n{}",
        daemon.log()
    );
    let old: BTreeSet<String> = (0..N).map(public_hex).collect();
    let new: BTreeSet<String> = (0..N).map(|i| public_hex(1_000_000 + i)).collect();
    assert_eq!(keys_of(&uapi(&socket, "get=1\n\n")), old);

    // Every peer replaced in one set, applied in many slices; gets keep coming meanwhile.
    let done = AtomicBool::new(false);
    let (olds, news) = std::thread::scope(|s| {
        let setter = s.spawn(|| {
            let set_b = format!(
                "set=1\nreplace_peers=true\n{}\n",
                peer_lines(0..N, 1_000_000)
            );
            let reply = uapi(&socket, &set_b);
            done.store(true, Ordering::SeqCst);
            reply
        });
        // Three readers, so that some get is queued behind the set's slices.
        let readers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let (mut olds, mut news) = (0, 0);
                    for _ in 0..200 {
                        let finished = done.load(Ordering::SeqCst);
                        let reply = uapi(&socket, "get=1\n\n");
                        let keys = keys_of(&reply);
                        if keys == old {
                            olds += 1;
                        } else {
                            assert!(
                                keys == new,
                                "a get saw a mix: {} peers, {} old, {} new",
                                keys.len(),
                                keys.intersection(&old).count(),
                                keys.intersection(&new).count()
                            );
                            // With the new peers come their prefixes, all of them.
                            assert_eq!(reply.matches("allowed_ip=").count(), 2 * N as usize);
                            news += 1;
                        }
                        if finished {
                            break;
                        }
                    }
                    (olds, news)
                })
            })
            .collect();
        let (mut olds, mut news) = (0, 0);
        for reader in readers {
            let (o, n) = reader.join().expect("reader");
            olds += o;
            news += n;
        }
        assert_eq!(setter.join().expect("setter"), "errno=0\n\n");
        (olds, news)
    });
    assert!(
        news >= 1,
        "the set was never seen ({olds} gets saw the old state)"
    );
    eprintln!("gets during the set: {olds} saw the old state, {news} the new");

    // A large set whose port is taken (planned on its own thread, then its fallible step
    // fails): refused with EADDRINUSE, and none of it applies.
    let holder = ns.run(|| UdpSocket::bind("0.0.0.0:41600").expect("hold a port"));
    let refused = format!(
        "set=1\nlisten_port=41600\nreplace_peers=true\n{}\n",
        peer_lines(0..N, 2_000_000)
    );
    assert_eq!(
        uapi(&socket, &refused),
        format!("errno=-{}\n\n", libc::EADDRINUSE)
    );
    assert_eq!(keys_of(&uapi(&socket, "get=1\n\n")), new);
    drop(holder);
    daemon.stop(Duration::from_secs(10));
}

#[test]
fn dumps_of_ten_thousand_peers_lose_no_packet_of_a_flow_through_the_tunnel() {
    require_root();
    const N: u32 = 10_000;
    const PACKETS: u32 = 1500;
    let (ns_a, if_a, sock_a, daemon_a) = bare_daemon("tnd-scale-fa", 2);
    let (ns_b, if_b, sock_b, daemon_b) = bare_daemon("tnd-scale-fb", 3);
    veth_pair(&ns_a, &ns_b, &["192.168.77.1/24"], &["192.168.77.2/24"]);
    let key = |b: u8| {
        let private = tandem::proto::PrivateKey::from_bytes([b; 32]);
        (private.to_hex(), private.public_key().to_hex())
    };
    let ((priv_a, pub_a), (priv_b, pub_b)) = (key(0x21), key(0x22));
    let set_a = format!(
        "set=1\nprivate_key={priv_a}\nlisten_port=51901\npublic_key={pub_b}\n\
         endpoint=192.168.77.2:51902\nallowed_ip=10.99.0.2/32\n{}\n",
        peer_lines(0..N, 0)
    );
    let set_b = format!(
        "set=1\nprivate_key={priv_b}\nlisten_port=51902\npublic_key={pub_a}\n\
         endpoint=192.168.77.1:51901\nallowed_ip=10.99.0.1/32\n\n"
    );
    assert_eq!(uapi(&sock_a, &set_a), "errno=0\n\n", "{}", daemon_a.log());
    assert_eq!(uapi(&sock_b, &set_b), "errno=0\n\n", "{}", daemon_b.log());
    for (ns, ifname, addr) in [
        (&ns_a, &if_a, "10.99.0.1/24"),
        (&ns_b, &if_b, "10.99.0.2/24"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
    }
    assert!(
        wait_until(Duration::from_secs(10), || kit::ping_once(
            &ns_a,
            "10.99.0.2"
        )),
        "no tunnel; logs:\n{}\n{}",
        daemon_a.log(),
        daemon_b.log()
    );

    // A datagram a millisecond from A to B through the tunnel, while A dumps its peers.
    let done = AtomicBool::new(false);
    let (received, dumps) = std::thread::scope(|s| {
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let receiver = s.spawn(|| {
            ns_b.run(move || {
                let socket = UdpSocket::bind("10.99.0.2:40000").expect("bind in B");
                socket
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                bound_tx.send(()).expect("signal");
                let mut seen = BTreeSet::new();
                let mut buf = [0u8; 64];
                while seen.len() < PACKETS as usize {
                    match socket.recv(&mut buf) {
                        Ok(4..) => {
                            seen.insert(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]));
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                seen
            })
        });
        bound_rx.recv().expect("receiver bound");
        let sender = s.spawn(|| {
            ns_a.run(|| {
                let socket = UdpSocket::bind("10.99.0.1:0").expect("bind in A");
                for n in 0..PACKETS {
                    socket
                        .send_to(&n.to_le_bytes(), "10.99.0.2:40000")
                        .expect("send");
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            done.store(true, Ordering::SeqCst);
        });
        let mut dumps = 0;
        while !done.load(Ordering::SeqCst) && dumps < 100 {
            let reply = uapi(&sock_a, "get=1\n\n");
            assert_eq!(keys_of(&reply).len(), N as usize + 1);
            dumps += 1;
        }
        sender.join().expect("sender");
        (receiver.join().expect("receiver"), dumps)
    });
    assert!(dumps >= 1);
    let lost: Vec<u32> = (0..PACKETS).filter(|n| !received.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {PACKETS} datagrams lost during {dumps} dumps (first {:?})",
        lost.len(),
        lost.first()
    );
    eprintln!("{PACKETS} datagrams delivered during {dumps} dumps of {N} peers");
    daemon_a.stop(Duration::from_secs(10));
    daemon_b.stop(Duration::from_secs(10));
}

#[test]
fn more_peers_than_wireguard_go_allows() {
    require_root();
    const N: u32 = 70_000;
    let (_ns, ifname, socket, daemon) = bare_daemon("tnd-scale-70k", 4);
    let mut set = String::from("set=1\n");
    // One IPv6 /64 a peer, fd01:HI:LO::/64.
    let prefix = |i: u32| format!("fd01:{:x}:{:x}::/64", i >> 16, i & 0xffff);
    for i in 0..N {
        set += &format!("public_key={}\n", public_hex(i));
        set += &format!("allowed_ip={}\n", prefix(i));
    }
    set += "\n";
    assert_eq!(uapi(&socket, &set), "errno=0\n\n", "log:\n{}", daemon.log());
    let (peers, got) = read_back(&uapi(&socket, "get=1\n\n"));
    assert_eq!((peers, got.len()), (N as usize, N as usize));
    assert!(got.contains(&(public_hex(N - 1), prefix(N - 1))));
    let _ = ifname;
    daemon.stop(Duration::from_secs(20));
}
