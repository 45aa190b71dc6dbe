//! Test kit: real WireGuard peers (`wireguard-go`, `boringtun-cli`) run inside a test's
//! network namespace and configured with the stock `wg` tool, for interop tests against tandem.
//!
//! Part of `tests/common` (see its `mod.rs` for how to include it); it uses the namespace
//! kit and the daemon kit.
//!
//! Both implementations create `/var/run/wireguard/IFACE.sock`. That directory is shared by
//! every network namespace (one mount namespace), so each peer needs an interface name no
//! other test uses; [`RealPeer`] removes the socket it leaves behind when it is killed.

// Each test binary uses its own part of the kit.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::kit::collect_lines;
use super::netns::{ChildGuard, Netns};

/// Where the userspace implementations put their UAPI sockets.
const UAPI_DIR: &str = "/var/run/wireguard";

/// A userspace WireGuard implementation that tandem must interoperate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// The Go implementation (Debian package `wireguard-go`).
    WireguardGo,
    /// Cloudflare's Rust implementation (`cargo install boringtun-cli`).
    Boringtun,
}

impl PeerKind {
    pub fn label(self) -> &'static str {
        match self {
            PeerKind::WireguardGo => "wireguard-go",
            PeerKind::Boringtun => "boringtun-cli",
        }
    }

    /// The program to run: found on PATH, or (boringtun-cli) in `~/.cargo/bin`. Panics with
    /// what to install when it is missing.
    pub fn program(self) -> PathBuf {
        let name = self.label();
        if let Some(p) = find_on_path(name) {
            return p;
        }
        if self == PeerKind::Boringtun
            && let Some(home) = std::env::var_os("HOME")
        {
            let p = Path::new(&home).join(".cargo/bin").join(name);
            if p.is_file() {
                return p;
            }
        }
        let how = match self {
            PeerKind::WireguardGo => {
                "apt-get install --no-install-recommends wireguard-go wireguard-tools"
            }
            PeerKind::Boringtun => "cargo install boringtun-cli --locked",
        };
        panic!(
            "this interop test needs `{name}` (not on PATH{}): install it with `{how}` \
             (scripts/test.sh does)",
            if self == PeerKind::Boringtun {
                " nor in ~/.cargo/bin"
            } else {
                ""
            }
        )
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Panics with what to install unless the `wg` tool (wireguard-tools) runs.
pub fn require_wg() {
    match Command::new("wg").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this interop test needs the `wg` tool, but `wg --version` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "this interop test needs the `wg` tool ({e}): install it with \
             `apt-get install --no-install-recommends wireguard-tools` (scripts/test.sh does)"
        ),
    }
}

/// What `wg setconf` gets: one interface with one peer, in wg's own config format.
#[derive(Debug, Clone)]
pub struct WgConf {
    /// Base64, as `wg genkey` prints it.
    pub private_key: String,
    pub listen_port: u16,
    pub peer_public_key: String,
    pub preshared_key: Option<String>,
    /// "10.0.0.1:51820" or "[fd00::1]:51820"; None: wait to be reached.
    pub peer_endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
}

impl WgConf {
    pub fn to_text(&self) -> String {
        let mut t = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = {}\n\n[Peer]\nPublicKey = {}\n",
            self.private_key, self.listen_port, self.peer_public_key
        );
        if let Some(psk) = &self.preshared_key {
            t += &format!("PresharedKey = {psk}\n");
        }
        if let Some(ep) = &self.peer_endpoint {
            t += &format!("Endpoint = {ep}\n");
        }
        t += &format!("AllowedIPs = {}\n", self.allowed_ips.join(", "));
        t
    }
}

/// A running wireguard-go or boringtun-cli in a test's namespace, with its output collected.
/// Dropping it kills the process (by PID) and removes its UAPI socket.
#[derive(Debug)]
pub struct RealPeer {
    kind: PeerKind,
    ns: String,
    ifname: String,
    dir: PathBuf,
    guard: Option<ChildGuard>,
    log: Arc<Mutex<String>>,
    starts: u32,
}

impl RealPeer {
    /// Starts `kind` in the foreground in `ns`, creating interface `ifname` (at most 15
    /// bytes, unique among all tests), and waits until `wg` can talk to it. `dir` is a
    /// private temporary directory for its config and log files.
    pub fn start(kind: PeerKind, ns: &Netns, ifname: &str, dir: &Path) -> RealPeer {
        assert!(ifname.len() <= 15, "interface name {ifname:?} is too long");
        let mut peer = RealPeer {
            kind,
            ns: ns.name().to_owned(),
            ifname: ifname.to_owned(),
            dir: dir.to_path_buf(),
            guard: None,
            log: Arc::new(Mutex::new(String::new())),
            starts: 0,
        };
        peer.launch();
        peer
    }

    pub fn kind(&self) -> PeerKind {
        self.kind
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().map(ChildGuard::id)
    }

    fn socket_path(&self) -> PathBuf {
        Path::new(UAPI_DIR).join(format!("{}.sock", self.ifname))
    }

    /// `ip netns exec NS CMD ARGS`.
    fn in_ns(&self, cmd: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(cmd).args(args);
        c
    }

    fn launch(&mut self) {
        assert!(
            self.guard.is_none(),
            "{} is already running",
            self.kind.label()
        );
        self.starts += 1;
        let program = self.kind.program();
        let mut cmd = match self.kind {
            // `-f`: stay in the foreground, so the PID we hold is the daemon's.
            PeerKind::WireguardGo => {
                let mut c = self.in_ns(&program, &["-f", &self.ifname]);
                c.env("LOG_LEVEL", "verbose");
                c
            }
            PeerKind::Boringtun => {
                let log_file = self.dir.join(format!("boringtun-{}.log", self.ifname));
                let log_file = log_file.to_string_lossy().into_owned();
                // Without `--disable-drop-privileges` (env `WG_SUDO`) it switches to the
                // `getlogin()` user after setup, which fails without a login session (as
                // under CI) and makes it exit.
                let mut c = self.in_ns(
                    &program,
                    &[
                        "--foreground",
                        "--disable-drop-privileges",
                        "--threads",
                        "2",
                        "--verbosity",
                        "info",
                        "--log",
                        &log_file,
                        &self.ifname,
                    ],
                );
                c.env("WG_SUDO", "1").env("NO_COLOR", "1");
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let mut guard = ChildGuard::new(child);
        let tag = format!("[{} start {}] ", self.kind.label(), self.starts);
        collect_lines(guard.child_mut().stdout.take(), &self.log, &tag);
        collect_lines(guard.child_mut().stderr.take(), &self.log, &tag);
        self.guard = Some(guard);
        self.wait_ready(Duration::from_secs(10));
    }

    /// Waits until `wg show IFACE` answers (the UAPI socket is up), or panics with the log.
    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let exited = self
                .guard
                .as_mut()
                .and_then(|g| g.child_mut().try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "{} exited ({status}) before its interface {} came up; output:\n{}",
                    self.kind.label(),
                    self.ifname,
                    self.log()
                );
            }
            if self.socket_path().exists() && self.wg(&["show", &self.ifname]).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not open {} within {limit:?}; output:\n{}",
                    self.kind.label(),
                    self.socket_path().display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `wg ARGS` in the namespace; stdout, or stderr as the error.
    pub fn wg(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .in_ns(Path::new("wg"), args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run wg: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`wg {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `wg setconf` with `conf`, then the addresses ("10.0.0.2/24", "fd00::2/64"), MTU 1420
    /// and link up, as wg-quick would do.
    pub fn configure(&self, ns: &Netns, conf: &WgConf, addresses: &[&str]) {
        let file = self
            .dir
            .join(format!("{}-{}.conf", self.ifname, self.starts));
        std::fs::write(&file, conf.to_text())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        if let Err(e) = self.wg(&["setconf", &self.ifname, &file.to_string_lossy()]) {
            panic!("{e}\n{} output:\n{}", self.kind.label(), self.log());
        }
        for addr in addresses {
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", &self.ifname, "nodad"]);
            } else {
                ns.ip(&["addr", "add", addr, "dev", &self.ifname]);
            }
        }
        ns.ip(&["link", "set", "dev", &self.ifname, "mtu", "1420", "up"]);
    }

    /// `wg show IFACE endpoints`: "PUBKEY\tADDR:PORT" lines (or "(none)").
    pub fn endpoints(&self) -> String {
        self.wg(&["show", &self.ifname, "endpoints"])
            .unwrap_or_else(|e| format!("({e})"))
    }

    /// `wg show IFACE dump`, for failure messages.
    pub fn dump(&self) -> String {
        self.wg(&["show", &self.ifname, "dump"])
            .unwrap_or_else(|e| format!("({e})"))
    }

    /// Everything the process printed (all starts), plus boringtun's log file.
    pub fn log(&self) -> String {
        let mut all = self.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if self.kind == PeerKind::Boringtun {
            let file = self.dir.join(format!("boringtun-{}.log", self.ifname));
            if let Ok(text) = std::fs::read_to_string(file) {
                all += &text;
            }
        }
        all
    }

    /// Kills the process with SIGKILL (a crash: no goodbye to anyone), waits until its
    /// interface is gone and removes the stale UAPI socket.
    pub fn kill(&mut self, ns: &Netns) {
        // Dropping the guard kills exactly this PID and reaps it.
        drop(self.guard.take());
        let _ = std::fs::remove_file(self.socket_path());
        let deadline = Instant::now() + Duration::from_secs(5);
        while ns
            .exec("ip", &["link", "show", "dev", &self.ifname])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "interface {} still there 5 s after {} was killed",
                self.ifname,
                self.kind.label()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again on the same interface name (configure it afterwards).
    pub fn restart(&mut self) {
        self.launch();
    }
}

impl Drop for RealPeer {
    fn drop(&mut self) {
        drop(self.guard.take());
        // A killed daemon leaves its socket file behind in the shared directory.
        let _ = std::fs::remove_file(self.socket_path());
    }
}
