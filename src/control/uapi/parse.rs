//! Parsing a `set=1` body into checked operations. Every value is checked here, so applying
//! the request can only fail on what depends on the device (too many peers).

use std::net::{IpAddr, SocketAddr};

use super::{MAX_LINE_LEN, MAX_SET_LINES, UapiError};
use crate::proto::prefix::{Prefix, max_len};
use crate::proto::{PresharedKey, PrivateKey, PublicKey};
use crate::reconcile::{Op, SetRequest};

/// Parses the lines after `set=1`, up to the blank line that ends the request (or the end of
/// `body`, which wireguard-go also accepts). Lines may end in `\r\n`, as Go's line scanner
/// allows. Errors: a line without `=` is EPROTO, an over-long line or too many lines EIO (as
/// wireguard-go's reader failing), anything else EINVAL.
pub fn parse_set(body: &str) -> Result<SetRequest, UapiError> {
    parse_set_within(body, MAX_SET_LINES)
}

/// [`parse_set`] with a limit of `max_lines` lines (so that the limit's logic can be tested
/// without millions of lines).
pub(super) fn parse_set_within(body: &str, max_lines: usize) -> Result<SetRequest, UapiError> {
    let mut ops = Vec::new();
    let mut in_peer = false;
    for (index, piece) in body.split_inclusive('\n').enumerate() {
        let number = index + 2;
        let line = piece.strip_suffix('\n').unwrap_or(piece);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.len() > MAX_LINE_LEN {
            return Err(UapiError::io(format!(
                "line {number}: longer than {MAX_LINE_LEN} bytes"
            )));
        }
        if index >= max_lines {
            return Err(UapiError::io(format!(
                "more than {max_lines} lines in one set"
            )));
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(UapiError::protocol(format!(
                "line {number}: not a key=value line"
            )));
        };
        let op = if key == "public_key" {
            in_peer = true;
            let key = PublicKey::from_hex(value)
                .map_err(|_| invalid(number, "public_key is not 64 hex digits"))?;
            Some(Op::Peer(key))
        } else if in_peer {
            peer_line(number, key, value)?
        } else {
            Some(device_line(number, key, value)?)
        };
        if let Some(op) = op {
            ops.push((number, op));
        }
    }
    Ok(SetRequest { ops })
}

fn device_line(number: usize, key: &str, value: &str) -> Result<Op, UapiError> {
    match key {
        "private_key" => {
            let key = PrivateKey::from_hex(value)
                .map_err(|_| invalid(number, "private_key is not 64 hex digits"))?;
            if key.is_zero() {
                Ok(Op::PrivateKey(None))
            } else {
                // wireguard-go clamps the key as it stores it, so `get` shows it clamped.
                Ok(Op::PrivateKey(Some(key.clamped())))
            }
        }
        "listen_port" => decimal(value, u16::MAX.into())
            .and_then(|n| u16::try_from(n).ok())
            .map(Op::ListenPort)
            .ok_or_else(|| invalid(number, "listen_port is not a port number")),
        "fwmark" => decimal(value, u32::MAX.into())
            .and_then(|n| u32::try_from(n).ok())
            .map(Op::Fwmark)
            .ok_or_else(|| invalid(number, "fwmark is not a 32-bit number")),
        "replace_peers" => {
            expect_true(number, key, value)?;
            Ok(Op::ReplacePeers)
        }
        _ => Err(invalid(
            number,
            &format!("invalid UAPI device key {}", quoted(key)),
        )),
    }
}

fn peer_line(number: usize, key: &str, value: &str) -> Result<Option<Op>, UapiError> {
    let op = match key {
        "update_only" => {
            expect_true(number, key, value)?;
            Op::UpdateOnly
        }
        "remove" => {
            expect_true(number, key, value)?;
            Op::Remove
        }
        "preshared_key" => Op::PresharedKey(
            PresharedKey::from_hex(value)
                .map_err(|_| invalid(number, "preshared_key is not 64 hex digits"))?,
        ),
        "endpoint" => {
            let (addr, zone) = parse_endpoint(value)
                .ok_or_else(|| invalid(number, "endpoint is not ip:port or [ipv6]:port"))?;
            Op::Endpoint { addr, zone }
        }
        "persistent_keepalive_interval" => Op::PersistentKeepalive(
            decimal(value, u16::MAX.into())
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| invalid(number, "persistent_keepalive_interval is not 0-65535"))?,
        ),
        "replace_allowed_ips" => {
            expect_true(number, key, value)?;
            Op::ReplaceAllowedIps
        }
        "allowed_ip" => {
            // Newer wg sends `allowed_ip=-addr/cidr` to remove one prefix (`wg set ... allowed-ips -10.0.0.0/24`).
            let (remove, prefix) = match value.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, value),
            };
            let prefix = parse_prefix(prefix)
                .ok_or_else(|| invalid(number, "allowed_ip is not a valid prefix"))?;
            Op::AllowedIp {
                prefix: prefix.network(),
                remove,
            }
        }
        "protocol_version" => {
            if value != "1" {
                return Err(invalid(number, "protocol_version must be 1"));
            }
            return Ok(None);
        }
        _ => {
            return Err(invalid(
                number,
                &format!("invalid UAPI peer key {}", quoted(key)),
            ));
        }
    };
    Ok(Some(op))
}

fn invalid(number: usize, what: &str) -> UapiError {
    UapiError::invalid(format!("line {number}: {what}"))
}

/// A key for the log: quoted, escaped, and cut short (it came from the socket).
fn quoted(key: &str) -> String {
    let short: String = key.chars().take(40).collect();
    format!("{short:?}")
}

/// `replace_peers`, `remove`, `update_only` and `replace_allowed_ips` take exactly `true`.
fn expect_true(number: usize, key: &str, value: &str) -> Result<(), UapiError> {
    if value == "true" {
        Ok(())
    } else {
        Err(invalid(number, &format!("{key} takes only \"true\"")))
    }
}

/// An unsigned decimal as Go's `strconv.ParseUint(s, 10, bits)` reads it: digits only (no
/// sign, no spaces), leading zeros allowed, at most `max`.
pub(super) fn decimal(text: &str, max: u64) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for b in text.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        if n > max {
            return None;
        }
    }
    Some(n)
}

/// An endpoint as Go's `netip.ParseAddrPort` reads it: `a.b.c.d:port`, or `[ipv6]:port`
/// with an optional zone after `%`, numeric (a scope id) or an interface name (returned to be
/// resolved). The port is a decimal up to 65535.
pub(super) fn parse_endpoint(text: &str) -> Option<(SocketAddr, Option<String>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, port) = rest.split_once("]:")?;
        let port = u16::try_from(decimal(port, u16::MAX.into())?).ok()?;
        let (ip, zone) = match inside.split_once('%') {
            Some((ip, zone)) => (ip, Some(zone)),
            None => (inside, None),
        };
        let ip: std::net::Ipv6Addr = ip.parse().ok()?;
        let mut addr = std::net::SocketAddrV6::new(ip, port, 0, 0);
        let pending = match zone {
            None => None,
            Some("") => return None,
            Some(zone) => {
                match decimal(zone, u32::MAX.into()).and_then(|n| u32::try_from(n).ok()) {
                    Some(scope) => {
                        addr.set_scope_id(scope);
                        None
                    }
                    None => Some(zone.to_string()),
                }
            }
        };
        Some((SocketAddr::V6(addr), pending))
    } else {
        // Without brackets only IPv4: an IPv6 address must be bracketed.
        let (ip, port) = text.rsplit_once(':')?;
        let ip: std::net::Ipv4Addr = ip.parse().ok()?;
        let port = u16::try_from(decimal(port, u16::MAX.into())?).ok()?;
        Some((SocketAddr::from((ip, port)), None))
    }
}

/// `addr/cidr` as Go's `netip.ParsePrefix` reads it: no zone, and the length is `0` or a
/// decimal without leading zeros or sign, at most 32 (IPv4) or 128 (IPv6).
pub(super) fn parse_prefix(text: &str) -> Option<Prefix> {
    let (addr, bits) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if bits.len() > 1 && bits.starts_with('0') {
        return None;
    }
    let cidr = u8::try_from(decimal(bits, u64::from(max_len(addr)))?).ok()?;
    Prefix::new(addr, cidr).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_reads_like_parse_uint() {
        assert_eq!(decimal("0", 65535), Some(0));
        assert_eq!(decimal("00051820", 65535), Some(51820));
        assert_eq!(decimal("65535", 65535), Some(65535));
        assert_eq!(decimal("65536", 65535), None);
        assert_eq!(decimal("99999999999999999999999", 65535), None);
        for bad in ["", "+1", "-1", " 1", "1 ", "0x10", "1_000", "١"] {
            assert_eq!(decimal(bad, u64::MAX), None, "{bad:?}");
        }
    }

    #[test]
    fn prefixes_read_like_netip() {
        assert_eq!(
            parse_prefix("10.1.2.3/24"),
            Some(Prefix::new("10.1.2.3".parse().unwrap(), 24).unwrap())
        );
        assert_eq!(
            parse_prefix("fd00::1/128"),
            Some(Prefix::new("fd00::1".parse().unwrap(), 128).unwrap())
        );
        assert_eq!(
            parse_prefix("0.0.0.0/0"),
            Some(Prefix::new("0.0.0.0".parse().unwrap(), 0).unwrap())
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/024",
            "10.0.0.0/+24",
            "10.0.0.0/-1",
            "fd00::/129",
            "fe80::1%eth0/64",
            "010.0.0.0/8",
            "10.0.0/8",
            "/8",
            "10.0.0.0/8/8",
            "example.com/32",
        ] {
            assert_eq!(parse_prefix(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn endpoints_read_like_netip() {
        let ok = |text: &str| parse_endpoint(text).map(|(a, z)| (a.to_string(), z));
        assert_eq!(
            ok("192.0.2.1:51820"),
            Some(("192.0.2.1:51820".into(), None))
        );
        assert_eq!(ok("192.0.2.1:0080"), Some(("192.0.2.1:80".into(), None)));
        assert_eq!(
            ok("[2001:db8::1]:443"),
            Some(("[2001:db8::1]:443".into(), None))
        );
        assert_eq!(
            ok("[::ffff:192.0.2.1]:1"),
            Some(("[::ffff:192.0.2.1]:1".into(), None))
        );
        assert_eq!(ok("[fe80::1%7]:1"), Some(("[fe80::1%7]:1".into(), None)));
        assert_eq!(
            ok("[fe80::1%eth0]:1"),
            Some(("[fe80::1]:1".into(), Some("eth0".into())))
        );
        for bad in [
            "",
            "192.0.2.1",
            "192.0.2.1:",
            "192.0.2.1:65536",
            "192.0.2.1:+1",
            "192.0.2.1%eth0:1",
            "2001:db8::1:51820",
            "[2001:db8::1]",
            "[2001:db8::1]51820",
            "[192.0.2.1]:1",
            "[fe80::1%]:1",
            "host.example:51820",
            ":51820",
        ] {
            assert_eq!(parse_endpoint(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn named_zones_wait_for_the_drivers_lookup() {
        let body = "public_key=".to_string() + &"11".repeat(32) + "\nendpoint=[fe80::1%lo]:5\n\n";
        let mut req = parse_set(&body).unwrap();
        let err = req.clone().resolve_zones(|_| None).unwrap_err();
        assert_eq!(UapiError::from(err).errno, -libc::EINVAL);
        req.resolve_zones(|name| (name == "lo").then_some(1))
            .unwrap();
        let Some((_, Op::Endpoint { addr, zone: None })) = req.ops.last() else {
            panic!("{req:?}");
        };
        assert_eq!(addr.to_string(), "[fe80::1%1]:5");
    }

    #[test]
    fn private_key_is_clamped_and_zero_clears() {
        let req = parse_set(&format!("private_key={}\n\n", "ff".repeat(32))).unwrap();
        let Some((_, Op::PrivateKey(Some(key)))) = req.ops.first() else {
            panic!("expected a private key op: {req:?}");
        };
        assert_eq!(key.to_hex(), format!("f8{}7f", "ff".repeat(30)));
        let req = parse_set(&format!("private_key={}\n\n", "00".repeat(32))).unwrap();
        assert!(matches!(req.ops.first(), Some((2, Op::PrivateKey(None)))));
    }

    #[test]
    fn parsing_stops_at_the_blank_line_and_accepts_crlf() {
        let req = parse_set("listen_port=1\r\nfwmark=2\n\r\nnot a line\n").unwrap();
        assert_eq!(req.len(), 2);
        assert!(matches!(
            req.ops.as_slice(),
            [(2, Op::ListenPort(1)), (3, Op::Fwmark(2))]
        ));
        // The end of the input ends the request too (wireguard-go's scanner at EOF).
        let req = parse_set("listen_port=3\nlisten_port=4").unwrap();
        assert!(matches!(req.ops.last(), Some((3, Op::ListenPort(4)))));
    }
}
