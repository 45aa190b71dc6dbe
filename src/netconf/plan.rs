//! `InterfacePlan`: everything one interface needs, applied in order and undone on teardown.

use crate::proto::prefix::Prefix;

use super::policy::{Family, FullTunnel, Placed, PolicyPart};
use super::prefix::{check_ifname, check_interface_address};
use super::sysctl::ensure_src_valid_mark;
use super::{NetConf, NetconfError};

/// Everything one interface needs: its MTU, addresses, routes to the peers' AllowedIPs
/// through it, all in one routing table (None: main), and a full tunnel's policy routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    pub ifname: String,
    pub mtu: u32,
    /// Addresses with their on-link prefix length (host bits are the point).
    pub addresses: Vec<Prefix>,
    pub routes: Vec<Prefix>,
    pub table: Option<u32>,
    /// A full tunnel the wg-quick way (see `netconf::policy`), or none.
    pub full_tunnel: Option<FullTunnel>,
}

/// What [`apply`] changed, which is exactly what [`teardown`] undoes. Routes that already
/// existed (EEXIST, e.g. the kernel's on-link route for an address's own prefix) are not
/// listed, so teardown leaves them alone. The MTU and the link's up state are not undone: the
/// link belongs to the TUN device and goes away with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub ifname: String,
    pub index: u32,
    /// The MTU set (the link's, not undone on teardown).
    pub mtu: u32,
    pub table: Option<u32>,
    /// Addresses added, in the order they were added.
    pub addresses: Vec<Prefix>,
    /// Routes added (host bits cleared), in the order they were added.
    pub routes: Vec<Prefix>,
    /// The parts of a full tunnel added (default routes and rules), in the order they were
    /// added.
    pub policy: Vec<Placed>,
}

impl Applied {
    /// The full tunnel's mark, when one is in place.
    pub fn full_tunnel_mark(&self) -> Option<u32> {
        self.policy.iter().find_map(|p| match p.part {
            PolicyPart::NotMarked { mark, .. } => Some(mark),
            _ => None,
        })
    }
}

impl InterfacePlan {
    /// Checks the whole plan without touching the kernel: interface name, every address and
    /// every route prefix, and no address listed twice.
    pub fn check(&self) -> Result<(), NetconfError> {
        check_ifname(&self.ifname)?;
        for (i, address) in self.addresses.iter().enumerate() {
            let (addr, prefix_len) = (address.addr(), address.len());
            check_interface_address(addr, prefix_len)?;
            if self.addresses.iter().take(i).any(|a| a.addr() == addr) {
                return Err(NetconfError::DuplicateAddress { addr, prefix_len });
            }
        }
        // Routes are `Prefix`es: their lengths fit their families by construction.
        if let Some(ft) = &self.full_tunnel {
            ft.check()?;
        }
        Ok(())
    }
}

/// Applies `plan` in order: MTU, addresses, link up, routes. A route that already exists is
/// skipped (and so kept on teardown). On any other error, what was added so far is removed
/// again before the error is returned.
pub async fn apply(nc: &NetConf, plan: &InterfacePlan) -> Result<Applied, NetconfError> {
    plan.check()?;
    let index = nc.link_index(&plan.ifname).await?;
    let mut applied = Applied {
        ifname: plan.ifname.clone(),
        index,
        mtu: plan.mtu,
        table: plan.table,
        addresses: Vec::with_capacity(plan.addresses.len()),
        routes: Vec::with_capacity(plan.routes.len()),
        policy: Vec::new(),
    };
    match apply_steps(nc, plan, &mut applied).await {
        Ok(()) => Ok(applied),
        Err(e) => {
            if let Err(undo) = teardown(nc, &applied).await {
                tracing::warn!(
                    ifname = %plan.ifname,
                    error = %undo,
                    "could not fully undo a failed interface setup"
                );
            }
            Err(e)
        }
    }
}

async fn apply_steps(
    nc: &NetConf,
    plan: &InterfacePlan,
    applied: &mut Applied,
) -> Result<(), NetconfError> {
    let index = applied.index;
    nc.set_mtu(index, plan.mtu).await?;
    for &address in &plan.addresses {
        nc.add_address(index, address.addr(), address.len()).await?;
        applied.addresses.push(address);
    }
    // Up before routes: the kernel refuses an IPv4 route through a link that is down, and
    // only then adds the on-link routes of the addresses, which a route may duplicate.
    nc.set_up(index).await?;
    for route in &plan.routes {
        let route = route.network();
        let (dest, prefix_len) = (route.addr(), route.len());
        match nc.add_route(index, dest, prefix_len, plan.table).await {
            Ok(()) => applied.routes.push(route),
            Err(e) if e.is_exists() => {
                tracing::debug!(
                    ifname = %plan.ifname,
                    route = %format_args!("{dest}/{prefix_len}"),
                    "route already present, keeping it as it is"
                );
            }
            Err(e) => return Err(e),
        }
    }
    // Policy routing last: its rules send everything to the tunnel, which now has its
    // addresses and routes (and the sockets already carry the mark).
    for part in plan.full_tunnel.iter().flat_map(FullTunnel::parts) {
        let placed = add_policy_part(nc, index, Placed::new(part)).await?;
        applied.policy.push(placed);
    }
    Ok(())
}

/// Adds one part of a full tunnel. A rule first replaces any stale copy of itself (same
/// mark, tandem's protocol) that a killed run left; an IPv4 default route first turns
/// `src_valid_mark` on, as wg-quick does (a warning if that cannot be done: it only matters
/// with strict reverse-path filtering, see `netconf::sysctl`). Returns the part as placed
/// (with the priority the kernel gave a rule).
pub(crate) async fn add_policy_part(
    nc: &NetConf,
    index: u32,
    placed: Placed,
) -> Result<Placed, NetconfError> {
    let part = placed.part;
    match part {
        PolicyPart::DefaultRoute {
            family: Family::V4, ..
        } => match ensure_src_valid_mark() {
            Ok(true) => tracing::info!("net.ipv4.conf.all.src_valid_mark set to 1"),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "cannot set net.ipv4.conf.all.src_valid_mark=1 (with rp_filter=1 and \
                 mark-restoring firewall rules, replies from the endpoint may be dropped)"
            ),
        },
        PolicyPart::DefaultRoute { .. } => {}
        _ => {
            let stale = nc.purge_stale_rule(part).await?;
            if stale > 0 {
                tracing::info!("removed {stale} stale {part} left by an earlier run");
            }
        }
    }
    nc.add_policy_part(index, placed).await?;
    if !part.is_rule() || placed.priority.is_some() {
        return Ok(placed);
    }
    Ok(Placed {
        part,
        priority: nc.rule_priority(part).await?,
    })
}

/// Removes what [`apply`] added: the full tunnel's parts, routes, then addresses, each in
/// reverse order. Best effort:
/// every step is tried; anything already gone (the link closed, a route removed by hand)
/// counts as done; the first real error is returned.
pub async fn teardown(nc: &NetConf, applied: &Applied) -> Result<(), NetconfError> {
    let mut first_error = None;
    let mut note = |result: Result<(), NetconfError>| {
        if let Err(e) = result {
            if e.is_already_gone() {
                return;
            }
            tracing::warn!(ifname = %applied.ifname, error = %e, "teardown step failed");
            first_error.get_or_insert(e);
        }
    };
    for &placed in applied.policy.iter().rev() {
        note(nc.del_policy_part(applied.index, placed).await);
    }
    for route in applied.routes.iter().rev() {
        note(
            nc.del_route(applied.index, route.addr(), route.len(), applied.table)
                .await,
        );
    }
    for address in applied.addresses.iter().rev() {
        note(
            nc.del_address(applied.index, address.addr(), address.len())
                .await,
        );
    }
    match first_error {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().expect("test address")
    }

    use crate::testkit::pfx;

    fn plan() -> InterfacePlan {
        InterfacePlan {
            ifname: "tandem0".into(),
            mtu: 1420,
            addresses: vec![pfx("10.9.0.1", 24), pfx("fd00:9::1", 64)],
            routes: vec![pfx("10.9.0.0", 24), pfx("10.10.0.0", 16)],
            table: None,
            full_tunnel: None,
        }
    }

    /// The daemon runs setup on a multi-threaded runtime, so these futures must be `Send`.
    #[allow(dead_code)]
    fn futures_are_send(nc: &NetConf, plan: &InterfacePlan, applied: &Applied) {
        fn is_send<T: Send>(_: T) {}
        is_send(apply(nc, plan));
        is_send(teardown(nc, applied));
        is_send(NetConf::new());
    }

    #[test]
    fn a_good_plan_passes() {
        assert!(plan().check().is_ok());
    }

    #[test]
    fn plan_check_reports_each_kind_of_mistake() {
        let mut p = plan();
        p.ifname = "this-name-is-too-long".into();
        assert!(matches!(p.check(), Err(NetconfError::InvalidIfname(_))));

        let mut p = plan();
        p.addresses.push(pfx("224.0.0.1", 24));
        assert!(matches!(p.check(), Err(NetconfError::InvalidAddress(_))));

        let mut p = plan();
        p.addresses.push(pfx("10.9.0.1", 16));
        assert!(matches!(
            p.check(),
            Err(NetconfError::DuplicateAddress { prefix_len: 16, .. })
        ));

        // A route of 129 bits cannot even be made: `Prefix` checks lengths when made.
        assert!(Prefix::new(ip("fd00::"), 129).is_err());

        let mut p = plan();
        p.full_tunnel = Some(FullTunnel {
            mark: 254,
            v4: true,
            v6: false,
        });
        assert!(matches!(p.check(), Err(NetconfError::ReservedTable(254))));
    }
}
