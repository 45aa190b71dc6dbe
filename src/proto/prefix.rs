//! IP prefixes: [`Prefix`], the one prefix type (a length that fits its family, checked when
//! it is made), and the one place that knows how host bits are cleared. The config's
//! AllowedIPs, the core's AllowedIPs table, UAPI `allowed_ip` lines, the reconciler and
//! netconf's routes all use it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP prefix such as `10.0.0.0/24`: an address and a length that fits its family. Host
/// bits are kept as given (`10.0.0.7/24` is a valid prefix whose [`Prefix::network`] is
/// `10.0.0.0/24`), since an interface address is written that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix was refused. Messages quote the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("\"{0}\" is not an IPv4 or IPv6 address")]
    Address(String),
    #[error("\"{0}\" is not a prefix length (a number after the /)")]
    LenSyntax(String),
    #[error("prefix length {len} is out of range for {family} (0..={max})")]
    LenRange {
        len: u32,
        family: &'static str,
        max: u8,
    },
}

impl Prefix {
    /// A prefix, with the length checked against the family.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        if len_fits(addr, len) {
            Ok(Prefix { addr, len })
        } else {
            Err(PrefixError::LenRange {
                len: u32::from(len),
                family: family_name(addr),
                max: max_len(addr),
            })
        }
    }

    /// One address: /32 or /128.
    pub fn host(addr: IpAddr) -> Prefix {
        Prefix {
            addr,
            len: max_len(addr),
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length (never beyond the family's).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }

    /// The same prefix with its host bits cleared (`10.0.0.7/24` -> `10.0.0.0/24`).
    pub fn network(&self) -> Prefix {
        Prefix {
            addr: mask(self.addr, self.len),
            len: self.len,
        }
    }

    /// True when bits beyond the prefix length are set (`10.0.0.7/24`).
    pub fn has_host_bits(&self) -> bool {
        self.network().addr != self.addr
    }

    /// Whether `ip` falls inside this prefix (families must match).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(*ip, self.len) == self.network().addr
    }

    /// `0.0.0.0/0` or `::/0`.
    pub fn is_default_route(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `addr[/len]`; a missing length means a single host (/32 or /128), as `wg` and `ip` read
/// it. Surrounding spaces are allowed; the length is decimal digits only.
impl FromStr for Prefix {
    type Err = PrefixError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a.trim(), Some(l.trim())),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| PrefixError::Address(addr_text.to_owned()))?;
        let Some(l) = len_text else {
            return Ok(Prefix::host(addr));
        };
        let digits_ok = !l.is_empty() && l.len() <= 9 && l.bytes().all(|b| b.is_ascii_digit());
        let len: u32 = l
            .parse()
            .ok()
            .filter(|_| digits_ok)
            .ok_or_else(|| PrefixError::LenSyntax(l.to_owned()))?;
        let out_of_range = || PrefixError::LenRange {
            len,
            family: family_name(addr),
            max: max_len(addr),
        };
        let len = u8::try_from(len).map_err(|_| out_of_range())?;
        Prefix::new(addr, len).map_err(|_| out_of_range())
    }
}

fn family_name(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

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
    fn prefixes_parse_display_and_check_their_length() {
        let c: Prefix = "10.0.0.7/24".parse().unwrap();
        assert_eq!((c.addr(), c.len()), (ip("10.0.0.7"), 24));
        assert!(c.has_host_bits());
        assert_eq!(c.network().to_string(), "10.0.0.0/24");
        assert!(c.contains(&ip("10.0.0.200")) && !c.contains(&ip("10.0.1.1")));
        assert!(!c.contains(&ip("::1")));
        assert_eq!(
            "192.0.2.1".parse::<Prefix>().unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(
            " fd00::/8 ".parse::<Prefix>().unwrap().to_string(),
            "fd00::/8"
        );
        assert!("::/0".parse::<Prefix>().unwrap().is_default_route());
        assert!(matches!(
            "10.0.0.0/33".parse::<Prefix>(),
            Err(PrefixError::LenRange {
                len: 33,
                max: 32,
                ..
            })
        ));
        assert!(matches!(
            "fd00::/4294967296".parse::<Prefix>(),
            Err(PrefixError::LenSyntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/+1".parse::<Prefix>(),
            Err(PrefixError::LenSyntax(_))
        ));
        assert!(matches!(
            "x/1".parse::<Prefix>(),
            Err(PrefixError::Address(_))
        ));
        assert!(Prefix::new(ip("::"), 129).is_err());
        assert_eq!(Prefix::host(ip("::1")).len(), 128);
    }

    #[test]
    fn lengths_fit_their_family() {
        assert!(len_fits(ip("10.0.0.0"), 32) && !len_fits(ip("10.0.0.0"), 33));
        assert!(len_fits(ip("::"), 128) && !len_fits(ip("::"), 129));
    }
}
