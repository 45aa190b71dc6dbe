//! What the running daemon keeps: CAP_NET_ADMIN (and CAP_NET_BIND_SERVICE when the config
//! listens on a port below 1024), optionally as `--user NAME`; how the mechanics work, thread
//! by thread, is `os::privilege`'s story. This module decides the plan for a config, refuses
//! what could not work after the drop, hands the UAPI socket to the user, and says in the log
//! what is in force.
//!
//! What needs more than CAP_NET_ADMIN, and how each is handled:
//! - Binding a UDP port below 1024: CAP_NET_BIND_SERVICE is kept when the config's
//!   `listen_port` is one (then a later move to another low port works too); otherwise a
//!   later move to a low port (reload, `wg set listen-port`) fails with EACCES, reported as such.
//!   The metrics listener is bound before the drop, so any port works for it.
//! - Writing net sysctls (a full tunnel's `src_valid_mark`): CAP_NET_ADMIN is enough, as the
//!   kernel grants a network administrator root's access to /proc/sys/net.
//! - PreUp and PostUp run before the drop, with the privileges tandem was started with, as
//!   wg-quick runs them. PreDown and PostDown run after it: as the daemon's user, with
//!   CAP_NET_ADMIN in their ambient set (so `ip`, `wg`, `nft` and net sysctls work) and nothing
//!   else; no-new-privs keeps setuid programs (sudo) from raising them.
//! - DNS: set before the drop; removed after it, by `resolvconf -d` / `resolvectl revert` as
//!   the daemon's user with CAP_NET_ADMIN. As root that still works (resolvconf's files are
//!   root's own); as another user it could not, so `--user` refuses a config with `dns`, and
//!   a reload that adds DNS under `--user` is refused with an error in the log.
//! - The UAPI socket: created as root before the drop. With `--user`, the socket file is handed
//!   to the user and the socket directory gets the user's group with group write and the
//!   sticky bit (members may remove only their own files), so the daemon can remove its socket
//!   on the way out; `wg` as root uses it as before.
//! - Reloads read the config file again as the daemon's user: when it cannot, the log says so
//!   at start, and each SIGHUP fails with the reason.

use std::path::Path;

use anyhow::{Context, bail};

use super::dns::DnsSettings;
use crate::config::Config;
use crate::control::server::UapiServer;
use crate::os::privilege::{self, Account, CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, Plan};

/// The plan for `tandem up CONFIG [--user NAME]`.
pub fn plan_for(config: &Config, user: Option<&str>) -> anyhow::Result<Plan> {
    let mut keep = CAP_NET_ADMIN;
    if config
        .interface
        .listen_port
        .is_some_and(|p| p != 0 && p < 1024)
    {
        keep |= CAP_NET_BIND_SERVICE;
    }
    let user = match user {
        Some(name) => {
            if !DnsSettings::of(config).is_empty() {
                bail!(
                    "--user cannot be combined with `dns`: the DNS settings are removed when the \
                     interface goes down, after the switch to {name:?}, and resolvconf's files \
                     are root's (run without --user: the daemon still keeps CAP_NET_ADMIN only)"
                );
            }
            Some(Account::lookup(name).context("--user")?)
        }
        None => None,
    };
    Ok(Plan { keep, user })
}

/// The plan for `tandem [-f] IFNAME`: CAP_NET_ADMIN only (wg sets the port later; a port
/// below 1024 is then refused with EACCES).
pub fn bare_plan() -> Plan {
    Plan {
        keep: CAP_NET_ADMIN,
        user: None,
    }
}

/// Checks the plan and makes it the process's, so that every thread started from now on
/// drops as it starts. First thing, while the main thread is the only one.
pub fn publish(plan: Plan) -> anyhow::Result<()> {
    privilege::publish(plan).context("cannot drop privileges")
}

/// With `--user`: the UAPI socket and its directory, usable by the user (see the module
/// notes). Before [`finish`], while the main thread may still change owners.
pub fn hand_over_socket(uapi: Option<&UapiServer>) {
    let (Some(uapi), Some(user)) = (uapi, privilege::plan().and_then(|p| p.user.as_ref())) else {
        return;
    };
    if let Err(e) = uapi.hand_over(user.uid, user.gid) {
        tracing::warn!(
            socket = %uapi.path().display(),
            "cannot hand the UAPI socket to user {}: it will stay behind when the daemon \
             stops: {e}",
            user.name
        );
    }
}

/// The main thread drops too, and every thread is checked; then the log says what is kept.
/// `config`: the file SIGHUP reloads, checked for readability as the new user.
pub fn finish(config: Option<&Path>) -> anyhow::Result<()> {
    privilege::finish().context("cannot drop privileges")?;
    let Some(plan) = privilege::plan() else {
        return Ok(());
    };
    let who = match &plan.user {
        Some(u) => format!("user {} (uid {}, gid {})", u.name, u.uid, u.gid),
        None => format!("uid {}", crate::os::effective_uid()),
    };
    tracing::info!(
        "privileges dropped: {} only, as {who}, no new privileges",
        privilege::names(plan.keep)
    );
    if let Some(path) = config
        && let Err(e) = std::fs::File::open(path)
    {
        tracing::warn!(
            config = %path.display(),
            "SIGHUP reloads will fail: the config cannot be read as {who}: {e}"
        );
    }
    Ok(())
}

/// Whether the daemon switched to another user (DNS changes are then refused).
pub fn switched_user() -> Option<&'static str> {
    privilege::plan()
        .and_then(|p| p.user.as_ref())
        .map(|u| u.name.as_str())
}
