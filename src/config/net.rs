//! Address-like values of a configuration: prefixes (the core's [`Prefix`]), interface addresses, endpoints and
//! interface names. Pure parsing; nothing here resolves names or touches the network.

use crate::netconf::prefix::is_valid_ifname;
pub use crate::proto::prefix::{Prefix, PrefixError};
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

impl From<PrefixError> for AddrError {
    fn from(e: PrefixError) -> Self {
        match e {
            PrefixError::Address(text) => AddrError::Address(text),
            PrefixError::LenSyntax(text) => AddrError::PrefixSyntax(text),
            PrefixError::LenRange { len, family, max } => {
                AddrError::PrefixRange { len, family, max }
            }
        }
    }
}

/// A prefix as the config writes it (`addr[/len]`, no length: one host), with the config's
/// error messages.
pub fn parse_prefix(text: &str) -> Result<Prefix, AddrError> {
    Ok(text.parse::<Prefix>()?)
}

/// An address assigned to the interface with the length of its on-link prefix
/// (`10.9.0.1/24`): host bits are the point here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl InterfaceAddress {
    /// The address with its length, as a prefix (`10.9.0.1/24`).
    pub fn prefix(&self) -> Prefix {
        // The length was checked when the address was parsed.
        Prefix::new(self.addr, self.prefix_len).unwrap_or_else(|_| Prefix::host(self.addr))
    }

    /// The on-link prefix (`10.9.0.1/24` -> `10.9.0.0/24`).
    pub fn network(&self) -> Prefix {
        self.prefix().network()
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
        let p = parse_prefix(s)?;
        Ok(InterfaceAddress {
            addr: p.addr(),
            prefix_len: p.len(),
        })
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
pub fn is_dns_name(host: &str) -> bool {
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
    fn prefixes_give_the_configs_errors() {
        assert_eq!(
            parse_prefix("10.0.0.7/24").unwrap().to_string(),
            "10.0.0.7/24"
        );
        assert_eq!(
            parse_prefix("10.0.0.0/33"),
            Err(AddrError::PrefixRange {
                len: 33,
                family: "IPv4",
                max: 32
            })
        );
        assert!(matches!(
            parse_prefix("fd00::/129"),
            Err(AddrError::PrefixRange { max: 128, .. })
        ));
        assert!(matches!(
            parse_prefix("10.0.0.0/x"),
            Err(AddrError::PrefixSyntax(_))
        ));
        assert!(matches!(
            parse_prefix("10.0.0.0/-1"),
            Err(AddrError::PrefixSyntax(_))
        ));
        assert!(matches!(
            parse_prefix("10.0.0/8"),
            Err(AddrError::Address(_))
        ));
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
