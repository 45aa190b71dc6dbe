//! Least privilege, end to end in network namespaces of the test's own (needs root): every
//! thread of a running `tandem up` (main, data plane, crypto workers, tokio's blocking pool,
//! including a blocking thread started before the main thread dropped) holds CAP_NET_ADMIN
//! only, in CapEff, CapPrm, CapInh, CapBnd and CapAmb, with NoNewPrivs 1; with `--user` every
//! thread runs as that user without supplementary groups, the process is not dumpable, and a
//! reload that changes addresses, `wg set fwmark` and the UAPI socket still work, the tunnel
//! still pings, and PostDown hooks run as the user with CAP_NET_ADMIN. Also: the wireguard-go
//! style `tandem -f IFNAME`, a low listen port (CAP_NET_BIND_SERVICE kept), what `--user`
//! refuses, and a start the way the systemd unit does it (already a user with ambient
//! CAP_NET_ADMIN). Every process, namespace and file is removed, also when a test fails.

mod common;
use common::{kit, netns};

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use kit::{BIN, Daemon, TempDir, ping_once, unique, wait_until};
use netns::{Netns, require_root, veth_pair};
use tandem::os::privilege::{CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, ThreadStatus};
use tandem::testkit::key;

const UP: Duration = Duration::from_secs(15);
const NOBODY: u32 = 65534;

/// Every thread of process `pid`, as `/proc/PID/task/*/status` shows it.
fn threads_of(pid: u32) -> Vec<(u32, ThreadStatus)> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let entry = entry.expect("task entry");
        let tid: u32 = entry
            .file_name()
            .to_string_lossy()
            .parse()
            .expect("numeric tid");
        let Ok(text) = std::fs::read_to_string(entry.path().join("status")) else {
            continue; // ended meanwhile
        };
        out.push((tid, ThreadStatus::parse(&text).expect("status parses")));
    }
    out
}

/// Asserts that every thread of `pid` holds exactly `keep` in every capability set, has
/// NoNewPrivs, and runs as `uid`/`gid` (with no supplementary groups when `no_groups`);
/// returns the threads' names.
fn assert_dropped(
    pid: u32,
    keep: u64,
    uid: u32,
    gid: u32,
    no_groups: bool,
    log: &str,
) -> Vec<String> {
    let threads = threads_of(pid);
    assert!(!threads.is_empty(), "no threads for {pid}");
    for (tid, s) in &threads {
        let what = format!("thread {tid} {:?} of {pid}: {s:?}\nlog:\n{log}", s.name);
        assert_eq!(s.cap_eff, keep, "CapEff of {what}");
        assert_eq!(s.cap_prm, keep, "CapPrm of {what}");
        assert_eq!(s.cap_bnd, keep, "CapBnd of {what}");
        assert_eq!(s.cap_inh, keep, "CapInh of {what}");
        assert_eq!(s.cap_amb, keep, "CapAmb of {what}");
        assert!(s.no_new_privs, "NoNewPrivs of {what}");
        assert_eq!(s.uids, [uid; 4], "Uid of {what}");
        assert_eq!(s.gids, [gid; 4], "Gid of {what}");
        if no_groups {
            assert!(s.groups.is_empty(), "Groups of {what}");
        }
    }
    threads.into_iter().map(|(_, s)| s.name).collect()
}

/// Two namespaces joined by a veth pair, an interface name and ports for a tunnel.
struct Pair {
    a: Netns,
    b: Netns,
    dir: TempDir,
    ifname: String,
    port_a: u16,
    port_b: u16,
    seed: u8,
}

const A4: &str = "10.79.0.1";
const B4: &str = "10.79.0.2";

impl Pair {
    fn new(tag: &str) -> Pair {
        require_root();
        let n = unique();
        let a = Netns::new(&format!("tnd-priv-{tag}-a"));
        let b = Netns::new(&format!("tnd-priv-{tag}-b"));
        veth_pair(&a, &b, &["10.98.0.1/24"], &["10.98.0.2/24"]);
        Pair {
            a,
            b,
            dir: TempDir::new(tag),
            ifname: format!("tnp{}x{n}", std::process::id() % 1000),
            port_a: 41_000 + (n as u16) * 2,
            port_b: 41_001 + (n as u16) * 2,
            seed: 100 + (n % 50) as u8 * 2,
        }
    }

    /// a's config: one peer (b), one more whose endpoint is a name (looked up on tokio's
    /// blocking pool before the main thread drops), `extra` in [interface].
    fn config_a(&self, addresses: &str, extra: &str) -> String {
        format!(
            "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\nlisten_port = {}\n\
             address = [{addresses}]\n{extra}\n\
             [[peer]]\nname = \"b\"\npublic_key = \"{}\"\nendpoint = \"10.98.0.2:{}\"\n\
             allowed_ips = [\"{B4}/32\"]\n\n\
             [[peer]]\nname = \"named\"\npublic_key = \"{}\"\nendpoint = \"localhost:9\"\n\
             allowed_ips = [\"10.79.1.0/24\"]\n",
            self.ifname,
            key(self.seed).to_base64(),
            self.port_a,
            key(self.seed + 1).public_key().to_base64(),
            self.port_b,
            key(95).public_key().to_base64(),
        )
    }

    /// b's config, under another interface name: the socket directory is shared between
    /// namespaces.
    fn config_b(&self) -> String {
        format!(
            "[interface]\nname = \"{}b\"\nprivate_key = \"{}\"\nlisten_port = {}\n\
             address = [\"{B4}/24\"]\n\n\
             [[peer]]\nname = \"a\"\npublic_key = \"{}\"\nendpoint = \"10.98.0.1:{}\"\n\
             allowed_ips = [\"{A4}/32\", \"10.80.0.0/24\"]\n",
            self.ifname,
            key(self.seed + 1).to_base64(),
            self.port_b,
            key(self.seed).public_key().to_base64(),
            self.port_a,
        )
    }

    /// Writes a config readable by everyone (the `--user` daemon reads it on SIGHUP).
    fn write(&self, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let path = self.dir.path(name);
        std::fs::write(&path, text).expect("write config");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn start_b(&self) -> Daemon {
        let path = self.write("b.toml", &self.config_b(), 0o600);
        let mut d = Daemon::up(&self.b, &path);
        d.wait_log("interface up", UP);
        d
    }

    fn ping_b(&self, a: &Daemon) {
        assert!(
            wait_until(Duration::from_secs(10), || ping_once(&self.a, B4)),
            "no ping answer from b; a's log:\n{}",
            a.log()
        );
    }
}

/// Held by the tests whose daemons' access to the socket directory depends on its mode (the
/// `--user` test changes it, the unit-like test runs as nobody), so they never overlap.
static SOCKET_DIR_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn socket_dir_lock() -> std::sync::MutexGuard<'static, ()> {
    SOCKET_DIR_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The socket directory's group and mode before a `--user` test changed them, put back on drop
/// (the directory is the system's, shared with every other daemon and test).
struct SocketDirState(Option<(u32, u32)>);

impl SocketDirState {
    fn save() -> SocketDirState {
        SocketDirState(
            std::fs::metadata("/var/run/wireguard")
                .ok()
                .map(|m| (m.gid(), m.mode() & 0o7777)),
        )
    }
}

impl Drop for SocketDirState {
    fn drop(&mut self) {
        if let Some((gid, mode)) = self.0 {
            let _ = std::os::unix::fs::chown("/var/run/wireguard", None, Some(gid));
            let _ = std::fs::set_permissions(
                "/var/run/wireguard",
                std::fs::Permissions::from_mode(mode),
            );
        }
    }
}

/// Stops `d` (SIGTERM, clean exit) and returns its log.
fn stop(mut d: Daemon) -> String {
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(10));
    let log = d.log();
    assert!(status.success(), "exit {status}:\n{log}");
    log
}

/// A directory anyone may write to, for hooks that run as another user.
fn open_dir(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path(name);
    std::fs::create_dir_all(&path).expect("mkdir");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    path
}

/// Hooks that record what their process holds, each in `dir/STAGE`.
fn recording_hooks(dir: &Path) -> String {
    // PreDown changes the link first: a hook can still configure the network.
    let record = |stage: &str| {
        let first = if stage == "pre_down" {
            "ip link set dev %i mtu 1380 && "
        } else {
            ""
        };
        format!(
            "{stage} = [\"{first}grep -E 'Cap(Eff|Bnd|Amb)|NoNewPrivs' /proc/self/status > {o}; \
             id -u >> {o}\"]\n",
            o = dir.join(stage).display()
        )
    };
    ["post_up", "pre_down", "post_down"].map(record).concat()
}

/// What a recording hook of `stage` wrote.
fn recorded(dir: &Path, stage: &str) -> String {
    std::fs::read_to_string(dir.join(stage)).unwrap_or_else(|e| panic!("{stage} ran: {e}"))
}

/// Asserts that the down hooks ran with CAP_NET_ADMIN (ambient) only, as `uid`.
fn assert_down_hooks_reduced(dir: &Path, uid: u32) {
    for stage in ["pre_down", "post_down"] {
        let hook = recorded(dir, stage);
        assert!(
            hook.contains("CapEff:\t0000000000001000"),
            "{stage}: {hook}"
        );
        assert!(
            hook.contains("CapBnd:\t0000000000001000"),
            "{stage}: {hook}"
        );
        assert!(
            hook.contains("CapAmb:\t0000000000001000"),
            "{stage}: {hook}"
        );
        assert!(hook.contains("NoNewPrivs:\t1"), "{stage}: {hook}");
        assert!(
            hook.ends_with(&format!("\n{uid}\n")),
            "{stage} as {uid}: {hook}"
        );
    }
}

#[test]
fn up_keeps_cap_net_admin_only_in_every_thread() {
    let p = Pair::new("root");
    let mut db = p.start_b();
    let hooks = open_dir(&p.dir, "hooks");
    let config = p.write(
        "a.toml",
        &p.config_a(&format!("\"{A4}/24\""), &recording_hooks(&hooks)),
        0o600,
    );
    let mut da = Daemon::start(
        &p.a,
        &["up", &config.to_string_lossy()],
        &[("TANDEM_CRYPTO_THREADS", "3")],
    );
    da.wait_log("interface up", UP);
    assert_eq!(
        da.count("privileges dropped: CAP_NET_ADMIN only, as uid 0"),
        1,
        "{}",
        da.log()
    );
    let pid = da.pid().expect("pid");
    let names = assert_dropped(pid, CAP_NET_ADMIN, 0, 0, false, &da.log());
    // The threads that exist: tandem's own, and the blocking-pool thread that looked the
    // named endpoint up before the main thread dropped (kept alive for 10 s by tokio).
    for want in ["tandem", "tandem-data", "tandem-crypto1", "tandem-crypto2"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("tokio-")),
        "a blocking-pool thread in {names:?}"
    );
    p.ping_b(&da);
    // PostUp ran before the drop, with the privileges tandem was started with (root's).
    let post_up = recorded(&hooks, "post_up");
    let ours = std::fs::read_to_string("/proc/self/status").expect("status");
    let our_eff = ours
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .expect("CapEff");
    assert!(post_up.contains(our_eff), "{post_up} vs {our_eff}");
    assert!(!post_up.contains("CapEff:\t0000000000001000"), "{post_up}");

    // After the drop: `wg set fwmark` (SO_MARK on the data plane thread) ...
    let set = p.a.exec("wg", &["set", &p.ifname, "fwmark", "0x1234"]);
    assert!(
        set.status.success(),
        "wg set fwmark: {}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert_eq!(
        p.a.exec_ok("wg", &["show", &p.ifname, "fwmark"]).trim(),
        "0x1234"
    );
    // ... and a reload that adds an address (netlink, read on the blocking pool).
    p.write(
        "a.toml",
        &p.config_a(
            &format!("\"{A4}/24\", \"10.80.0.1/24\""),
            &recording_hooks(&hooks),
        ),
        0o600,
    );
    da.signal("HUP");
    da.wait_log("configuration reloaded", UP);
    let addrs = p.a.ip(&["-o", "addr", "show", "dev", &p.ifname]);
    assert!(addrs.contains("10.80.0.1/24"), "{addrs}\n{}", da.log());
    assert!(
        wait_until(Duration::from_secs(10), || ping_once(&p.a, "10.79.0.2")),
        "no ping after the reload"
    );
    assert_dropped(pid, CAP_NET_ADMIN, 0, 0, false, &da.log());

    da.stop(Duration::from_secs(10));
    // PreDown and PostDown ran after the drop: CAP_NET_ADMIN (ambient) and nothing else.
    assert_down_hooks_reduced(&hooks, 0);
    db.terminate(Duration::from_secs(5));
}

#[test]
fn user_flag_switches_every_thread_and_keeps_reloads_fwmark_and_the_socket_working() {
    let _lock = socket_dir_lock();
    let p = Pair::new("user");
    let _restore = SocketDirState::save();
    let mut db = p.start_b();
    let hooks = open_dir(&p.dir, "hooks");
    let text = p.config_a(&format!("\"{A4}/24\""), &recording_hooks(&hooks));
    let socket = format!("/var/run/wireguard/{}.sock", p.ifname);

    // A config the user cannot read: the start works (root reads it), the log warns that
    // reloads will not.
    let config = p.write("a.toml", &text, 0o600);
    let args = ["up", "--user", "nobody", &config.to_string_lossy()];
    let mut da = Daemon::start(&p.a, &args, &[]);
    da.wait_log("interface up", UP);
    assert_eq!(da.count("SIGHUP reloads will fail"), 1, "{}", da.log());
    let log = stop(da);
    assert!(
        !Path::new(&socket).exists(),
        "socket removed by the user daemon:\n{log}"
    );

    let config = p.write("a.toml", &text, 0o644);
    let mut da = Daemon::start(
        &p.a,
        &["up", "--user", "nobody", &config.to_string_lossy()],
        &[],
    );
    da.wait_log("interface up", UP);
    assert_eq!(da.count("SIGHUP reloads will fail"), 0, "{}", da.log());
    assert_eq!(
        da.count("privileges dropped: CAP_NET_ADMIN only, as user nobody (uid 65534"),
        1,
        "{}",
        da.log()
    );
    let pid = da.pid().expect("pid");
    let names = assert_dropped(pid, CAP_NET_ADMIN, NOBODY, NOBODY, true, &da.log());
    assert!(names.iter().any(|n| n == "tandem-data"), "{names:?}");
    // Not dumpable: the kernel gives /proc/PID/environ (like every file of a non-dumpable
    // process but the world-readable directories) to root although the process runs as
    // nobody.
    let proc_owner = std::fs::metadata(format!("/proc/{pid}/environ"))
        .expect("proc")
        .uid();
    assert_eq!(proc_owner, 0, "dumpable 0 makes /proc/PID/environ root's");
    // The socket is the user's, in a directory the user may remove it from.
    let meta = std::fs::metadata(&socket).expect("socket exists");
    assert_eq!(meta.uid(), NOBODY);
    let dir = std::fs::metadata("/var/run/wireguard").expect("socket dir");
    assert_eq!(dir.gid(), NOBODY, "the directory gets the user's group");
    assert_eq!(
        dir.mode() & 0o1070,
        0o1070,
        "group rwx, sticky: {:o}",
        dir.mode()
    );
    p.ping_b(&da);

    // `wg` as root through the socket, and SO_MARK with CAP_NET_ADMIN as nobody.
    let set = p.a.exec("wg", &["set", &p.ifname, "fwmark", "0x4321"]);
    assert!(
        set.status.success(),
        "wg set fwmark: {}\n{}",
        String::from_utf8_lossy(&set.stderr),
        da.log()
    );
    assert_eq!(
        p.a.exec_ok("wg", &["show", &p.ifname, "fwmark"]).trim(),
        "0x4321"
    );
    // A reload that changes addresses, read and applied as nobody.
    p.write(
        "a.toml",
        &p.config_a(
            &format!("\"{A4}/24\", \"10.80.0.1/24\""),
            &recording_hooks(&hooks),
        ),
        0o644,
    );
    da.signal("HUP");
    da.wait_log("configuration reloaded", UP);
    let addrs = p.a.ip(&["-o", "addr", "show", "dev", &p.ifname]);
    assert!(addrs.contains("10.80.0.1/24"), "{addrs}\n{}", da.log());
    assert!(
        wait_until(Duration::from_secs(10), || ping_once(&p.a, B4)),
        "no ping after the reload\n{}",
        da.log()
    );
    assert_dropped(pid, CAP_NET_ADMIN, NOBODY, NOBODY, true, &da.log());
    // A reload that adds DNS: refused as the user, with an error (the rest applies).
    let with_dns = p
        .config_a(
            &format!("\"{A4}/24\", \"10.80.0.1/24\""),
            &recording_hooks(&hooks),
        )
        .replacen("[[peer]]", "dns = [\"10.79.0.53\"]\n\n[[peer]]", 1);
    p.write("a.toml", &with_dns, 0o644);
    da.signal("HUP");
    da.wait_log("DNS cannot be changed as user nobody", UP);

    let log = stop(da);
    assert!(
        !Path::new(&socket).exists(),
        "socket removed by the user daemon:\n{log}"
    );
    assert_down_hooks_reduced(&hooks, NOBODY);
    db.terminate(Duration::from_secs(5));
}

#[test]
fn user_flag_refuses_dns_and_unknown_users() {
    require_root();
    // In a namespace, so that nothing could reach the host's even if a check regressed.
    let ns = Netns::new("tnd-priv-refuse");
    let dir = TempDir::new("refuse");
    let name = format!("tnr{}x{}", std::process::id() % 1000, unique());
    let conf = dir.file(
        "r.toml",
        &format!(
            "[interface]\nname = \"{name}\"\nprivate_key = \"{}\"\ndns = [\"10.79.0.53\"]\n",
            key(98).to_base64()
        ),
    );
    let out = ns.exec(BIN, &["up", "--user", "nobody", &conf.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--user cannot be combined with `dns`"),
        "{stderr}"
    );

    let conf = dir.file(
        "u.toml",
        &format!(
            "[interface]\nname = \"{name}\"\nprivate_key = \"{}\"\n",
            key(98).to_base64()
        ),
    );
    let out = ns.exec(
        BIN,
        &[
            "up",
            "--user",
            "tandem-no-such-user",
            &conf.to_string_lossy(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no user named \"tandem-no-such-user\""),
        "{stderr}"
    );
    assert!(
        !ns.exec("ip", &["link", "show", &name]).status.success(),
        "no interface was created"
    );
}

#[test]
fn a_low_listen_port_keeps_cap_net_bind_service_too() {
    require_root();
    let ns = Netns::new("tnd-priv-low");
    let dir = TempDir::new("low");
    let conf = dir.file(
        "l.toml",
        &format!(
            "[interface]\nname = \"tnl{}x{}\"\nprivate_key = \"{}\"\nlisten_port = 853\n",
            std::process::id() % 1000,
            unique(),
            key(97).to_base64()
        ),
    );
    let mut d = Daemon::up(&ns, &conf);
    d.wait_log("interface up", UP);
    assert_eq!(
        d.count("privileges dropped: CAP_NET_BIND_SERVICE, CAP_NET_ADMIN only"),
        1,
        "{}",
        d.log()
    );
    let pid = d.pid().expect("pid");
    assert_dropped(
        pid,
        CAP_NET_ADMIN | CAP_NET_BIND_SERVICE,
        0,
        0,
        false,
        &d.log(),
    );
    d.stop(Duration::from_secs(10));
}

#[test]
fn wireguard_go_style_daemon_keeps_cap_net_admin_only() {
    require_root();
    let ns = Netns::new("tnd-priv-bare");
    let name = format!("tnb{}x{}", std::process::id() % 1000, unique());
    let mut d = Daemon::start(&ns, &["-f", &name], &[]);
    d.wait_log("privileges dropped: CAP_NET_ADMIN only", UP);
    let pid = d.pid().expect("pid");
    let names = assert_dropped(pid, CAP_NET_ADMIN, 0, 0, false, &d.log());
    assert!(names.iter().any(|n| n == "tandem-data"), "{names:?}");
    let keyfile = TempDir::new("bare");
    let private = keyfile.file("key", &key(96).to_base64());
    let set = ns.exec(
        "wg",
        &[
            "set",
            &name,
            "private-key",
            &private.to_string_lossy(),
            "listen-port",
            "41999",
            "fwmark",
            "0x77",
        ],
    );
    assert!(
        set.status.success(),
        "wg set: {}\n{}",
        String::from_utf8_lossy(&set.stderr),
        d.log()
    );
    assert_eq!(ns.exec_ok("wg", &["show", &name, "fwmark"]).trim(), "0x77");
    // A port below 1024 needs CAP_NET_BIND_SERVICE, which this daemon gave up: refused, and
    // nothing changes.
    let low = ns.exec("wg", &["set", &name, "listen-port", "853"]);
    assert!(!low.status.success(), "a low port is refused");
    assert_eq!(
        ns.exec_ok("wg", &["show", &name, "listen-port"]).trim(),
        "41999"
    );
    d.stop(Duration::from_secs(10));
}

/// What the systemd unit does (User=, AmbientCapabilities=CAP_NET_ADMIN,
/// CapabilityBoundingSet=CAP_NET_ADMIN, NoNewPrivileges=yes), done by setpriv: the daemon
/// starts as an ordinary user with CAP_NET_ADMIN only, and comes up and carries traffic.
#[test]
fn starts_as_a_user_with_ambient_cap_net_admin_like_the_systemd_unit() {
    let _lock = socket_dir_lock();
    let p = Pair::new("unit");
    let mut db = p.start_b();
    let config = p.write("a.toml", &p.config_a(&format!("\"{A4}/24\""), ""), 0o644);
    // Distributions make /dev/net/tun 0666 (udev); this machine may not. A node of our own
    // with that mode, bind-mounted over it in a private mount namespace, changes nothing
    // outside the daemon's process.
    let node = p.dir.path("tun");
    let made = std::process::Command::new("mknod")
        .args([&node.to_string_lossy(), "c", "10", "200"])
        .status()
        .expect("run mknod");
    assert!(made.success(), "mknod {}", node.display());
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let script = format!(
        "mount --bind {node} /dev/net/tun && exec ip netns exec {ns} setpriv --reuid=65534 \
         --regid=65534 --clear-groups --inh-caps=-all,+net_admin \
         --ambient-caps=-all,+net_admin --bounding-set=-all,+net_admin --no-new-privs \
         {BIN} up {config}",
        node = node.display(),
        ns = p.a.name(),
        config = config.display(),
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let mut da = Daemon::spawn(cmd, "tandem as the unit starts it");
    da.wait_log("interface up", UP);
    let pid = da.pid().expect("pid");
    assert_dropped(pid, CAP_NET_ADMIN, NOBODY, NOBODY, true, &da.log());
    p.ping_b(&da);
    da.stop(Duration::from_secs(10));
    db.terminate(Duration::from_secs(5));
}
