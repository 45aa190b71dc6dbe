//! Bringing a configured interface from what [`Applied`] records to a new [`InterfacePlan`]
//! (a reload): the difference, computed without I/O ([`diff`]), then applied in order; a step
//! the kernel refuses undoes the steps before it, so the interface is left as it was. The
//! caller can also undo a successful sync ([`Synced::undo`]) when a later part of the same
//! reconfiguration fails.

use std::net::IpAddr;

use super::prefix::network;
use super::{Applied, InterfacePlan, NetConf, NetconfError};

/// One change to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Mtu { from: u32, to: u32 },
    DelAddress(IpAddr, u8),
    AddAddress(IpAddr, u8),
    DelRoute(IpAddr, u8, Option<u32>),
    AddRoute(IpAddr, u8, Option<u32>),
}

impl Step {
    /// The step that takes this one back.
    fn inverse(self) -> Step {
        match self {
            Step::Mtu { from, to } => Step::Mtu { from: to, to: from },
            Step::DelAddress(a, l) => Step::AddAddress(a, l),
            Step::AddAddress(a, l) => Step::DelAddress(a, l),
            Step::DelRoute(d, l, t) => Step::AddRoute(d, l, t),
            Step::AddRoute(d, l, t) => Step::DelRoute(d, l, t),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Mtu { to, .. } => write!(f, "set the MTU to {to}"),
            Step::DelAddress(a, l) => write!(f, "remove address {a}/{l}"),
            Step::AddAddress(a, l) => write!(f, "add address {a}/{l}"),
            Step::DelRoute(d, l, _) => write!(f, "remove route {d}/{l}"),
            Step::AddRoute(d, l, _) => write!(f, "add route {d}/{l}"),
        }
    }
}

/// The steps from `applied` to `plan`, in the order they run: MTU, addresses added (those
/// that only change their prefix length removed just before), addresses removed, routes
/// removed, added. Routes are compared as networks; a change of table moves every
/// route. Pure.
pub fn diff(applied: &Applied, plan: &InterfacePlan) -> Vec<Step> {
    let mut steps = Vec::new();
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
    let gone: Vec<(IpAddr, u8)> = applied
        .addresses
        .iter()
        .copied()
        .filter(|a| !plan.addresses.contains(a))
        .collect();
    let (replaced, gone): (Vec<_>, Vec<_>) = gone
        .into_iter()
        .partition(|&(addr, _)| plan.addresses.iter().any(|&(a, _)| a == addr));
    steps.extend(replaced.into_iter().map(|(a, l)| Step::DelAddress(a, l)));
    for &(addr, len) in &plan.addresses {
        if !applied.addresses.contains(&(addr, len)) {
            steps.push(Step::AddAddress(addr, len));
        }
    }
    steps.extend(gone.into_iter().map(|(a, l)| Step::DelAddress(a, l)));
    let table_changed = applied.table != plan.table;
    let mut wanted: Vec<(IpAddr, u8)> = Vec::with_capacity(plan.routes.len());
    for &(a, l) in &plan.routes {
        if let Ok(net) = network(a, l)
            && !wanted.contains(&(net, l))
        {
            wanted.push((net, l));
        }
    }
    for &(dest, len) in &applied.routes {
        if table_changed || !wanted.contains(&(dest, len)) {
            steps.push(Step::DelRoute(dest, len, applied.table));
        }
    }
    for &(dest, len) in &wanted {
        if table_changed || !applied.routes.contains(&(dest, len)) {
            steps.push(Step::AddRoute(dest, len, plan.table));
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
        if did {
            done.push(step);
        }
        match step {
            Step::Mtu { to, .. } => next.mtu = to,
            Step::DelAddress(a, l) => next.addresses.retain(|&x| x != (a, l)),
            Step::AddAddress(a, l) => next.addresses.push((a, l)),
            Step::DelRoute(d, l, _) => next.routes.retain(|&x| x != (d, l)),
            Step::AddRoute(d, l, _) => {
                if did {
                    next.routes.push((d, l));
                }
            }
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

/// Runs one step; `Ok(false)` when there was nothing to do (already there, already gone).
async fn run(nc: &NetConf, index: u32, step: Step) -> Result<bool, NetconfError> {
    let result = match step {
        Step::Mtu { to, .. } => nc.set_mtu(index, to).await,
        Step::DelAddress(a, l) => nc.del_address(index, a, l).await,
        Step::AddAddress(a, l) => nc.add_address(index, a, l).await,
        Step::DelRoute(d, l, t) => nc.del_route(index, d, l, t).await,
        Step::AddRoute(d, l, t) => nc.add_route(index, d, l, t).await,
    };
    match result {
        Ok(()) => {
            tracing::info!("interface: {step}");
            Ok(true)
        }
        Err(e)
            if matches!(step, Step::DelAddress(..) | Step::DelRoute(..)) && e.is_already_gone() =>
        {
            Ok(false)
        }
        // Already there (an address's own on-link route): not ours to remove later.
        Err(e) if matches!(step, Step::AddRoute(..)) && e.is_exists() => Ok(false),
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

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn applied() -> Applied {
        Applied {
            ifname: "tandem0".into(),
            index: 7,
            mtu: 1420,
            table: None,
            addresses: vec![(ip("10.9.0.1"), 24), (ip("fd00:9::1"), 64)],
            routes: vec![(ip("10.10.0.0"), 16), (ip("10.11.0.0"), 16)],
        }
    }

    fn plan() -> InterfacePlan {
        InterfacePlan {
            ifname: "tandem0".into(),
            mtu: 1420,
            addresses: vec![(ip("10.9.0.1"), 24), (ip("fd00:9::1"), 64)],
            routes: vec![(ip("10.10.0.0"), 16), (ip("10.11.0.0"), 16)],
            table: None,
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
        p.addresses = vec![(ip("10.9.0.1"), 24), (ip("10.9.1.1"), 24)];
        // Host bits in a wanted route: the same network as one in place.
        p.routes = vec![(ip("10.10.1.2"), 16), (ip("10.12.0.0"), 16)];
        assert_eq!(
            diff(&applied(), &p),
            [
                Step::Mtu {
                    from: 1420,
                    to: 1380
                },
                Step::AddAddress(ip("10.9.1.1"), 24),
                Step::DelAddress(ip("fd00:9::1"), 64),
                Step::DelRoute(ip("10.11.0.0"), 16, None),
                Step::AddRoute(ip("10.12.0.0"), 16, None),
            ]
        );
    }

    #[test]
    fn an_address_changing_its_prefix_length_comes_off_first() {
        let mut p = plan();
        p.addresses = vec![(ip("10.9.0.1"), 16), (ip("10.9.7.1"), 24)];
        assert_eq!(
            diff(&applied(), &p),
            [
                Step::DelAddress(ip("10.9.0.1"), 24),
                Step::AddAddress(ip("10.9.0.1"), 16),
                Step::AddAddress(ip("10.9.7.1"), 24),
                Step::DelAddress(ip("fd00:9::1"), 64),
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
                .all(|s| matches!(s, Step::DelRoute(_, _, None)))
        );
        assert!(
            steps[2..]
                .iter()
                .all(|s| matches!(s, Step::AddRoute(_, _, Some(51820))))
        );
    }

    #[test]
    fn every_step_has_an_inverse_that_takes_it_back() {
        for step in [
            Step::Mtu { from: 1, to: 2 },
            Step::AddAddress(ip("10.0.0.1"), 8),
            Step::DelAddress(ip("10.0.0.1"), 8),
            Step::AddRoute(ip("10.0.0.0"), 8, Some(3)),
            Step::DelRoute(ip("10.0.0.0"), 8, None),
        ] {
            assert_ne!(step.inverse(), step);
            assert_eq!(step.inverse().inverse(), step);
        }
    }
}
