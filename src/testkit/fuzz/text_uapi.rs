//! The UAPI targets: `set=1` streams from the control socket through the framer, the parser,
//! the simulation and the plan into a real `Device` (`uapi_set`), and `get` replies as
//! `tandem show` reads them (`get_reply`).
//!
//! Requests take the production path of `control::server` and the driver: [`Framer`] finds
//! each request in a stream read in chunks, [`parse_request`] reads it, `resolve_zones` turns
//! named IPv6 zones into scope ids (here with a fixed lookup: `lo` is 1), the simulation
//! (`SetRequest::desired`) validates it all or nothing, and the plan is applied to the
//! device as the driver applies its core part. The socket part (binding a port, setting a
//! mark) is the driver's; a plain struct stands in for it, as in the UAPI unit tests.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Bytes, key_pair, psk, set_lines};
use crate::control::server::{
    PeerNames, add_device_lines, add_names, add_peer_lines, tandem_device_lines,
};
use crate::control::show::{
    DeviceStatus, format_interface, format_json, name_zones, parse_get_reply,
};
use crate::control::uapi::{Frame, Framer, MAX_LINE_LEN, Request, format_get, parse_request};
use crate::proto::{Device, Now};
use crate::reconcile::{self, DesiredDevice, Snapshot};

/// Peers a fuzzed `set` may leave on the device (the production limit is 2^20; the limit's
/// logic is the same, and a small one lets the fuzzer reach it).
const MAX_FUZZ_PEERS: usize = 12;

/// The sockets' settings, which the driver owns beside the `Device`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sockets {
    listen_port: u16,
    fwmark: u32,
}

fn now() -> Now {
    Now::new(
        Duration::from_secs(1000),
        Duration::from_secs(1_700_000_000),
    )
}

/// The seed: our key 1, port 51820, peers 2 (preshared key, endpoint, keepalive, two
/// prefixes) and 3 (a /24 that contains one of 2's).
fn seeded() -> (Device, Sockets) {
    let mut device = Device::new(Some(key_pair(1).0.clone()), [7; 32]);
    let mut sockets = Sockets::default();
    let seed = format!(
        "set=1\nlisten_port=51820\npublic_key={}\npreshared_key={}\nendpoint=192.0.2.2:51820\n\
         persistent_keepalive_interval=25\nallowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128\n\
         public_key={}\nallowed_ip=10.0.0.0/24\n\n",
        key_pair(2).1.to_hex(),
        psk(9).to_hex(),
        key_pair(3).1.to_hex(),
    );
    let Request::Set(req) = parse_request(&seed) else {
        panic!("the seed request does not parse");
    };
    apply(req, &mut device, &mut sockets).expect("the seed request applies");
    (device, sockets)
}

fn snapshot(device: &Device, sockets: Sockets) -> Snapshot {
    Snapshot::of(device, sockets.listen_port, sockets.fwmark)
}

/// Everything a `get` shows, in a form that compares cheaply (the `get` text itself costs
/// a hex encoding per key, most of an input's time).
type PeerState = (
    [u8; 32],
    Option<[u8; 32]>,
    Option<std::net::SocketAddr>,
    u16,
    Vec<crate::proto::prefix::Prefix>,
);

fn state(device: &Device, sockets: Sockets) -> (Option<[u8; 32]>, Sockets, Vec<PeerState>) {
    let peers = device
        .peers()
        .into_iter()
        .map(|p| {
            (
                *p.public_key.as_bytes(),
                p.preshared_key.map(|k| *k.as_bytes()),
                p.endpoint,
                p.persistent_keepalive,
                p.allowed_ips,
            )
        })
        .collect();
    (device.private_key().map(|k| *k.as_bytes()), sockets, peers)
}

/// Resolve zones, simulate, plan and apply the core's part; the desired device on success.
fn apply(
    mut req: crate::reconcile::SetRequest,
    device: &mut Device,
    sockets: &mut Sockets,
) -> Result<DesiredDevice, String> {
    req.resolve_zones(|name| (name == "lo").then_some(1))
        .map_err(|e| e.to_string())?;
    let running = snapshot(device, *sockets);
    let desired = req
        .desired_within(&running, MAX_FUZZ_PEERS)
        .map_err(|e| e.to_string())?;
    let plan = reconcile::plan(&running, &desired);
    reconcile::apply_to_device(device, &plan, now());
    if let Some(port) = plan.listen_port {
        sockets.listen_port = port;
    }
    if let Some(mark) = plan.fwmark {
        sockets.fwmark = mark;
    }
    Ok(desired)
}

/// An accepted `set` is what the device now is: planning the same desired device again
/// changes nothing, and the `get` text says what was asked for.
fn assert_reflected(desired: &DesiredDevice, device: &Device, sockets: Sockets) {
    let running = snapshot(device, sockets);
    // `fresh` asks to start a peer over; done once, the same device without it is a no-op.
    let mut settled = desired.clone();
    settled.peers.iter_mut().for_each(|p| p.fresh = false);
    let again = reconcile::plan(&running, &settled).changes();
    assert!(again.is_empty(), "applied set is not idempotent: {again:?}");
    assert_eq!(
        running.private_key.as_ref().map(|k| k.to_hex()),
        desired.private_key.as_ref().map(|k| k.to_hex())
    );
    assert_eq!(running.fwmark, desired.fwmark);
    if desired.listen_port != 0 {
        assert_eq!(running.listen_port, desired.listen_port);
    }
    let keys = |v: Vec<crate::proto::PublicKey>| v.into_iter().collect::<BTreeSet<_>>();
    assert_eq!(
        keys(running.peers.iter().map(|p| p.public_key).collect()),
        keys(desired.peers.iter().map(|p| p.public_key).collect()),
        "peers after the set"
    );
    for want in &desired.peers {
        let got = running
            .peers
            .iter()
            .find(|p| p.public_key == want.public_key)
            .expect("every desired peer is in get");
        assert_eq!(
            got.preshared_key
                .as_ref()
                .filter(|k| !k.is_zero())
                .map(|k| k.as_bytes()),
            want.preshared_key
                .as_ref()
                .filter(|k| !k.is_zero())
                .map(|k| k.as_bytes())
        );
        assert_eq!(got.persistent_keepalive, want.persistent_keepalive);
        if want.endpoint.is_some() {
            assert_eq!(got.endpoint, want.endpoint);
        }
        let wanted: BTreeSet<_> = want.allowed_ips.iter().map(|p| p.network()).collect();
        let have: BTreeSet<_> = got.allowed_ips.iter().map(|p| p.network()).collect();
        assert_eq!(have, wanted, "allowed IPs of a peer after the set");
    }
}

/// One framed request, answered as `control::server` answers it.
fn answer(request: &[u8], device: &mut Device, sockets: &mut Sockets) {
    let text = String::from_utf8_lossy(request);
    let before = state(device, *sockets);
    match parse_request(&text) {
        Request::Get => {
            assert_get_round_trips(&snapshot(device, *sockets), &PeerNames::new());
        }
        Request::Set(req) => match apply(req, device, sockets) {
            Ok(desired) => assert_reflected(&desired, device, *sockets),
            Err(e) => {
                assert!(!e.is_empty());
                let after = state(device, *sockets);
                assert_eq!(after, before, "a refused set changed the device ({e})");
            }
        },
        Request::Invalid(e) => {
            assert!(e.reply().starts_with("errno=") && e.reply().ends_with("\n\n"));
            let after = state(device, *sockets);
            assert_eq!(after, before, "an invalid request changed the device");
        }
        Request::Close => {}
    }
}

/// The frames of `stream` in one read, without answering (answers do not change framing).
fn frames_whole(stream: &[u8]) -> (Vec<usize>, bool) {
    let mut framer = Framer::new();
    let mut rest = stream;
    let mut frames = Vec::new();
    loop {
        match framer.poll(rest) {
            Frame::Incomplete => return (frames, false),
            Frame::TooLarge => return (frames, true),
            Frame::Complete(n) => {
                frames.push(n);
                rest = rest.get(n..).unwrap_or_default();
            }
        }
    }
}

/// The frames of `stream` read `chunk` bytes at a time, answering each request; then, as the
/// server does when the client stops sending, the unframed rest as one last request.
/// Returns the frame lengths and whether the stream ended as too large.
fn run_stream(
    stream: &[u8],
    chunk: usize,
    device: &mut Device,
    sockets: &mut Sockets,
) -> (Vec<usize>, bool) {
    let mut framer = Framer::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match framer.poll(&buf) {
                Frame::Incomplete => break,
                Frame::TooLarge => return (frames, true),
                Frame::Complete(n) => {
                    assert!(n > 0 && n <= buf.len(), "frame {n} of {} bytes", buf.len());
                    let request: Vec<u8> = buf.drain(..n).collect();
                    frames.push(n);
                    answer(&request, device, sockets);
                }
            }
        }
    }
    if !buf.is_empty() {
        answer(&buf, device, sockets);
    }
    (frames, false)
}

/// `uapi_set`: the first byte is a plan: bits 0-1 choose the stream (0: the raw bytes; 1:
/// `set=1\n` then the raw bytes; 2, 3: generated `set=1` requests, see
/// [`super::set_lines`], possibly several, with a `get=1` between), bits 2-7 the size of the
/// reads (1 to 64 bytes), so partial reads split lines and keys anywhere.
///
/// Invariants: no panic; the frames are the same for any read size; a refused or invalid
/// request leaves the device's `get` text as it was; an accepted one is reflected (see
/// [`assert_reflected`]), and every `get` reply parses back to the device.
pub fn fuzz_uapi_set(input: &[u8]) {
    let mut b = Bytes::new(input);
    let plan = b.byte();
    let chunk = 1 + usize::from(plan >> 2);
    let stream: Vec<u8> = match plan & 3 {
        0 => b.rest().to_vec(),
        1 => [b"set=1\n".as_slice(), b.rest()].concat(),
        _ => {
            let mut s = String::new();
            // A few requests per stream: each new peer costs an X25519 operation.
            for _ in 0..6 {
                if b.is_empty() {
                    break;
                }
                let lines = usize::from(b.byte() % 24);
                s.push_str("set=1\n");
                s.push_str(&set_lines(&mut b, lines));
                match b.byte() % 8 {
                    0 => s.push_str("\r\n"),
                    1 => s.push_str("\nget=1\n\n"),
                    2 => {} // the end of the stream ends it
                    _ => s.push('\n'),
                }
            }
            s.into_bytes()
        }
    };
    let (mut device, mut sockets) = seeded();
    let (frames, too_large) = run_stream(&stream, chunk, &mut device, &mut sockets);
    // Framing does not depend on how the bytes arrived (below the first-line limit, where a
    // partial read may be refused as too large before its newline comes).
    if stream.len() <= MAX_LINE_LEN {
        let whole = frames_whole(&stream);
        assert_eq!((frames, too_large), whole, "frames depend on the read size");
    }
}

/// A `get` reply of `snapshot`, with tandem's extensions as `get=tandem` writes them (peer
/// names too), reads back to the same device. Returns the reply and what was read.
fn assert_get_round_trips(snapshot: &Snapshot, names: &PeerNames) -> (String, DeviceStatus) {
    let text = format_get(snapshot);
    let extended = add_device_lines(
        &add_names(&add_peer_lines(&text, snapshot), names),
        &tandem_device_lines(snapshot),
    );
    let status = parse_get_reply(&extended).unwrap_or_else(|e| panic!("{e}:\n{extended}"));
    assert_same(&status, snapshot);
    assert_eq!(
        status.handshakes_completed,
        Some(snapshot.handshakes_completed)
    );
    assert_eq!(status.under_load, Some(snapshot.under_load));
    for (got, want) in status.peers.iter().zip(&snapshot.peers) {
        // Control characters are dropped from names, so a name cannot break the protocol.
        let name = names
            .get(&want.public_key)
            .map(|n| n.chars().filter(|c| !c.is_control()).collect::<String>());
        assert_eq!(got.name, name);
        assert_eq!(got.handshakes_failed, Some(want.stats.handshakes_failed));
    }
    (extended, status)
}

fn assert_same(status: &DeviceStatus, snapshot: &Snapshot) {
    assert_eq!(
        status.private_key.as_ref().map(|k| k.to_hex()),
        snapshot
            .private_key
            .as_ref()
            .filter(|k| !k.is_zero())
            .map(|k| k.to_hex())
    );
    assert_eq!(status.listen_port, snapshot.listen_port);
    assert_eq!(status.fwmark, snapshot.fwmark);
    assert_eq!(status.peers.len(), snapshot.peers.len());
    for (got, want) in status.peers.iter().zip(&snapshot.peers) {
        assert_eq!(got.public_key, want.public_key);
        assert_eq!(
            got.has_preshared_key,
            want.preshared_key.as_ref().is_some_and(|k| !k.is_zero())
        );
        assert_eq!(got.endpoint, want.endpoint.map(|e| e.to_string()));
        let prefixes: Vec<String> = want.allowed_ips.iter().map(|p| p.to_string()).collect();
        assert_eq!(got.allowed_ips, prefixes);
        assert_eq!(got.persistent_keepalive, want.persistent_keepalive);
        assert_eq!(got.rx_bytes, want.stats.rx_bytes);
        assert_eq!(got.tx_bytes, want.stats.tx_bytes);
    }
}

/// `tandem show`'s output steps on a parsed reply: zone names, the text and the JSON.
fn render(mut status: DeviceStatus) {
    name_zones(&mut status, |i| (i == 1).then(|| "lo".to_owned()));
    let now = 1_700_000_000;
    let text = format_interface("fuzz0", &status, now);
    assert!(text.contains("fuzz0"));
    let json = format_json(&[("fuzz0".to_owned(), status)], now);
    assert!(json.len() > 2, "empty JSON");
}

/// `get_reply`: the first byte is a plan. Bit 0 clear: the rest is a reply as another daemon
/// (wireguard-go, say) might send it; it must parse or fail cleanly, and a parsed one must
/// render. Bit 0 set: the rest drives generated `set` requests into a device (see
/// `uapi_set`), whose `get` reply (with tandem's extensions and peer names from the fuzz
/// bytes) must parse back to the device; then bits 1-7 choose where the reply is cut or a
/// byte flipped, and the damaged reply must parse or fail cleanly.
pub fn fuzz_get_reply(input: &[u8]) {
    let mut b = Bytes::new(input);
    let plan = b.byte();
    if plan & 1 == 0 {
        if let Ok(status) = parse_get_reply(&String::from_utf8_lossy(b.rest())) {
            render(status);
        }
        return;
    }
    let (mut device, mut sockets) = seeded();
    let names_len = usize::from(b.byte() % 16);
    let name = String::from_utf8_lossy(b.take(names_len)).into_owned();
    let lines = usize::from(b.byte() % 32);
    let request = format!("set=1\n{}\n", set_lines(&mut b, lines));
    if let Request::Set(req) = parse_request(&request) {
        let _ = apply(req, &mut device, &mut sockets);
    }
    let snap = snapshot(&device, sockets);
    let mut names = PeerNames::new();
    if let Some(first) = snap.peers.first() {
        names.insert(first.public_key, name);
    }
    let (named, status) = assert_get_round_trips(&snap, &names);
    render(status);
    // Damage: cut at, or flip a byte at, a position the fuzz bytes choose.
    let mut damaged = named.into_bytes();
    if !damaged.is_empty() {
        let at = usize::from(b.u16()) % damaged.len();
        if plan & 2 == 0 {
            damaged.truncate(at);
        } else {
            damaged[at] ^= b.byte() | 1;
        }
    }
    if let Ok(status) = parse_get_reply(&String::from_utf8_lossy(&damaged)) {
        render(status);
    }
}
