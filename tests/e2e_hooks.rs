//! `tandem up` with wg-quick's hooks and DNS, end to end in a network namespace of the test's
//! own (needs root). PostUp has run by the time the daemon says it is up; PreDown sees the link
//! and PostDown runs after it is gone; a failing PostUp leaves nothing behind and exits
//! non-zero; DNS goes through `resolvconf` exactly as wg-quick calls it (a stand-in early on
//! PATH records the calls of the real wg-quick, then tandem's, and they must be the same
//! bytes), and with no way to apply DNS the start fails saying so. Needs wireguard-tools.
//! Every process, namespace and file is removed, also when a test fails.

mod common;
use common::{kit, netns};

use std::time::Duration;

use kit::{BIN, Daemon, Detached, TempDir, detached_pid, unique, wait_until};
use netns::{Netns, require_root};
use tandem::testkit::key;

const UP: Duration = Duration::from_secs(15);

fn ifname(tag: &str) -> String {
    format!("tnh{tag}{}x{}", std::process::id() % 1000, unique())
}

fn config(name: &str, extra: &str) -> String {
    format!(
        "[interface]\nname = \"{name}\"\nprivate_key = \"{}\"\naddress = [\"10.66.0.1/24\"]\n\
         {extra}\n[[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"10.66.0.2/32\"]\n",
        key(61).to_base64(),
        key(62).public_key().to_base64(),
    )
}

fn link_exists(ns: &Netns, name: &str) -> bool {
    ns.exec("ip", &["link", "show", "dev", name])
        .status
        .success()
}

#[test]
fn hooks_run_around_the_interface_in_wg_quicks_order() {
    require_root();
    let ns = Netns::new("tnd-hooks");
    let dir = TempDir::new("hooks");
    let name = ifname("a");
    let up_file = dir.path("up");
    let pre_down_file = dir.path("pre_down");
    let post_down_file = dir.path("post_down");
    let extra = format!(
        "pre_up = [\"echo pre > {up}\"]\npost_up = [\"echo %i >> {up}\", \"ip -o addr show dev %i >> {up}\"]\n\
         pre_down = [\"ip link show %i > {pd}\"]\n\
         post_down = [\"ip link show %i || echo gone %i > {qd}\"]\n",
        up = up_file.display(),
        pd = pre_down_file.display(),
        qd = post_down_file.display(),
    );
    let path = dir.file("h.toml", &config(&name, &extra));
    // `tandem check` shows what will run, with %i filled in.
    let check = std::process::Command::new(kit::BIN)
        .args(["check", &path.to_string_lossy()])
        .output()
        .expect("run tandem check");
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("post_up: echo {name} >> {}", up_file.display())),
        "{shown}"
    );
    assert!(shown.contains("pre_down: ip link show"), "{shown}");
    let mut d = Daemon::up(&ns, &path);
    d.wait_log("interface up", UP);
    // PostUp ran before "up" (and systemd's READY, sent right after it), with the
    // interface configured: its address was there.
    let up = std::fs::read_to_string(&up_file).expect("the hooks wrote their file");
    let lines: Vec<&str> = up.lines().collect();
    assert_eq!(lines.first(), Some(&"pre"), "{up}");
    assert_eq!(lines.get(1), Some(&name.as_str()), "{up}");
    assert!(up.contains("10.66.0.1/24"), "{up}");
    assert!(
        d.log().contains("running: echo"),
        "hook commands are logged: {}",
        d.log()
    );
    d.stop(Duration::from_secs(10));
    let pre_down = std::fs::read_to_string(&pre_down_file).expect("pre_down ran");
    assert!(
        pre_down.contains(&name),
        "pre_down saw the link: {pre_down}"
    );
    let post_down = std::fs::read_to_string(&post_down_file).expect("post_down ran");
    assert_eq!(post_down.trim(), format!("gone {name}"));
    assert!(!link_exists(&ns, &name));
}

#[test]
fn a_failing_post_up_takes_everything_down_and_exits_non_zero() {
    require_root();
    let ns = Netns::new("tnd-hookfail");
    let dir = TempDir::new("hookfail");
    let name = ifname("f");
    let routes_before = ns.ip(&["route", "show", "table", "all"]);
    let marker = dir.path("pre_down");
    let extra = format!(
        "post_up = [\"false\"]\npre_down = [\"touch {}\"]\n",
        marker.display()
    );
    let path = dir.file("f.toml", &config(&name, &extra));
    let mut d = Daemon::up(&ns, &path);
    let status = d.wait_exit(UP);
    assert!(!status.success(), "exited with {status}; log:\n{}", d.log());
    assert!(
        d.log().contains("post_up hook \"false\" failed"),
        "{}",
        d.log()
    );
    assert!(!link_exists(&ns, &name), "the link is gone");
    assert_eq!(ns.ip(&["route", "show", "table", "all"]), routes_before);
    assert!(
        !marker.exists(),
        "no down hooks after a failed start, as wg-quick"
    );
}

/// A `resolvconf` that appends its arguments and stdin to a log, for the DNS tests.
fn stand_in_resolvconf(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.path("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let log = dir.path("resolvconf.log");
    let script = bin.join("resolvconf");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"args: $*\" >> {log}\ncat >> {log}\necho end >> {log}\n",
            log = log.display()
        ),
    )
    .expect("write stand-in");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (bin, log)
}

/// wg-quick's prefix for resolvconf names (from /etc/resolvconf/interface-order).
fn wg_quick_prefix() -> String {
    std::fs::read_to_string("/etc/resolvconf/interface-order")
        .ok()
        .and_then(|order| {
            order
                .lines()
                .filter_map(|l| l.trim().strip_suffix('*'))
                .find(|n| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
                .map(|n| format!("{n}."))
        })
        .unwrap_or_default()
}

#[test]
fn dns_goes_through_resolvconf_as_wg_quick_calls_it() {
    require_root();
    assert!(
        !std::path::Path::new("/run/systemd/resolve/io.systemd.Resolve").exists(),
        "systemd-resolved runs here: this test checks the resolvconf path"
    );
    let ns = Netns::new("tnd-dns");
    let dir = TempDir::new("dns");
    let (bin, log) = stand_in_resolvconf(&dir);
    let name = ifname("d");
    let search_path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // wg-quick itself, with tandem as its userspace implementation, records the reference.
    let _guard = Detached(name.clone());
    let conf = dir.file(
        &format!("{name}.conf"),
        &format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.66.0.1/24\n\
             DNS = 10.66.0.53, fd66::53, corp.example, lab.example\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = 10.66.0.2/32\n",
            key(61).to_base64(),
            key(62).public_key().to_base64(),
        ),
    );
    for verb in ["up", "down"] {
        let out = ns
            .command("wg-quick", &[verb, &conf.to_string_lossy()])
            .env("WG_QUICK_USERSPACE_IMPLEMENTATION", BIN)
            .env("PATH", &search_path)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run wg-quick (wireguard-tools)");
        assert!(
            out.status.success(),
            "wg-quick {verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || detached_pid(&name).is_none()),
        "tandem did not exit after wg-quick down"
    );
    let by_wg_quick = std::fs::read_to_string(&log).expect("wg-quick called resolvconf");
    std::fs::remove_file(&log).expect("reset the record");

    // The same settings through `tandem up`, TOML: the same calls, byte for byte.
    let extra =
        "dns = [\"10.66.0.53\", \"fd66::53\"]\ndns_search = [\"corp.example\", \"lab.example\"]\n";
    let path = dir.file("d.toml", &config(&name, extra));
    let mut d = Daemon::start(
        &ns,
        &["up", &path.to_string_lossy()],
        &[("PATH", &search_path)],
    );
    d.wait_log("interface up", UP);
    let at_up = std::fs::read_to_string(&log).expect("resolvconf was called");
    assert!(
        by_wg_quick.starts_with(&at_up),
        "up: tandem\n{at_up}\nwg-quick\n{by_wg_quick}"
    );
    assert!(
        at_up.starts_with(&format!("args: -a {}{name} -m 0 -x\n", wg_quick_prefix())),
        "{at_up}"
    );
    d.stop(Duration::from_secs(10));
    let recorded = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        recorded, by_wg_quick,
        "tandem up and down called resolvconf as wg-quick does"
    );
    assert!(recorded.ends_with(&format!("args: -d {}{name} -f\nend\n", wg_quick_prefix())));
}

#[test]
fn dns_without_a_way_to_apply_it_fails_the_start_clearly() {
    require_root();
    let ns = Netns::new("tnd-nodns");
    let dir = TempDir::new("nodns");
    let name = ifname("n");
    let path = dir.file("n.toml", &config(&name, "dns = [\"10.66.0.53\"]\n"));
    // The system directories (for `ip`, which runs the daemon in the namespace), and no
    // resolvconf in them: a machine with one installed cannot run this check.
    let system = "/usr/sbin:/usr/bin:/sbin:/bin";
    let found = system
        .split(':')
        .find(|d| std::path::Path::new(d).join("resolvconf").exists());
    assert!(
        found.is_none(),
        "resolvconf is installed in {found:?}: this test needs a machine without it"
    );
    let mut d = Daemon::start(&ns, &["up", &path.to_string_lossy()], &[("PATH", system)]);
    let status = d.wait_exit(UP);
    assert!(!status.success(), "{status}; log:\n{}", d.log());
    assert!(
        d.log().contains("`resolvconf` is not on PATH"),
        "says what is missing:\n{}",
        d.log()
    );
    assert!(!link_exists(&ns, &name));
}
