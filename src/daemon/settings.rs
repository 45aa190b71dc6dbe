//! From a checked [`Config`] to what the parts of the daemon need: resolved endpoints, the
//! core's peers, and the interface plan for netconf.

use anyhow::{Context, bail};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use tokio::task::JoinSet;

use super::endpoints;
use crate::config::{Config, DEFAULT_MTU, EndpointSpec, MAX_MTU, MIN_MTU, Table};
use crate::netconf::{FullTunnel, InterfacePlan, NetConf};
use crate::reconcile::{DesiredDevice, DesiredPeer};

/// A config with every endpoint resolved to a socket address (`None`: the peer has none, or
/// its name did not resolve: see `endpoints`).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    /// One entry per `config.peers`, in the same order.
    pub endpoints: Vec<Option<SocketAddr>>,
}

/// Resolves every endpoint: IP literals directly, names through the system resolver (the
/// first address it gives), all names at once so the wait is one timeout at most. A name
/// that does not resolve is logged and left `None`, which keeps the peer's endpoint (none at
/// start); `endpoints::Resolver` keeps trying it. So a name never stops a start or a reload.
pub async fn resolve(config: Config) -> Resolved {
    let mut found: Vec<Option<SocketAddr>> = config
        .peers
        .iter()
        .map(|p| p.endpoint.as_ref().and_then(EndpointSpec::literal))
        .collect();
    let mut lookups = JoinSet::new();
    for (i, peer) in config.peers.iter().enumerate() {
        if let Some(spec) = &peer.endpoint
            && spec.literal().is_none()
        {
            let spec = spec.clone();
            lookups.spawn(async move { (i, endpoints::lookup(&spec).await) });
        }
    }
    while let Some(joined) = lookups.join_next().await {
        // A lookup task cannot panic short of a bug; its peer then just waits for the
        // resolver like any unresolved name.
        let Ok((i, result)) = joined else { continue };
        let (Some(peer), Some(slot)) = (config.peers.get(i), found.get_mut(i)) else {
            continue;
        };
        let spec = peer
            .endpoint
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        match result {
            Ok(addr) => {
                tracing::debug!(peer = %peer.label(), endpoint = %spec, resolved = %addr, "endpoint resolved");
                *slot = Some(addr);
            }
            Err(e) => tracing::warn!(
                peer = %peer.label(), endpoint = %spec, error = %e,
                "endpoint name does not resolve; the peer keeps its endpoint (none at start), \
                 retrying in the background"
            ),
        }
    }
    Resolved {
        config,
        endpoints: found,
    }
}

/// Where routes go: `None` for none at all, else the table (`None` inside: main).
pub fn route_table(table: Table) -> Option<Option<u32>> {
    match table {
        Table::Auto => Some(None),
        Table::Off => None,
        Table::Id(id) => Some(Some(id)),
    }
}

/// wg-quick's first candidate table (and mark) for a full tunnel without a configured
/// fwmark.
pub const FIRST_FULL_TUNNEL_TABLE: u32 = 51820;

/// How many tables from [`FIRST_FULL_TUNNEL_TABLE`] up are tried for a free one.
const FREE_TABLE_TRIES: u32 = 4096;

/// The families of a full tunnel the wg-quick way, `(v4, v6)`: with `table = "auto"`, those
/// in which a peer owns the default route (`0.0.0.0/0`, `::/0`).
pub fn full_tunnel_families(config: &Config) -> (bool, bool) {
    if config.interface.table != Table::Auto {
        return (false, false);
    }
    let mut families = (false, false);
    for cidr in config.peers.iter().flat_map(|p| &p.allowed_ips) {
        if cidr.is_default_route() {
            match cidr.addr() {
                IpAddr::V4(_) => families.0 = true,
                IpAddr::V6(_) => families.1 = true,
            }
        }
    }
    families
}

/// The firewall mark of tandem's UDP sockets for `config`, as wg-quick's `add_default`
/// picks it: the configured `fwmark` if any; else, for a full tunnel, the mark (= table) the
/// running full tunnel has (`running`: a reload keeps its table, which its own default route
/// makes look taken), else the first table from 51820 up with no IPv4 or IPv6 route in it.
/// Without a full tunnel and a configured mark: 0 (no mark).
pub async fn fwmark(nc: &NetConf, config: &Config, running: Option<u32>) -> anyhow::Result<u32> {
    let configured = config.interface.fwmark;
    if configured != 0 || full_tunnel_families(config) == (false, false) {
        return Ok(configured);
    }
    if let Some(mark) = running {
        return Ok(mark);
    }
    for table in (FIRST_FULL_TUNNEL_TABLE..).take(FREE_TABLE_TRIES as usize) {
        if !nc
            .table_has_routes(table)
            .await
            .context("cannot look for a free routing table for the full tunnel")?
        {
            return Ok(table);
        }
    }
    bail!(
        "no free routing table for the full tunnel among {FIRST_FULL_TUNNEL_TABLE}..{}: set \
         `fwmark` to the table to use",
        FIRST_FULL_TUNNEL_TABLE + FREE_TABLE_TRIES
    )
}

/// What WireGuard adds to every packet at most: an IPv6 outer header (40), UDP (8), the
/// transport header (16) and the tag (16). wg-quick subtracts the same 80.
pub const WIREGUARD_OVERHEAD: u32 = 80;

/// The interface MTU when the config gives none, as wg-quick's `set_mtu_up` finds it: the
/// largest MTU among the paths to the peers' endpoints (`ip route get`, with the sockets'
/// mark, before any full-tunnel rule exists or for the sockets' own route) minus
/// [`WIREGUARD_OVERHEAD`]; [`DEFAULT_MTU`] (1500 - 80) when no endpoint is known or routed;
/// never below [`MIN_MTU`], as IPv6 needs 1280. An explicit `mtu` is returned as it is.
pub async fn automatic_mtu(nc: &NetConf, resolved: &Resolved, fwmark: u32) -> u16 {
    if let Some(mtu) = resolved.config.interface.mtu {
        return mtu;
    }
    let mut path = 0u32;
    for endpoint in resolved.endpoints.iter().flatten() {
        match nc.path_mtu(endpoint.ip(), fwmark).await {
            Ok(Some(mtu)) => path = path.max(mtu),
            Ok(None) => {}
            Err(e) => tracing::debug!("cannot look up the path MTU to {endpoint}: {e}"),
        }
    }
    let mtu = mtu_for_path(path);
    tracing::info!(mtu, path_mtu = path, "automatic MTU");
    mtu
}

/// [`automatic_mtu`]'s arithmetic: 0 means nothing known.
pub fn mtu_for_path(path_mtu: u32) -> u16 {
    if path_mtu == 0 {
        return DEFAULT_MTU;
    }
    let mtu = path_mtu
        .saturating_sub(WIREGUARD_OVERHEAD)
        .clamp(u32::from(MIN_MTU), u32::from(MAX_MTU));
    u16::try_from(mtu).unwrap_or(DEFAULT_MTU)
}

/// The netconf plan of a config: MTU, addresses, and a route per allowed prefix unless the
/// table is off. With `table = "auto"`, a peer's `/0` is not a route in main but a full
/// tunnel the wg-quick way (see `netconf::policy`) with `fwmark` (from [`fwmark`]) as its
/// mark and table; with a table number, a `/0` is a route in that table like any other.
pub fn interface_plan(config: &Config, ifname: &str, fwmark: u32) -> InterfacePlan {
    let iface = &config.interface;
    let mut routes = Vec::new();
    let table = route_table(iface.table);
    let (v4, v6) = full_tunnel_families(config);
    if let Some(table) = table {
        let mut seen = HashSet::new();
        for peer in &config.peers {
            for cidr in &peer.allowed_ips {
                if cidr.is_default_route() && table.is_none() {
                    continue; // the full tunnel's, below
                }
                let net = cidr.network();
                if seen.insert(net) {
                    routes.push(net);
                }
            }
        }
    }
    InterfacePlan {
        ifname: ifname.to_owned(),
        mtu: u32::from(iface.mtu.unwrap_or(DEFAULT_MTU)),
        addresses: iface.addresses.iter().map(|a| a.prefix()).collect(),
        routes,
        table: table.flatten(),
        full_tunnel: (v4 || v6).then_some(FullTunnel {
            mark: fwmark,
            v4,
            v6,
        }),
    }
}

/// The device `resolved` asks for, for the one reconciler (`crate::reconcile`): its key,
/// port, fwmark (from [`fwmark`]: the configured one, or a full tunnel's), MTU and peers. A
/// peer without an endpoint in the file keeps the one it has (learned by roaming, or from an
/// earlier config); a port of 0 or none keeps the bound one.
pub fn desired(resolved: &Resolved, fwmark: u32) -> DesiredDevice {
    let iface = &resolved.config.interface;
    DesiredDevice {
        private_key: Some(iface.private_key.clone()),
        listen_port: iface.listen_port.unwrap_or(0),
        fwmark,
        mtu: Some(usize::from(iface.mtu.unwrap_or(DEFAULT_MTU))),
        peers: resolved
            .config
            .peers
            .iter()
            .zip(&resolved.endpoints)
            .map(|(peer, endpoint)| DesiredPeer {
                public_key: peer.public_key,
                preshared_key: peer.preshared_key.clone(),
                endpoint: *endpoint,
                persistent_keepalive: peer.persistent_keepalive.unwrap_or(0),
                allowed_ips: peer.allowed_ips.clone(),
                fresh: false,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_toml;
    use crate::proto::{Device, Now, PrivateKey};
    use crate::reconcile::{self, Changes, Snapshot};
    use std::path::Path;
    use std::time::Duration;

    /// The core's half of the one reconciler, as the driver runs it (sockets aside).
    fn sync_peers(device: &mut Device, resolved: &Resolved, now: Now) -> Changes {
        let plan = reconcile::plan(&Snapshot::of(device, 0, 0), &desired(resolved, 0));
        reconcile::apply_to_device(device, &plan, now);
        plan.changes()
    }

    fn key(n: u8) -> PrivateKey {
        PrivateKey::from_bytes([n; 32])
    }

    fn config(text: &str) -> Config {
        match parse_toml(Path::new("test.toml"), text) {
            Ok(c) => c,
            Err(e) => panic!("test config does not parse:\n{e}"),
        }
    }

    fn two_peers(table: &str, extra_b: &str) -> Config {
        config(&format!(
            r#"
[interface]
name = "tnd0"
private_key = "{}"
address = ["10.9.0.1/24", "fd09::1/64"]
table = {table}

[[peer]]
public_key = "{}"
endpoint = "192.0.2.1:51820"
allowed_ips = ["10.9.0.2/32", "10.20.0.0/16"]
persistent_keepalive = 5

[[peer]]
public_key = "{}"
allowed_ips = ["fd09::2/128"{extra_b}]
"#,
            key(1).to_base64(),
            key(2).public_key().to_base64(),
            key(3).public_key().to_base64(),
        ))
    }

    fn now() -> Now {
        Now::new(Duration::from_secs(10), Duration::from_secs(1_700_000_000))
    }

    #[test]
    fn automatic_mtu_is_the_path_minus_80_within_bounds() {
        assert_eq!(mtu_for_path(1500), 1420);
        assert_eq!(mtu_for_path(1400), 1320);
        assert_eq!(mtu_for_path(9000), 8920);
        // Never below what IPv6 needs, and 1420 when nothing is known.
        assert_eq!(mtu_for_path(1300), 1280);
        assert_eq!(mtu_for_path(0), 1420);
        assert_eq!(mtu_for_path(u32::MAX), 65535);
    }

    #[test]
    fn plan_routes_each_prefix_in_the_chosen_table() {
        let plan = interface_plan(&two_peers("\"auto\"", ""), "tnd0", 0);
        assert_eq!(plan.mtu, 1420);
        assert_eq!(plan.table, None);
        assert_eq!(plan.full_tunnel, None);
        assert_eq!(plan.addresses.len(), 2);
        let routes: Vec<String> = plan.routes.iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["10.9.0.2/32", "10.20.0.0/16", "fd09::2/128"]);

        let plan = interface_plan(&two_peers("1234", ""), "tnd0", 0);
        assert_eq!(plan.table, Some(1234));
        assert_eq!(plan.routes.len(), 3);

        let plan = interface_plan(&two_peers("\"off\"", ""), "tnd0", 0);
        assert!(plan.routes.is_empty());
    }

    #[test]
    fn a_default_route_in_the_auto_table_is_a_full_tunnel() {
        let c = two_peers("\"auto\"", ", \"::/0\"");
        assert_eq!(full_tunnel_families(&c), (false, true));
        let plan = interface_plan(&c, "tnd0", 51821);
        assert!(!plan.routes.iter().any(|r| r.len() == 0), "{plan:?}");
        assert_eq!(
            plan.full_tunnel,
            Some(FullTunnel {
                mark: 51821,
                v4: false,
                v6: true
            })
        );
        let mut both = c.clone();
        both.peers[0]
            .allowed_ips
            .push("0.0.0.0/0".parse().expect("cidr"));
        assert_eq!(full_tunnel_families(&both), (true, true));
        // In a table of its own, a default route is just a route, as with wg-quick.
        let c = two_peers("51820", ", \"::/0\"");
        assert_eq!(full_tunnel_families(&c), (false, false));
        let plan = interface_plan(&c, "tnd0", 0);
        assert_eq!(plan.full_tunnel, None);
        assert!(plan.routes.iter().any(|r| r.len() == 0));
        // Off: no route at all, and no full tunnel.
        let c = two_peers("\"off\"", ", \"::/0\"");
        let plan = interface_plan(&c, "tnd0", 0);
        assert!(plan.routes.is_empty() && plan.full_tunnel.is_none());
    }

    #[test]
    fn the_desired_device_carries_the_chosen_mark() {
        let r = Resolved {
            endpoints: vec![None, None],
            config: two_peers("\"auto\"", ", \"::/0\""),
        };
        assert_eq!(desired(&r, 51820).fwmark, 51820);
        assert_eq!(desired(&r, 0).fwmark, 0);
    }

    #[tokio::test]
    async fn literal_endpoints_resolve_without_a_resolver() {
        let r = resolve(two_peers("\"auto\"", "")).await;
        assert_eq!(
            r.endpoints[0],
            Some("192.0.2.1:51820".parse().expect("addr"))
        );
        assert_eq!(r.endpoints[1], None);
    }

    #[tokio::test]
    async fn localhost_name_resolves() {
        let mut c = two_peers("\"auto\"", "");
        c.peers[1].endpoint = Some("localhost:4000".parse().expect("spec"));
        let r = resolve(c).await;
        let addr = r.endpoints[1].expect("resolved");
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_eq!(addr.port(), 4000);
    }

    #[test]
    fn sync_adds_updates_and_removes_keeping_kept_peers() {
        let c = two_peers("\"auto\"", "");
        let endpoints = vec![Some("192.0.2.1:51820".parse().expect("addr")), None];
        let mut device = Device::new(Some(key(1)), [7; 32]);
        let first = Resolved {
            config: c.clone(),
            endpoints: endpoints.clone(),
        };
        let changes = sync_peers(&mut device, &first, now());
        assert_eq!(changes.added.len(), 2);
        let b = key(2).public_key();
        let id_b = device.peer_id(&b).expect("peer b");
        let info = device.peer_info(id_b).expect("info");
        assert_eq!(info.persistent_keepalive, 5);
        assert_eq!(info.allowed_ips.len(), 2);
        // Keepalive turned on with an endpoint: a handshake initiation waits to go out.
        assert!(device.has_transmit());

        // Reload: peer 3 gone, peer 4 new, peer 2 loses a prefix and learns of a new one.
        let mut c2 = c.clone();
        c2.peers.remove(1);
        c2.peers[0].allowed_ips = vec![
            "10.9.0.2/32".parse().expect("cidr"),
            "10.30.0.0/16".parse().expect("cidr"),
        ];
        c2.peers[0].endpoint = None;
        let mut p4 = c.peers[1].clone();
        p4.public_key = key(4).public_key();
        c2.peers.push(p4);
        let second = Resolved {
            config: c2,
            endpoints: vec![None, None],
        };
        let changes = sync_peers(&mut device, &second, now());
        assert_eq!(changes.removed, vec![key(3).public_key()]);
        assert_eq!(changes.added, vec![key(4).public_key()]);
        assert_eq!(changes.changed, vec![b]);
        assert_eq!(device.peer_id(&b), Some(id_b), "kept peer keeps its slot");
        let info = device.peer_info(id_b).expect("info");
        assert_eq!(
            info.endpoint, endpoints[0],
            "an endpoint the new config leaves out is kept"
        );
        let mut prefixes: Vec<String> = info.allowed_ips.iter().map(ToString::to_string).collect();
        prefixes.sort();
        assert_eq!(prefixes, ["10.30.0.0/16", "10.9.0.2/32"]);
        assert!(device.peer_id(&key(3).public_key()).is_none());
    }

    #[test]
    fn a_prefix_can_move_between_peers() {
        let c = two_peers("\"auto\"", "");
        let mut device = Device::new(Some(key(1)), [7; 32]);
        let r = Resolved {
            endpoints: vec![None, None],
            config: c.clone(),
        };
        sync_peers(&mut device, &r, now());
        // 10.20.0.0/16 moves from the first peer to the second (listed after it).
        let mut c2 = c;
        c2.peers[0].allowed_ips.retain(|a| a.len() == 32);
        c2.peers[1]
            .allowed_ips
            .push("10.20.0.0/16".parse().expect("cidr"));
        let r2 = Resolved {
            endpoints: vec![None, None],
            config: c2,
        };
        sync_peers(&mut device, &r2, now());
        let id3 = device.peer_id(&key(3).public_key()).expect("peer");
        let info = device.peer_info(id3).expect("info");
        assert!(info.allowed_ips.iter().any(|p| p.len() == 16), "{info:?}");
    }
}
