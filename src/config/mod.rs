//! Configuration: text -> a checked [`Config`] in one step, reporting every error at once,
//! each with file, line and key. Nothing here touches the network: endpoints stay host + port
//! for the daemon to resolve.
//!
//! # TOML format
//!
//! Every key, with its rules (`src/config/reference.toml`, also the README's "Configuration
//! reference"; `tests/config_reference.rs` fails when the two differ or when a key is missing
//! from it or unknown to the parser):
//!
//! ```toml
#![doc = include_str!("reference.toml")]
//! ```
//!
//! Unknown keys are errors (with a suggestion when the name is close to a known one, such as
//! wg-quick's `AllowedIPs`). Problems are reported as `FILE:LINE: KEY: MESSAGE`, where `KEY`
//! is a path such as `interface.mtu` or `peer[2].allowed_ips` and `peer[N]` counts `[[peer]]`
//! blocks from 1. TOML syntax errors use the key `syntax` and the line toml reports.
//!
//! # wg-quick format
//!
//! A file whose name ends in `.conf` is read as a wg-quick config (see [`parse_wg_quick`]):
//! `[Interface]` PrivateKey, Address, ListenPort, MTU, Table, FwMark and `[Peer]` PublicKey,
//! PresharedKey, AllowedIPs, Endpoint, PersistentKeepalive, and a `# friendly_name = NAME`
//! comment as the peer's name; DNS and the hooks as wg-quick applies them; SaveConfig is
//! accepted with a warning and ignored. Key paths in its messages use its spelling:
//! `Peer[2].AllowedIPs`. `tandem import` turns it into TOML with [`to_toml`], `tandem export`
//! writes any config back out with [`to_wg_quick`].

mod compile;
mod error;
pub(crate) mod include;
mod net;
mod to_toml;
mod to_wg_quick;
mod toml_format;
mod wg_quick;

#[cfg(test)]
mod test_util;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors, ConfigWarning};
pub use net::{
    AddrError, EndpointSpec, InterfaceAddress, Prefix, check_interface_name, is_dns_name,
};
pub use to_toml::to_toml;
pub use to_wg_quick::{WgQuickExport, to_wg_quick};

use crate::proto::keys::{PresharedKey, PrivateKey, PublicKey};

/// MTU when the config gives none: 1500 minus the largest WireGuard overhead (IPv6 outer
/// header 40 + UDP 8 + WireGuard header 16 + tag 16).
pub const DEFAULT_MTU: u16 = 1420;
/// The smallest MTU an IPv6 link may have.
pub const MIN_MTU: u16 = 1280;
pub const MAX_MTU: u16 = 65535;

/// A checked configuration: every value parsed and every cross-check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub interface: InterfaceConfig,
    pub peers: Vec<PeerConfig>,
    /// `[metrics]`: the Prometheus endpoint, off when absent.
    pub metrics: Option<MetricsConfig>,
    /// Things accepted but worth telling the user (print them on load).
    pub warnings: Vec<ConfigWarning>,
    /// The file this came from.
    pub source: PathBuf,
    /// The peer files its `include` patterns matched, in the order read.
    pub included: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub private_key: PrivateKey,
    /// Where the private key was read from (absolute), when it came from `private_key_file`.
    pub private_key_file: Option<PathBuf>,
    /// `None`: a random port.
    pub listen_port: Option<u16>,
    pub addresses: Vec<InterfaceAddress>,
    /// `None`: automatic, as wg-quick: the MTU of the path to the endpoints minus 80 (the
    /// largest WireGuard overhead), [`DEFAULT_MTU`] when nothing is known, never below
    /// [`MIN_MTU`] (see `daemon::settings::automatic_mtu`).
    pub mtu: Option<u16>,
    /// 0 = off.
    pub fwmark: u32,
    pub table: Table,
    pub offload: bool,
    /// DNS servers for while the interface is up (wg-quick's `DNS` addresses).
    pub dns: Vec<std::net::IpAddr>,
    /// Search domains (wg-quick's `DNS` entries that are not addresses).
    pub dns_search: Vec<String>,
    pub hooks: Hooks,
    /// `include` patterns as written (relative to the config file's directory); their
    /// peers are in [`Config::peers`], each with its [`PeerConfig::file`].
    pub include: Vec<String>,
}

/// Shell commands run around the interface's life, as wg-quick runs them: each with
/// `/bin/sh -c`, `%i` replaced by the interface name, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hooks {
    /// Before the interface is created; a failure stops the start.
    pub pre_up: Vec<String>,
    /// Once the interface is configured; a failure takes it down again.
    pub post_up: Vec<String>,
    /// Before the interface is taken down (it still exists).
    pub pre_down: Vec<String>,
    /// After the interface is gone.
    pub post_down: Vec<String>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.pre_up.is_empty()
            && self.post_up.is_empty()
            && self.pre_down.is_empty()
            && self.post_down.is_empty()
    }
}

impl InterfaceConfig {
    pub fn public_key(&self) -> PublicKey {
        self.private_key.public_key()
    }
}

/// `[metrics]`: serve Prometheus metrics over HTTP (opt in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address and port to listen on, e.g. `127.0.0.1:9586`.
    pub listen: std::net::SocketAddr,
}

/// Where routes for peer prefixes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Table {
    /// A route per peer prefix in the main table; a `/0` makes a full tunnel the wg-quick way
    /// (fwmark, a default route in the mark's table, policy rules; see `netconf::policy`).
    #[default]
    Auto,
    /// No routes.
    Off,
    /// Routes in this table.
    Id(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The included file this peer came from; `None`: the configuration file itself.
    pub file: Option<PathBuf>,
    pub name: Option<String>,
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    /// Where the preshared key was read from (absolute), when it came from
    /// `preshared_key_file`.
    pub preshared_key_file: Option<PathBuf>,
    pub endpoint: Option<EndpointSpec>,
    pub allowed_ips: Vec<Prefix>,
    /// Seconds; `None` = off.
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    /// `name` if set, else the public key's short fingerprint: how logs name the peer.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.public_key.fingerprint())
    }
}

/// Reads and checks a config file: `.conf` as wg-quick, anything else as TOML.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!("cannot read the configuration: {e}"),
        }])
    })?;
    if is_wg_quick_path(path) {
        parse_wg_quick(path, &text)
    } else {
        parse_toml(path, &text)
    }
}

/// True for names ending in `.conf` (any case): the wg-quick format.
pub fn is_wg_quick_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("conf"))
}

/// Checks tandem TOML. `file` names the source in messages, gives the default interface name
/// (its stem) and anchors relative key-file paths; key files are read.
pub fn parse_toml(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    toml_format::parse(file, text)
}

/// Checks a wg-quick `.conf`. `file` names the source in messages and gives the interface
/// name (its stem).
pub fn parse_wg_quick(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    wg_quick::parse(file, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
    }

    fn load_example(name: &str) -> Config {
        let path = configs_dir().join(name);
        match load(&path) {
            Ok(c) => c,
            Err(e) => panic!("configs/{name} does not load:\n{e}"),
        }
    }

    fn cidrs(list: &[&str]) -> Vec<Prefix> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn addrs(list: &[&str]) -> Vec<InterfaceAddress> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Each side's peer entry names the other side's key, routes the other side's tunnel
    /// addresses, and (when it has an endpoint) points at the other side's listen port.
    fn assert_pair(a: &Config, b: &Config) {
        let a_peer = a
            .peers
            .iter()
            .find(|p| p.public_key == b.interface.public_key())
            .unwrap_or_else(|| {
                panic!(
                    "{} has no peer with {}'s key",
                    a.source.display(),
                    b.source.display()
                )
            });
        let b_peer = b
            .peers
            .iter()
            .find(|p| p.public_key == a.interface.public_key())
            .unwrap_or_else(|| {
                panic!(
                    "{} has no peer with {}'s key",
                    b.source.display(),
                    a.source.display()
                )
            });
        assert_eq!(
            a_peer.preshared_key, b_peer.preshared_key,
            "preshared keys differ"
        );
        for (from, peer, to) in [(a, a_peer, b), (b, b_peer, a)] {
            for addr in &to.interface.addresses {
                assert!(
                    peer.allowed_ips.iter().any(|c| c.contains(&addr.addr)),
                    "{}: {addr} of {} is not in the peer's allowed_ips",
                    from.source.display(),
                    to.source.display()
                );
            }
            if let Some(ep) = &peer.endpoint {
                assert_eq!(Some(ep.port), to.interface.listen_port, "endpoint port");
            }
        }
    }

    /// Every file under configs/ loads without errors or unexpected warnings and says what
    /// its comments claim. A new file needs an entry here.
    #[test]
    fn example_configs_are_valid_and_as_documented() {
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(configs_dir()).expect("configs/ exists") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let config = load_example(&name);
            let expected_warnings = match name.as_str() {
                "site-a.toml" => {
                    let i = &config.interface;
                    assert_eq!(i.name, "tnd-site-a");
                    assert_eq!(i.listen_port, Some(51820));
                    assert_eq!(i.addresses, addrs(&["10.9.0.1/24", "fd09::1/64"]));
                    assert_eq!(
                        (i.mtu, i.fwmark, i.table, i.offload),
                        (Some(1420), 0, Table::Auto, true)
                    );
                    assert_eq!(config.peers.len(), 1);
                    let p = &config.peers[0];
                    assert_eq!(p.name.as_deref(), Some("site-b"));
                    assert_eq!(
                        p.endpoint.as_ref().unwrap().literal(),
                        Some("203.0.113.20:51820".parse().unwrap())
                    );
                    assert_eq!(
                        p.allowed_ips,
                        cidrs(&[
                            "10.9.0.2/32",
                            "fd09::2/128",
                            "192.168.20.0/24",
                            "192.168.21.0/24",
                            "2001:db8:20::/48"
                        ])
                    );
                    assert!(p.preshared_key.is_some());
                    assert_eq!(p.persistent_keepalive, None);
                    0
                }
                "site-b.toml" => {
                    let i = &config.interface;
                    assert_eq!(i.name, "tnd-site-b");
                    assert_eq!(i.listen_port, Some(51820));
                    assert_eq!(i.addresses, addrs(&["10.9.0.2/24", "fd09::2/64"]));
                    assert_eq!(config.peers.len(), 1);
                    let p = &config.peers[0];
                    assert_eq!(
                        p.endpoint.as_ref().unwrap().literal(),
                        Some("198.51.100.10:51820".parse().unwrap())
                    );
                    assert_eq!(
                        p.allowed_ips,
                        cidrs(&[
                            "10.9.0.1/32",
                            "fd09::1/128",
                            "192.168.10.0/24",
                            "192.168.11.0/24",
                            "2001:db8:10::/48"
                        ])
                    );
                    0
                }
                "roadwarrior-server.toml" => {
                    let i = &config.interface;
                    assert_eq!(i.name, "tnd-rw");
                    assert_eq!(i.listen_port, Some(51820));
                    assert_eq!(i.addresses, addrs(&["10.10.0.1/24", "fd10::1/64"]));
                    assert_eq!(config.peers.len(), 2);
                    assert!(config.peers.iter().all(|p| p.endpoint.is_none()));
                    assert_eq!(
                        config.peers[0].allowed_ips,
                        cidrs(&["10.10.0.2/32", "fd10::2/128"])
                    );
                    assert_eq!(
                        config.peers[1].allowed_ips,
                        cidrs(&["10.10.0.3/32", "fd10::3/128"])
                    );
                    assert!(config.peers[0].preshared_key.is_some());
                    assert!(config.peers[1].preshared_key.is_none());
                    0
                }
                "laptop.toml" => {
                    let i = &config.interface;
                    assert_eq!(i.name, "laptop");
                    assert_eq!(i.listen_port, None);
                    assert_eq!(i.addresses, addrs(&["10.10.0.2/32", "fd10::2/128"]));
                    assert_eq!(config.peers.len(), 1);
                    let p = &config.peers[0];
                    assert_eq!(p.allowed_ips, cidrs(&["0.0.0.0/0", "::/0"]));
                    assert!(p.allowed_ips.iter().all(Prefix::is_default_route));
                    assert_eq!(p.persistent_keepalive, Some(25));
                    let ep = p.endpoint.as_ref().unwrap();
                    assert_eq!(
                        (ep.host.as_str(), ep.port, ep.literal()),
                        ("vpn.example.com", 51820, None)
                    );
                    0
                }
                "wg0.conf" => {
                    let i = &config.interface;
                    assert_eq!(i.name, "wg0");
                    assert_eq!(i.listen_port, Some(51821));
                    assert_eq!(i.addresses, addrs(&["10.20.0.1/24", "fd20::1/64"]));
                    assert_eq!((i.mtu, i.fwmark, i.table), (Some(1380), 0xca6c, Table::Off));
                    assert_eq!(config.peers.len(), 2);
                    assert_eq!(
                        config.peers[0].endpoint.as_ref().unwrap().literal(),
                        Some("[2001:db8::20]:51820".parse().unwrap())
                    );
                    assert_eq!(
                        config.peers[0].allowed_ips,
                        cidrs(&["10.20.0.2/32", "fd20::2/128", "192.168.30.0/24"])
                    );
                    assert_eq!(config.peers[1].persistent_keepalive, None);
                    // DNS and the hooks are applied as wg-quick applies them.
                    assert_eq!(
                        i.dns,
                        vec!["10.20.0.53".parse::<std::net::IpAddr>().unwrap()]
                    );
                    assert_eq!(i.hooks.post_up, ["iptables -A FORWARD -i %i -j ACCEPT"]);
                    assert_eq!(i.hooks.post_down.len(), 1);
                    0
                }
                other => panic!("configs/{other}: add its expectations to this test"),
            };
            assert_eq!(
                config.warnings.len(),
                expected_warnings,
                "configs/{name} warnings: {:?}",
                config.warnings
            );
            // Every example survives `tandem import`-style rewriting unchanged.
            let again = parse_toml(&path, &to_toml(&config)).unwrap();
            assert_eq!(
                (&again.interface, &again.peers),
                (&config.interface, &config.peers)
            );
            seen.push(name);
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "laptop.toml",
                "roadwarrior-server.toml",
                "site-a.toml",
                "site-b.toml",
                "wg0.conf"
            ]
        );

        assert_pair(&load_example("site-a.toml"), &load_example("site-b.toml"));
        assert_pair(
            &load_example("roadwarrior-server.toml"),
            &load_example("laptop.toml"),
        );
    }
}
