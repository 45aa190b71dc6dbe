//! SIGHUP: read and check the new config completely first, then apply it through the one
//! reconciler. A config that does not load, or that asks for something that cannot be done
//! (another interface name, a port that is taken, an address the kernel refuses), changes
//! nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use super::settings::{self, Resolved};
use crate::config;
use crate::config::Config;
use crate::driver::DataPlane;
use crate::driver::oplog::{PeerNames, log_changes};
use crate::netconf::{self, Applied, NetConf};

/// What a config file manages besides the data plane.
pub(crate) struct Managed {
    pub netconf: NetConf,
    pub applied: Applied,
    pub config: Config,
    pub path: PathBuf,
    /// `tandem up --no-offload`: reloaded configs keep offloads off too.
    pub no_offload: bool,
    /// The DNS settings in place (removed on the way down).
    pub dns: Option<super::dns::AppliedDns>,
}

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
    let resolved = settings::resolve(config).await;
    Ok(Prepared { resolved })
}

/// Applies a prepared config through the one reconciler, all or nothing. Everything that
/// can be checked without side effects (the interface name, the interface settings) is
/// checked first; then the interface's MTU, addresses, routes and full-tunnel rules change
/// over netlink (a refusal there undoes the steps before it); then the device's part runs on
/// the data plane's thread (new sockets and fwmark first, then keys and peers, see `Driver::apply_plan`); if
/// that fails, the netlink changes are undone. So on any error the interface, its keys, peers,
/// sessions and sockets are as they were, and the error says so.
pub(crate) async fn apply(
    plane: &DataPlane,
    ifname: &str,
    managed: &mut Managed,
    prepared: Prepared,
) -> anyhow::Result<()> {
    let mut resolved = prepared.resolved;
    if resolved.config.interface.name != ifname {
        bail!(
            "configuration unchanged: the interface name changed from {ifname} to {}: restart \
             the daemon for that",
            resolved.config.interface.name
        );
    }
    let old = &managed.config.interface;
    // A full tunnel whose mark was chosen (none configured) keeps it while it stays one.
    let running_auto_mark = if old.fwmark == 0 {
        managed.applied.full_tunnel_mark()
    } else {
        None
    };
    let fwmark = settings::fwmark(&managed.netconf, &resolved.config, running_auto_mark)
        .await
        .context("configuration unchanged")?;
    // Without an `mtu`, the paths to the (possibly new) endpoints decide, with the sockets'
    // mark, so a running full tunnel's rules do not send the lookup into the tunnel.
    resolved.config.interface.mtu =
        Some(settings::automatic_mtu(&managed.netconf, &resolved, fwmark).await);
    let new = &resolved.config.interface;
    let plan = settings::interface_plan(&resolved.config, ifname, fwmark);
    let desired = settings::desired(&resolved, fwmark);
    // The interface goes first because its steps can be undone. So a reload that turns a
    // full tunnel on adds its rules a moment before the sockets get the mark; packets sent
    // in between go round through the tunnel until they outgrow the MTU (harmless, and a
    // handshake is retried). One that turns it off removes the rules first, which is safe.
    let synced = netconf::sync(&managed.netconf, &managed.applied, &plan)
        .await
        .context("configuration unchanged")?;
    let changes = match plane.control().apply(desired).await {
        Ok(Ok(changes)) => changes,
        Ok(Err(e)) => {
            synced.undo(&managed.netconf).await;
            return Err(anyhow::Error::new(e).context("configuration unchanged"));
        }
        Err(e) => {
            synced.undo(&managed.netconf).await;
            return Err(anyhow::Error::new(e).context("configuration unchanged"));
        }
    };

    // Committed: from here on the new config is the running one.
    if new.offload != old.offload {
        tracing::warn!("a change of `offload` takes effect when the daemon restarts");
    }
    managed.applied = synced.applied;
    // The data plane names peers by the new config from now on; the summary names removed
    // peers by the old one.
    let names = log_names(&resolved.config);
    let mut both = log_names(&managed.config);
    both.extend(names.iter().map(|(k, v)| (*k, Arc::clone(v))));
    if plane.control().set_names(names).await.is_err() {
        tracing::debug!("the data plane stopped before it got the new peer names");
    }
    let extra = interface_changes(&managed.config, &resolved.config);
    log_changes("configuration reloaded", &changes, &both, &extra);
    managed.config = resolved.config;
    Ok(())
}

/// The config's peer names, for the data plane's log lines.
pub(crate) fn log_names(config: &Config) -> PeerNames {
    config
        .peers
        .iter()
        .filter_map(|p| {
            p.name
                .as_deref()
                .map(|name| (p.public_key, Arc::from(name)))
        })
        .collect()
}

/// What a reload changed of the interface beyond the device (which `Changes` covers), for the
/// reload's summary line.
fn interface_changes(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) = (&old.interface, &new.interface);
    let mut out = Vec::new();
    if old.addresses != new.addresses {
        out.push("addresses changed".to_owned());
    }
    if old.mtu != new.mtu {
        let mtu = new.mtu.map_or_else(|| "auto".to_owned(), |m| m.to_string());
        out.push(format!("MTU {mtu}"));
    }
    if old.table != new.table {
        out.push("routing table changed".to_owned());
    }
    if old.dns != new.dns || old.dns_search != new.dns_search {
        out.push("DNS changed".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_toml;

    fn config(tail: &str) -> Config {
        let text = format!(
            "[interface]\nname = \"tnd0\"\nprivate_key = \"{}\"\n{tail}\n\n\
             [[peer]]\nname = \"phone\"\npublic_key = \"{}\"\nallowed_ips = [\"10.0.0.2/32\"]\n\n\
             [[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"10.0.0.3/32\"]\n",
            crate::testkit::key(1).to_base64(),
            crate::testkit::key(2).public_key().to_base64(),
            crate::testkit::key(3).public_key().to_base64(),
        );
        parse_toml(Path::new("test.toml"), &text).expect("config")
    }

    /// The reload summary's interface part says what changed beyond the device.
    #[test]
    fn interface_changes_are_summarised() {
        let old = config("address = [\"10.0.0.1/24\"]");
        assert_eq!(interface_changes(&old, &old), Vec::<String>::new());
        let new = config("address = [\"10.0.1.1/24\"]\nmtu = 1400\ndns = [\"10.0.0.53\"]");
        assert_eq!(
            interface_changes(&old, &new),
            ["addresses changed", "MTU 1400", "DNS changed"]
        );
    }

    /// Only named peers are in the map; the others are logged by fingerprint.
    #[test]
    fn log_names_are_the_config_names() {
        let names = log_names(&config(""));
        assert_eq!(names.len(), 1);
        assert_eq!(
            names
                .get(&crate::testkit::key(2).public_key())
                .map(|n| &**n),
            Some("phone")
        );
    }
}
