//! The quick part of the fault suite (benches/faults runs the long one, side by side with
//! wireguard-go): two tandem daemons in two namespaces whose outer packets pass through an
//! impaired link (`tandem::testkit::impair`, a relay in A's namespace), and sequence-numbered
//! UDP through the tunnel, at modest rates (a few thousand datagrams a second) so that a
//! machine busy with other tests drops nothing in socket buffers outside the tunnel.
//! Assertions are on delivery, never on timing:
//! - duplication on the link delivers no duplicate through the tunnel (the replay window);
//! - loss and reordering on the link lose no more inside the tunnel than the link dropped
//!   (each inner datagram is one outer datagram, and reordering within the replay window is
//!   accepted, not dropped);
//! - jitter alone loses nothing;
//! - a restarted side answers the first packet its survivor sends into the dead session
//!   with a handshake, so the tunnel is back at once, not after the survivor's ~15 s timers.

mod common;
use common::kit::{Daemon, TempDir, wait_until};
use common::netns::{Netns, require_root, veth_pair};

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use tandem::testkit::impair::{Direction, Impairment, Relay};
use tandem::testkit::key;
use tandem::testkit::seqflow::{Delivery, SeqReceiver, send_sequence};

const OUTER_A: &str = "10.96.0.1";
const OUTER_B: &str = "10.96.0.2";
const TUN_A: &str = "10.95.0.1";
const TUN_B: &str = "10.95.0.2";
const PORT_A: u16 = 51820;
const PORT_B: u16 = 51821;
const RELAY_PORT: u16 = 40000;
const FLOW_PORT: u16 = 9000;

/// A's tandem sends to the relay on A's loopback; the relay forwards to B's real address.
/// B has no endpoint for A and learns the relay's address from the first handshake.
struct Link {
    a: Netns,
    b: Netns,
    dir: TempDir,
    da: Option<Daemon>,
    _db: Daemon,
    relay: Relay,
}

fn ifname(tag: &str) -> String {
    format!("tf{tag}{}", std::process::id() % 100_000)
}

impl Link {
    fn new(tag: &str) -> Link {
        require_root();
        let a = Netns::new(&format!("tnd-flt-{tag}-a"));
        let b = Netns::new(&format!("tnd-flt-{tag}-b"));
        veth_pair(
            &a,
            &b,
            &[&format!("{OUTER_A}/24")],
            &[&format!("{OUTER_B}/24")],
        );
        let dir = TempDir::new(&format!("faults-{tag}"));
        let (ka, kb) = (key(61), key(62));
        let ifa = ifname(&format!("{tag}a"));
        let ifb = ifname(&format!("{tag}b"));
        let conf_a = dir.file(
            "a.toml",
            &format!(
                "[interface]\nname = \"{ifa}\"\nprivate_key = \"{}\"\nlisten_port = {PORT_A}\n\
                 address = [\"{TUN_A}/24\"]\n\n[[peer]]\nname = \"b\"\npublic_key = \"{}\"\n\
                 endpoint = \"127.0.0.1:{RELAY_PORT}\"\nallowed_ips = [\"{TUN_B}/32\"]\n",
                ka.to_base64(),
                kb.public_key().to_base64()
            ),
        );
        let conf_b = dir.file(
            "b.toml",
            &format!(
                "[interface]\nname = \"{ifb}\"\nprivate_key = \"{}\"\nlisten_port = {PORT_B}\n\
                 address = [\"{TUN_B}/24\"]\n\n[[peer]]\nname = \"a\"\npublic_key = \"{}\"\n\
                 allowed_ips = [\"{TUN_A}/32\"]\n",
                kb.to_base64(),
                ka.public_key().to_base64()
            ),
        );
        let back: SocketAddr = format!("{OUTER_B}:{PORT_B}").parse().expect("addr");
        let front: SocketAddr = format!("127.0.0.1:{RELAY_PORT}").parse().expect("addr");
        let relay = a
            .run(|| Relay::start(front, back, 0xfa17))
            .expect("start the relay in A's namespace");
        let mut da = Daemon::up(&a, &conf_a);
        da.wait_log("interface up", Duration::from_secs(15));
        let mut db = Daemon::up(&b, &conf_b);
        db.wait_log("interface up", Duration::from_secs(15));
        let link = Link {
            a,
            b,
            dir,
            da: Some(da),
            _db: db,
            relay,
        };
        // The session is made over a perfect link: a lost handshake message would only test
        // the 5 s retransmit.
        assert!(
            wait_until(Duration::from_secs(10), || common::kit::ping_once(
                &link.a, TUN_B
            )),
            "no session over the relay"
        );
        link
    }

    /// Sends `count` datagrams from A to B through the tunnel and reports what arrived.
    fn flow(&self, tag: u64, count: u64, rate: u64) -> Delivery {
        let rx = self
            .b
            .run(|| UdpSocket::bind(format!("{TUN_B}:{FLOW_PORT}")))
            .expect("bind the receiver in B");
        let tx = self
            .a
            .run(|| UdpSocket::bind(format!("{TUN_A}:0")))
            .expect("bind the sender in A");
        let to: SocketAddr = format!("{TUN_B}:{FLOW_PORT}").parse().expect("addr");
        let mut receiver = SeqReceiver::new(tag, count);
        std::thread::scope(|s| {
            let sender = s.spawn(|| send_sequence(&tx, to, tag, count, rate, 512));
            let d = receiver.receive(&rx, Duration::from_secs(2), Duration::from_secs(30));
            let sent = sender.join().expect("sender").expect("send");
            assert_eq!(sent, count, "the sender could not send everything");
            d
        })
    }

    fn dropped_to_b(&self) -> u64 {
        let s = self.relay.stats();
        s.get(&s.dropped, Direction::ToBack)
    }
}

#[test]
fn duplication_on_the_link_delivers_no_duplicate() {
    let link = Link::new("dup");
    link.relay.set_both(Impairment {
        duplicate: 0.2,
        ..Impairment::default()
    });
    let d = link.flow(1, 3000, 2_000);
    let s = link.relay.stats();
    assert!(
        s.get(&s.duplicated, Direction::ToBack) > 300,
        "the link duplicated too little to test anything"
    );
    assert_eq!(d.duplicates, 0, "a duplicate got through: {d:?}");
    assert_eq!(d.lost(), 0, "lost on a link that only duplicates: {d:?}");
}

#[test]
fn loss_and_reordering_lose_no_more_than_the_link() {
    let link = Link::new("lossy");
    let before = link.dropped_to_b();
    link.relay.set_both(Impairment {
        loss: 0.01,
        reorder: 0.25,
        reorder_delay: Duration::from_millis(2),
        ..Impairment::default()
    });
    let d = link.flow(2, 5000, 2_500);
    link.relay.set_both(Impairment::default());
    let dropped = link.dropped_to_b() - before;
    assert!(dropped > 0, "the link dropped nothing");
    assert!(
        d.reordered > 0,
        "nothing arrived out of order, the link did not reorder: {d:?}"
    );
    // Keepalives and handshake messages share the link, so the link may have dropped some of
    // those instead: the tunnel loses at most what the link dropped.
    assert!(
        d.lost() <= dropped,
        "the tunnel lost {} of {} but the link dropped only {dropped}: {d:?}",
        d.lost(),
        d.sent
    );
    assert_eq!(d.duplicates, 0);
}

#[test]
fn jitter_alone_loses_nothing() {
    let link = Link::new("jit");
    link.relay.set_both(Impairment {
        jitter: Duration::from_millis(3),
        ..Impairment::default()
    });
    let d = link.flow(3, 3000, 2_000);
    assert_eq!(d.lost(), 0, "{d:?}");
    assert_eq!(d.duplicates, 0, "{d:?}");
    assert!(d.reordered > 0, "jitter reorders: {d:?}");
}

#[test]
fn a_restarted_side_is_reached_again_at_once() {
    let mut link = Link::new("rst");
    assert!(common::kit::ping_once(&link.b, TUN_A), "B reaches A before");
    let mut da = link.da.take().expect("A runs");
    da.signal("KILL");
    da.wait_exit(Duration::from_secs(5));
    drop(da);
    let mut da = Daemon::up(&link.a, &link.dir.path("a.toml"));
    da.wait_log("interface up", Duration::from_secs(15));
    link.da = Some(da);
    // B still holds the old session and keeps using it: A, which knows B's endpoint (the
    // relay's front, from its config), answers B's first packet with an initiation. Before
    // that behaviour B noticed only through its keepalive and rekey timers, after ~15 s.
    assert!(
        wait_until(Duration::from_secs(4), || common::kit::ping_once(
            &link.b, TUN_A
        )),
        "B did not reach the restarted A within 4 s"
    );
}
