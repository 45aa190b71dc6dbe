//! Address-like values of a configuration: CIDR prefixes, interface addresses, endpoints and
//! interface names. Pure parsing; nothing here resolves names or touches the network.

use crate::netconf::prefix::is_valid_ifname;
use crate::proto::prefix::mask;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Why an address-like value was refused. Messages quote the offending text so they read well
/// after `KEY:` in a [`ConfigError`](super::ConfigError).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("\"{0}\" is not an IPv4 or IPv6 address")]
    Address(String),
    #[error("\"{0}\" is not a prefix length (a number after the /)")]
    PrefixSyntax(String),
    #[error("prefix length {len} is out of range for {family} (0..={max})")]
    PrefixRange {
        len: u32,
        family: &'static str,
        max: u8,
    },
    #[error("\"{0}\" has no port (write host:port, or [v6 address]:port)")]
    NoPort(String),
    #[error("\"{0}\" is not a port number (1..=65535)")]
    Port(String),
    #[error("port 0 is not a valid endpoint port")]
    PortZero,
    #[error("IPv6 endpoint \"{0}\" needs brackets, as in [2001:db8::1]:51820")]
    Ipv6NeedsBrackets(String),
    #[error("\"{0}\" is not an IPv6 address (inside [ ])")]
    BracketedNotIpv6(String),
    #[error("\"{0}\" is neither an IP address nor a valid DNS name")]
    Host(String),
    #[error(
        "\"{0}\" is not a valid interface name (1 to 15 bytes of A-Z a-z 0-9 _ = + . -, not . or ..)"
    )]
    InterfaceName(String),
}

fn family_max(addr: &IpAddr) -> (&'static str, u8) {
    match addr {
        IpAddr::V4(_) => ("IPv4", 32),
        IpAddr::V6(_) => ("IPv6", 128),
    }
}

/// `addr[/len]` with the prefix length checked against the address family; a missing length
/// means a single host (/32 or /128), as `wg` and `ip` read it.
fn parse_addr_and_len(text: &str) -> Result<(IpAddr, u8), AddrError> {
    let text = text.trim();
    let (addr_text, len_text) = match text.split_once('/') {
        Some((a, l)) => (a.trim(), Some(l.trim())),
        None => (text, None),
    };
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| AddrError::Address(addr_text.to_owned()))?;
    let (family, max) = family_max(&addr);
    let len = match len_text {
        None => max,
        Some(l) => {
            let digits_ok = !l.is_empty() && l.len() <= 9 && l.bytes().all(|b| b.is_ascii_digit());
            if !digits_ok {
                return Err(AddrError::PrefixSyntax(l.to_owned()));
            }
            let len: u32 = l
                .parse()
                .map_err(|_| AddrError::PrefixSyntax(l.to_owned()))?;
            if len > u32::from(max) {
                return Err(AddrError::PrefixRange { len, family, max });
            }
            // In range, so it fits in a u8.
            u8::try_from(len).map_err(|_| AddrError::PrefixRange { len, family, max })?
        }
    };
    Ok((addr, len))
}

/// An IP prefix such as `10.0.0.0/24` (AllowedIPs, routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// A prefix, with the length checked against the family (host bits are kept as given).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, AddrError> {
        let (family, max) = family_max(&addr);
        if prefix_len > max {
            return Err(AddrError::PrefixRange {
                len: u32::from(prefix_len),
                family,
                max,
            });
        }
        Ok(Cidr { addr, prefix_len })
    }

    /// The same prefix with its host bits cleared (`10.0.0.7/24` -> `10.0.0.0/24`).
    pub fn network(&self) -> Cidr {
        let addr = mask(self.addr, self.prefix_len);
        Cidr {
            addr,
            prefix_len: self.prefix_len,
        }
    }

    /// True when bits beyond the prefix length are set (`10.0.0.7/24`).
    pub fn has_host_bits(&self) -> bool {
        self.network().addr != self.addr
    }

    /// Whether `ip` falls inside this prefix (families must match).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Cidr {
                    addr: *ip,
                    prefix_len: self.prefix_len,
                }
                .network()
                    == self.network()
            }
            _ => false,
        }
    }

    /// `0.0.0.0/0` or `::/0`.
    pub fn is_default_route(&self) -> bool {
        self.prefix_len == 0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix_len) = parse_addr_and_len(s)?;
        Ok(Cidr { addr, prefix_len })
    }
}

/// An address assigned to the interface with the length of its on-link prefix
/// (`10.9.0.1/24`): host bits are the point here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl InterfaceAddress {
    /// The on-link prefix (`10.9.0.1/24` -> `10.9.0.0/24`).
    pub fn network(&self) -> Cidr {
        Cidr {
            addr: self.addr,
            prefix_len: self.prefix_len,
        }
        .network()
    }
}

impl fmt::Display for InterfaceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for InterfaceAddress {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix_len) = parse_addr_and_len(s)?;
        Ok(InterfaceAddress { addr, prefix_len })
    }
}

/// A peer endpoint as written: an IP literal or a DNS name, and a port. Names are resolved by
/// the daemon, never here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    /// An IPv4 literal, an IPv6 literal without brackets, or a DNS name.
    pub host: String,
    pub port: u16,
}

impl EndpointSpec {
    /// The socket address when `host` is an IP literal; `None` for a DNS name.
    pub fn literal(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl From<SocketAddr> for EndpointSpec {
    fn from(addr: SocketAddr) -> Self {
        EndpointSpec {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

/// `host:port`, or `[v6]:port` for IPv6 literals.
impl fmt::Display for EndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn parse_port(text: &str) -> Result<u16, AddrError> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddrError::Port(text.to_owned()));
    }
    match text.parse::<u16>() {
        Ok(0) => Err(AddrError::PortZero),
        Ok(p) => Ok(p),
        Err(_) => Err(AddrError::Port(text.to_owned())),
    }
}

/// RFC 1123 host names (underscores tolerated, as resolvers do), at most 253 bytes.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    // A name made only of digits and dots is a mistyped IPv4 address, not a name.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

impl FromStr for EndpointSpec {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix('[') {
            let Some((inner, after)) = rest.split_once(']') else {
                return Err(AddrError::BracketedNotIpv6(rest.to_owned()));
            };
            if inner.parse::<Ipv6Addr>().is_err() {
                return Err(AddrError::BracketedNotIpv6(inner.to_owned()));
            }
            let Some(port) = after.strip_prefix(':') else {
                return Err(AddrError::NoPort(s.to_owned()));
            };
            return Ok(EndpointSpec {
                host: inner.to_owned(),
                port: parse_port(port)?,
            });
        }
        if s.parse::<Ipv6Addr>().is_ok() {
            return Err(AddrError::NoPort(s.to_owned()));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(AddrError::NoPort(s.to_owned()));
        };
        if host.contains(':') {
            // "2001:db8::1:51820": the port cannot be told apart from the address.
            return Err(AddrError::Ipv6NeedsBrackets(s.to_owned()));
        }
        let port = parse_port(port)?;
        if host.parse::<Ipv4Addr>().is_err() && !is_dns_name(host) {
            return Err(AddrError::Host(host.to_owned()));
        }
        Ok(EndpointSpec {
            host: host.to_owned(),
            port,
        })
    }
}

/// An interface name by the one rule (`netconf::prefix::is_valid_ifname`), as a config error.
pub fn check_interface_name(name: &str) -> Result<(), AddrError> {
    if is_valid_ifname(name) {
        Ok(())
    } else {
        Err(AddrError::InterfaceName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_display_and_host_bits() {
        let c: Cidr = "10.0.0.0/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/24");
        assert!(!c.has_host_bits());
        let h: Cidr = "10.0.0.7/24".parse().unwrap();
        assert!(h.has_host_bits());
        assert_eq!(h.network(), c);
        let single: Cidr = "192.0.2.1".parse().unwrap();
        assert_eq!(single.to_string(), "192.0.2.1/32");
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert!(v6.contains(&"2001:db8::99".parse().unwrap()));
        assert!(!v6.contains(&"10.0.0.1".parse().unwrap()));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.is_default_route() && !all.has_host_bits());
        let all4: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all4.contains(&"203.0.113.9".parse().unwrap()));
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(AddrError::PrefixRange {
                len: 33,
                family: "IPv4",
                max: 32
            })
        );
        assert!(matches!(
            "fd00::/129".parse::<Cidr>(),
            Err(AddrError::PrefixRange { max: 128, .. })
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(AddrError::PrefixSyntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/-1".parse::<Cidr>(),
            Err(AddrError::PrefixSyntax(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(AddrError::Address(_))
        ));
        assert!(Cidr::new("10.0.0.0".parse().unwrap(), 40).is_err());
    }

    #[test]
    fn interface_address_keeps_host_bits() {
        let a: InterfaceAddress = "10.9.0.1/24".parse().unwrap();
        assert_eq!(a.to_string(), "10.9.0.1/24");
        assert_eq!(a.network().to_string(), "10.9.0.0/24");
        let b: InterfaceAddress = "fd09::1/64".parse().unwrap();
        assert_eq!(b.network().to_string(), "fd09::/64");
    }

    #[test]
    fn endpoints() {
        let e: EndpointSpec = "198.51.100.7:51820".parse().unwrap();
        assert_eq!(e.literal(), Some("198.51.100.7:51820".parse().unwrap()));
        assert_eq!(e.to_string(), "198.51.100.7:51820");
        let v6: EndpointSpec = "[2001:db8::7]:51820".parse().unwrap();
        assert_eq!(v6.host, "2001:db8::7");
        assert_eq!(v6.to_string(), "[2001:db8::7]:51820");
        assert_eq!(v6.literal(), Some("[2001:db8::7]:51820".parse().unwrap()));
        let name: EndpointSpec = "vpn.example.com:443".parse().unwrap();
        assert_eq!(name.host, "vpn.example.com");
        assert_eq!(name.literal(), None);
        assert_eq!(name.to_string().parse::<EndpointSpec>().unwrap(), name);

        assert_eq!(
            "198.51.100.7:0".parse::<EndpointSpec>(),
            Err(AddrError::PortZero)
        );
        assert!(matches!(
            "198.51.100.7".parse::<EndpointSpec>(),
            Err(AddrError::NoPort(_))
        ));
        assert!(matches!(
            "198.51.100.7:70000".parse::<EndpointSpec>(),
            Err(AddrError::Port(_))
        ));
        assert!(matches!(
            "2001:db8::1:51820".parse::<EndpointSpec>(),
            Err(AddrError::Ipv6NeedsBrackets(_))
        ));
        assert!(matches!(
            "[10.0.0.1]:5".parse::<EndpointSpec>(),
            Err(AddrError::BracketedNotIpv6(_))
        ));
        assert!(matches!(
            "bad host:5".parse::<EndpointSpec>(),
            Err(AddrError::Host(_))
        ));
        assert!(matches!(
            "300.1.2.3:5".parse::<EndpointSpec>(),
            Err(AddrError::Host(_))
        ));
        assert!(matches!(
            "-x.example:5".parse::<EndpointSpec>(),
            Err(AddrError::Host(_))
        ));
    }

    #[test]
    fn interface_names() {
        for ok in ["tnd0", "wg-site_b", "a.b+c=d", "123456789012345"] {
            assert!(check_interface_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "wg 0",
            "wg/0",
            "wg:0",
            "wé",
        ] {
            assert!(check_interface_name(bad).is_err(), "{bad}");
        }
    }
}
