//! Tells the running daemon of an interface to reload its config, and waits until the change
//! shows. The daemon is found through its UAPI socket: the kernel reports the pid of the
//! process that serves it (SO_PEERCRED), so no pid file is needed and no process is picked
//! by name.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Pid;

use crate::control::server::{query, socket_path};
use crate::control::show::{DeviceStatus, parse_get_reply};

/// How long a reload may take to show (it resolves names and talks netlink).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// What happened to the running daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// It reloaded and the change is in effect.
    Applied { pid: i32 },
    /// No daemon serves the interface: the change takes effect when one starts.
    NotRunning,
}

/// The pid of the process serving `ifname`'s socket in `dir`, or `None` when nobody does.
pub fn daemon_pid(dir: &Path, ifname: &str) -> anyhow::Result<Option<i32>> {
    let path = socket_path(dir, ifname);
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot connect to {}", path.display())),
    };
    let cred = getsockopt(&stream, PeerCredentials)
        .with_context(|| format!("cannot ask who serves {}", path.display()))?;
    Ok(Some(cred.pid()))
}

/// The interface's state as its daemon reports it (`get=1`).
pub fn device(dir: &Path, ifname: &str) -> anyhow::Result<DeviceStatus> {
    let path = socket_path(dir, ifname);
    let reply = query(&path, "get=1\n\n", Duration::from_secs(5))
        .with_context(|| format!("cannot query {}", path.display()))?;
    parse_get_reply(&reply).with_context(|| format!("{} answered get=1 wrongly", path.display()))
}

/// Sends SIGHUP to the daemon serving `ifname` and waits until `done` holds for its state.
pub fn reload_and_wait(
    dir: &Path,
    ifname: &str,
    done: impl Fn(&DeviceStatus) -> bool,
) -> anyhow::Result<Reloaded> {
    let Some(pid) = daemon_pid(dir, ifname)? else {
        return Ok(Reloaded::NotRunning);
    };
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .with_context(|| format!("cannot signal the daemon of {ifname} (pid {pid})"))?;
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        if let Ok(state) = device(dir, ifname)
            && done(&state)
        {
            return Ok(Reloaded::Applied { pid });
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the daemon of {ifname} (pid {pid}) did not apply the change within {} s: see \
                 its log (is it running this config file? `tandem {ifname}` without a config \
                 ignores SIGHUP)",
                RELOAD_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
