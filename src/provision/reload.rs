//! Tells the running daemon of an interface to reload its config, and waits until the change
//! shows. The daemon is found through its UAPI socket: the kernel reports the pid of the
//! process that serves it (SO_PEERCRED), so no pid file is needed and no process is picked
//! by name.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
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

/// Whether process `pid` runs `tandem up CONFIG` for `config` (compared as canonical paths;
/// a relative argument is taken from the process's working directory). On `false`, its
/// command line for the message.
pub fn runs_config(pid: i32, config: &Path) -> Result<(), String> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let raw = std::fs::read(proc_dir.join("cmdline")).map_err(|e| format!("({e})"))?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let shown = args.join(" ");
    let Ok(want) = std::fs::canonicalize(config) else {
        return Err(shown);
    };
    let cwd = std::fs::read_link(proc_dir.join("cwd")).ok();
    let up = args.iter().position(|a| a == "up");
    let names_config = up.is_some_and(|i| {
        args.iter().skip(i + 1).any(|a| {
            let p = Path::new(a);
            let full = match (&cwd, p.is_relative()) {
                (Some(cwd), true) => cwd.join(p),
                _ => p.to_path_buf(),
            };
            std::fs::canonicalize(full).is_ok_and(|c| c == want)
        })
    });
    if names_config { Ok(()) } else { Err(shown) }
}

/// Sends SIGHUP to the daemon serving `ifname` and waits until `done` holds for its state.
/// Only a `tandem up` of this very `config` is signalled: another program (wireguard-go
/// exits on SIGHUP), `tandem IFNAME` without a config, or a daemon of another file would
/// not pick the change up, or worse; that is an error saying so.
pub fn reload_and_wait(
    dir: &Path,
    ifname: &str,
    config: &Path,
    done: impl Fn(&DeviceStatus) -> bool,
) -> anyhow::Result<Reloaded> {
    let Some(pid) = daemon_pid(dir, ifname)? else {
        return Ok(Reloaded::NotRunning);
    };
    if let Err(cmdline) = runs_config(pid, config) {
        anyhow::bail!(
            "interface {ifname} is served by pid {pid} ({cmdline}), which is not `tandem up \
             {}`: not signalled; reload or restart it yourself",
            config.display()
        );
    }
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
                 its log",
                RELOAD_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child process whose command line reads `... up ARG`, run in `cwd`.
    fn child(cwd: &Path, arg: &str) -> std::process::Child {
        std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 5", "up", arg])
            .current_dir(cwd)
            .spawn()
            .expect("spawn sh")
    }

    #[test]
    fn only_a_process_running_this_config_qualifies() {
        let dir = std::env::temp_dir().join(format!("tandem-runs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let config = dir.join("srv.toml");
        std::fs::write(&config, "").unwrap();
        std::fs::write(dir.join("other.toml"), "").unwrap();
        let mut cases = Vec::new();
        for (cwd, arg, want) in [
            (dir.clone(), config.to_string_lossy().into_owned(), true),
            // Relative to the process's own working directory.
            (dir.join("sub"), "../srv.toml".to_owned(), true),
            (dir.clone(), "other.toml".to_owned(), false),
            (dir.join("sub"), "srv.toml".to_owned(), false),
        ] {
            let mut c = child(&cwd, &arg);
            let pid = i32::try_from(c.id()).unwrap();
            // /proc shows the command line once exec is done.
            let mut got = runs_config(pid, &config);
            for _ in 0..50 {
                if got.is_ok() == want {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
                got = runs_config(pid, &config);
            }
            let _ = c.kill();
            let _ = c.wait();
            cases.push((arg, got.is_ok(), want));
        }
        std::fs::remove_dir_all(&dir).unwrap();
        for (arg, got, want) in cases {
            assert_eq!(got, want, "up {arg}");
        }
        // Our own test process runs no config.
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(runs_config(me, Path::new("/etc/hostname")).is_err());
    }
}
