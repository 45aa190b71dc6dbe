//! Pure checks on names and prefixes, done before any request reaches the kernel.

use std::net::IpAddr;

use super::NetconfError;
use crate::proto::prefix::{len_fits, mask};

/// Longest interface name the kernel accepts (IFNAMSIZ minus the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// The one interface-name rule, used by the config, the command line and the TUN device: what
/// wg-quick accepts, 1..=15 bytes of `[A-Za-z0-9_=+.-]`, and not `.` or `..` (which the kernel
/// refuses). The kernel itself allows more (anything but `/`, `:`, NUL and whitespace), but a
/// name outside this set could not be brought up by wg-quick nor named in a systemd unit.
pub fn is_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'=' | b'+' | b'.' | b'-'))
}

/// [`is_valid_ifname`] as a netconf error.
pub fn check_ifname(name: &str) -> Result<(), NetconfError> {
    if is_valid_ifname(name) {
        Ok(())
    } else {
        Err(NetconfError::InvalidIfname(name.to_owned()))
    }
}

/// Checks that `prefix_len` fits the address family of `addr`.
pub fn check_prefix(addr: IpAddr, prefix_len: u8) -> Result<(), NetconfError> {
    if !len_fits(addr, prefix_len) {
        return Err(NetconfError::InvalidPrefix { addr, prefix_len });
    }
    Ok(())
}

/// Checks an address to put on an interface: a valid prefix, and an address that can be
/// assigned (neither unspecified nor multicast).
pub fn check_interface_address(addr: IpAddr, prefix_len: u8) -> Result<(), NetconfError> {
    check_prefix(addr, prefix_len)?;
    if addr.is_unspecified() || addr.is_multicast() {
        return Err(NetconfError::InvalidAddress(addr));
    }
    Ok(())
}

/// The network address of `addr/prefix_len`: host bits cleared, as the kernel wants for a
/// route destination (`10.9.0.1/24` becomes `10.9.0.0/24`, which is also what `wg show`
/// prints for such an AllowedIPs entry).
pub fn network(addr: IpAddr, prefix_len: u8) -> Result<IpAddr, NetconfError> {
    check_prefix(addr, prefix_len)?;
    Ok(mask(addr, prefix_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn ifname_rules_are_wg_quick_s() {
        for good in ["wg0", "tandem0", "a", "x23456789012345", "tun-1.2_x"] {
            assert!(check_ifname(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "x234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\0b",
            // The kernel would take these; wg-quick and systemd unit names would not.
            "a@b",
            "a%b",
            "wg\u{e9}",
        ] {
            assert!(
                matches!(check_ifname(bad), Err(NetconfError::InvalidIfname(n)) if n == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn prefix_length_is_bounded_by_family() {
        assert!(check_prefix(ip("10.0.0.0"), 0).is_ok());
        assert!(check_prefix(ip("10.0.0.1"), 32).is_ok());
        assert!(check_prefix(ip("10.0.0.1"), 33).is_err());
        assert!(check_prefix(ip("fd00::1"), 128).is_ok());
        assert!(matches!(
            check_prefix(ip("fd00::1"), 129),
            Err(NetconfError::InvalidPrefix {
                prefix_len: 129,
                ..
            })
        ));
    }

    #[test]
    fn interface_addresses_must_be_assignable() {
        assert!(check_interface_address(ip("10.9.0.1"), 24).is_ok());
        assert!(check_interface_address(ip("fd00:9::1"), 64).is_ok());
        for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1"] {
            assert!(
                matches!(check_interface_address(ip(bad), 24), Err(NetconfError::InvalidAddress(a)) if a == ip(bad)),
                "{bad}"
            );
        }
        assert!(check_interface_address(ip("10.9.0.1"), 40).is_err());
    }

    #[test]
    fn network_clears_host_bits() {
        let cases = [
            ("10.9.0.1", 24, "10.9.0.0"),
            ("10.9.0.1", 32, "10.9.0.1"),
            ("10.9.255.255", 0, "0.0.0.0"),
            ("192.168.77.130", 25, "192.168.77.128"),
            ("fd00:9::1", 64, "fd00:9::"),
            ("fd00:9:ffff:ffff::1", 48, "fd00:9:ffff::"),
            ("fd00::1", 128, "fd00::1"),
            ("fd00::1", 0, "::"),
        ];
        for (addr, len, want) in cases {
            assert_eq!(
                network(ip(addr), len).expect("valid prefix"),
                ip(want),
                "{addr}/{len}"
            );
        }
        assert!(network(ip("10.0.0.0"), 33).is_err());
    }

    #[test]
    fn network_matches_a_bitwise_model() {
        // Every prefix length of one v4 and one v6 address, against bit-by-bit clearing.
        let v4 = 0xdead_beef_u32;
        for len in 0..=32u8 {
            let mut want = v4;
            for bit in 0..(32 - u32::from(len)) {
                want &= !(1u32 << bit);
            }
            assert_eq!(
                network(IpAddr::V4(Ipv4Addr::from(v4)), len).expect("valid"),
                IpAddr::V4(Ipv4Addr::from(want))
            );
        }
        let v6 = u128::MAX / 3;
        for len in 0..=128u8 {
            let mut want = v6;
            for bit in 0..(128 - u32::from(len)) {
                want &= !(1u128 << bit);
            }
            assert_eq!(
                network(IpAddr::V6(Ipv6Addr::from(v6)), len).expect("valid"),
                IpAddr::V6(Ipv6Addr::from(want))
            );
        }
    }
}
