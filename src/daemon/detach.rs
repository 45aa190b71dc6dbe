//! `tandem IFNAME` without `-f`: start the daemon in the background, as wireguard-go does, and
//! return once it serves its UAPI socket (so `wg-quick`, which runs
//! `$WG_QUICK_USERSPACE_IMPLEMENTATION IFNAME` and then `wg setconf IFNAME`, finds it).
//!
//! The parent re-runs this executable as `tandem -f IFNAME` with [`DETACHED_ENV`] set; the
//! child starts a session of its own (no controlling terminal), and its log goes to the
//! parent's stderr through a pipe while it starts, so startup errors are seen where the
//! command was typed. Once its socket is up, the child points its standard descriptors at
//! `/dev/null`, which closes the pipe; the parent then returns. If the child dies first, the
//! parent fails with its exit status (its log already relayed).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::control::server::{SOCKET_DIR, socket_path};

/// Set (to 1) in the environment of the background child.
pub const DETACHED_ENV: &str = "TANDEM_DETACHED";

/// How long the parent waits for the child's socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the parent still waits for the child's log to end once the socket answers.
const LOG_GRACE: Duration = Duration::from_secs(2);

const POLL: Duration = Duration::from_millis(20);

/// Whether this process is the background child of [`spawn_detached`].
pub fn is_detached_child() -> bool {
    std::env::var_os(DETACHED_ENV).is_some_and(|v| v == "1")
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Starts `tandem -f IFNAME` in the background and waits (bounded) until its UAPI socket
/// answers. `log_level` is passed on.
pub fn spawn_detached(
    ifname: &str,
    log_level: Option<&str>,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let path = socket_path(Path::new(SOCKET_DIR), ifname);
    if UnixStream::connect(&path).is_ok() {
        bail!(
            "interface {ifname} is served already ({} answers)",
            path.display()
        );
    }
    // A stale socket file may be there until the child replaces it.
    let stale = identity(&path);
    let exe = std::env::current_exe().context("cannot find the tandem executable")?;
    let mut command = Command::new(exe);
    if let Some(level) = log_level {
        command.args(["--log-level", level]);
    }
    if let Some(addr) = metrics {
        command.args(["--metrics", &addr.to_string()]);
    }
    command
        .args(["-f", ifname])
        .env(DETACHED_ENV, "1")
        // Not to hold the caller's working directory (and its mount) busy.
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .context("cannot start the background daemon")?;
    let relay = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        })
    });
    let log_done = || relay.as_ref().is_none_or(|r| r.is_finished());
    let deadline = Instant::now() + START_TIMEOUT;
    let mut up_since: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the daemon")? {
            // Let the relay print the rest of its log first.
            let until = Instant::now() + LOG_GRACE;
            while !log_done() && Instant::now() < until {
                std::thread::sleep(POLL);
            }
            bail!("the daemon for {ifname} exited ({status}) before its UAPI socket was ready");
        }
        // Up: the socket answers, and it is the child's: a new file, or the child has closed
        // its log, which it does only once its socket is up (an inode number may be reused).
        if up_since.is_none()
            && (log_done() || identity(&path).is_some_and(|id| Some(id) != stale))
            && UnixStream::connect(&path).is_ok()
        {
            up_since = Some(Instant::now());
        }
        if let Some(since) = up_since
            && (log_done() || since.elapsed() >= LOG_GRACE)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            // Ours to stop: it never became ready.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the daemon for {ifname} did not create {} within {START_TIMEOUT:?}",
                path.display()
            );
        }
        std::thread::sleep(POLL);
    }
}
