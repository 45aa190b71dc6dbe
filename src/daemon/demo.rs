//! `tandem demo`: two tandem daemons in two fresh network namespaces joined by a veth pair,
//! a handshake, pings through the tunnel (IPv4 and IPv6 inside), a timed TCP transfer, and
//! everything removed again, also on Ctrl-C or failure. Needs root. Traffic never leaves the
//! two namespaces it creates.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::keygen;
use crate::os;

/// Tunnel (inner) and veth (outer) addressing inside the demo's namespaces.
const INNER_A4: &str = "10.88.0.1";
const INNER_B4: &str = "10.88.0.2";
const INNER_A6: &str = "fd88::1";
const INNER_B6: &str = "fd88::2";
const OUTER_A4: &str = "10.201.0.1";
const OUTER_B4: &str = "10.201.0.2";
const PORT_A: u16 = 51820;
const PORT_B: u16 = 51821;
const IFNAME: &str = "tnd-demo";
const TCP_PORT: u16 = 5201;
const PATTERN_SEED: u64 = 0x7a6e_6465_6d6f;

/// Options of `tandem demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// MiB moved over TCP through the tunnel.
    pub mib: u64,
}

/// Everything the demo created, removed in reverse by [`Cleanup::run`] (idempotent).
#[derive(Debug, Default)]
struct Cleanup {
    children: Vec<(String, Child)>,
    namespaces: Vec<String>,
    dir: Option<PathBuf>,
}

impl Cleanup {
    fn run(&mut self) {
        // Daemons first, politely (SIGTERM: they remove their routes and addresses), then
        // anything still alive is killed.
        for (name, child) in self.children.iter_mut().rev() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = os::send_signal(child.id(), libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(5);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    eprintln!("demo: {name} did not stop within 5 s, killing it");
                    let _ = child.kill();
                }
            }
            let _ = child.wait();
        }
        self.children.clear();
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(dir) = self.dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Set by the signal handler: the main thread's errors from then on are the interruption's
/// side effects (killed helpers), not worth reporting.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Shared with the signal handler thread.
type Shared = Arc<Mutex<Cleanup>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Cleanup> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the cleanup when the demo ends, however it ends.
struct Guard(Shared);

impl Drop for Guard {
    fn drop(&mut self) {
        lock(&self.0).run();
    }
}

/// On SIGINT or SIGTERM: clean up and exit (status 130), from a thread of its own.
fn install_signal_handler(shared: Shared) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    // Registered here, before the thread starts, so that no signal is missed after return.
    let (mut int, mut term) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\ndemo: interrupted, cleaning up");
        lock(&shared).run();
        std::process::exit(130);
    });
    Ok(())
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run_ok(Command::new("ip").args(args))
}

fn in_ns(ns: &str, cmd: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, cmd]).args(args);
    c
}

fn need_tool(name: &str, package: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()));
    if !found {
        bail!("`tandem demo` needs `{name}`: install it with `apt-get install {package}`");
    }
    Ok(())
}

/// One end of the demo tunnel.
struct Side {
    key: crate::proto::PrivateKey,
    port: u16,
    outer: &'static str,
    inner4: &'static str,
    inner6: &'static str,
}

/// The TOML config of `me`, whose only peer is `peer`.
fn config_text(me: &Side, peer: &Side, psk: &str) -> String {
    format!(
        "# written by `tandem demo`\n\
         [interface]\n\
         name = \"{IFNAME}\"\n\
         private_key = \"{}\"\n\
         listen_port = {}\n\
         address = [\"{}/24\", \"{}/64\"]\n\
         \n\
         [[peer]]\n\
         public_key = \"{}\"\n\
         preshared_key = \"{psk}\"\n\
         endpoint = \"{}:{}\"\n\
         allowed_ips = [\"{}/32\", \"{}/128\"]\n",
        me.key.to_base64(),
        me.port,
        me.inner4,
        me.inner6,
        peer.key.public_key().to_base64(),
        peer.outer,
        peer.port,
        peer.inner4,
        peer.inner6,
    )
}

/// Waits until `check` holds, polling every `every`, for at most `limit`.
fn wait_for(limit: Duration, every: Duration, mut check: impl FnMut() -> bool) -> bool {
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

fn ping(ns: &str, target: &str, count: u32) -> anyhow::Result<String> {
    let c = count.to_string();
    run_ok(&mut in_ns(
        ns,
        "ping",
        &["-n", "-c", &c, "-i", "0.2", "-W", "2", target],
    ))
}

/// The `rtt min/avg/max/mdev = ...` line of ping's summary.
fn rtt_line(output: &str) -> String {
    output
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .unwrap_or("(no summary)")
        .trim()
        .to_owned()
}

/// Runs the demo. Needs root.
pub fn demo(options: &DemoOptions) -> anyhow::Result<()> {
    let result = steps(options);
    if result.is_err() && INTERRUPTED.load(Ordering::SeqCst) {
        // The handler cleans up and exits the process; wait for it (bounded) rather than
        // report an error the interruption caused.
        std::thread::sleep(Duration::from_secs(30));
    }
    result
}

fn steps(options: &DemoOptions) -> anyhow::Result<()> {
    if os::effective_uid() != 0 {
        bail!(
            "`tandem demo` needs root: it creates network namespaces, a veth pair and TUN \
             devices (run it with sudo)"
        );
    }
    need_tool("ip", "iproute2")?;
    need_tool("ping", "iputils-ping")?;
    let exe = std::env::current_exe().context("cannot find the tandem binary itself")?;
    let exe = exe.to_string_lossy().into_owned();

    let shared: Shared = Arc::default();
    let _guard = Guard(Arc::clone(&shared));
    install_signal_handler(Arc::clone(&shared))?;

    let pid = std::process::id();
    let ns_a = format!("tnd-demo-a-{pid}");
    let ns_b = format!("tnd-demo-b-{pid}");
    let dir = std::env::temp_dir().join(format!("tandem-demo-{pid}"));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    lock(&shared).dir = Some(dir.clone());

    println!("== 1. two network namespaces joined by a veth pair");
    for ns in [&ns_a, &ns_b] {
        ip(&["netns", "add", ns])?;
        lock(&shared).namespaces.push(ns.clone());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    let (veth_a, veth_b) = (format!("tdva{pid}"), format!("tdvb{pid}"));
    ip(&[
        "-n", &ns_a, "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b, "netns",
        &ns_b,
    ])?;
    for (ns, dev, addr) in [(&ns_a, &veth_a, OUTER_A4), (&ns_b, &veth_b, OUTER_B4)] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    println!("   {ns_a} ({OUTER_A4}) <-> {ns_b} ({OUTER_B4})");

    println!("== 2. fresh keys and configs");
    let a = Side {
        key: keygen::generate_private_key()?,
        port: PORT_A,
        outer: OUTER_A4,
        inner4: INNER_A4,
        inner6: INNER_A6,
    };
    let b = Side {
        key: keygen::generate_private_key()?,
        port: PORT_B,
        outer: OUTER_B4,
        inner4: INNER_B4,
        inner6: INNER_B6,
    };
    let psk = keygen::genpsk()?;
    let conf_a = dir.join("a.toml");
    let conf_b = dir.join("b.toml");
    for (path, me, peer) in [(&conf_a, &a, &b), (&conf_b, &b, &a)] {
        fs::write(path, config_text(me, peer, &psk))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "   a: public key {}, tunnel {INNER_A4} {INNER_A6}",
        a.key.public_key()
    );
    println!(
        "   b: public key {}, tunnel {INNER_B4} {INNER_B6}",
        b.key.public_key()
    );

    println!("== 3. two tandem daemons");
    let mut logs = Vec::new();
    for (name, ns, conf) in [("a", &ns_a, &conf_a), ("b", &ns_b, &conf_b)] {
        let log_path = dir.join(format!("{name}.log"));
        let log = fs::File::create(&log_path)?;
        let conf = conf.to_string_lossy().into_owned();
        let child = in_ns(ns, &exe, &["--log-level", "info", "up", &conf])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start tandem in {ns}"))?;
        lock(&shared)
            .children
            .push((format!("tandem in {ns}"), child));
        logs.push(log_path);
    }
    let read_log = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    let up = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        logs.iter().all(|p| read_log(p).contains("interface up"))
    });
    if !up {
        bail!(
            "the daemons did not come up within 10 s; logs:\n{}\n{}",
            read_log(&logs[0]),
            read_log(&logs[1])
        );
    }
    println!("   both up: interface {IFNAME} in each namespace");

    println!("== 4. handshake");
    let start = Instant::now();
    let connected = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        in_ns(&ns_a, "ping", &["-n", "-c", "1", "-W", "1", INNER_B4])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !connected {
        bail!(
            "no answer through the tunnel within 15 s; logs:\n{}\n{}",
            read_log(&logs[0]),
            read_log(&logs[1])
        );
    }
    let first = start.elapsed();
    for (name, log) in ["a", "b"].iter().zip(&logs) {
        if let Some(line) = read_log(log)
            .lines()
            .find(|l| l.contains("handshake completed"))
        {
            println!("   {name}: {}", line.trim());
        }
    }
    println!(
        "   first packet through after {:.0} ms",
        first.as_secs_f64() * 1e3
    );

    println!("== 5. ping through the tunnel");
    for (from, to) in [
        (&ns_a, INNER_B4),
        (&ns_b, INNER_A4),
        (&ns_a, INNER_B6),
        (&ns_b, INNER_A6),
    ] {
        let out = ping(from, to, 3)?;
        println!("   {from} -> {to}: {}", rtt_line(&out));
    }

    println!("== 6. {} MiB over TCP through the tunnel", options.mib);
    let bytes = options.mib * 1024 * 1024;
    let bytes_s = bytes.to_string();
    let seed_s = PATTERN_SEED.to_string();
    let listen = format!("{INNER_B4}:{TCP_PORT}");
    let receiver = in_ns(
        &ns_b,
        &exe,
        &[
            "demo-helper",
            "recv",
            "--listen",
            &listen,
            "--pattern-seed",
            &seed_s,
            "--bytes",
            &bytes_s,
            "--timeout",
            "60",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .context("cannot start the receiver")?;
    let receiver_pid = receiver.id();
    lock(&shared).children.push(("receiver".into(), receiver));
    let sent = run_ok(&mut in_ns(
        &ns_a,
        &exe,
        &[
            "demo-helper",
            "send",
            "--connect",
            &listen,
            "--pattern-seed",
            &seed_s,
            "--bytes",
            &bytes_s,
            "--timeout",
            "60",
        ],
    ))?;
    // The receiver's verdict.
    let mut receiver = {
        let mut c = lock(&shared);
        let pos = c
            .children
            .iter()
            .position(|(_, ch)| ch.id() == receiver_pid)
            .context("receiver lost")?;
        c.children.remove(pos).1
    };
    let done = wait_for(Duration::from_secs(60), Duration::from_millis(50), || {
        matches!(receiver.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = receiver.kill();
        let _ = receiver.wait();
        bail!("the receiver did not finish within 60 s");
    }
    let out = receiver.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the receiver failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let verdict = String::from_utf8_lossy(&out.stdout);
    let received = verdict
        .lines()
        .find(|l| l.starts_with("received"))
        .unwrap_or("(no report)");
    println!("   sender:   {}", sent.trim());
    println!("   receiver: {received} (every byte checked)");

    println!("== 7. cleaning up");
    drop(_guard);
    println!("   daemons stopped, namespaces {ns_a} and {ns_b} removed");
    Ok(())
}
