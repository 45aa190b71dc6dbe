//! `tandem demo`: two tandem daemons in two fresh network namespaces joined by a veth pair,
//! a handshake, UDP echo round trips through the tunnel (IPv4 and IPv6 inside), a timed TCP
//! transfer, and everything removed again, also on Ctrl-C or failure. Needs root and nothing
//! else, so that the first command of the README works on a bare machine: no `ip`, no
//! `ping`. The namespaces are anonymous (`os::new_netns`, held open by this process and
//! reached by its children as `/proc/PID/fd/N`, so nothing is left in /run/netns should the
//! demo be killed); the veth pair and its addresses are set over netlink (`netconf`) by
//! threads that entered the namespaces; the daemons enter theirs themselves (`tandem up
//! --netns`); the round trips are tandem's own UDP echo and the transfer runs on threads in
//! the namespaces. Traffic never leaves the two namespaces it creates.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::helper::{self, Sink, Source};
use crate::keygen;
use crate::netconf::NetConf;
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
    /// The namespaces, held open: each goes once its file is closed and its daemon is gone.
    namespaces: Vec<File>,
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
        self.namespaces.clear();
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

/// The UDP port of the demo's echo responders (one per namespace, on every inner address).
const ECHO_PORT: u16 = 7;
/// Bytes of one echo probe: a sequence number, a nonce and padding, so that a late answer to
/// an earlier probe is never taken for the current one.
const PROBE_LEN: usize = 64;

/// Runs `work` on a thread of its own that first entered the namespace at path `ns`
/// (`setns(2)` acts per thread, so the rest of the demo stays where it is), and returns what
/// `work` returned.
fn in_netns<T: Send + 'static>(
    ns: &str,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    spawn_in_netns(ns, work)
        .join()
        .map_err(|_| anyhow::anyhow!("a demo thread panicked"))?
}

/// [`in_netns`] without waiting: the thread's handle.
fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>> {
    let path = PathBuf::from(ns);
    std::thread::spawn(move || {
        os::enter_netns(&path).with_context(|| format!("cannot enter {}", path.display()))?;
        work()
    })
}

/// Runs the netlink steps `work` on a small runtime of the calling thread (which has
/// entered a namespace: the netlink socket belongs to the thread's namespace).
fn netlink<F: std::future::Future<Output = anyhow::Result<()>>>(
    work: impl FnOnce(NetConf) -> F,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime for netlink")?;
    rt.block_on(async {
        let nc = NetConf::new()
            .await
            .context("cannot open a netlink socket")?;
        work(nc).await
    })
}

/// Brings `ifname` up with `addr` (if any) on it.
async fn link_up(nc: &NetConf, ifname: &str, addr: Option<(IpAddr, u8)>) -> anyhow::Result<()> {
    let index = nc.link_index(ifname).await?;
    if let Some((addr, len)) = addr {
        nc.add_address(index, addr, len).await?;
    }
    nc.set_up(index).await?;
    Ok(())
}

/// An echo responder: a thread in namespace `ns` that sends every datagram on UDP port
/// [`ECHO_PORT`] (IPv4 and IPv6) back to where it came from, until `stop` is set. tandem's
/// own stand-in for ICMP echo, so that the demo needs no `ping`.
fn spawn_echo_responder(
    ns: &str,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let path = PathBuf::from(ns);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let bound = os::enter_netns(&path)
            .with_context(|| format!("cannot enter {}", path.display()))
            .and_then(|()| {
                // One dual-stack socket answers both families.
                let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, ECHO_PORT));
                let socket = os::bind_udp(any, false).context("cannot bind the echo port")?;
                socket.set_nonblocking(false)?;
                // Bounded waits, so the thread notices `stop` within 100 ms.
                socket.set_read_timeout(Some(Duration::from_millis(100)))?;
                Ok(socket)
            });
        let socket = match bound {
            Ok(s) => {
                let _ = ready_tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the echo responder did not start within 5 s")??;
    Ok(handle)
}

/// Round-trip times of echo probes through the tunnel.
#[derive(Debug, Default)]
struct Rtt {
    sent: u32,
    samples: Vec<Duration>,
}

impl std::fmt::Display for Rtt {
    /// `rtt min/avg/max = 0.241/0.300/0.412 ms, 3 of 3 answered`, like ping's summary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (Some(min), Some(max)) = (self.samples.iter().min(), self.samples.iter().max()) else {
            return write!(f, "no answer to {} probes", self.sent);
        };
        let sum: Duration = self.samples.iter().sum();
        let avg = ms(sum) / self.samples.len() as f64;
        write!(
            f,
            "rtt min/avg/max = {:.3}/{avg:.3}/{:.3} ms, {} of {} answered",
            ms(*min),
            ms(*max),
            self.samples.len(),
            self.sent
        )
    }
}

/// Sends `count` UDP echo probes from namespace `ns` to `target`'s echo responder, one at a
/// time, each waiting at most `wait` for its answer, with `gap` between probes.
fn probe(
    ns: &str,
    target: IpAddr,
    count: u32,
    wait: Duration,
    gap: Duration,
) -> anyhow::Result<Rtt> {
    in_netns(ns, move || {
        let local: SocketAddr = match target {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = os::bind_udp(local, true).context("cannot bind a probe socket")?;
        socket.set_nonblocking(false)?;
        socket.connect((target, ECHO_PORT))?;
        let nonce = u64::from(std::process::id()) << 32 | u64::from(rand::random::<u32>());
        let mut rtt = Rtt::default();
        let mut probe = [0u8; PROBE_LEN];
        let mut answer = [0u8; PROBE_LEN + 1];
        for seq in 0..count {
            if seq > 0 {
                std::thread::sleep(gap);
            }
            probe[..4].copy_from_slice(&seq.to_be_bytes());
            probe[4..12].copy_from_slice(&nonce.to_be_bytes());
            let start = Instant::now();
            rtt.sent += 1;
            // Before the handshake, the kernel may refuse the send (no route yet on a
            // namespace that is still coming up): that probe is lost, not fatal.
            if socket.send(&probe).is_err() {
                continue;
            }
            let deadline = start + wait;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                socket.set_read_timeout(Some(left))?;
                match socket.recv(&mut answer) {
                    // Anything else is a late answer to an earlier probe: keep waiting.
                    Ok(n) if n == PROBE_LEN && answer[..n] == probe => {
                        rtt.samples.push(start.elapsed());
                        break;
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    // ECONNREFUSED from an ICMP error of an earlier send: try again.
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        Ok(rtt)
    })
}

/// Stops the echo responders (within their 100 ms read timeout) when the demo ends.
struct EchoGuard {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for EchoGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
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
    let exe = std::env::current_exe().context("cannot find the tandem binary itself")?;
    let exe = exe.to_string_lossy().into_owned();

    let shared: Shared = Arc::default();
    let _guard = Guard(Arc::clone(&shared));
    install_signal_handler(Arc::clone(&shared))?;

    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("tandem-demo-{pid}"));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    lock(&shared).dir = Some(dir.clone());

    println!("== 1. two network namespaces joined by a veth pair");
    // Anonymous namespaces, reached by path through this process's descriptors.
    let mut paths = Vec::new();
    for _ in 0..2 {
        let file = os::new_netns().context("cannot create a network namespace")?;
        paths.push(format!("/proc/{pid}/fd/{}", file.as_raw_fd()));
        lock(&shared).namespaces.push(file);
    }
    let (ns_a, ns_b) = (paths[0].clone(), paths[1].clone());
    let (veth_a, veth_b) = (format!("tdva{pid}"), format!("tdvb{pid}"));
    let b_file = File::open(&ns_b).context("cannot open namespace b")?;
    {
        let (veth_a, veth_b) = (veth_a.clone(), veth_b.clone());
        in_netns(&ns_a, move || {
            netlink(|nc| async move {
                link_up(&nc, "lo", None).await?;
                // Both ends here, then b's end moves into b.
                nc.add_veth(&veth_a, &veth_b).await?;
                let index = nc.link_index(&veth_b).await?;
                nc.move_to_netns(index, &b_file).await?;
                link_up(&nc, &veth_a, Some((OUTER_A4.parse()?, 24))).await
            })
        })?;
    }
    {
        let veth_b = veth_b.clone();
        in_netns(&ns_b, move || {
            netlink(|nc| async move {
                link_up(&nc, "lo", None).await?;
                link_up(&nc, &veth_b, Some((OUTER_B4.parse()?, 24))).await
            })
        })?;
    }
    println!("   a: {veth_a} {OUTER_A4}/24 <-> b: {veth_b} {OUTER_B4}/24");

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
        let child = Command::new(&exe)
            .args(["--log-level", "info", "up", "--netns", ns, &conf])
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
    let stop_echo = Arc::new(AtomicBool::new(false));
    let _echo = EchoGuard {
        stop: Arc::clone(&stop_echo),
        threads: vec![
            spawn_echo_responder(&ns_a, Arc::clone(&stop_echo))?,
            spawn_echo_responder(&ns_b, Arc::clone(&stop_echo))?,
        ],
    };
    let inner_b4: IpAddr = INNER_B4.parse()?;
    let connected = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        probe(&ns_a, inner_b4, 1, Duration::from_secs(1), Duration::ZERO)
            .is_ok_and(|rtt| !rtt.samples.is_empty())
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

    println!("== 5. UDP echo through the tunnel");
    for (label, from, to) in [
        ("a", &ns_a, INNER_B4),
        ("b", &ns_b, INNER_A4),
        ("a", &ns_a, INNER_B6),
        ("b", &ns_b, INNER_A6),
    ] {
        let rtt = probe(
            from,
            to.parse()?,
            5,
            Duration::from_secs(2),
            Duration::from_millis(100),
        )?;
        if rtt.samples.is_empty() {
            bail!("{label} -> {to}: {rtt}");
        }
        println!("   {label} -> {to}: {rtt}");
    }

    println!("== 6. {} MiB over TCP through the tunnel", options.mib);
    let bytes = options.mib * 1024 * 1024;
    let listen: SocketAddr = format!("{INNER_B4}:{TCP_PORT}").parse()?;
    let timeout = Duration::from_secs(60);
    let sink = Sink::Pattern {
        seed: PATTERN_SEED,
        bytes,
    };
    let receiver = spawn_in_netns(&ns_b, move || helper::receive(listen, sink, timeout));
    let source = Source::Pattern {
        seed: PATTERN_SEED,
        bytes,
    };
    let sent = in_netns(&ns_a, move || helper::send(listen, source, timeout))?;
    // The receiver's verdict (it gives up by itself after its timeout).
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver thread panicked"))?
        .context("the receiver failed")?;
    println!("   sender:   sent {sent}");
    println!("   receiver: received {received} (every byte checked)");

    println!("== 7. cleaning up");
    drop(_echo);
    drop(_guard);
    println!("   daemons stopped, namespaces and veth pair removed");
    Ok(())
}
