//! `NetConf`: single interface-setup requests (link, address, route) over an rtnetlink socket.

use std::fmt;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};
use tokio::task::JoinHandle;

use super::NetconfError;
use super::policy::{Family, Placed, PolicyPart, RULE_PROTOCOL};
use super::prefix::{check_ifname, check_interface_address, check_prefix, network};

/// The main routing table's id (RT_TABLE_MAIN).
pub const MAIN_TABLE: u32 = 254;

/// A netlink route socket in the network namespace of the thread that created it.
///
/// Must be created inside a tokio runtime: the socket's connection runs as a task of that
/// runtime, and is stopped when the `NetConf` is dropped.
pub struct NetConf {
    handle: rtnetlink::Handle,
    connection: JoinHandle<()>,
}

impl fmt::Debug for NetConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetConf").finish_non_exhaustive()
    }
}

impl Drop for NetConf {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// "main" or the table number, for messages.
fn table_name(table: Option<u32>) -> String {
    match table {
        None | Some(MAIN_TABLE) => "main".to_owned(),
        Some(t) => t.to_string(),
    }
}

/// The route message for `dest/prefix_len dev #index`, used both to add and to delete, so a
/// delete matches exactly what tandem added: protocol `static` (a kernel-made or foreign
/// route to the same prefix is left alone), link scope for IPv4 as `ip route add ... dev`
/// gives it, and host bits cleared.
pub(crate) fn route_message(
    index: u32,
    dest: IpAddr,
    prefix_len: u8,
    table: Option<u32>,
) -> Result<RouteMessage, NetconfError> {
    let dest = network(dest, prefix_len)?;
    // IPv4 routes without a gateway are link-scoped; the kernel keeps IPv6 routes universal.
    let scope = match dest {
        IpAddr::V4(_) => RouteScope::Link,
        IpAddr::V6(_) => RouteScope::Universe,
    };
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dest, prefix_len)
        .map_err(|_| NetconfError::InvalidPrefix {
            addr: dest,
            prefix_len,
        })?
        .output_interface(index)
        .protocol(RouteProtocol::Static)
        .scope(scope);
    let builder = match table {
        Some(t) => builder.table_id(t),
        None => builder,
    };
    Ok(builder.build())
}

/// The address message for `addr/prefix_len` on link #index.
pub(crate) fn address_message(index: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
    match addr {
        IpAddr::V4(a) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(a, prefix_len)
            .build(),
        IpAddr::V6(a) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(a, prefix_len)
            .build(),
    }
}

/// The unspecified address of `family`, the destination of its default route.
fn any(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The rule message for a rule part of a full tunnel (None for its route), used both to add
/// and to delete. Without a priority, on add the kernel picks one as for `ip rule add`, and
/// on delete any priority matches, so a delete finds the rule wherever it went. The kernel
/// matches a delete on the table, mark, mask, suppress length and protocol given here, so it
/// only ever removes a rule of tandem's with this mark.
pub(crate) fn rule_message(placed: Placed) -> Option<RuleMessage> {
    let part = placed.part;
    let mut msg = RuleMessage::default();
    msg.header.family = match part.family() {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    };
    msg.header.action = RuleAction::ToTable;
    msg.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(RULE_PROTOCOL)));
    if let Some(priority) = placed.priority {
        msg.attributes.push(RuleAttribute::Priority(priority));
    }
    let table = match part {
        PolicyPart::DefaultRoute { .. } => return None,
        PolicyPart::NotMarked { mark, .. } => {
            // `not fwmark M`: the mark with a full mask, inverted.
            msg.header.flags = RuleFlags::Invert;
            msg.attributes.push(RuleAttribute::FwMark(mark));
            msg.attributes.push(RuleAttribute::FwMask(u32::MAX));
            mark
        }
        PolicyPart::SuppressMainDefault { mark, .. } => {
            // A mask of 0 matches every packet: the mark is only the tunnel's tag.
            msg.attributes.push(RuleAttribute::FwMark(mark));
            msg.attributes.push(RuleAttribute::FwMask(0));
            msg.attributes.push(RuleAttribute::SuppressPrefixLen(0));
            MAIN_TABLE
        }
    };
    // The header's table field is one byte; larger ids go in FRA_TABLE (as `ip rule` does).
    match u8::try_from(table) {
        Ok(t) => msg.header.table = t,
        Err(_) => {
            msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
            msg.attributes.push(RuleAttribute::Table(table));
        }
    }
    Some(msg)
}

/// The table of a rule message (FRA_TABLE when present, else the header's).
fn rule_table_id(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table))
}

/// Whether the dumped rule `theirs` is the rule `ours` describes (same family, inversion,
/// table, and every match attribute of ours), at whatever priority.
fn same_rule(ours: &RuleMessage, theirs: &RuleMessage) -> bool {
    ours.header.family == theirs.header.family
        && ours.header.flags.contains(RuleFlags::Invert)
            == theirs.header.flags.contains(RuleFlags::Invert)
        && rule_table_id(ours) == rule_table_id(theirs)
        && ours.attributes.iter().all(|a| {
            matches!(a, RuleAttribute::Table(_) | RuleAttribute::Priority(_))
                || theirs.attributes.contains(a)
        })
}

/// The table a dumped route belongs to (FRA_TABLE when present, else the header's).
fn route_table_id(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// How many stale copies of one rule a start removes at most (bounded loop; one per killed
/// run that left it, in practice one).
const MAX_STALE_RULES: usize = 64;

impl NetConf {
    /// Opens a route netlink socket in the calling thread's network namespace and spawns its
    /// connection on the current tokio runtime.
    pub async fn new() -> Result<Self, NetconfError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetconfError::Socket)?;
        let connection = tokio::spawn(connection);
        Ok(NetConf { handle, connection })
    }

    /// The index of the interface named `ifname`.
    pub async fn link_index(&self, ifname: &str) -> Result<u32, NetconfError> {
        check_ifname(ifname)?;
        let mut links = self.handle.link().get().match_name(ifname).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(NetconfError::LinkNotFound(ifname.to_owned())),
            Err(rtnetlink::Error::NetlinkError(msg)) if msg.raw_code() == -libc::ENODEV => {
                Err(NetconfError::LinkNotFound(ifname.to_owned()))
            }
            Err(e) => Err(NetconfError::netlink(format!("look up link {ifname:?}"), e)),
        }
    }

    /// Whether an interface named `ifname` exists.
    pub async fn link_exists(&self, ifname: &str) -> Result<bool, NetconfError> {
        match self.link_index(ifname).await {
            Ok(_) => Ok(true),
            Err(NetconfError::LinkNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets the MTU of link #index.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetconfError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| NetconfError::netlink(format!("set mtu {mtu} on link #{index}"), e))
    }

    /// Brings link #index up.
    pub async fn set_up(&self, index: u32) -> Result<(), NetconfError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| NetconfError::netlink(format!("set link #{index} up"), e))
    }

    /// Creates a veth pair `name` <-> `peer` (both ends here, down), as `ip link add NAME type
    /// veth peer name PEER` does.
    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<(), NetconfError> {
        check_ifname(name)?;
        check_ifname(peer)?;
        self.handle
            .link()
            .add(rtnetlink::LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(|e| NetconfError::netlink(format!("add veth pair {name} <-> {peer}"), e))
    }

    /// Moves link #index into the network namespace that `netns` (an open namespace file,
    /// e.g. `/proc/PID/ns/net`) refers to, as `ip link set DEV netns NS` does.
    pub async fn move_to_netns<F: std::os::fd::AsRawFd>(
        &self,
        index: u32,
        netns: &F,
    ) -> Result<(), NetconfError> {
        let message = rtnetlink::LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| NetconfError::netlink(format!("move link #{index} to a namespace"), e))
    }

    /// Adds `addr/prefix_len` to link #index. An address that is already there is an error
    /// (EEXIST, see [`NetconfError::is_exists`]).
    pub async fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetconfError> {
        check_interface_address(addr, prefix_len)?;
        self.handle
            .address()
            .add(index, addr, prefix_len)
            .execute()
            .await
            .map_err(|e| {
                NetconfError::netlink(
                    format!("add address {addr}/{prefix_len} on link #{index}"),
                    e,
                )
            })
    }

    /// Removes `addr/prefix_len` from link #index.
    pub async fn del_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetconfError> {
        check_prefix(addr, prefix_len)?;
        self.handle
            .address()
            .del(address_message(index, addr, prefix_len))
            .execute()
            .await
            .map_err(|e| {
                NetconfError::netlink(
                    format!("delete address {addr}/{prefix_len} from link #{index}"),
                    e,
                )
            })
    }

    /// Adds a route to `dest/prefix_len` through link #index in `table` (None: main). Host
    /// bits of `dest` are cleared. A route that is already there is an error (EEXIST, see
    /// [`NetconfError::is_exists`]).
    pub async fn add_route(
        &self,
        index: u32,
        dest: IpAddr,
        prefix_len: u8,
        table: Option<u32>,
    ) -> Result<(), NetconfError> {
        let message = route_message(index, dest, prefix_len, table)?;
        self.handle
            .route()
            .add(message)
            .execute()
            .await
            .map_err(|e| {
                NetconfError::netlink(
                    format!(
                        "add route {dest}/{prefix_len} dev #{index} table {}",
                        table_name(table)
                    ),
                    e,
                )
            })
    }

    /// Deletes the route [`NetConf::add_route`] adds for the same arguments. Routes of another
    /// protocol (the kernel's on-link prefix routes, routes added with `ip route`) are not
    /// matched.
    pub async fn del_route(
        &self,
        index: u32,
        dest: IpAddr,
        prefix_len: u8,
        table: Option<u32>,
    ) -> Result<(), NetconfError> {
        let message = route_message(index, dest, prefix_len, table)?;
        self.handle
            .route()
            .del(message)
            .execute()
            .await
            .map_err(|e| {
                NetconfError::netlink(
                    format!(
                        "delete route {dest}/{prefix_len} dev #{index} table {}",
                        table_name(table)
                    ),
                    e,
                )
            })
    }
}

impl NetConf {
    /// Adds one part of a full tunnel through link #index.
    pub async fn add_policy_part(&self, index: u32, placed: Placed) -> Result<(), NetconfError> {
        let part = placed.part;
        match part {
            PolicyPart::DefaultRoute { family, table } => {
                self.add_route(index, any(family), 0, Some(table)).await
            }
            _ => {
                let Some(message) = rule_message(placed) else {
                    return Ok(());
                };
                let mut request = self.handle.rule().add();
                *request.message_mut() = message;
                request
                    .execute()
                    .await
                    .map_err(|e| NetconfError::netlink(format!("add {part}"), e))
            }
        }
    }

    /// Removes one part of a full tunnel that [`NetConf::add_policy_part`] added.
    pub async fn del_policy_part(&self, index: u32, placed: Placed) -> Result<(), NetconfError> {
        let part = placed.part;
        match part {
            PolicyPart::DefaultRoute { family, table } => {
                self.del_route(index, any(family), 0, Some(table)).await
            }
            _ => {
                let Some(message) = rule_message(placed) else {
                    return Ok(());
                };
                self.handle
                    .rule()
                    .del(message)
                    .execute()
                    .await
                    .map_err(|e| NetconfError::netlink(format!("delete {part}"), e))
            }
        }
    }

    /// Removes every copy of a rule part that is already there: left by a run of tandem that
    /// was killed (`kill -9` leaves rules behind; routes go with the interface). Only rules
    /// with tandem's protocol and this mark match. Returns how many were removed.
    pub async fn purge_stale_rule(&self, part: PolicyPart) -> Result<usize, NetconfError> {
        if !part.is_rule() {
            return Ok(0);
        }
        for removed in 0..MAX_STALE_RULES {
            match self.del_policy_part(0, Placed::new(part)).await {
                Ok(()) => {}
                Err(e) if e.is_already_gone() => return Ok(removed),
                Err(e) => return Err(e),
            }
        }
        Ok(MAX_STALE_RULES)
    }

    /// The priority of rule `part` as the kernel has it (None: not there, or not a rule).
    pub async fn rule_priority(&self, part: PolicyPart) -> Result<Option<u32>, NetconfError> {
        let Some(ours) = rule_message(Placed::new(part)) else {
            return Ok(None);
        };
        let version = match part.family() {
            Family::V4 => rtnetlink::IpVersion::V4,
            Family::V6 => rtnetlink::IpVersion::V6,
        };
        let mut rules = self.handle.rule().get(version).execute();
        loop {
            match rules.try_next().await {
                Ok(Some(rule)) if same_rule(&ours, &rule) => {
                    return Ok(rule.attributes.iter().find_map(|a| match a {
                        RuleAttribute::Priority(p) => Some(*p),
                        _ => None,
                    }));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(None),
                Err(e) => return Err(NetconfError::netlink(format!("list rules for {part}"), e)),
            }
        }
    }

    /// The MTU of the path to `dest`, as `ip route get DEST mark MARK` finds it: the route's
    /// own `mtu` metric when it has one, else the MTU of the link it leaves by. `None` when no
    /// route reaches `dest`. A lookup only: nothing is sent.
    pub async fn path_mtu(&self, dest: IpAddr, mark: u32) -> Result<Option<u32>, NetconfError> {
        let mut query = RouteMessage::default();
        query.header.address_family = match dest {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        query.header.destination_prefix_length = if dest.is_ipv4() { 32 } else { 128 };
        query
            .attributes
            .push(RouteAttribute::Destination(match dest {
                IpAddr::V4(a) => RouteAddress::Inet(a),
                IpAddr::V6(a) => RouteAddress::Inet6(a),
            }));
        if mark != 0 {
            query.attributes.push(RouteAttribute::Mark(mark));
        }
        let route = match self.handle.route().get(query).execute().try_next().await {
            Ok(Some(route)) => route,
            Ok(None) => return Ok(None),
            // No route (ENETUNREACH, EHOSTUNREACH...): nothing known about this path.
            Err(rtnetlink::Error::NetlinkError(_)) => return Ok(None),
            Err(e) => {
                return Err(NetconfError::netlink(
                    format!("look up the route to {dest}"),
                    e,
                ));
            }
        };
        let mut oif = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Metrics(metrics) => {
                    if let Some(mtu) = metrics.iter().find_map(|m| match m {
                        RouteMetric::Mtu(mtu) if *mtu > 0 => Some(*mtu),
                        _ => None,
                    }) {
                        return Ok(Some(mtu));
                    }
                }
                RouteAttribute::Oif(index) => oif = Some(*index),
                _ => {}
            }
        }
        let Some(index) = oif else {
            return Ok(None);
        };
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(NetconfError::netlink(format!("look up link #{index}"), e)),
        }
    }

    /// Whether routing table `table` holds any route, IPv4 or IPv6 (wg-quick's test for a
    /// free table: `ip -4 route show table T` and `ip -6 ...` both empty).
    pub async fn table_has_routes(&self, table: u32) -> Result<bool, NetconfError> {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            // A dump of every table of the family; the kernel ignores a table filter unless
            // the socket asked for strict checking, so the table is compared here.
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            query.header.table = RouteHeader::RT_TABLE_UNSPEC;
            let mut routes = self.handle.route().get(query).execute();
            loop {
                match routes.try_next().await {
                    Ok(Some(route)) if route_table_id(&route) == table => return Ok(true),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        return Err(NetconfError::netlink(
                            format!("list routes of table {table}"),
                            e,
                        ));
                    }
                }
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::address::AddressAttribute;
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn destination(msg: &RouteMessage) -> Option<&RouteAddress> {
        msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(d) => Some(d),
            _ => None,
        })
    }

    #[test]
    fn v4_route_is_link_scoped_static_and_masked() {
        let msg = route_message(7, ip("10.9.0.1"), 24, None).expect("valid route");
        assert_eq!(msg.header.address_family, AddressFamily::Inet);
        assert_eq!(msg.header.destination_prefix_length, 24);
        assert_eq!(msg.header.scope, RouteScope::Link);
        assert_eq!(msg.header.protocol, RouteProtocol::Static);
        assert_eq!(msg.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(
            destination(&msg),
            Some(&RouteAddress::Inet("10.9.0.0".parse().expect("addr")))
        );
        assert!(msg.attributes.contains(&RouteAttribute::Oif(7)));
    }

    #[test]
    fn v6_route_is_universe_scoped() {
        let msg = route_message(3, ip("fd00:9::5"), 64, Some(MAIN_TABLE)).expect("valid route");
        assert_eq!(msg.header.address_family, AddressFamily::Inet6);
        assert_eq!(msg.header.scope, RouteScope::Universe);
        assert_eq!(msg.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(
            destination(&msg),
            Some(&RouteAddress::Inet6("fd00:9::".parse().expect("addr")))
        );
    }

    #[test]
    fn large_table_ids_go_in_an_attribute() {
        // The header's table field is one byte; wg-quick's 51820 needs RTA_TABLE.
        let msg = route_message(3, ip("0.0.0.0"), 0, Some(51820)).expect("valid route");
        assert!(msg.attributes.contains(&RouteAttribute::Table(51820)));
        let small = route_message(3, ip("0.0.0.0"), 0, Some(100)).expect("valid route");
        assert_eq!(small.header.table, 100);
    }

    #[test]
    fn invalid_route_prefix_is_rejected_before_the_kernel() {
        assert!(matches!(
            route_message(1, ip("10.0.0.0"), 33, None),
            Err(NetconfError::InvalidPrefix { prefix_len: 33, .. })
        ));
    }

    #[test]
    fn address_message_carries_local_and_index() {
        let msg = address_message(9, ip("10.9.0.1"), 24);
        assert_eq!(msg.header.index, 9);
        assert_eq!(msg.header.prefix_len, 24);
        assert!(
            msg.attributes
                .contains(&AddressAttribute::Local(ip("10.9.0.1")))
        );
        let msg6 = address_message(9, ip("fd00::1"), 64);
        assert_eq!(msg6.header.family, AddressFamily::Inet6);
        assert!(
            msg6.attributes
                .contains(&AddressAttribute::Address(ip("fd00::1")))
        );
    }

    #[test]
    fn table_names() {
        assert_eq!(table_name(None), "main");
        assert_eq!(table_name(Some(MAIN_TABLE)), "main");
        assert_eq!(table_name(Some(51820)), "51820");
    }
}
