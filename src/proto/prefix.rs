//! IP prefixes: the one place that knows how long a prefix may be and how its host bits are
//! cleared. The config's prefixes (`config::Cidr`), AllowedIPs, UAPI `allowed_ip` lines, the
//! reconciler and netconf's routes all mask through here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest prefix of `addr`'s family: 32 or 128.
pub fn max_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Whether `len` fits `addr`'s family.
pub fn len_fits(addr: IpAddr, len: u8) -> bool {
    len <= max_len(addr)
}

/// `addr` with every bit beyond the first `len` cleared: the network address of the prefix
/// (`10.1.2.3/24` -> `10.1.2.0`), the form AllowedIPs stores, `wg` prints and the kernel wants
/// as a route's destination. A `len` beyond the family's keeps every bit.
pub fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(mask_v4(a, len)),
        IpAddr::V6(a) => IpAddr::V6(mask_v6(a, len)),
    }
}

pub fn mask_v4(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let keep = u32::MAX
        .checked_shl(32u32.saturating_sub(len.into()))
        .unwrap_or(0);
    Ipv4Addr::from_bits(addr.to_bits() & keep)
}

pub fn mask_v6(addr: Ipv6Addr, len: u8) -> Ipv6Addr {
    let keep = u128::MAX
        .checked_shl(128u32.saturating_sub(len.into()))
        .unwrap_or(0);
    Ipv6Addr::from_bits(addr.to_bits() & keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn mask_clears_host_bits() {
        assert_eq!(mask(ip("10.1.2.3"), 24), ip("10.1.2.0"));
        assert_eq!(mask(ip("10.1.2.3"), 0), ip("0.0.0.0"));
        assert_eq!(mask(ip("10.1.2.3"), 32), ip("10.1.2.3"));
        assert_eq!(mask(ip("10.1.2.3"), 33), ip("10.1.2.3"));
        assert_eq!(mask(ip("fd00:1:2:3::9"), 48), ip("fd00:1:2::"));
        assert_eq!(mask(ip("fd00::9"), 0), ip("::"));
        assert_eq!(mask(ip("fd00::9"), 128), ip("fd00::9"));
    }

    #[test]
    fn lengths_fit_their_family() {
        assert!(len_fits(ip("10.0.0.0"), 32) && !len_fits(ip("10.0.0.0"), 33));
        assert!(len_fits(ip("::"), 128) && !len_fits(ip("::"), 129));
    }
}
