//! Test kit: the small pieces the daemon-level integration tests share. Numbers unique within
//! a test binary, a temporary directory, bounded polling, a running `tandem`
//! with its log collected, pings and the checked TCP transfer through the `demo-helper`
//! subcommands.
//!
//! Part of `tests/common` (see its `mod.rs` for how to include it); it uses the namespace kit.

// Each test binary uses its own part of the kit.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tandem::daemon::helper::Pattern;

use super::netns::{ChildGuard, Netns};

/// The `tandem` binary Cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_tandem");

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A number unique within this test binary, for names, ports and keys.
pub fn unique() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A temporary directory, removed on drop. Its name holds the test binary's name, the tag,
/// the process id and a counter, so tests running in parallel never share one.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tandem-{}-{tag}-{}-{}",
            env!("CARGO_CRATE_NAME"),
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.0
    }

    /// NAME inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to NAME in the directory with mode 0600 (keys and configs).
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` every 50 ms for at most `limit`; whether it came true.
pub fn wait_until(limit: Duration, check: impl FnMut() -> bool) -> bool {
    wait_until_every(limit, Duration::from_millis(50), check)
}

/// Polls `check` every `every` for at most `limit`; whether it came true.
pub fn wait_until_every(limit: Duration, every: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Appends each line of `r` (prefixed by `tag`) to `log`, on a thread of its own, so a
/// process that writes a lot never blocks on a full pipe.
pub fn collect_lines<R: Read + Send + 'static>(r: Option<R>, log: &Arc<Mutex<String>>, tag: &str) {
    let Some(r) = r else { return };
    let log = Arc::clone(log);
    let tag = tag.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
            l.push_str(&tag);
            l.push_str(&line);
            l.push('\n');
        }
    });
}

/// A running `tandem` whose stderr (the log, at `RUST_LOG=info`) a thread collects. Dropping
/// it kills the process by PID (SIGKILL) unless [`Daemon::terminate`] stopped it before.
#[derive(Debug)]
pub struct Daemon {
    /// None once [`Daemon::terminate`] stopped it.
    guard: Option<ChildGuard>,
    log: Arc<Mutex<String>>,
    /// Who it is in failure messages.
    name: String,
}

impl Daemon {
    /// Starts `cmd` (a `tandem` command line, e.g. from [`Netns::command`]) with stdin and
    /// stdout closed and stderr collected. `name` names it in failure messages.
    pub fn spawn(mut cmd: Command, name: &str) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut guard = ChildGuard::new(child);
        let log = Arc::new(Mutex::new(String::new()));
        collect_lines(guard.child_mut().stderr.take(), &log, "");
        Daemon {
            guard: Some(guard),
            log,
            name: name.to_owned(),
        }
    }

    /// `tandem ARGS` in `ns`, with the environment variables `env` added.
    pub fn start(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = ns.command(BIN, args);
        cmd.envs(env.iter().copied());
        Daemon::spawn(cmd, &format!("tandem in {}", ns.name()))
    }

    /// `tandem up CONFIG` in `ns` (not waiting for anything).
    pub fn up(ns: &Netns, config: &Path) -> Daemon {
        Daemon::start(ns, &["up", &config.to_string_lossy()], &[])
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How often `needle` occurs in the log.
    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().map(ChildGuard::id)
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.guard
            .as_mut()
            .and_then(|g| g.child_mut().try_wait().ok().flatten())
    }

    /// Waits until the log contains `needle` `times` times; panics with the log otherwise
    /// (at once if the process exits first).
    pub fn wait_log_n(&mut self, needle: &str, times: usize, limit: Duration) {
        let ok = wait_until(limit, || {
            self.count(needle) >= times || self.exited().is_some()
        }) && self.count(needle) >= times;
        assert!(
            ok,
            "{}: {needle:?} not logged {times} time(s) within {limit:?}; log:\n{}",
            self.name,
            self.log()
        );
    }

    /// Waits until the log contains `needle`; panics with the log otherwise.
    pub fn wait_log(&mut self, needle: &str, limit: Duration) {
        self.wait_log_n(needle, 1, limit);
    }

    /// Sends signal `sig` ("HUP", "TERM", "KILL") with `kill -s`.
    pub fn signal(&self, sig: &str) {
        let Some(pid) = self.pid() else {
            panic!("{} was stopped already: no process for SIG{sig}", self.name)
        };
        let status = Command::new("kill")
            .args(["-s", sig, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill -s {sig} {pid} failed");
    }

    /// Waits at most `limit` for it to exit by itself; panics with its log if it does not.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match self.guard.as_mut().and_then(|g| g.wait_timeout(limit)) {
            Some(s) => s,
            None => panic!(
                "{} still running after {limit:?}; log:\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// SIGTERM, then waits at most `limit` for a clean exit; panics with the log otherwise.
    pub fn stop(mut self, limit: Duration) {
        self.signal("TERM");
        let status = self.wait_exit(limit);
        assert!(
            status.success(),
            "{} exited with {status}; log:\n{}",
            self.name,
            self.log()
        );
    }

    /// Stops it without panicking (for `Drop`s): SIGTERM if it still runs, up to `grace` to
    /// exit, then SIGKILL by PID and reaping.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut guard) = self.guard.take() {
            if guard.child_mut().try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill")
                    .args(["-s", "TERM", &guard.id().to_string()])
                    .status();
                let _ = guard.wait_timeout(grace);
            }
            drop(guard); // SIGKILL by PID if still running
        }
    }
}

/// One ping (1 s timeout) from `ns` to `to`; whether it was answered.
pub fn ping_once(ns: &Netns, to: &str) -> bool {
    ns.exec("ping", &["-n", "-c", "1", "-W", "1", to])
        .status
        .success()
}

/// Packets received on network device `dev` in `ns`.
pub fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    let shown = ns.ip_json(&["-s", "link", "show", "dev", dev]);
    shown[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packet counter")
}

/// Writes `size` pseudo-random bytes ([`Pattern`] `seed`) to `path`; returns their sha256.
pub fn write_pattern_file(path: &Path, size: usize, seed: u64) -> sha2::digest::Output<Sha256> {
    let mut data = vec![0u8; size];
    Pattern::new(seed).fill(&mut data);
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    Sha256::digest(&data)
}

/// The two ends of a TCP transfer started by [`start_transfer`].
pub struct Transfer {
    pub sender: ChildGuard,
    pub receiver: ChildGuard,
}

/// Starts a TCP transfer through a tunnel with the `demo-helper` subcommands: `recv` in
/// `recv_ns` listening on `listen` ("ADDR:PORT") and writing to `dst`, then `send` in
/// `send_ns` sending the file `src` there. Each gives up after `timeout_secs`. The receiver
/// listens within milliseconds; the sender's connect waits and retries up to its timeout.
pub fn start_transfer(
    send_ns: &Netns,
    recv_ns: &Netns,
    listen: &str,
    src: &Path,
    dst: &Path,
    timeout_secs: u32,
) -> Transfer {
    let timeout = timeout_secs.to_string();
    // `demo-helper ROLE ADDR_FLAG LISTEN FILE_FLAG FILE --timeout SECS`.
    let helper = |ns: &Netns, [role, addr_flag, file_flag, file]: [&str; 4]| {
        ns.spawn(
            BIN,
            &[
                "demo-helper",
                role,
                addr_flag,
                listen,
                file_flag,
                file,
                "--timeout",
                &timeout,
            ],
        )
    };
    let receiver = helper(
        recv_ns,
        ["recv", "--listen", "--out", &dst.to_string_lossy()],
    );
    let sender = helper(
        send_ns,
        ["send", "--connect", "--file", &src.to_string_lossy()],
    );
    Transfer { sender, receiver }
}

/// The PID of the detached `tandem -f IFNAME` that wg-quick started, if it runs.
pub fn detached_pid(ifname: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        if args.len() == 3
            && args[0].ends_with(b"tandem")
            && args[1] == b"-f"
            && args[2] == ifname.as_bytes()
        {
            return Some(pid);
        }
    }
    None
}

/// Kills the detached daemon of IFNAME by PID when dropped (a failed test).
pub struct Detached(pub String);

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(pid) = detached_pid(&self.0) {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.0));
    }
}

/// Sends raw bytes to a UAPI socket and reads the reply until the daemon closes the
/// connection (waiting at most `timeout` for it).
pub fn uapi_exchange(socket: &Path, request: &str, timeout: Duration) -> String {
    use std::io::Write as _;
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    reply
}
