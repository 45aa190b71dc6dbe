//! UAPI get/set against a real `Device`: exact reply texts, every key, wireguard-go's
//! line-by-line semantics, and atomicity (a refused request changes nothing). Requests go
//! through the production steps: parse, simulate into a desired device, plan, apply the
//! core's part (the driver's socket part is tested in tests/data_plane.rs and tests/uapi_wg.rs).

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::proto::{Decapsulated, Device, Now, PeerConfig, PresharedKey, PrivateKey, PublicKey};
use crate::reconcile::{self, DevicePlan};

/// The sockets' settings, which the driver owns beside the `Device`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct InterfaceState {
    listen_port: u16,
    fwmark: u32,
}

/// A request answered as the driver answers it, with `state` standing in for its sockets.
fn handle_request(
    input: &str,
    device: &mut Device,
    state: &mut InterfaceState,
    now: Now,
) -> String {
    match parse_request(input) {
        Request::Get => format_get(&Snapshot::of(device, state.listen_port, state.fwmark)),
        Request::Set(req) => match apply_set(&req, device, state, now) {
            Ok(_) => SET_OK.to_string(),
            Err(e) => e.reply(),
        },
        Request::Invalid(e) => e.reply(),
        Request::Close => String::new(),
    }
}

/// Simulate, plan and apply the core's part; the plan says what the sockets must do.
fn apply_set(
    req: &SetRequest,
    device: &mut Device,
    state: &mut InterfaceState,
    now: Now,
) -> Result<DevicePlan, UapiError> {
    let running = Snapshot::of(device, state.listen_port, state.fwmark);
    let desired = req.desired(&running)?;
    let plan = reconcile::plan(&running, &desired);
    reconcile::apply_to_device(device, &plan, now);
    if let Some(port) = plan.listen_port {
        state.listen_port = port;
    }
    if let Some(mark) = plan.fwmark {
        state.fwmark = mark;
    }
    Ok(plan)
}

/// A clamped key from one repeated byte, so its hex is easy to write down.
fn private(seed: u8) -> PrivateKey {
    PrivateKey::from_bytes([seed; 32]).clamped()
}

fn public(seed: u8) -> PublicKey {
    private(seed).public_key()
}

fn pub_hex(seed: u8) -> String {
    public(seed).to_hex()
}

fn now() -> Now {
    Now::new(
        Duration::from_secs(1000),
        Duration::from_secs(1_700_000_000),
    )
}

fn device() -> Device {
    Device::new(Some(private(1)), [7; 32])
}

const ZERO_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Sends `set=1`, the given lines (each ending in '\n') and the blank line.
fn set(device: &mut Device, state: &mut InterfaceState, lines: &str) -> String {
    handle_request(&format!("set=1\n{lines}\n"), device, state, now())
}

fn get(device: &mut Device, state: &mut InterfaceState) -> String {
    handle_request("get=1\n\n", device, state, now())
}

/// The `get` text of one peer with no traffic.
fn peer_text(
    seed: u8,
    psk: Option<&str>,
    endpoint: Option<&str>,
    keepalive: u16,
    allowed: &[&str],
) -> String {
    let mut s = format!(
        "public_key={}\npreshared_key={}\nprotocol_version=1\n",
        pub_hex(seed),
        psk.unwrap_or(ZERO_HEX)
    );
    if let Some(e) = endpoint {
        s += &format!("endpoint={e}\n");
    }
    s += &format!(
        "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
         persistent_keepalive_interval={keepalive}\n"
    );
    for a in allowed {
        s += &format!("allowed_ip={a}\n");
    }
    s
}

// ------------------------------------------------------------------------------- get

#[test]
fn get_on_an_empty_device() {
    let mut dev = Device::new(None, [7; 32]);
    let mut state = InterfaceState::default();
    assert_eq!(get(&mut dev, &mut state), "errno=0\n\n");

    // The private key (clamped bytes 0x11 as hex), listen_port; fwmark only when not 0.
    let mut dev = Device::new(Some(private(0x11)), [7; 32]);
    let mut state = InterfaceState {
        listen_port: 51820,
        fwmark: 0,
    };
    let key = format!("10{}51", "11".repeat(30));
    assert_eq!(
        get(&mut dev, &mut state),
        format!("private_key={key}\nlisten_port=51820\nerrno=0\n\n")
    );
    state.fwmark = 51820;
    state.listen_port = 0;
    assert_eq!(
        get(&mut dev, &mut state),
        format!("private_key={key}\nfwmark=51820\nerrno=0\n\n")
    );
}

#[test]
fn get_on_a_populated_device() {
    let mut dev = device();
    let mut state = InterfaceState {
        listen_port: 51820,
        fwmark: 0,
    };
    let mut a = PeerConfig::new(public(2));
    a.preshared_key = Some(PresharedKey::from_bytes([0xab; 32]));
    a.endpoint = Some("192.0.2.1:51820".parse().unwrap());
    a.persistent_keepalive = 25;
    a.allowed_ips = vec![
        "10.0.0.2/32"
            .parse::<crate::proto::prefix::Prefix>()
            .unwrap(),
        "fd00::/64".parse::<crate::proto::prefix::Prefix>().unwrap(),
        "10.9.0.0/16"
            .parse::<crate::proto::prefix::Prefix>()
            .unwrap(),
    ];
    dev.upsert_peer(&a).unwrap();
    let mut b = PeerConfig::new(public(3));
    b.endpoint = Some("[2001:db8::1]:443".parse().unwrap());
    dev.upsert_peer(&b).unwrap();

    let expected = format!(
        "private_key={}\nlisten_port=51820\n{}{}errno=0\n\n",
        private(1).to_hex(),
        peer_text(
            2,
            Some(&"ab".repeat(32)),
            Some("192.0.2.1:51820"),
            25,
            &["10.0.0.2/32", "10.9.0.0/16", "fd00::/64"],
        ),
        peer_text(3, None, Some("[2001:db8::1]:443"), 0, &[]),
    );
    assert_eq!(get(&mut dev, &mut state), expected);
}

#[test]
fn get_reports_the_handshake_time_and_byte_counters() {
    let addr_a: SocketAddr = "192.0.2.1:1".parse().unwrap();
    let addr_b: SocketAddr = "192.0.2.2:2".parse().unwrap();
    let mut a = Device::new(Some(private(1)), [1; 32]);
    let mut b = Device::new(Some(private(2)), [2; 32]);
    let mut state = InterfaceState::default();
    b.upsert_peer(&PeerConfig::new(public(1))).unwrap();
    // A new peer with a keepalive sends one at once, which starts a handshake.
    let reply = set(
        &mut a,
        &mut state,
        &format!(
            "public_key={}\nendpoint={addr_b}\npersistent_keepalive_interval=25\n",
            pub_hex(2)
        ),
    );
    assert_eq!(reply, "errno=0\n\n");

    let t = now().advance(Duration::new(0, 123_456_789));
    let mut buf = vec![0u8; 2048];
    let init = a.poll_transmit(&mut buf, t).expect("an initiation");
    assert_eq!((init.endpoint, init.len), (addr_b, 148));
    let mut msg = buf[..init.len].to_vec();
    assert_eq!(
        b.decapsulate(addr_a, &mut msg, init.len, t),
        Decapsulated::Done
    );
    let resp = b.poll_transmit(&mut buf, t).expect("a response");
    assert_eq!(resp.len, 92);
    let mut msg = buf[..resp.len].to_vec();
    assert_eq!(
        a.decapsulate(addr_b, &mut msg, resp.len, t),
        Decapsulated::Done
    );

    let info = a.peer_info(a.peer_id(&public(2)).unwrap()).unwrap();
    assert_eq!(info.stats.last_handshake, Some(t.unix));
    let text = get(&mut a, &mut state);
    let expected = format!(
        "public_key={}\npreshared_key={ZERO_HEX}\nprotocol_version=1\nendpoint={addr_b}\n\
         last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123456789\n\
         tx_bytes={}\nrx_bytes=92\npersistent_keepalive_interval=25\n",
        pub_hex(2),
        info.stats.tx_bytes,
    );
    assert!(text.contains(&expected), "{text}");
    // The initiation at least, and perhaps the keepalive that confirms the session.
    assert!(
        [148, 148 + 32].contains(&info.stats.tx_bytes),
        "{}",
        info.stats.tx_bytes
    );
}

// ------------------------------------------------------------------------------- set

#[test]
fn set_of_every_key() {
    let mut dev = Device::new(None, [7; 32]);
    let mut state = InterfaceState::default();
    // Any 32 bytes: the stored key is clamped, as in wireguard-go.
    let raw = "11".repeat(32);
    let lines = format!(
        "private_key={raw}\nlisten_port=51821\nfwmark=1234\nreplace_peers=true\n\
         public_key={p2}\nprotocol_version=1\npreshared_key={psk}\nendpoint=192.0.2.9:9\n\
         persistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=10.0.0.0/8\n\
         allowed_ip=10.1.2.3/24\nallowed_ip=fd00::1/64\nallowed_ip=-10.0.0.0/8\n\
         public_key={p3}\nupdate_only=true\nallowed_ip=10.3.0.0/16\n\
         public_key={p4}\nendpoint=[fe80::1%2]:51820\nremove=true\n\
         public_key={p5}\nendpoint=[2001:db8::5]:5\n",
        p2 = pub_hex(2),
        p3 = pub_hex(3),
        p4 = pub_hex(4),
        p5 = pub_hex(5),
        psk = "cd".repeat(32),
    );
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    assert_eq!(
        state,
        InterfaceState {
            listen_port: 51821,
            fwmark: 1234
        }
    );
    let expected = format!(
        "private_key=10{}51\nlisten_port=51821\nfwmark=1234\n{}{}errno=0\n\n",
        "11".repeat(30),
        peer_text(
            2,
            Some(&"cd".repeat(32)),
            Some("192.0.2.9:9"),
            0,
            &["10.1.2.0/24", "fd00::/64"],
        ),
        peer_text(5, None, Some("[2001:db8::5]:5"), 0, &[]),
    );
    assert_eq!(get(&mut dev, &mut state), expected);

    // An all-zero private key clears it; an all-zero preshared key removes it; fwmark=0 is off.
    let lines = format!(
        "private_key={ZERO_HEX}\nfwmark=0\npublic_key={}\npreshared_key={ZERO_HEX}\n",
        pub_hex(2)
    );
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    assert!(dev.private_key().is_none());
    assert_eq!(state.fwmark, 0);
    let info = dev.peer_info(dev.peer_id(&public(2)).unwrap()).unwrap();
    assert_eq!(info.preshared_key, None);
    assert!(get(&mut dev, &mut state).starts_with("listen_port=51821\npublic_key="));
}

#[test]
fn set_plans_what_the_driver_must_redo() {
    let mut dev = device();
    let mut state = InterfaceState {
        listen_port: 51820,
        fwmark: 0,
    };
    // The port already bound, and 0 ("any port", which the bound one is): nothing to redo.
    for line in ["listen_port=51820\n\n", "listen_port=0\n\n"] {
        let req = parse_set(line).unwrap();
        let plan = apply_set(&req, &mut dev, &mut state, now()).unwrap();
        assert_eq!(plan.listen_port, None, "{line:?}");
        assert_eq!(plan.fwmark, None);
        assert!(plan.private_key.is_none());
        assert!(plan.changes().is_empty());
    }
    let req = parse_set(&format!(
        "private_key={}\nlisten_port=1\nfwmark=7\n\n",
        "22".repeat(32)
    ))
    .unwrap();
    let plan = apply_set(&req, &mut dev, &mut state, now()).unwrap();
    assert_eq!(plan.listen_port, Some(1));
    assert_eq!(plan.fwmark, Some(7));
    assert!(plan.private_key.is_some());
    assert_eq!(
        state,
        InterfaceState {
            listen_port: 1,
            fwmark: 7
        }
    );
    // The same key again changes nothing (and keeps the sessions, as wireguard-go does).
    let plan = apply_set(&req, &mut dev, &mut state, now()).unwrap();
    assert!(plan.private_key.is_none() && plan.listen_port.is_none());
}

#[test]
fn replace_peers_drops_every_peer_before_the_new_ones() {
    let mut dev = device();
    let mut state = InterfaceState::default();
    for seed in [2, 3] {
        let mut c = PeerConfig::new(public(seed));
        c.allowed_ips = vec![format!("10.0.0.{seed}/32").parse().unwrap()];
        dev.upsert_peer(&c).unwrap();
    }
    let lines = format!(
        "replace_peers=true\npublic_key={}\nallowed_ip=10.0.0.2/32\n",
        pub_hex(4)
    );
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    let peers = dev.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].public_key, public(4));
    assert_eq!(
        peers[0].allowed_ips,
        vec![
            "10.0.0.2/32"
                .parse::<crate::proto::prefix::Prefix>()
                .unwrap()
        ]
    );
}

#[test]
fn remove_drops_the_peer_and_ignores_the_rest_of_its_section() {
    let mut dev = device();
    let mut state = InterfaceState::default();
    let mut c = PeerConfig::new(public(2));
    c.allowed_ips = vec![
        "10.0.0.2/32"
            .parse::<crate::proto::prefix::Prefix>()
            .unwrap(),
    ];
    dev.upsert_peer(&c).unwrap();
    dev.upsert_peer(&PeerConfig::new(public(3))).unwrap();
    let lines = format!(
        "public_key={p2}\nremove=true\nallowed_ip=10.0.0.9/32\nendpoint=192.0.2.1:1\n\
         public_key={p4}\nremove=true\npersistent_keepalive_interval=5\n",
        p2 = pub_hex(2),
        p4 = pub_hex(4),
    );
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    let keys: Vec<PublicKey> = dev.peers().iter().map(|p| p.public_key).collect();
    assert_eq!(
        keys,
        vec![public(3)],
        "removing a missing peer creates nothing"
    );
    assert_eq!(get(&mut dev, &mut state).matches("allowed_ip=").count(), 0);
}

#[test]
fn a_peer_removed_and_added_again_comes_back_fresh() {
    let mut dev = device();
    let mut state = InterfaceState::default();
    let mut c = PeerConfig::new(public(2));
    c.preshared_key = Some(PresharedKey::from_bytes([9; 32]));
    c.persistent_keepalive = 7;
    dev.upsert_peer(&c).unwrap();
    let p2 = pub_hex(2);
    let lines = format!("public_key={p2}\nremove=true\npublic_key={p2}\nallowed_ip=10.2.0.0/16\n");
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    let info = &dev.peers()[0];
    assert_eq!(info.public_key, public(2));
    assert_eq!(info.preshared_key, None);
    assert_eq!(info.persistent_keepalive, 0);
    assert_eq!(
        info.allowed_ips,
        vec![
            "10.2.0.0/16"
                .parse::<crate::proto::prefix::Prefix>()
                .unwrap()
        ]
    );
}

#[test]
fn update_only_changes_existing_peers_and_creates_none() {
    let mut dev = device();
    let mut state = InterfaceState::default();
    dev.upsert_peer(&PeerConfig::new(public(2))).unwrap();
    let lines = format!(
        "public_key={p2}\nupdate_only=true\nendpoint=192.0.2.2:2\n\
         public_key={p3}\nupdate_only=true\nendpoint=192.0.2.3:3\nallowed_ip=10.3.0.0/16\n",
        p2 = pub_hex(2),
        p3 = pub_hex(3),
    );
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    let peers = dev.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].endpoint, Some("192.0.2.2:2".parse().unwrap()));
    // Lines before update_only touched a peer that then vanished with them.
    let lines = format!(
        "public_key={}\nallowed_ip=10.3.0.0/16\nupdate_only=true\n",
        pub_hex(3)
    );
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    assert_eq!(dev.peers().len(), 1);
}

#[test]
fn replace_allowed_ips_replaces_the_peers_prefixes() {
    let mut dev = device();
    let mut state = InterfaceState::default();
    let mut c = PeerConfig::new(public(2));
    c.allowed_ips = vec![
        "10.0.0.0/8"
            .parse::<crate::proto::prefix::Prefix>()
            .unwrap(),
        "fd00::/8".parse::<crate::proto::prefix::Prefix>().unwrap(),
    ];
    dev.upsert_peer(&c).unwrap();
    let lines = format!(
        "public_key={}\nreplace_allowed_ips=true\nallowed_ip=192.168.7.0/24\n",
        pub_hex(2)
    );
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    assert_eq!(
        dev.peers()[0].allowed_ips,
        vec![
            "192.168.7.0/24"
                .parse::<crate::proto::prefix::Prefix>()
                .unwrap()
        ]
    );
    // With nothing after it, it clears them all.
    let lines = format!("public_key={}\nreplace_allowed_ips=true\n", pub_hex(2));
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    assert!(dev.peers()[0].allowed_ips.is_empty());
}

#[test]
fn allowed_ips_move_between_peers_and_the_minus_form_removes_only_ones_own() {
    let mut dev = device();
    let mut state = InterfaceState::default();
    let (p2, p3) = (pub_hex(2), pub_hex(3));
    let lines = format!(
        "public_key={p2}\nallowed_ip=10.0.0.0/24\nallowed_ip=10.0.1.0/24\nallowed_ip=fd00::/64\n\
         public_key={p3}\nallowed_ip=10.0.1.0/24\n"
    );
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    let text = get(&mut dev, &mut state);
    assert!(
        text.contains(&peer_text(2, None, None, 0, &["10.0.0.0/24", "fd00::/64"])),
        "10.0.1.0/24 moved to the later peer: {text}"
    );
    assert!(text.contains(&peer_text(3, None, None, 0, &["10.0.1.0/24"])));

    // `-prefix` on a peer that does not hold it leaves the holder alone; host bits are
    // ignored as when adding.
    let lines = format!(
        "public_key={p3}\nallowed_ip=-10.0.0.0/24\nallowed_ip=-fd00::1/64\n\
         public_key={p2}\nallowed_ip=-10.0.0.77/24\nallowed_ip=-10.99.0.0/16\n"
    );
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    let text = get(&mut dev, &mut state);
    assert!(text.contains(&peer_text(2, None, None, 0, &["fd00::/64"])));
    assert!(text.contains(&peer_text(3, None, None, 0, &["10.0.1.0/24"])));

    // Moving a prefix to a peer earlier in the device's order works too.
    let lines = format!("public_key={p2}\nallowed_ip=10.0.1.0/24\n");
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    let text = get(&mut dev, &mut state);
    assert!(text.contains(&peer_text(2, None, None, 0, &["10.0.1.0/24", "fd00::/64"])));
    assert!(text.contains(&peer_text(3, None, None, 0, &[])));
}

#[test]
fn a_peer_with_our_own_public_key_is_refused() {
    let mut dev = device();
    let mut state = InterfaceState::default();
    // Ignored with all its lines, as wireguard-go and the kernel do (so a mesh can push one
    // peer list to every member); the rest of the request still applies.
    let lines = format!(
        "public_key={own}\nallowed_ip=10.0.0.1/32\nendpoint=192.0.2.1:1\n\
         public_key={p2}\nallowed_ip=10.0.0.2/32\n",
        own = pub_hex(1),
        p2 = pub_hex(2),
    );
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    let keys: Vec<PublicKey> = dev.peers().iter().map(|p| p.public_key).collect();
    assert_eq!(keys, vec![public(2)]);

    // A new private key whose public key is a peer's: that peer goes, and a section for it
    // later in the same request is ignored.
    let lines = format!(
        "private_key={}\npublic_key={}\nallowed_ip=10.0.0.9/32\n",
        private(2).to_hex(),
        pub_hex(2)
    );
    assert_eq!(set(&mut dev, &mut state, &lines), "errno=0\n\n");
    assert!(dev.peers().is_empty());
    assert_eq!(dev.public_key(), Some(public(2)));
}

#[test]
fn protocol_version_other_than_1_is_refused() {
    let mut dev = device();
    let mut state = InterfaceState::default();
    let before = get(&mut dev, &mut state);
    for v in ["2", "0", "", "01", "1 "] {
        let lines = format!(
            "listen_port=9\npublic_key={}\nprotocol_version={v}\n",
            pub_hex(2)
        );
        assert_eq!(set(&mut dev, &mut state, &lines), "errno=-22\n\n", "{v:?}");
        assert_eq!(get(&mut dev, &mut state), before);
    }
}

// ------------------------------------------------------------------------ atomicity

/// A device with some state, so a half-applied request would show.
fn populated() -> (Device, InterfaceState) {
    let mut dev = device();
    let state = InterfaceState {
        listen_port: 51820,
        fwmark: 3,
    };
    let mut c = PeerConfig::new(public(2));
    c.preshared_key = Some(PresharedKey::from_bytes([5; 32]));
    c.endpoint = Some("192.0.2.2:2".parse().unwrap());
    c.allowed_ips = vec![
        "10.0.0.0/24"
            .parse::<crate::proto::prefix::Prefix>()
            .unwrap(),
    ];
    dev.upsert_peer(&c).unwrap();
    let mut c = PeerConfig::new(public(3));
    c.allowed_ips = vec!["fd00::/64".parse::<crate::proto::prefix::Prefix>().unwrap()];
    dev.upsert_peer(&c).unwrap();
    (dev, state)
}

/// A valid request touching every key; each line is replaced by bad ones below.
fn valid_lines() -> Vec<String> {
    vec![
        format!("private_key={}", "44".repeat(32)),
        "listen_port=4000".into(),
        "fwmark=77".into(),
        "replace_peers=true".into(),
        format!("public_key={}", pub_hex(3)),
        "protocol_version=1".into(),
        format!("preshared_key={}", "66".repeat(32)),
        "endpoint=[2001:db8::3]:3".into(),
        "persistent_keepalive_interval=0".into(),
        "replace_allowed_ips=true".into(),
        "allowed_ip=10.0.0.0/24".into(),
        "allowed_ip=-fd00::/64".into(),
        format!("public_key={}", pub_hex(5)),
        "update_only=true".into(),
        format!("public_key={}", pub_hex(6)),
        "remove=true".into(),
    ]
}

/// Bad values for the key of `line`, each with the errno wireguard-go gives.
fn bad_variants(line: &str) -> Vec<(String, i32)> {
    let key = line.split_once('=').map_or(line, |(k, _)| k);
    let values: &[&str] = match key {
        "private_key" | "public_key" | "preshared_key" => &[
            "",
            "abc",
            "zz00000000000000000000000000000000000000000000000000000000000000",
            "000000000000000000000000000000000000000000000000000000000000000",
            "00000000000000000000000000000000000000000000000000000000000000000",
            " 0000000000000000000000000000000000000000000000000000000000000000",
            "ＦＦ00000000000000000000000000000000000000000000000000000000000",
        ],
        "listen_port" | "persistent_keepalive_interval" => {
            &["", "65536", "-1", "+1", "1.5", "0x10", " 1", "port"]
        }
        "fwmark" => &["", "4294967296", "-1", "0x1", "mark"],
        "replace_peers" | "replace_allowed_ips" | "update_only" | "remove" => {
            &["false", "", "TRUE", "true "]
        }
        "protocol_version" => &["2", ""],
        "endpoint" => &[
            "",
            "192.0.2.1",
            "192.0.2.1:",
            "192.0.2.1:65536",
            "2001:db8::1:51820",
            "[2001:db8::1]",
            "[192.0.2.1]:1",
            "host.example:51820",
            "192.0.2.1:-1",
        ],
        "allowed_ip" => &[
            "",
            "-",
            "--10.0.0.0/8",
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/08",
            "+10.0.0.0/8",
            "10.0.0.0/8 ",
        ],
        _ => &[],
    };
    let mut out: Vec<(String, i32)> = values
        .iter()
        .map(|v| (format!("{key}={v}"), -libc::EINVAL))
        .collect();
    out.push((format!("{key}x={}", "1"), -libc::EINVAL));
    out.push(("no equals sign".into(), -libc::EPROTO));
    out.push((format!("{key}={}", "9".repeat(MAX_LINE_LEN)), -libc::EIO));
    out
}

#[test]
fn an_invalid_line_at_any_position_changes_nothing() {
    let lines = valid_lines();
    let mut checked = 0;
    for (i, line) in lines.iter().enumerate() {
        for (bad, errno) in bad_variants(line) {
            let (mut dev, mut state) = populated();
            let before = get(&mut dev, &mut state);
            let mut body = lines.clone();
            body[i] = bad.clone();
            let body: String = body.iter().map(|l| format!("{l}\n")).collect();
            let reply = set(&mut dev, &mut state, &body);
            assert_eq!(reply, format!("errno={errno}\n\n"), "line {i}: {bad:?}");
            assert_eq!(get(&mut dev, &mut state), before, "line {i}: {bad:?}");
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");

    // And the valid request does apply.
    let (mut dev, mut state) = populated();
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(set(&mut dev, &mut state, &body), "errno=0\n\n");
    let expected = format!(
        "private_key=40{}\nlisten_port=4000\nfwmark=77\n{}errno=0\n\n",
        "44".repeat(31),
        peer_text(
            3,
            Some(&"66".repeat(32)),
            Some("[2001:db8::3]:3"),
            0,
            &["10.0.0.0/24"],
        ),
    );
    assert_eq!(get(&mut dev, &mut state), expected);
}

#[test]
fn device_keys_after_a_peer_and_unknown_keys_are_refused() {
    for body in [
        format!("public_key={}\nlisten_port=1\n", pub_hex(2)),
        format!(
            "public_key={}\nprivate_key={}\n",
            pub_hex(2),
            "11".repeat(32)
        ),
        "endpoint=192.0.2.1:1\n".to_string(),
        "allowed_ip=10.0.0.0/8\n".to_string(),
        "=1\n".to_string(),
        "LISTEN_PORT=1\n".to_string(),
    ] {
        let (mut dev, mut state) = populated();
        let before = get(&mut dev, &mut state);
        assert_eq!(
            set(&mut dev, &mut state, &body),
            "errno=-22\n\n",
            "{body:?}"
        );
        assert_eq!(get(&mut dev, &mut state), before);
    }
}

#[test]
fn too_many_lines_is_refused() {
    let body = "fwmark=1\n".repeat(1001);
    let err = super::parse::parse_set_within(&body, 1000).unwrap_err();
    assert_eq!(err.errno, -libc::EIO);
    assert!(super::parse::parse_set_within(&"fwmark=1\n".repeat(1000), 1000).is_ok());
}

/// The limits fit the largest `wg setconf` of the kernel's peer limit: every peer with a
/// preshared key, an IPv6 endpoint with a zone, keepalive and one IPv6 AllowedIP, as `wg`
/// writes it (`ipc-uapi.h`).
#[test]
fn the_largest_setconf_fits_the_limits() {
    let peer = [
        format!("public_key={}", "ab".repeat(32)),
        format!("preshared_key={}", "cd".repeat(32)),
        "endpoint=[fe80:1234:5678:9abc:def0:1234:5678:9abc%wg-uplink0]:65535".to_owned(),
        "persistent_keepalive_interval=65535".to_owned(),
        "replace_allowed_ips=true".to_owned(),
        "allowed_ip=fd12:3456:789a:bcde:f012:3456:789a:bcde/128".to_owned(),
    ];
    let bytes: usize = peer.iter().map(|l| l.len() + 1).sum();
    assert!(
        MAX_PEERS * bytes + 100 <= MAX_REQUEST_BYTES,
        "{bytes} bytes a peer"
    );
    assert!(MAX_PEERS * peer.len() + 10 <= MAX_SET_LINES);
    const { assert!(MAX_PEERS > 1 << 16) };
    // What the memory note on MAX_REQUEST_BYTES counts per parsed line.
    assert!(std::mem::size_of::<(usize, crate::reconcile::Op)>() <= 72);
}

/// Random mutations of a valid request never panic, and a refused one changes nothing.
#[test]
fn mutated_requests_never_panic_or_half_apply() {
    let base: String = valid_lines().iter().map(|l| format!("{l}\n")).collect();
    let base = format!("set=1\n{base}\n");
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let alphabet = b"=\n\r-/:[]%.0123456789abcdefxtrue_ \xff";
    for _ in 0..800 {
        let mut bytes = base.clone().into_bytes();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % bytes.len();
            let b = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 => bytes[at] = b,
                1 => bytes.insert(at, b),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        let input = String::from_utf8_lossy(&bytes);
        let (mut dev, mut state) = populated();
        let before = get(&mut dev, &mut state);
        let reply = handle_request(&input, &mut dev, &mut state, now());
        if reply != "errno=0\n\n" {
            assert_eq!(get(&mut dev, &mut state), before, "{input:?} -> {reply:?}");
        }
    }
}

// ------------------------------------------------------------------- errors, framing

#[test]
fn errno_is_sent_negated_as_wireguard_go_does() {
    assert_eq!(UapiError::invalid("x").reply(), "errno=-22\n\n");
    assert_eq!(UapiError::protocol("x").reply(), "errno=-71\n\n");
    assert_eq!(UapiError::io("x").reply(), "errno=-5\n\n");
    assert_eq!(UapiError::addr_in_use("x").reply(), "errno=-98\n\n");
    assert_eq!(UapiError::invalid("bad").to_string(), "UAPI error -22: bad");

    let (mut dev, mut state) = populated();
    let mut ask = |input: &str| handle_request(input, &mut dev, &mut state, now());
    assert_eq!(ask("set=1\nlisten_port\n\n"), "errno=-71\n\n");
    assert_eq!(ask("set=1\n\n"), "errno=0\n\n");
    // A get must be followed by the blank line at once.
    assert_eq!(ask("get=1\nx\n"), "errno=-22\n\n");
    // Unknown operations and a stream that ends early: no reply, close (as wireguard-go).
    for input in [
        "get=2\n\n",
        "set=2\n\n",
        "GET=1\n\n",
        "get=1\r\n\n",
        "hello\n",
        "get=1\n",
        "get=1",
        "",
    ] {
        assert_eq!(ask(input), "", "{input:?}");
        assert!(matches!(parse_request(input), Request::Close), "{input:?}");
    }
}

#[test]
fn a_set_without_the_blank_line_applies_at_the_end_of_input() {
    let (mut dev, mut state) = populated();
    let reply = handle_request("set=1\nlisten_port=7", &mut dev, &mut state, now());
    assert_eq!(reply, "errno=0\n\n");
    assert_eq!(state.listen_port, 7);
}

#[test]
fn secrets_stay_out_of_error_messages() {
    let secret = "ab".repeat(31) + "zz";
    for line in [
        format!("private_key={secret}"),
        format!("public_key={}\npreshared_key={secret}", pub_hex(2)),
    ] {
        let Err(e) = parse_set(&format!("{line}\n\n")) else {
            panic!("{line} parsed");
        };
        assert!(!e.message.contains("abab"), "{}", e.message);
    }
}

#[test]
fn the_framer_finds_request_boundaries_across_reads() {
    let stream = b"get=1\n\nset=1\nlisten_port=1\r\n\r\nbogus\nset=1\nfwmark=";
    let mut framer = Framer::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut requests: Vec<String> = Vec::new();
    // One byte at a time, the hardest way to read.
    for &b in stream {
        buf.push(b);
        while let Frame::Complete(n) = framer.poll(&buf) {
            requests.push(String::from_utf8(buf.drain(..n).collect()).unwrap());
        }
    }
    assert_eq!(
        requests,
        vec!["get=1\n\n", "set=1\nlisten_port=1\r\n\r\n", "bogus\n"]
    );
    assert_eq!(framer.poll(&buf), Frame::Incomplete);
    assert_eq!(buf, b"set=1\nfwmark=");

    let mut framer = Framer::new();
    assert_eq!(framer.poll(&vec![b'x'; MAX_LINE_LEN + 1]), Frame::TooLarge);
    let mut big = b"set=1\n".to_vec();
    big.resize(MAX_REQUEST_BYTES + 1, b'a');
    assert_eq!(framer.poll(&big), Frame::TooLarge);
}
