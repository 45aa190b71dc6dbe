//! The few fields of an inner IP packet the core needs: version, addresses, total length.

use std::net::IpAddr;

/// An inner packet's address, without building an `IpAddr` on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl From<Addr> for IpAddr {
    fn from(a: Addr) -> IpAddr {
        match a {
            Addr::V4(b) => IpAddr::from(b),
            Addr::V6(b) => IpAddr::from(b),
        }
    }
}

const IPV4_HEADER_MIN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;

fn array<const N: usize>(packet: &[u8], at: usize) -> Option<[u8; N]> {
    packet.get(at..at + N)?.try_into().ok()
}

/// The destination address of an outbound packet (IPv4 or IPv6), or None if malformed.
pub fn destination(packet: &[u8]) -> Option<Addr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= IPV4_HEADER_MIN => array(packet, 16).map(Addr::V4),
        6 if packet.len() >= IPV6_HEADER_LEN => array(packet, 24).map(Addr::V6),
        _ => None,
    }
}

/// The source address and true length (without padding) of a decrypted inbound packet.
/// None when it is not a well-formed IPv4/IPv6 packet that fits in `packet`.
pub fn source_and_len(packet: &[u8]) -> Option<(Addr, usize)> {
    match packet.first()? >> 4 {
        4 => {
            if packet.len() < IPV4_HEADER_MIN {
                return None;
            }
            let total = usize::from(u16::from_be_bytes(array(packet, 2)?));
            if total < IPV4_HEADER_MIN || total > packet.len() {
                return None;
            }
            Some((Addr::V4(array(packet, 12)?), total))
        }
        6 => {
            if packet.len() < IPV6_HEADER_LEN {
                return None;
            }
            let total = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes(array(packet, 4)?));
            if total > packet.len() {
                return None;
            }
            Some((Addr::V6(array(packet, 8)?), total))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::packet::{ipv4, ipv6};

    #[test]
    fn parses_both_families_and_strips_padding() {
        let mut p = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"abc");
        assert_eq!(destination(&p), Some(Addr::V4([10, 0, 0, 2])));
        p.extend_from_slice(&[0; 9]);
        assert_eq!(source_and_len(&p), Some((Addr::V4([10, 0, 0, 1]), 23)));
        let q = ipv6([1; 16], [2; 16], b"x");
        assert_eq!(destination(&q), Some(Addr::V6([2; 16])));
        assert_eq!(source_and_len(&q), Some((Addr::V6([1; 16]), 41)));
    }

    #[test]
    fn malformed_packets_are_refused() {
        assert_eq!(destination(&[]), None);
        assert_eq!(destination(&[0x45; 19]), None);
        assert_eq!(destination(&[0x15; 40]), None);
        let mut p = ipv4([1, 1, 1, 1], [2, 2, 2, 2], b"abc");
        p[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(source_and_len(&p), None, "length beyond the datagram");
        p[2..4].copy_from_slice(&5u16.to_be_bytes());
        assert_eq!(source_and_len(&p), None, "length below a header");
        let mut q = ipv6([1; 16], [2; 16], b"x");
        q[4..6].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(source_and_len(&q), None);
    }
}
