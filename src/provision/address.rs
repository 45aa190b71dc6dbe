//! The tunnel address a new peer gets: the first free host address in the interface's
//! on-link subnet, one per address family the interface has.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{InterfaceAddress, Prefix};

/// How many candidates are tried in one subnet: enough for any road-warrior server, and a
/// bound on the walk through a /64.
const MAX_CANDIDATES: u128 = 1 << 20;

/// The first host address of `subnet`'s on-link prefix that is neither the network address,
/// nor (IPv4) the broadcast address, nor one of `own` (the interface's addresses), nor inside
/// any of `taken` (the peers' allowed IPs). `None` when the subnet has no room left (or is a
/// single address, `/32` or `/128`).
pub fn next_free(
    subnet: &InterfaceAddress,
    own: &[InterfaceAddress],
    taken: &[Prefix],
) -> Option<IpAddr> {
    let network = subnet.network();
    // Peers' single addresses in a set, wider prefixes (site networks) checked one by one:
    // a server with thousands of clients stays fast.
    let mut hosts: HashSet<IpAddr> = own.iter().map(|a| a.addr).collect();
    let mut wider = Vec::new();
    for p in taken {
        if p.len() == crate::proto::prefix::max_len(p.addr()) {
            hosts.insert(p.addr());
        } else {
            wider.push(*p);
        }
    }
    let used = |ip: &IpAddr| hosts.contains(ip) || wider.iter().any(|p| p.contains(ip));
    match network.addr() {
        IpAddr::V4(base) => {
            let host_bits = 32 - u32::from(network.len());
            if host_bits < 2 {
                return None;
            }
            let size = 1u128 << host_bits;
            // Skip the network address (0) and the broadcast address (size - 1).
            let last = (size - 2).min(MAX_CANDIDATES);
            let base = u32::from(base);
            (1..=last)
                .filter_map(|k| u32::try_from(k).ok())
                .map(|k| IpAddr::V4(Ipv4Addr::from(base.wrapping_add(k))))
                .find(|ip| !used(ip))
        }
        IpAddr::V6(base) => {
            let host_bits = 128 - u32::from(network.len());
            if host_bits == 0 {
                return None;
            }
            // The subnet-router anycast address (all host bits zero) is skipped too.
            let size_minus_one = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            let last = size_minus_one.min(MAX_CANDIDATES);
            let base = u128::from(base);
            (1..=last)
                .map(|k| IpAddr::V6(Ipv6Addr::from(base.wrapping_add(k))))
                .find(|ip| !used(ip))
        }
    }
}

/// The interface addresses new peers are numbered from: the first IPv4 one and the first
/// IPv6 one that have room for hosts (not `/32` or `/128`).
pub fn subnets(addresses: &[InterfaceAddress]) -> Vec<InterfaceAddress> {
    let v4 = addresses
        .iter()
        .find(|a| a.addr.is_ipv4() && a.prefix_len < 31);
    let v6 = addresses
        .iter()
        .find(|a| a.addr.is_ipv6() && a.prefix_len < 128);
    v4.into_iter().chain(v6).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ia(s: &str) -> InterfaceAddress {
        s.parse().expect("address")
    }

    fn p(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn first_free_skips_own_taken_and_network() {
        let own = [ia("10.10.0.1/24"), ia("fd10::1/64")];
        assert_eq!(next_free(&own[0], &own, &[]), Some(ip("10.10.0.2")));
        let taken = [p("10.10.0.2/32"), p("10.10.0.3/32"), p("fd10::2/128")];
        assert_eq!(next_free(&own[0], &own, &taken), Some(ip("10.10.0.4")));
        assert_eq!(next_free(&own[1], &own, &taken), Some(ip("fd10::3")));
        // A gap is reused.
        let taken = [p("10.10.0.2/32"), p("10.10.0.4/32")];
        assert_eq!(next_free(&own[0], &own, &taken), Some(ip("10.10.0.3")));
        // A wider prefix of a site peer covers its addresses.
        let taken = [p("10.10.0.0/25")];
        assert_eq!(next_free(&own[0], &own, &taken), Some(ip("10.10.0.128")));
        // The server need not be .1.
        let own = [ia("10.10.0.254/24")];
        assert_eq!(next_free(&own[0], &own, &[]), Some(ip("10.10.0.1")));
    }

    #[test]
    fn full_and_single_address_subnets() {
        let own = [ia("10.0.0.1/30")];
        assert_eq!(next_free(&own[0], &own, &[]), Some(ip("10.0.0.2")));
        // .0 network, .1 ours, .2 taken, .3 broadcast: full.
        assert_eq!(next_free(&own[0], &own, &[p("10.0.0.2/32")]), None);
        let host = [ia("10.0.0.1/32")];
        assert_eq!(next_free(&host[0], &host, &[]), None);
        assert_eq!(next_free(&ia("fd00::1/128"), &[], &[]), None);
        // A full tunnel peer (0.0.0.0/0) takes everything.
        assert_eq!(next_free(&ia("10.0.0.1/24"), &[], &[p("0.0.0.0/0")]), None);
    }

    #[test]
    fn subnets_per_family() {
        let addrs = [
            ia("10.0.0.1/32"),
            ia("10.1.0.1/24"),
            ia("fd00::1/64"),
            ia("fd01::1/64"),
        ];
        assert_eq!(subnets(&addrs), [ia("10.1.0.1/24"), ia("fd00::1/64")]);
        assert!(subnets(&[ia("10.0.0.1/32")]).is_empty());
    }
}
