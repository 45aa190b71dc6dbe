//! `tandem show`: a UAPI `get` reply printed the way `wg show` prints an interface
//! (wireguard-tools `show.c`, without colours), plus a `name:` line for each peer the config
//! names (from tandem's `get=tandem`, see [`server`](super::server)).
//!
//! [`format_json`] is `tandem show --json`: the same facts as `wg show dump` (without the
//! private key) plus names, a connected flag and tandem's device counters, in the schema the
//! README documents (`JSON_SCHEMA_VERSION`).
//!
//! Pure: the reply text and the current time in, the text out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::Serialize;

use crate::proto::{PresharedKey, PrivateKey, PublicKey};

/// A device as a `get` reply describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStatus {
    pub private_key: Option<PrivateKey>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerStatus>,
    /// tandem's `tandem_drop_<reason>=N` lines, by reason (empty from other daemons).
    pub drops: BTreeMap<String, u64>,
    /// tandem's `tandem_handshakes_completed` (None from other daemons).
    pub handshakes_completed: Option<u64>,
    /// tandem's `tandem_handshakes_failed` (None from other daemons).
    pub handshakes_failed: Option<u64>,
    /// tandem's `tandem_under_load` (None from other daemons).
    pub under_load: Option<bool>,
}

/// One peer of a `get` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    /// tandem's `name=` line (the peer's `name` in the TOML config).
    pub name: Option<String>,
    pub has_preshared_key: bool,
    /// As the daemon wrote it (`192.0.2.1:51820`, `[2001:db8::1]:51820`).
    pub endpoint: Option<String>,
    /// As the daemon wrote them, in its order (`10.0.0.0/24`).
    pub allowed_ips: Vec<String>,
    /// Unix seconds and nanoseconds of the latest handshake; (0, 0) for none.
    pub last_handshake: (u64, u32),
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: u16,
    /// tandem's per-peer `tandem_handshakes_failed` (None from other daemons).
    pub handshakes_failed: Option<u64>,
}

impl PeerStatus {
    fn new(public_key: PublicKey) -> Self {
        PeerStatus {
            public_key,
            name: None,
            has_preshared_key: false,
            endpoint: None,
            allowed_ips: Vec::new(),
            last_handshake: (0, 0),
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: 0,
            handshakes_failed: None,
        }
    }
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShowError {
    #[error("the daemon answered errno={0}")]
    Errno(i32),
    #[error("the reply ended without its errno line")]
    Truncated,
    #[error("reply line {line}: {what}")]
    Malformed { line: usize, what: String },
}

/// Reads a `get=1` (or `get=tandem`) reply up to its `errno=` line. Keys this version does
/// not know are skipped, as `wg` does not either.
pub fn parse_get_reply(text: &str) -> Result<DeviceStatus, ShowError> {
    let mut device = DeviceStatus::default();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let bad = |what: &str| ShowError::Malformed {
            line: number,
            what: what.to_owned(),
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad("not a key=value line"));
        };
        let number_of = |what: &str| value.parse::<u64>().map_err(|_| bad(what));
        match key {
            "errno" => {
                let errno: i32 = value.parse().map_err(|_| bad("errno is not a number"))?;
                return if errno == 0 {
                    Ok(device)
                } else {
                    Err(ShowError::Errno(errno))
                };
            }
            "public_key" => {
                let key = PublicKey::from_hex(value).map_err(|_| bad("bad public_key"))?;
                device.peers.push(PeerStatus::new(key));
            }
            _ => match device.peers.last_mut() {
                None => match key {
                    "private_key" => {
                        let key =
                            PrivateKey::from_hex(value).map_err(|_| bad("bad private_key"))?;
                        device.private_key = (!key.is_zero()).then_some(key);
                    }
                    "listen_port" => {
                        device.listen_port = u16::try_from(number_of("bad listen_port")?)
                            .map_err(|_| bad("bad listen_port"))?;
                    }
                    "fwmark" => {
                        device.fwmark = u32::try_from(number_of("bad fwmark")?)
                            .map_err(|_| bad("bad fwmark"))?;
                    }
                    "tandem_handshakes_completed" => {
                        device.handshakes_completed =
                            Some(number_of("bad tandem_handshakes_completed")?);
                    }
                    "tandem_handshakes_failed" => {
                        device.handshakes_failed = Some(number_of("bad tandem_handshakes_failed")?);
                    }
                    "tandem_under_load" => {
                        device.under_load = Some(number_of("bad tandem_under_load")? != 0);
                    }
                    _ => {
                        if let Some(reason) = key.strip_prefix("tandem_drop_") {
                            let n = number_of("bad drop counter")?;
                            device.drops.insert(reason.to_owned(), n);
                        }
                    }
                },
                Some(peer) => match key {
                    "name" => peer.name = Some(value.to_owned()),
                    "preshared_key" => {
                        let psk =
                            PresharedKey::from_hex(value).map_err(|_| bad("bad preshared_key"))?;
                        peer.has_preshared_key = !psk.is_zero();
                    }
                    "endpoint" => peer.endpoint = Some(value.to_owned()),
                    "allowed_ip" => peer.allowed_ips.push(value.to_owned()),
                    "last_handshake_time_sec" => {
                        peer.last_handshake.0 = number_of("bad last_handshake_time_sec")?;
                    }
                    "last_handshake_time_nsec" => {
                        peer.last_handshake.1 = u32::try_from(number_of("bad nsec")?)
                            .map_err(|_| bad("bad last_handshake_time_nsec"))?;
                    }
                    "rx_bytes" => peer.rx_bytes = number_of("bad rx_bytes")?,
                    "tx_bytes" => peer.tx_bytes = number_of("bad tx_bytes")?,
                    "tandem_handshakes_failed" => {
                        peer.handshakes_failed = Some(number_of("bad tandem_handshakes_failed")?);
                    }
                    "persistent_keepalive_interval" => {
                        peer.persistent_keepalive = u16::try_from(number_of("bad keepalive")?)
                            .map_err(|_| bad("bad persistent_keepalive_interval"))?;
                    }
                    _ => {}
                },
            },
        }
    }
    Err(ShowError::Truncated)
}

/// Writes the zone of link-local IPv6 endpoints (`[fe80::1%3]:51820`) as the interface's name
/// (`[fe80::1%eth0]:51820`), as `wg` does (glibc's `getnameinfo`), with the caller's lookup
/// of an interface index. Other endpoints, and indices the lookup does not know, stay as
/// they are.
pub fn name_zones(device: &mut DeviceStatus, lookup: impl Fn(u32) -> Option<String>) {
    for peer in &mut device.peers {
        let Some(endpoint) = &peer.endpoint else {
            continue;
        };
        let Ok(SocketAddr::V6(addr)) = endpoint.parse::<SocketAddr>() else {
            continue;
        };
        let ip = addr.ip();
        let link_local = ip.segments()[0] & 0xffc0 == 0xfe80
            || (ip.octets()[0] == 0xff && ip.octets()[1] & 0x0f == 0x02);
        if addr.scope_id() == 0 || !link_local {
            continue;
        }
        if let Some(name) = lookup(addr.scope_id()) {
            peer.endpoint = Some(format!("[{ip}%{name}]:{}", addr.port()));
        }
    }
}

/// `wg show NAME` for `device`, at wall-clock time `now_unix` (seconds), ending in a newline.
/// Peers go most recent handshake first, those without one last (in the daemon's order).
pub fn format_interface(name: &str, device: &DeviceStatus, now_unix: u64) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "interface: {name}");
    if let Some(key) = &device.private_key {
        let _ = writeln!(out, "  public key: {}", key.public_key().to_base64());
        out.push_str("  private key: (hidden)\n");
    }
    if device.listen_port != 0 {
        let _ = writeln!(out, "  listening port: {}", device.listen_port);
    }
    if device.fwmark != 0 {
        let _ = writeln!(out, "  fwmark: {:#x}", device.fwmark);
    }
    let mut peers: Vec<&PeerStatus> = device.peers.iter().collect();
    // Stable, like glibc's merge-sort qsort that `wg` relies on for peers that tie.
    peers.sort_by(|a, b| {
        let none = |p: &PeerStatus| p.last_handshake == (0, 0);
        none(a)
            .cmp(&none(b))
            .then_with(|| b.last_handshake.cmp(&a.last_handshake))
    });
    for peer in peers {
        out.push('\n');
        let _ = writeln!(out, "peer: {}", peer.public_key.to_base64());
        if let Some(name) = &peer.name {
            let _ = writeln!(out, "  name: {name}");
        }
        if peer.has_preshared_key {
            out.push_str("  preshared key: (hidden)\n");
        }
        if let Some(endpoint) = &peer.endpoint {
            let _ = writeln!(out, "  endpoint: {endpoint}");
        }
        if peer.allowed_ips.is_empty() {
            out.push_str("  allowed ips: (none)\n");
        } else {
            let _ = writeln!(out, "  allowed ips: {}", peer.allowed_ips.join(", "));
        }
        if peer.last_handshake.0 != 0 {
            let _ = writeln!(
                out,
                "  latest handshake: {}",
                ago(peer.last_handshake.0, now_unix)
            );
        }
        if peer.rx_bytes != 0 || peer.tx_bytes != 0 {
            let _ = writeln!(
                out,
                "  transfer: {} received, {} sent",
                bytes(peer.rx_bytes),
                bytes(peer.tx_bytes)
            );
        }
        if peer.persistent_keepalive != 0 {
            let _ = writeln!(
                out,
                "  persistent keepalive: every {}",
                pretty_time(u64::from(peer.persistent_keepalive))
            );
        }
    }
    out
}

/// A peer counts as connected while its latest handshake is younger than this
/// (REJECT_AFTER_TIME: past it, no session of that handshake may carry data). The metrics'
/// `tandem_peer_connected` uses the same rule.
pub const CONNECTED_WITHIN_SECS: u64 = crate::proto::timers::REJECT_AFTER_TIME.as_secs();

/// The version of `tandem show --json`'s schema; it changes only when a field changes
/// meaning or goes away (new fields may be added without a change).
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// Whether a handshake at unix second `latest` (0: never) counts as connected at `now_unix`.
pub fn connected(latest: u64, now_unix: u64) -> bool {
    latest != 0 && now_unix.saturating_sub(latest) < CONNECTED_WITHIN_SECS
}

/// `tandem show --json`: the whole document (see the README for the schema).
#[derive(Debug, Serialize)]
pub struct JsonShow<'a> {
    pub schema: u32,
    pub interfaces: Vec<JsonInterface<'a>>,
}

/// One interface of `tandem show --json`.
#[derive(Debug, Serialize)]
pub struct JsonInterface<'a> {
    pub name: &'a str,
    /// Base64; null when the interface has no private key. The private key is never printed.
    pub public_key: Option<String>,
    /// 0 before the first bind.
    pub listen_port: u16,
    /// 0 = off.
    pub fwmark: u32,
    /// Handshakes completed since the interface started (null: not a tandem daemon).
    pub handshakes_completed: Option<u64>,
    /// Handshake attempts that gave up (no response for 90 s) since the interface started
    /// (null: not a tandem daemon).
    pub handshakes_failed: Option<u64>,
    /// Whether handshakes need a cookie right now (null: not a tandem daemon).
    pub under_load: Option<bool>,
    /// Every drop reason with its count since start (empty: not a tandem daemon).
    pub drops: &'a BTreeMap<String, u64>,
    /// In the daemon's order (as `wg show dump`, not sorted).
    pub peers: Vec<JsonPeer<'a>>,
}

/// One peer of `tandem show --json`.
#[derive(Debug, Serialize)]
pub struct JsonPeer<'a> {
    /// Base64.
    pub public_key: String,
    /// The peer's `name` from the config; null when it has none.
    pub name: Option<&'a str>,
    /// Whether a preshared key is set (the key itself is never printed).
    pub preshared_key: bool,
    /// `ip:port` or `[ipv6]:port`; null when unknown.
    pub endpoint: Option<&'a str>,
    pub allowed_ips: &'a [String],
    /// Unix seconds; 0 = never.
    pub latest_handshake: u64,
    /// Bytes received from and sent to the peer.
    pub transfer_rx: u64,
    pub transfer_tx: u64,
    /// Seconds; 0 = off.
    pub persistent_keepalive: u16,
    /// Latest handshake younger than [`CONNECTED_WITHIN_SECS`].
    pub connected: bool,
    /// Handshake attempts with this peer that gave up (no response for 90 s); null: not a
    /// tandem daemon.
    pub handshakes_failed: Option<u64>,
}

/// The JSON view of one interface at wall-clock second `now_unix`.
pub fn json_interface<'a>(
    name: &'a str,
    device: &'a DeviceStatus,
    now_unix: u64,
) -> JsonInterface<'a> {
    JsonInterface {
        name,
        public_key: device
            .private_key
            .as_ref()
            .map(|k| k.public_key().to_base64()),
        listen_port: device.listen_port,
        fwmark: device.fwmark,
        handshakes_completed: device.handshakes_completed,
        handshakes_failed: device.handshakes_failed,
        under_load: device.under_load,
        drops: &device.drops,
        peers: device
            .peers
            .iter()
            .map(|p| JsonPeer {
                public_key: p.public_key.to_base64(),
                name: p.name.as_deref(),
                preshared_key: p.has_preshared_key,
                endpoint: p.endpoint.as_deref(),
                allowed_ips: &p.allowed_ips,
                latest_handshake: p.last_handshake.0,
                transfer_rx: p.rx_bytes,
                transfer_tx: p.tx_bytes,
                persistent_keepalive: p.persistent_keepalive,
                connected: connected(p.last_handshake.0, now_unix),
                handshakes_failed: p.handshakes_failed,
            })
            .collect(),
    }
}

/// `tandem show --json` for `interfaces` (name and state), pretty-printed, ending in a
/// newline.
pub fn format_json(interfaces: &[(String, DeviceStatus)], now_unix: u64) -> String {
    let doc = JsonShow {
        schema: JSON_SCHEMA_VERSION,
        interfaces: interfaces
            .iter()
            .map(|(name, device)| json_interface(name, device, now_unix))
            .collect(),
    };
    // Serializing these plain structs (strings, numbers, maps with string keys) cannot fail;
    // an empty document would be the symptom if it ever did.
    let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
    out.push('\n');
    out
}

/// `1 year, 2 days, 3 hours, 1 minute, 5 seconds`: non-zero parts only, as `wg`.
pub fn pretty_time(mut left: u64) -> String {
    const YEAR: u64 = 365 * 24 * 60 * 60;
    const DAY: u64 = 24 * 60 * 60;
    let years = left / YEAR;
    left %= YEAR;
    let days = left / DAY;
    left %= DAY;
    let hours = left / 3600;
    left %= 3600;
    let minutes = left / 60;
    let seconds = left % 60;
    let mut parts = Vec::new();
    for (n, unit) in [
        (years, "year"),
        (days, "day"),
        (hours, "hour"),
        (minutes, "minute"),
        (seconds, "second"),
    ] {
        if n != 0 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        }
    }
    parts.join(", ")
}

/// `N seconds ago`, `Now`, or `wg`'s warning when the handshake lies in the future.
fn ago(then: u64, now: u64) -> String {
    match now.checked_sub(then) {
        Some(0) => "Now".to_owned(),
        Some(delta) => format!("{} ago", pretty_time(delta)),
        None => "(System clock wound backward; connection problems may ensue.)".to_owned(),
    }
}

/// `123 B`, `1.21 KiB`, `4.00 MiB`, ...: two decimals, rounded like C's `%.2f`.
pub fn bytes(b: u64) -> String {
    const KIB: u64 = 1024;
    if b < KIB {
        return format!("{b} B");
    }
    let (divisor, unit) = if b < KIB * KIB {
        (KIB, "KiB")
    } else if b < KIB * KIB * KIB {
        (KIB * KIB, "MiB")
    } else if b < KIB * KIB * KIB * KIB {
        (KIB * KIB * KIB, "GiB")
    } else {
        (KIB * KIB * KIB * KIB, "TiB")
    };
    // As `wg` does, in double precision.
    format!("{:.2} {unit}", b as f64 / divisor as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(seed: u8) -> PrivateKey {
        PrivateKey::from_bytes([seed; 32])
    }

    fn reply(peers: &str) -> String {
        format!(
            "private_key={}\nlisten_port=51820\nfwmark=51820\n{peers}errno=0\n\n",
            private(1).to_hex()
        )
    }

    fn peer(seed: u8, psk: u8, extra: &str) -> String {
        format!(
            "public_key={}\n{extra}preshared_key={}\nprotocol_version=1\n",
            private(seed).public_key().to_hex(),
            format!("{psk:02x}").repeat(32)
        )
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn interface_with_named_and_unnamed_peers() {
        // Peer 3 (no handshake yet) comes first in the reply, but is listed last.
        let text = reply(&format!(
            "{}{}{}",
            peer(3, 0x11, "") + "allowed_ip=fd09::3/128\n",
            peer(2, 0, "name=site-b\n")
                + "endpoint=192.0.2.7:51820\nlast_handshake_time_sec=1699999937\n\
                   last_handshake_time_nsec=5\ntx_bytes=4096\nrx_bytes=1234\n\
                   persistent_keepalive_interval=25\nallowed_ip=10.9.0.2/32\n\
                   allowed_ip=192.168.20.0/24\n",
            peer(4, 0, "")
                + "endpoint=[2001:db8::4]:4000\nlast_handshake_time_sec=1699999999\n\
                   rx_bytes=3\ntx_bytes=0\npersistent_keepalive_interval=0\n"
        ));
        let device = parse_get_reply(&text).expect("parse");
        assert_eq!(device.peers.len(), 3);
        assert_eq!(device.peers[1].name.as_deref(), Some("site-b"));
        let expected = format!(
            "interface: tnd0\n\
             \x20 public key: {pub1}\n\
             \x20 private key: (hidden)\n\
             \x20 listening port: 51820\n\
             \x20 fwmark: 0xca6c\n\
             \n\
             peer: {pub4}\n\
             \x20 endpoint: [2001:db8::4]:4000\n\
             \x20 allowed ips: (none)\n\
             \x20 latest handshake: 1 second ago\n\
             \x20 transfer: 3 B received, 0 B sent\n\
             \n\
             peer: {pub2}\n\
             \x20 name: site-b\n\
             \x20 endpoint: 192.0.2.7:51820\n\
             \x20 allowed ips: 10.9.0.2/32, 192.168.20.0/24\n\
             \x20 latest handshake: 1 minute, 3 seconds ago\n\
             \x20 transfer: 1.21 KiB received, 4.00 KiB sent\n\
             \x20 persistent keepalive: every 25 seconds\n\
             \n\
             peer: {pub3}\n\
             \x20 preshared key: (hidden)\n\
             \x20 allowed ips: fd09::3/128\n",
            pub1 = private(1).public_key().to_base64(),
            pub2 = private(2).public_key().to_base64(),
            pub3 = private(3).public_key().to_base64(),
            pub4 = private(4).public_key().to_base64(),
        );
        assert_eq!(format_interface("tnd0", &device, NOW), expected);
    }

    #[test]
    fn json_has_every_dump_field_and_no_secret() {
        let text = reply(&format!(
            "{}{}",
            peer(2, 0x22, "name=site-b\n")
                + "endpoint=192.0.2.7:51820\nlast_handshake_time_sec=1699999937\n\
                   tx_bytes=4096\nrx_bytes=1234\npersistent_keepalive_interval=25\n\
                   allowed_ip=10.9.0.2/32\nallowed_ip=192.168.20.0/24\n",
            peer(3, 0, "") + "last_handshake_time_sec=1699999000\n"
        ))
        .replacen(
            "public_key=",
            "tandem_drop_invalid_mac1=5\ntandem_drop_truncated=0\n\
             tandem_handshakes_completed=3\ntandem_under_load=0\npublic_key=",
            1,
        );
        let device = parse_get_reply(&text).expect("parse");
        let json = format_json(&[("tnd0".to_owned(), device)], NOW);
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(v["schema"], 1);
        let i = &v["interfaces"][0];
        assert_eq!(i["name"], "tnd0");
        assert_eq!(i["public_key"], private(1).public_key().to_base64());
        assert_eq!(i["listen_port"], 51820);
        assert_eq!(i["fwmark"], 51820);
        assert_eq!(i["handshakes_completed"], 3);
        assert_eq!(i["under_load"], false);
        assert_eq!(i["drops"]["invalid_mac1"], 5);
        assert_eq!(i["drops"]["truncated"], 0);
        let p = &i["peers"][0];
        assert_eq!(p["public_key"], private(2).public_key().to_base64());
        assert_eq!(p["name"], "site-b");
        assert_eq!(p["preshared_key"], true);
        assert_eq!(p["endpoint"], "192.0.2.7:51820");
        assert_eq!(p["allowed_ips"][1], "192.168.20.0/24");
        assert_eq!(p["latest_handshake"], 1_699_999_937u64);
        assert_eq!(p["transfer_rx"], 1234);
        assert_eq!(p["transfer_tx"], 4096);
        assert_eq!(p["persistent_keepalive"], 25);
        assert_eq!(p["connected"], true);
        let q = &i["peers"][1];
        assert_eq!(q["name"], serde_json::Value::Null);
        assert_eq!(q["endpoint"], serde_json::Value::Null);
        assert_eq!(q["preshared_key"], false);
        assert_eq!(q["connected"], false, "1000 s old");
        // Never the private key nor the preshared key, in any encoding.
        for secret in [private(1).to_base64(), private(1).to_hex(), "22".repeat(32)] {
            assert!(!json.contains(&secret), "{json}");
        }
        assert!(connected(NOW - 179, NOW) && !connected(NOW - 180, NOW) && !connected(0, NOW));
    }

    #[test]
    fn bare_interface_shows_only_its_name() {
        let device = parse_get_reply("errno=0\n\n").expect("parse");
        assert_eq!(format_interface("wg7", &device, NOW), "interface: wg7\n");
        let device = parse_get_reply("listen_port=40000\nerrno=0\n\n").expect("parse");
        assert_eq!(
            format_interface("wg7", &device, NOW),
            "interface: wg7\n  listening port: 40000\n"
        );
    }

    #[test]
    fn handshake_times_read_like_wg() {
        assert_eq!(ago(NOW, NOW), "Now");
        assert_eq!(ago(NOW - 1, NOW), "1 second ago");
        assert_eq!(ago(NOW - 59, NOW), "59 seconds ago");
        assert_eq!(ago(NOW - 60, NOW), "1 minute ago");
        assert_eq!(ago(NOW - 63, NOW), "1 minute, 3 seconds ago");
        assert_eq!(ago(NOW - 7322, NOW), "2 hours, 2 minutes, 2 seconds ago");
        assert_eq!(
            ago(NOW - (365 + 1) * 86_400 - 3_600, NOW),
            "1 year, 1 day, 1 hour ago"
        );
        assert_eq!(
            ago(NOW + 5, NOW),
            "(System clock wound backward; connection problems may ensue.)"
        );
        assert_eq!(pretty_time(25), "25 seconds");
        assert_eq!(pretty_time(65535), "18 hours, 12 minutes, 15 seconds");
    }

    #[test]
    fn byte_counts_read_like_wg() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.00 KiB");
        // An exact tie rounds to even, as C's printf does.
        assert_eq!(bytes(1024 + 128), "1.12 KiB");
        assert_eq!(bytes(1024 + 384), "1.38 KiB");
        assert_eq!(bytes(1_048_575), "1024.00 KiB");
        assert_eq!(bytes(1_048_576), "1.00 MiB");
        assert_eq!(bytes(5 * 1_073_741_824 + 536_870_912), "5.50 GiB");
        assert_eq!(bytes(3 << 40), "3.00 TiB");
        assert_eq!(bytes(u64::MAX), "16777216.00 TiB");
    }

    #[test]
    fn link_local_zones_are_named_like_getnameinfo_does() {
        let reply = reply(&format!(
            "{}{}{}{}",
            peer(2, 0, "") + "endpoint=[fe80::1%3]:51820\n",
            peer(3, 0, "") + "endpoint=[ff02::9%3]:1\n",
            peer(4, 0, "") + "endpoint=[2001:db8::1%3]:2\n",
            peer(5, 0, "") + "endpoint=[fe80::5%9]:3\n",
        ));
        let mut device = parse_get_reply(&reply).expect("parse");
        name_zones(&mut device, |index| (index == 3).then(|| "eth0".to_owned()));
        let endpoints: Vec<&str> = device
            .peers
            .iter()
            .filter_map(|p| p.endpoint.as_deref())
            .collect();
        assert_eq!(
            endpoints,
            [
                "[fe80::1%eth0]:51820",
                "[ff02::9%eth0]:1",
                // Not link-local: numeric, as getnameinfo leaves it.
                "[2001:db8::1%3]:2",
                // No such interface: numeric.
                "[fe80::5%9]:3",
            ]
        );
    }

    #[test]
    fn errors_and_unknown_keys() {
        assert_eq!(parse_get_reply("errno=-19\n\n"), Err(ShowError::Errno(-19)));
        assert_eq!(parse_get_reply(""), Err(ShowError::Truncated));
        assert_eq!(
            parse_get_reply("listen_port=1\n"),
            Err(ShowError::Truncated),
            "a reply cut before errno"
        );
        assert!(matches!(
            parse_get_reply("listen_port=70000\nerrno=0\n\n"),
            Err(ShowError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse_get_reply("garbage\nerrno=0\n\n"),
            Err(ShowError::Malformed { line: 1, .. })
        ));
        // Keys of newer daemons are skipped.
        let device = parse_get_reply("new_device_key=1\nerrno=0\n\n").expect("parse");
        assert_eq!(device, DeviceStatus::default());
        // A zero private key is no key.
        let device =
            parse_get_reply(&format!("private_key={}\nerrno=0\n\n", "00".repeat(32))).unwrap();
        assert_eq!(device.private_key, None);
    }
}
