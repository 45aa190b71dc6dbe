//! Bringing a configured interface from what [`Applied`] records to a new [`InterfacePlan`]
//! (a reload): the difference, computed without I/O ([`diff`]), then applied in order; a step
//! the kernel refuses undoes the steps before it, so the interface is left as it was. The
//! caller can also undo a successful sync ([`Synced::undo`]) when a later part of the same
//! reconfiguration fails.

use crate::proto::prefix::Prefix;

use super::plan::add_policy_part;
use super::policy::{FullTunnel, Placed, PolicyPart};
use super::{Applied, InterfacePlan, NetConf, NetconfError};

/// One change to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Mtu {
        from: u32,
        to: u32,
    },
    DelAddress(Prefix),
    AddAddress(Prefix),
    DelRoute(Prefix, Option<u32>),
    AddRoute(Prefix, Option<u32>),
    /// A part of a full tunnel (default route in the mark's table, or a rule).
    DelPolicy(Placed),
    AddPolicy(Placed),
}

impl Step {
    /// The step that takes this one back.
    fn inverse(self) -> Step {
        match self {
            Step::Mtu { from, to } => Step::Mtu { from: to, to: from },
            Step::DelAddress(a) => Step::AddAddress(a),
            Step::AddAddress(a) => Step::DelAddress(a),
            Step::DelRoute(d, t) => Step::AddRoute(d, t),
            Step::AddRoute(d, t) => Step::DelRoute(d, t),
            Step::DelPolicy(p) => Step::AddPolicy(p),
            Step::AddPolicy(p) => Step::DelPolicy(p),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Mtu { to, .. } => write!(f, "set the MTU to {to}"),
            Step::DelAddress(a) => write!(f, "remove address {a}"),
            Step::AddAddress(a) => write!(f, "add address {a}"),
            Step::DelRoute(d, _) => write!(f, "remove route {d}"),
            Step::AddRoute(d, _) => write!(f, "add route {d}"),
            Step::DelPolicy(p) => write!(f, "remove the full tunnel's {p}"),
            Step::AddPolicy(p) => write!(f, "add the full tunnel's {p}"),
        }
    }
}

/// The steps from `applied` to `plan`, in the order they run: full-tunnel parts that go
/// (last added first), MTU, addresses added (those that only change their prefix length
/// removed just before), addresses removed, routes removed, added, full-tunnel parts that
/// come (in [`FullTunnel::parts`] order). Routes are compared as networks; a change of table
/// moves every route, a change of mark every full-tunnel part. Pure.
///
/// Parts go in the reverse of the order they come in, so undoing a removal adds them back in
/// their own order, which is what gives the suppress rule its place before the other one.
pub fn diff(applied: &Applied, plan: &InterfacePlan) -> Vec<Step> {
    let mut steps = Vec::new();
    let wanted_policy: Vec<PolicyPart> = plan
        .full_tunnel
        .iter()
        .flat_map(FullTunnel::parts)
        .collect();
    for &placed in applied.policy.iter().rev() {
        if !wanted_policy.contains(&placed.part) {
            steps.push(Step::DelPolicy(placed));
        }
    }
    if applied.mtu != plan.mtu {
        steps.push(Step::Mtu {
            from: applied.mtu,
            to: plan.mtu,
        });
    }
    // New addresses go on before old ones come off: when the last IPv4 address of a link
    // goes, the kernel drops every IPv4 route through it, ours included. An address that only
    // changes its prefix length has to come off first (the kernel refuses the same IPv6
    // address twice).
    let gone: Vec<Prefix> = applied
        .addresses
        .iter()
        .copied()
        .filter(|a| !plan.addresses.contains(a))
        .collect();
    let (replaced, gone): (Vec<_>, Vec<_>) = gone
        .into_iter()
        .partition(|old| plan.addresses.iter().any(|a| a.addr() == old.addr()));
    steps.extend(replaced.into_iter().map(Step::DelAddress));
    for &address in &plan.addresses {
        if !applied.addresses.contains(&address) {
            steps.push(Step::AddAddress(address));
        }
    }
    steps.extend(gone.into_iter().map(Step::DelAddress));
    let table_changed = applied.table != plan.table;
    let mut wanted: Vec<Prefix> = Vec::with_capacity(plan.routes.len());
    for route in &plan.routes {
        let net = route.network();
        if !wanted.contains(&net) {
            wanted.push(net);
        }
    }
    for &route in &applied.routes {
        if table_changed || !wanted.contains(&route) {
            steps.push(Step::DelRoute(route, applied.table));
        }
    }
    for &route in &wanted {
        if table_changed || !applied.routes.contains(&route) {
            steps.push(Step::AddRoute(route, plan.table));
        }
    }
    for part in wanted_policy {
        if !applied.policy.iter().any(|p| p.part == part) {
            steps.push(Step::AddPolicy(Placed::new(part)));
        }
    }
    steps
}

/// A sync that went through: what is in place now, and the steps that did something (to undo
/// them if the rest of the reconfiguration fails).
#[derive(Debug)]
pub struct Synced {
    pub applied: Applied,
    pub done: Vec<Step>,
}

impl Synced {
    /// Takes the sync back, last step first. Best effort: a step that fails is logged.
    pub async fn undo(self, nc: &NetConf) {
        undo(nc, self.applied.index, &self.done).await;
    }
}

/// Applies the steps from `applied` to `plan`, all or none: on a refusal the steps already
/// done are undone and the error says which step failed. A route the kernel already has
/// (EEXIST, e.g. an address's own on-link route) is left alone and not recorded, and anything
/// to remove that is already gone counts as removed.
pub async fn sync(
    nc: &NetConf,
    applied: &Applied,
    plan: &InterfacePlan,
) -> Result<Synced, SyncError> {
    plan.check()
        .map_err(|source| SyncError { step: None, source })?;
    let index = applied.index;
    let mut next = applied.clone();
    next.table = plan.table;
    let mut done = Vec::new();
    for step in diff(applied, plan) {
        let did = match run(nc, index, step).await {
            Ok(did) => did,
            Err(source) => {
                undo(nc, index, &done).await;
                return Err(SyncError {
                    step: Some(step),
                    source,
                });
            }
        };
        if let Some(did) = did {
            done.push(did);
        }
        match did.unwrap_or(step) {
            Step::Mtu { to, .. } => next.mtu = to,
            Step::DelAddress(a) => next.addresses.retain(|&x| x != a),
            Step::AddAddress(a) => next.addresses.push(a),
            Step::DelRoute(d, _) => next.routes.retain(|&x| x != d),
            Step::AddRoute(d, _) => {
                if did.is_some() {
                    next.routes.push(d);
                }
            }
            Step::DelPolicy(p) => next.policy.retain(|x| x.part != p.part),
            Step::AddPolicy(p) => next.policy.push(p),
        }
    }
    Ok(Synced {
        applied: next,
        done,
    })
}

/// A step the kernel refused (the interface is as it was), or a plan that is not valid.
#[derive(Debug, thiserror::Error)]
#[error("{}", match step { Some(s) => format!("cannot {s}"), None => "invalid interface settings".to_owned() })]
pub struct SyncError {
    pub step: Option<Step>,
    #[source]
    pub source: NetconfError,
}

/// Runs one step; returns it as done (a rule added with the priority the kernel gave it), or
/// `None` when there was nothing to do (already there, already gone).
async fn run(nc: &NetConf, index: u32, step: Step) -> Result<Option<Step>, NetconfError> {
    let mut done = step;
    let result = match step {
        Step::Mtu { to, .. } => nc.set_mtu(index, to).await,
        Step::DelAddress(a) => nc.del_address(index, a.addr(), a.len()).await,
        Step::AddAddress(a) => nc.add_address(index, a.addr(), a.len()).await,
        Step::DelRoute(d, t) => nc.del_route(index, d.addr(), d.len(), t).await,
        Step::AddRoute(d, t) => nc.add_route(index, d.addr(), d.len(), t).await,
        Step::DelPolicy(p) => nc.del_policy_part(index, p).await,
        // A full tunnel's default route that is already there is an error, not skipped: it
        // is not tandem's, and the tunnel would not work through it.
        Step::AddPolicy(p) => add_policy_part(nc, index, p).await.map(|placed| {
            done = Step::AddPolicy(placed);
        }),
    };
    match result {
        Ok(()) => {
            tracing::info!("interface: {done}");
            Ok(Some(done))
        }
        Err(e)
            if matches!(
                step,
                Step::DelAddress(..) | Step::DelRoute(..) | Step::DelPolicy(..)
            ) && e.is_already_gone() =>
        {
            Ok(None)
        }
        // Already there (an address's own on-link route): not ours to remove later.
        Err(e) if matches!(step, Step::AddRoute(..)) && e.is_exists() => Ok(None),
        Err(e) => Err(e),
    }
}

async fn undo(nc: &NetConf, index: u32, done: &[Step]) {
    for &step in done.iter().rev() {
        let back = step.inverse();
        if let Err(e) = run(nc, index, back).await {
            tracing::error!("cannot undo a step of an interface change ({back}): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netconf::Family;

    use crate::testkit::pfx;

    fn applied() -> Applied {
        Applied {
            ifname: "tandem0".into(),
            index: 7,
            mtu: 1420,
            table: None,
            addresses: vec![pfx("10.9.0.1", 24), pfx("fd00:9::1", 64)],
            routes: vec![pfx("10.10.0.0", 16), pfx("10.11.0.0", 16)],
            policy: vec![],
        }
    }

    fn plan() -> InterfacePlan {
        InterfacePlan {
            ifname: "tandem0".into(),
            mtu: 1420,
            addresses: vec![pfx("10.9.0.1", 24), pfx("fd00:9::1", 64)],
            routes: vec![pfx("10.10.0.0", 16), pfx("10.11.0.0", 16)],
            table: None,
            full_tunnel: None,
        }
    }

    #[test]
    fn the_same_settings_need_no_step() {
        assert!(diff(&applied(), &plan()).is_empty());
    }

    #[test]
    fn steps_come_in_order_and_compare_routes_as_networks() {
        let mut p = plan();
        p.mtu = 1380;
        p.addresses = vec![pfx("10.9.0.1", 24), pfx("10.9.1.1", 24)];
        // Host bits in a wanted route: the same network as one in place.
        p.routes = vec![pfx("10.10.1.2", 16), pfx("10.12.0.0", 16)];
        assert_eq!(
            diff(&applied(), &p),
            [
                Step::Mtu {
                    from: 1420,
                    to: 1380
                },
                Step::AddAddress(pfx("10.9.1.1", 24)),
                Step::DelAddress(pfx("fd00:9::1", 64)),
                Step::DelRoute(pfx("10.11.0.0", 16), None),
                Step::AddRoute(pfx("10.12.0.0", 16), None),
            ]
        );
    }

    #[test]
    fn an_address_changing_its_prefix_length_comes_off_first() {
        let mut p = plan();
        p.addresses = vec![pfx("10.9.0.1", 16), pfx("10.9.7.1", 24)];
        assert_eq!(
            diff(&applied(), &p),
            [
                Step::DelAddress(pfx("10.9.0.1", 24)),
                Step::AddAddress(pfx("10.9.0.1", 16)),
                Step::AddAddress(pfx("10.9.7.1", 24)),
                Step::DelAddress(pfx("fd00:9::1", 64)),
            ]
        );
    }

    #[test]
    fn a_new_table_moves_every_route() {
        let mut p = plan();
        p.table = Some(51820);
        let steps = diff(&applied(), &p);
        assert_eq!(steps.len(), 4, "{steps:?}");
        assert!(
            steps[..2]
                .iter()
                .all(|s| matches!(s, Step::DelRoute(_, None)))
        );
        assert!(
            steps[2..]
                .iter()
                .all(|s| matches!(s, Step::AddRoute(_, Some(51820))))
        );
    }

    #[test]
    fn every_step_has_an_inverse_that_takes_it_back() {
        for step in [
            Step::Mtu { from: 1, to: 2 },
            Step::AddAddress(pfx("10.0.0.1", 8)),
            Step::DelAddress(pfx("10.0.0.1", 8)),
            Step::AddRoute(pfx("10.0.0.0", 8), Some(3)),
            Step::DelRoute(pfx("10.0.0.0", 8), None),
            Step::AddPolicy(Placed::new(PolicyPart::NotMarked {
                family: Family::V6,
                mark: 7,
            })),
            Step::DelPolicy(Placed {
                part: PolicyPart::NotMarked {
                    family: Family::V4,
                    mark: 7,
                },
                priority: Some(99),
            }),
        ] {
            assert_ne!(step.inverse(), step);
            assert_eq!(step.inverse().inverse(), step);
        }
    }

    fn full(mark: u32, v4: bool, v6: bool) -> Option<FullTunnel> {
        Some(FullTunnel { mark, v4, v6 })
    }

    #[test]
    fn a_full_tunnel_comes_last_and_goes_first_in_reverse() {
        let mut p = plan();
        p.full_tunnel = full(51820, true, true);
        p.routes.push(pfx("10.12.0.0", 16));
        let steps = diff(&applied(), &p);
        let parts = FullTunnel {
            mark: 51820,
            v4: true,
            v6: true,
        }
        .parts();
        assert_eq!(steps[0], Step::AddRoute(pfx("10.12.0.0", 16), None));
        assert_eq!(
            steps[1..],
            parts
                .iter()
                .map(|&x| Step::AddPolicy(Placed::new(x)))
                .collect::<Vec<_>>()[..]
        );

        // In place: dropping ::/0 removes the IPv6 parts only, last added first, before
        // anything else changes.
        let mut a = applied();
        a.policy = parts.iter().map(|&x| Placed::new(x)).collect();
        let mut p = plan();
        p.mtu = 1400;
        p.full_tunnel = full(51820, true, false);
        let steps = diff(&a, &p);
        assert_eq!(
            steps,
            [
                Step::DelPolicy(Placed::new(parts[5])),
                Step::DelPolicy(Placed::new(parts[4])),
                Step::DelPolicy(Placed::new(parts[3])),
                Step::Mtu {
                    from: 1420,
                    to: 1400
                },
            ]
        );
        assert!(parts[3..].iter().all(|x| x.family() == Family::V6));
        // Undone, they come back in their own order.
        let back: Vec<Step> = steps[..3].iter().rev().map(|s| s.inverse()).collect();
        assert_eq!(
            back,
            parts[3..]
                .iter()
                .map(|&x| Step::AddPolicy(Placed::new(x)))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_new_mark_replaces_every_part() {
        let mut a = applied();
        a.policy = FullTunnel {
            mark: 51820,
            v4: true,
            v6: false,
        }
        .parts()
        .into_iter()
        .map(Placed::new)
        .collect();
        let mut p = plan();
        p.full_tunnel = full(7, true, false);
        let steps = diff(&a, &p);
        assert_eq!(steps.len(), 6, "{steps:?}");
        assert!(steps[..3].iter().all(|s| matches!(s, Step::DelPolicy(_))));
        assert!(steps[3..].iter().all(|s| matches!(s, Step::AddPolicy(_))));
        // The same full tunnel: nothing to do.
        p.full_tunnel = full(51820, true, false);
        assert!(diff(&a, &p).is_empty());
        // Off again: everything goes.
        p.full_tunnel = None;
        assert_eq!(diff(&a, &p).len(), 3);
    }
}
