//! SIGHUP: read and check the new config completely first, then apply it. A config that does
//! not load, or that asks for something that cannot be done (another interface name, a
//! port that is taken), changes nothing.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, bail};

use super::run::Managed;
use super::settings::{self, PeerChanges, Resolved};
use crate::config;
use crate::driver::{DataPlane, Driver, UdpSockets};
use crate::netconf::prefix::network;
use crate::netconf::{Applied, NetConf};

/// A new configuration, loaded, checked and resolved, not applied yet.
#[derive(Debug)]
pub struct Prepared {
    pub resolved: Resolved,
}

/// Reads, checks and resolves the config at `path` (runs beside the data plane).
/// `no_offload` (from `tandem up --no-offload`) overrides the file's `offload`.
pub async fn prepare(path: &Path, no_offload: bool) -> anyhow::Result<Prepared> {
    let owned = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || config::load(&owned))
        .await
        .context("the config loader stopped")?;
    let mut config = loaded.map_err(|errors| {
        anyhow::anyhow!(
            "{} has {} problem(s):\n{errors}",
            path.display(),
            errors.len()
        )
    })?;
    if no_offload {
        config.interface.offload = false;
    }
    for warning in &config.warnings {
        tracing::warn!("{}", warning.to_string().trim_start_matches("warning: "));
    }
    let resolved = settings::resolve(config).await?;
    Ok(Prepared { resolved })
}

/// Applies a prepared config. Everything that can fail without side effects (interface name,
/// plan check, new sockets, fwmark) is done first; on error nothing has changed. Then the
/// core's keys and peers are swapped in (on the data plane's thread, between two batches),
/// and the interface's MTU, addresses and routes are brought in line (a kernel refusal there
/// is logged and the rest still applied).
pub(crate) async fn apply(
    plane: &DataPlane,
    ifname: &str,
    managed: &mut Managed,
    prepared: Prepared,
) -> anyhow::Result<()> {
    let resolved = prepared.resolved;
    let new = &resolved.config.interface;
    let old = &managed.config.interface;
    if new.name != ifname {
        bail!(
            "configuration unchanged: the interface name changed from {ifname} to {}: restart \
             the daemon for that",
            new.name
        );
    }
    let (plan, warnings) = settings::interface_plan(&resolved.config, ifname);
    plan.check()
        .context("configuration unchanged: the new interface settings are invalid")?;
    let offload_changed = new.offload != old.offload;
    let mtu_changed = new.mtu != old.mtu;

    let (resolved, changes) = plane
        .run(move |driver| {
            let changes = apply_to_data_plane(driver, &resolved);
            (resolved, changes)
        })
        .await?;
    let changes = changes?;

    // Committed: from here on the new config is the running one.
    for w in warnings {
        tracing::warn!("{w}");
    }
    if offload_changed {
        tracing::warn!("a change of `offload` takes effect when the daemon restarts");
    }
    sync_interface(&managed.netconf, &mut managed.applied, &plan, mtu_changed).await;
    tracing::info!(
        peers = resolved.config.peers.len(),
        added = changes.added.len(),
        removed = changes.removed.len(),
        kept = changes.updated.len(),
        "configuration reloaded"
    );
    managed.config = resolved.config;
    Ok(())
}

/// The data plane's part of a reload, run on its thread: new sockets (when the port changes)
/// or the fwmark first, since they can fail; then keys and peers.
fn apply_to_data_plane(driver: &mut Driver, resolved: &Resolved) -> anyhow::Result<PeerChanges> {
    let new = &resolved.config.interface;
    // New sockets when the port changes (a config without a port keeps the current one).
    let new_sockets = match new.listen_port {
        Some(port) if port != 0 && port != driver.udp().port() => Some(
            UdpSockets::bind(Some(port), new.fwmark)
                .and_then(|sockets| driver.register_udp(sockets))
                .with_context(|| {
                    format!("configuration unchanged: cannot listen on UDP port {port}")
                })?,
        ),
        _ => None,
    };
    if new_sockets.is_none() && new.fwmark != driver.udp().fwmark() {
        driver
            .set_fwmark(new.fwmark)
            .context("configuration unchanged: cannot change the fwmark")?;
    }
    if let Some(sockets) = new_sockets {
        tracing::info!(
            from = driver.udp().port(),
            to = sockets.port(),
            "listen port changed"
        );
        driver.install_udp(sockets);
    }
    let now = driver.now();
    let device = &mut driver.device;
    if device.private_key() != Some(&new.private_key) {
        tracing::info!(
            public_key = %new.private_key.public_key(),
            "private key changed: every session restarts"
        );
        device.set_private_key(Some(new.private_key.clone()));
    }
    device.set_mtu(usize::from(new.mtu));
    // Checked configs never fail here; should one still, say what state it leaves.
    let changes = settings::sync_peers(device, resolved, now).context(
        "the new keys and peers were only partly applied (the interface's addresses and routes \
         are unchanged): fix the config and reload again",
    )?;
    // A peer whose keepalive was just turned on has a keepalive or initiation waiting.
    driver.flush();
    Ok(changes)
}

/// Brings the interface from what `applied` records to `plan`: MTU, then addresses and routes
/// added and removed by difference. `applied` is updated to what is now in place, so that
/// shutdown removes exactly that.
async fn sync_interface(
    nc: &NetConf,
    applied: &mut Applied,
    plan: &crate::netconf::InterfacePlan,
    mtu_changed: bool,
) {
    let index = applied.index;
    if mtu_changed && let Err(e) = nc.set_mtu(index, plan.mtu).await {
        tracing::error!("cannot change the MTU: {e:#}");
    }

    // Addresses: remove the ones no longer wanted, then add the new ones.
    let wanted = &plan.addresses;
    let mut kept = Vec::with_capacity(applied.addresses.len());
    for &(addr, len) in &applied.addresses {
        if wanted.contains(&(addr, len)) {
            kept.push((addr, len));
            continue;
        }
        match nc.del_address(index, addr, len).await {
            Ok(()) => tracing::info!(address = %format_args!("{addr}/{len}"), "address removed"),
            Err(e) if e.is_already_gone() => {}
            Err(e) => {
                tracing::error!("cannot remove address {addr}/{len}: {e:#}");
                kept.push((addr, len));
            }
        }
    }
    for &(addr, len) in wanted {
        if kept.contains(&(addr, len)) {
            continue;
        }
        match nc.add_address(index, addr, len).await {
            Ok(()) => {
                tracing::info!(address = %format_args!("{addr}/{len}"), "address added");
                kept.push((addr, len));
            }
            Err(e) => tracing::error!("cannot add address {addr}/{len}: {e:#}"),
        }
    }
    applied.addresses = kept;

    // Routes, compared as networks; a table change moves every route.
    let table_changed = applied.table != plan.table;
    let wanted: Vec<(IpAddr, u8)> = plan
        .routes
        .iter()
        .filter_map(|&(a, l)| network(a, l).ok().map(|n| (n, l)))
        .collect();
    let mut kept = Vec::with_capacity(applied.routes.len());
    for &(dest, len) in &applied.routes {
        if !table_changed && wanted.contains(&(dest, len)) {
            kept.push((dest, len));
            continue;
        }
        match nc.del_route(index, dest, len, applied.table).await {
            Ok(()) => tracing::info!(route = %format_args!("{dest}/{len}"), "route removed"),
            Err(e) if e.is_already_gone() => {}
            Err(e) => {
                tracing::error!("cannot remove route {dest}/{len}: {e:#}");
                if !table_changed {
                    kept.push((dest, len));
                }
            }
        }
    }
    applied.table = plan.table;
    for &(dest, len) in &wanted {
        if kept.contains(&(dest, len)) {
            continue;
        }
        match nc.add_route(index, dest, len, plan.table).await {
            Ok(()) => {
                tracing::info!(route = %format_args!("{dest}/{len}"), "route added");
                kept.push((dest, len));
            }
            // Already there (an address's own on-link route): not ours to remove later.
            Err(e) if e.is_exists() => {}
            Err(e) => tracing::error!("cannot add route {dest}/{len}: {e:#}"),
        }
    }
    applied.routes = kept;
}
