//! `dns` / `dns_search` (wg-quick's `DNS =`): the interface's DNS servers and search domains
//! while it is up. Through systemd-resolved when it runs (servers and domains for this link;
//! a full tunnel also gets the `~.` routing domain, so every query goes to the tunnel's
//! servers and none leaks to another link), otherwise through `resolvconf` exactly as wg-quick
//! calls it (`resolvconf -a IFACE -m 0 -x` with `nameserver`/`search` lines on stdin, and
//! `resolvconf -d IFACE -f` on the way down, IFACE carrying the `tun.`-style prefix that
//! `/etc/resolvconf/interface-order` asks for). With servers configured and neither tool, the
//! start fails with a message that says so: a silent skip would leave queries going to
//! whatever resolver the network hands out, which is what a DNS setting is there to prevent.
//! As in wg-quick, search domains without servers change nothing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use crate::config::{Config, Table};

/// The varlink socket systemd-resolved serves while it runs.
const RESOLVED_SOCKET: &str = "/run/systemd/resolve/io.systemd.Resolve";
/// resolvconf's interface order (Debian's resolvconf); wg-quick derives a prefix from it.
const INTERFACE_ORDER: &str = "/etc/resolvconf/interface-order";

/// What the interface's DNS should be.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsSettings {
    pub servers: Vec<IpAddr>,
    pub search: Vec<String>,
    /// Table "auto" with a peer owning a /0: every query should use these servers.
    pub full_tunnel: bool,
}

impl DnsSettings {
    pub fn of(config: &Config) -> Self {
        let i = &config.interface;
        DnsSettings {
            servers: i.dns.clone(),
            search: i.dns_search.clone(),
            full_tunnel: i.table == Table::Auto
                && config
                    .peers
                    .iter()
                    .any(|p| p.allowed_ips.iter().any(|a| a.is_default_route())),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

/// Who sets the DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Resolved {
        resolvectl: PathBuf,
    },
    /// `name` is what resolvconf files the settings under (wg-quick's prefix + interface).
    Resolvconf {
        resolvconf: PathBuf,
        name: String,
    },
}

/// One program run: its arguments and what goes to its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub stdin: Option<String>,
}

/// Finds the backend for `ifname`: systemd-resolved when its socket exists and `resolvectl`
/// is on PATH, else `resolvconf` on PATH, else an error that says what is missing.
pub fn detect(ifname: &str) -> anyhow::Result<Backend> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    detect_with(
        ifname,
        Path::new(RESOLVED_SOCKET).exists(),
        &dirs,
        std::fs::read_to_string(INTERFACE_ORDER).ok().as_deref(),
    )
}

fn detect_with(
    ifname: &str,
    resolved_runs: bool,
    path: &[PathBuf],
    interface_order: Option<&str>,
) -> anyhow::Result<Backend> {
    let find = |name: &str| {
        path.iter()
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    };
    if resolved_runs && let Some(resolvectl) = find("resolvectl") {
        return Ok(Backend::Resolved { resolvectl });
    }
    if let Some(resolvconf) = find("resolvconf") {
        let prefix = interface_order.map(resolvconf_prefix).unwrap_or_default();
        return Ok(Backend::Resolvconf {
            resolvconf,
            name: format!("{prefix}{ifname}"),
        });
    }
    bail!(
        "`dns` is set but there is no way to apply it: systemd-resolved is not running and \
         `resolvconf` is not on PATH (install openresolv or resolvconf, or remove `dns`)"
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// wg-quick's `resolvconf_iface_prefix`: the first `NAME*` line of the interface order gives
/// `NAME.` (Debian's lists `tun*`, hence `tun.wg0`).
fn resolvconf_prefix(order: &str) -> String {
    order
        .lines()
        .filter_map(|l| l.trim().strip_suffix('*'))
        .find(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(|name| format!("{name}."))
        .unwrap_or_default()
}

/// The programs that set `dns` on `ifname`.
pub fn set_commands(backend: &Backend, ifname: &str, dns: &DnsSettings) -> Vec<Invocation> {
    if dns.is_empty() {
        return Vec::new();
    }
    match backend {
        Backend::Resolved { resolvectl } => {
            let mut domains = dns.search.clone();
            if dns.full_tunnel && !domains.iter().any(|d| d == "~.") {
                domains.push("~.".to_owned());
            }
            let mut out = vec![Invocation {
                program: resolvectl.clone(),
                args: ["dns", ifname]
                    .into_iter()
                    .map(str::to_owned)
                    .chain(dns.servers.iter().map(ToString::to_string))
                    .collect(),
                stdin: None,
            }];
            if !domains.is_empty() {
                out.push(Invocation {
                    program: resolvectl.clone(),
                    args: ["domain", ifname]
                        .into_iter()
                        .map(str::to_owned)
                        .chain(domains)
                        .collect(),
                    stdin: None,
                });
            }
            out
        }
        Backend::Resolvconf { resolvconf, name } => {
            let mut text = String::new();
            for server in &dns.servers {
                text.push_str(&format!("nameserver {server}\n"));
            }
            if !dns.search.is_empty() {
                text.push_str(&format!("search {}\n", dns.search.join(" ")));
            }
            vec![Invocation {
                program: resolvconf.clone(),
                args: vec![
                    "-a".into(),
                    name.clone(),
                    "-m".into(),
                    "0".into(),
                    "-x".into(),
                ],
                stdin: Some(text),
            }]
        }
    }
}

/// The programs that take `ifname`'s DNS settings away again.
pub fn unset_commands(backend: &Backend, ifname: &str) -> Vec<Invocation> {
    match backend {
        Backend::Resolved { resolvectl } => vec![Invocation {
            program: resolvectl.clone(),
            args: vec!["revert".into(), ifname.to_owned()],
            stdin: None,
        }],
        Backend::Resolvconf { resolvconf, name } => vec![Invocation {
            program: resolvconf.clone(),
            args: vec!["-d".into(), name.clone(), "-f".into()],
            stdin: None,
        }],
    }
}

/// DNS that is in place and comes off on the way down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedDns {
    backend: Backend,
    ifname: String,
    pub settings: DnsSettings,
}

/// Sets `dns` on `ifname`; `None` when there is nothing to set.
pub async fn apply(ifname: &str, dns: &DnsSettings) -> anyhow::Result<Option<AppliedDns>> {
    if dns.is_empty() {
        return Ok(None);
    }
    let backend = detect(ifname)?;
    for invocation in set_commands(&backend, ifname, dns) {
        run(&invocation)
            .await
            .context("cannot set the DNS servers")?;
    }
    tracing::info!(
        servers = dns.servers.len(),
        domains = dns.search.len(),
        via = match backend {
            Backend::Resolved { .. } => "systemd-resolved",
            Backend::Resolvconf { .. } => "resolvconf",
        },
        "DNS set"
    );
    Ok(Some(AppliedDns {
        backend,
        ifname: ifname.to_owned(),
        settings: dns.clone(),
    }))
}

impl AppliedDns {
    /// Takes the settings away (best effort: a failure is logged).
    pub async fn remove(&self) {
        for invocation in unset_commands(&self.backend, &self.ifname) {
            if let Err(e) = run(&invocation).await {
                tracing::warn!("cannot remove the DNS settings: {e:#}");
            }
        }
    }
}

async fn run(invocation: &Invocation) -> anyhow::Result<()> {
    let shown = format!(
        "{} {}",
        invocation.program.display(),
        invocation.args.join(" ")
    );
    let mut child = tokio::process::Command::new(&invocation.program)
        .args(&invocation.args)
        .stdin(if invocation.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {shown}"))?;
    if let (Some(text), Some(mut stdin)) = (&invocation.stdin, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await?;
        // Dropping stdin closes it: the program reads to its end.
    }
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(full_tunnel: bool) -> DnsSettings {
        DnsSettings {
            servers: vec!["10.10.0.53".parse().unwrap(), "fd10::53".parse().unwrap()],
            search: vec!["corp.example".into()],
            full_tunnel,
        }
    }

    #[test]
    fn resolvconf_is_called_as_wg_quick_calls_it() {
        let b = Backend::Resolvconf {
            resolvconf: "/sbin/resolvconf".into(),
            name: "tun.wg0".into(),
        };
        let set = set_commands(&b, "wg0", &settings(true));
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].args, ["-a", "tun.wg0", "-m", "0", "-x"]);
        assert_eq!(
            set[0].stdin.as_deref(),
            Some("nameserver 10.10.0.53\nnameserver fd10::53\nsearch corp.example\n")
        );
        assert_eq!(unset_commands(&b, "wg0")[0].args, ["-d", "tun.wg0", "-f"]);
    }

    #[test]
    fn resolved_gets_link_servers_and_a_catch_all_domain_for_a_full_tunnel() {
        let b = Backend::Resolved {
            resolvectl: "/usr/bin/resolvectl".into(),
        };
        let set = set_commands(&b, "wg0", &settings(true));
        assert_eq!(set[0].args, ["dns", "wg0", "10.10.0.53", "fd10::53"]);
        assert_eq!(set[1].args, ["domain", "wg0", "corp.example", "~."]);
        let split = set_commands(&b, "wg0", &settings(false));
        assert_eq!(split[1].args, ["domain", "wg0", "corp.example"]);
        assert_eq!(unset_commands(&b, "wg0")[0].args, ["revert", "wg0"]);
    }

    #[test]
    fn search_domains_without_servers_do_nothing_as_in_wg_quick() {
        let b = Backend::Resolvconf {
            resolvconf: "/sbin/resolvconf".into(),
            name: "wg0".into(),
        };
        let mut s = settings(false);
        s.servers.clear();
        assert!(set_commands(&b, "wg0", &s).is_empty());
    }

    #[test]
    fn the_backend_follows_what_the_machine_has() {
        let dir = std::env::temp_dir().join(format!("tandem-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let none = detect_with("wg0", true, std::slice::from_ref(&dir), None);
        let e = none.expect_err("no tool");
        assert!(e.to_string().contains("resolvconf"), "{e}");
        for tool in ["resolvconf", "resolvectl"] {
            let p = dir.join(tool);
            std::fs::write(&p, "#!/bin/sh\n").expect("write");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let dirs = std::slice::from_ref(&dir);
        assert!(matches!(
            detect_with("wg0", true, dirs, None),
            Ok(Backend::Resolved { .. })
        ));
        assert_eq!(
            detect_with("wg0", false, dirs, Some("lo.inet*\n# x\ntun*\n")).ok(),
            Some(Backend::Resolvconf {
                resolvconf: dir.join("resolvconf"),
                name: "tun.wg0".into()
            })
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_prefix_is_the_first_plain_wildcard_line() {
        assert_eq!(
            resolvconf_prefix("lo.inet6*\nlo.inet*\ntun*\ntap*\n"),
            "tun."
        );
        assert_eq!(resolvconf_prefix("eth*\n"), "eth.");
        assert_eq!(resolvconf_prefix("# nothing\n"), "");
    }
}
