//! Test kit: network namespaces, veth pairs and processes that are cleaned up on drop, even
//! when the test panics.
//!
//! Part of `tests/common` (see its `mod.rs` for how to include it).
//!
//! Every namespace gets a unique name (prefix, process id, counter), so tests can run in
//! parallel threads and in parallel test binaries. Nothing here touches the host namespace:
//! veth pairs are created inside the test's namespaces, and [`Netns::run`] moves only one
//! fresh thread into a namespace.

// Each test binary uses its own part of the kit.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Panics with a clear message unless the test runs as root with iproute2's `ip` available.
pub fn require_root() {
    let euid = tandem::os::effective_uid();
    assert!(
        euid == 0,
        "this test needs root (it creates network namespaces and TUN devices); running as uid \
         {euid}: run the tests as root, e.g. `sudo -E cargo test`"
    );
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this test needs iproute2's `ip`, but `ip -V` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "this test needs iproute2's `ip` on PATH ({e}): install it with \
             `apt-get install iproute2`"
        ),
    }
}

/// Runs `ip ARGS` and returns its stdout, panicking with stderr if it fails.
fn ip_ok(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace made for one test, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `PREFIX-PID-N` with `ip netns add` and brings its loopback up.
    pub fn new(prefix: &str) -> Netns {
        let name = format!("{prefix}-{}-{}", std::process::id(), next_id());
        ip_ok(&["netns", "add", &name]);
        // From here on, drop deletes the namespace even if a later step panics.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, for `setns` (see [`Netns::run`]).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS`; returns stdout, panics with stderr if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip_ok(&full)
    }

    /// `ip -j -n NAME ARGS` parsed as JSON (an array for `show` commands).
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let text = self.ip(&full);
        if text.trim().is_empty() {
            // Some iproute2 versions print nothing instead of `[]`.
            return serde_json::Value::Array(Vec::new());
        }
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "`ip -j {}` printed invalid JSON ({e}): {text}",
                args.join(" ")
            )
        })
    }

    /// A `Command` for `ip netns exec NAME CMD ARGS`, for callers that want their own stdio.
    /// `ip` execs CMD, so the child's PID is CMD's own.
    pub fn command(&self, cmd: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, cmd]).args(args);
        c
    }

    /// Runs CMD ARGS inside the namespace to completion and returns its output.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        self.command(cmd, args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{cmd}` in namespace {}: {e}", self.name))
    }

    /// Like [`Netns::exec`], but panics unless CMD succeeds; returns its stdout.
    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(cmd, args);
        assert!(
            out.status.success(),
            "`{cmd} {}` in namespace {} failed ({}): {}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts CMD ARGS inside the namespace with stdin closed and stdout and stderr piped.
    /// The returned guard kills the process (by PID) when dropped. A process that writes
    /// more than a pipe holds must be read from (or started through [`Netns::command`] with
    /// other stdio and wrapped with [`ChildGuard::new`]). Start the program itself, not a
    /// shell around it, so the PID killed is the program's.
    pub fn spawn(&self, cmd: &str, args: &[&str]) -> ChildGuard {
        let child = self
            .command(cmd, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{cmd}` in namespace {}: {e}", self.name));
        ChildGuard::new(child)
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    /// Sockets and TUN devices `f` opens live in the namespace; the calling thread and the
    /// rest of the process stay where they are. A panic in `f` is passed on.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path();
        std::thread::scope(|s| {
            let worker = s.spawn(move || {
                if let Err(e) = tandem::os::enter_netns(&path) {
                    panic!("cannot enter network namespace {}: {e}", path.display());
                }
                f()
            });
            match worker.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// [`Netns::run`] for async code: `f`'s future runs to completion on a current-thread
    /// tokio runtime, on a thread inside this namespace.
    pub fn block_on<F, Fut, R>(&self, f: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = R>,
        R: Send,
    {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // No panic here: this may run while a failed test is already unwinding.
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: `ip netns del {}` failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: cannot run `ip netns del {}`: {e}", self.name),
        }
    }
}

/// A child process killed by PID (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child itself, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits at most `timeout` for the process to exit on its own; None if it is still
    /// running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("cannot wait for process {}: {e}", self.child.id()),
            }
        }
    }

    /// Waits at most `timeout` for the process to exit, then returns its status and
    /// everything it wrote to the piped stdout and stderr. Panics (after killing it) if it
    /// is still running at the deadline.
    pub fn output_timeout(mut self, timeout: Duration) -> Output {
        // Read the pipes on their own threads so a chatty child cannot block on a full pipe.
        fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        }
        let stdout = drain(self.child.stdout.take());
        let stderr = drain(self.child.stderr.take());
        let status = self.wait_timeout(timeout);
        // If it timed out, drop (below) kills it, which also closes the pipes for the readers.
        let pid = self.child.id();
        let status = match status {
            Some(s) => s,
            None => {
                drop(self);
                panic!("process {pid} still running after {timeout:?}; killed");
            }
        };
        Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Kill by PID (`Child::kill` signals exactly this process), then reap it so no zombie
        // is left. Both are no-ops apart from an error if it already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two ends of a veth pair: `a` lives in the first namespace, `b` in the second.
#[derive(Debug, Clone)]
pub struct VethPair {
    pub a: String,
    pub b: String,
}

/// Joins namespaces `a` and `b` with a veth pair, puts the given addresses ("10.0.0.1/24",
/// "fd00::1/64"; IPv6 ones with `nodad`, so they are usable at once) on each end, and brings
/// both ends and both loopbacks up. The pair disappears with either namespace.
pub fn veth_pair(a: &Netns, b: &Netns, addrs_a: &[&str], addrs_b: &[&str]) -> VethPair {
    let n = next_id();
    let pair = VethPair {
        a: format!("veth{n}a"),
        b: format!("veth{n}b"),
    };
    // Created inside `a` with its peer placed straight into `b`: the host never sees it.
    a.ip(&[
        "link",
        "add",
        &pair.a,
        "type",
        "veth",
        "peer",
        "name",
        &pair.b,
        "netns",
        b.name(),
    ]);
    for (ns, dev, addrs) in [(a, &pair.a, addrs_a), (b, &pair.b, addrs_b)] {
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
            } else {
                ns.ip(&["addr", "add", addr, "dev", dev]);
            }
        }
        ns.ip(&["link", "set", dev, "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
    }
    pair
}
