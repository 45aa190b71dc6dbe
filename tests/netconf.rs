//! Interface setup over netlink, checked against `ip`'s view, inside network namespaces that
//! each test creates for itself (needs root). Also checks the namespace test kit itself.

mod common;
use common::netns;

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use netns::{Netns, require_root, veth_pair};
use serde_json::Value;
use tandem::driver::tun::open_tun;
use tandem::netconf::{self, InterfacePlan, NetConf, NetconfError};
use tandem::proto::prefix::Prefix;
use tandem::testkit::pfx;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// `ip -j addr show dev IFNAME`: the (local, prefixlen) pairs on the link.
fn link_addresses(ns: &Netns, ifname: &str) -> Vec<Prefix> {
    let shown = ns.ip_json(&["addr", "show", "dev", ifname]);
    let mut out = Vec::new();
    for link in shown.as_array().expect("array of links") {
        for info in link["addr_info"].as_array().into_iter().flatten() {
            let local = info["local"].as_str().expect("local address");
            let len = info["prefixlen"].as_u64().expect("prefix length");
            let len = u8::try_from(len).expect("prefix fits u8");
            out.push(Prefix::new(ip(local), len).expect("the kernel's prefixes fit"));
        }
    }
    out
}

/// `ip -j -FAMILY route show table TABLE dev IFNAME`: (dst, protocol) of each route.
fn link_routes(ns: &Netns, family: &str, table: &str, ifname: &str) -> Vec<(String, String)> {
    let shown = ns.ip_json(&[family, "route", "show", "table", table, "dev", ifname]);
    shown
        .as_array()
        .expect("array of routes")
        .iter()
        .map(|r| {
            let dst = r["dst"].as_str().unwrap_or("").to_owned();
            // `ip` leaves out the default protocol, "boot" (what `ip route add` uses).
            let protocol = r["protocol"].as_str().unwrap_or("boot").to_owned();
            (dst, protocol)
        })
        .collect()
}

fn has_route(routes: &[(String, String)], dst: &str, protocol: &str) -> bool {
    routes.iter().any(|(d, p)| d == dst && p == protocol)
}

/// Whether `ip link show dev IFNAME` finds the link.
fn link_listed(ns: &Netns, ifname: &str) -> bool {
    ns.exec("ip", &["link", "show", "dev", ifname])
        .status
        .success()
}

#[test]
fn plan_is_applied_then_torn_down_then_link_goes_with_the_device() {
    require_root();
    let ns = Netns::new("tdm-nc-apply");
    let ifname = "tdmapply0";
    ns.block_on(|| async {
        let tun = open_tun(ifname, false).expect("open TUN");
        assert_eq!(tun.name, ifname);
        let nc = NetConf::new().await.expect("netlink socket");
        assert_eq!(nc.link_index(ifname).await.expect("index"), tun.index);

        let plan = InterfacePlan {
            ifname: ifname.into(),
            mtu: 1420,
            addresses: vec![pfx("10.9.0.1", 24), pfx("fd00:9::1", 64)],
            // 10.9.0.1/24 is on-link through the address already (EEXIST, skipped and kept);
            // the host bits of 10.10.7.7/16 are cleared.
            routes: vec![
                pfx("10.9.0.1", 24),
                pfx("10.10.7.7", 16),
                pfx("fd00:10::", 64),
            ],
            table: None,
            full_tunnel: None,
        };
        let applied = netconf::apply(&nc, &plan).await.expect("apply");
        assert_eq!(applied.index, tun.index);
        assert_eq!(applied.addresses, plan.addresses);
        assert_eq!(
            applied.routes,
            vec![pfx("10.10.0.0", 16), pfx("fd00:10::", 64)],
            "the on-link route that already existed must not be recorded"
        );

        // What `ip` sees.
        let link = ns.ip_json(&["link", "show", "dev", ifname]);
        let link = &link[0];
        assert_eq!(link["mtu"].as_u64(), Some(1420), "{link}");
        let flags: Vec<&str> = link["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(flags.contains(&"UP"), "link not up: {flags:?}");
        let addrs = link_addresses(&ns, ifname);
        assert!(addrs.contains(&pfx("10.9.0.1", 24)), "{addrs:?}");
        assert!(addrs.contains(&pfx("fd00:9::1", 64)), "{addrs:?}");
        let v4 = link_routes(&ns, "-4", "main", ifname);
        assert!(has_route(&v4, "10.10.0.0/16", "static"), "{v4:?}");
        assert!(has_route(&v4, "10.9.0.0/24", "kernel"), "{v4:?}");
        let v6 = link_routes(&ns, "-6", "main", ifname);
        assert!(has_route(&v6, "fd00:10::/64", "static"), "{v6:?}");

        netconf::teardown(&nc, &applied).await.expect("teardown");
        let addrs = link_addresses(&ns, ifname);
        assert!(!addrs.contains(&pfx("10.9.0.1", 24)), "{addrs:?}");
        assert!(!addrs.contains(&pfx("fd00:9::1", 64)), "{addrs:?}");
        let v4 = link_routes(&ns, "-4", "main", ifname);
        assert!(v4.is_empty(), "IPv4 routes left: {v4:?}");
        let v6 = link_routes(&ns, "-6", "main", ifname);
        assert!(
            !v6.iter().any(|(d, _)| d.starts_with("fd00:")),
            "IPv6 routes left: {v6:?}"
        );
        // A second teardown finds everything gone already, which is not an error.
        netconf::teardown(&nc, &applied)
            .await
            .expect("teardown twice");

        assert!(nc.link_exists(ifname).await.expect("link query"));
        drop(tun);
        // The kernel unregisters a non-persistent TUN link when its last descriptor closes;
        // allow it a bounded moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while nc.link_exists(ifname).await.expect("link query") {
            assert!(
                Instant::now() < deadline,
                "link {ifname} still there after close"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!link_listed(&ns, ifname));
    });
}

#[test]
fn routes_go_to_the_requested_table() {
    require_root();
    let ns = Netns::new("tdm-nc-table");
    let ifname = "tdmtable0";
    ns.block_on(|| async {
        let _tun = open_tun(ifname, false).expect("open TUN");
        let nc = NetConf::new().await.expect("netlink socket");
        let plan = InterfacePlan {
            ifname: ifname.into(),
            mtu: 1380,
            addresses: vec![pfx("10.21.0.1", 32)],
            routes: vec![pfx("0.0.0.0", 0), pfx("::", 0)],
            table: Some(51820),
            full_tunnel: None,
        };
        let applied = netconf::apply(&nc, &plan).await.expect("apply");
        assert_eq!(applied.routes, plan.routes);
        let v4 = link_routes(&ns, "-4", "51820", ifname);
        assert!(has_route(&v4, "default", "static"), "{v4:?}");
        let v6 = link_routes(&ns, "-6", "51820", ifname);
        assert!(has_route(&v6, "default", "static"), "{v6:?}");
        let main = link_routes(&ns, "-4", "main", ifname);
        assert!(!has_route(&main, "default", "static"), "{main:?}");

        netconf::teardown(&nc, &applied).await.expect("teardown");
        assert!(link_routes(&ns, "-4", "51820", ifname).is_empty());
        assert!(link_routes(&ns, "-6", "51820", ifname).is_empty());
    });
}

#[test]
fn a_route_added_by_someone_else_is_kept_on_teardown() {
    require_root();
    let ns = Netns::new("tdm-nc-keep");
    let ifname = "tdmkeep0";
    ns.block_on(|| async {
        let _tun = open_tun(ifname, false).expect("open TUN");
        let nc = NetConf::new().await.expect("netlink socket");
        let index = nc.link_index(ifname).await.expect("index");
        nc.set_up(index).await.expect("up");
        ns.ip(&["route", "add", "10.20.0.0/16", "dev", ifname]);
        ns.ip(&["-6", "route", "add", "fd00:20::/64", "dev", ifname]);

        let plan = InterfacePlan {
            ifname: ifname.into(),
            mtu: 1420,
            addresses: vec![],
            routes: vec![
                pfx("10.20.0.0", 16),
                pfx("fd00:20::", 64),
                pfx("10.30.0.0", 16),
            ],
            table: None,
            full_tunnel: None,
        };
        let applied = netconf::apply(&nc, &plan).await.expect("apply");
        assert_eq!(applied.routes, vec![pfx("10.30.0.0", 16)]);
        netconf::teardown(&nc, &applied).await.expect("teardown");

        let v4 = link_routes(&ns, "-4", "main", ifname);
        assert!(has_route(&v4, "10.20.0.0/16", "boot"), "{v4:?}");
        assert!(!v4.iter().any(|(d, _)| d == "10.30.0.0/16"), "{v4:?}");
        let v6 = link_routes(&ns, "-6", "main", ifname);
        assert!(has_route(&v6, "fd00:20::/64", "boot"), "{v6:?}");

        // del_route only matches what tandem adds (protocol static).
        let err = nc
            .del_route(index, ip("10.20.0.0"), 16, None)
            .await
            .expect_err("a foreign route is not tandem's to delete");
        assert!(err.is_already_gone(), "{err}");
        assert!(has_route(
            &link_routes(&ns, "-4", "main", ifname),
            "10.20.0.0/16",
            "boot"
        ));
    });
}

#[test]
fn a_failed_apply_undoes_what_it_did() {
    require_root();
    let ns = Netns::new("tdm-nc-undo");
    let ifname = "tdmundo0";
    ns.block_on(|| async {
        let _tun = open_tun(ifname, false).expect("open TUN");
        // Already on the link, so the plan's second address fails with EEXIST.
        ns.ip(&["addr", "add", "10.40.0.2/24", "dev", ifname]);
        let nc = NetConf::new().await.expect("netlink socket");
        let plan = InterfacePlan {
            ifname: ifname.into(),
            mtu: 1420,
            addresses: vec![pfx("10.40.0.1", 24), pfx("10.40.0.2", 24)],
            routes: vec![pfx("10.41.0.0", 16)],
            table: None,
            full_tunnel: None,
        };
        let err = netconf::apply(&nc, &plan)
            .await
            .expect_err("a duplicate address must fail the apply");
        assert!(err.is_exists(), "{err}");
        let addrs = link_addresses(&ns, ifname);
        assert!(
            !addrs.contains(&pfx("10.40.0.1", 24)),
            "the address added before the failure must be removed: {addrs:?}"
        );
        assert!(
            addrs.contains(&pfx("10.40.0.2", 24)),
            "the address that was there before must stay: {addrs:?}"
        );
        let v4 = link_routes(&ns, "-4", "main", ifname);
        assert!(!v4.iter().any(|(d, _)| d == "10.41.0.0/16"), "{v4:?}");
    });
}

#[test]
fn checks_and_lookups_fail_with_typed_errors() {
    require_root();
    let ns = Netns::new("tdm-nc-errs");
    ns.block_on(|| async {
        let nc = NetConf::new().await.expect("netlink socket");
        assert!(matches!(
            nc.link_index("tdmnosuch0").await,
            Err(NetconfError::LinkNotFound(n)) if n == "tdmnosuch0"
        ));
        assert!(!nc.link_exists("tdmnosuch0").await.expect("query"));
        assert!(nc.link_exists("lo").await.expect("query"));
        assert!(matches!(
            nc.link_index("much-too-long-name").await,
            Err(NetconfError::InvalidIfname(_))
        ));

        let plan = InterfacePlan {
            ifname: "tdmnosuch0".into(),
            mtu: 1420,
            addresses: vec![pfx("10.50.0.1", 24)],
            routes: vec![],
            table: None,
            full_tunnel: None,
        };
        assert!(matches!(
            netconf::apply(&nc, &plan).await,
            Err(NetconfError::LinkNotFound(_))
        ));
        // A bad plan is refused before anything is asked of the kernel.
        let bad = InterfacePlan {
            ifname: "lo".into(),
            addresses: vec![pfx("224.0.0.1", 24)],
            ..plan
        };
        assert!(matches!(
            netconf::apply(&nc, &bad).await,
            Err(NetconfError::InvalidAddress(_))
        ));
        let lo = link_addresses(&ns, "lo");
        assert!(!lo.contains(&pfx("10.50.0.1", 24)), "{lo:?}");
    });
}

#[test]
fn tun_opens_and_closes_with_and_without_offload() {
    require_root();
    let ns = Netns::new("tdm-nc-tun");
    ns.block_on(|| async {
        for offload in [false, true] {
            let tun = open_tun("tdmtun%d", offload).expect("open TUN");
            assert!(tun.name.starts_with("tdmtun"), "{}", tun.name);
            assert_ne!(tun.name, "tdmtun%d", "the kernel fills in %d");
            assert!(tun.index > 0);
            assert_eq!(tun.offload, offload);
            // With IFF_VNET_HDR the kernel accepted TSO, so TCP GSO is on.
            assert_eq!(tun.device.tcp_gso(), offload);
            let name = tun.name.clone();
            assert!(link_listed(&ns, &name));
            let link = ns.ip_json(&["link", "show", "dev", &name]);
            let flags = link[0]["flags"].as_array().expect("flags").clone();
            assert!(
                !flags.iter().any(|f| f == "UP"),
                "opened down, netconf brings it up: {flags:?}"
            );
            drop(tun);
            let deadline = Instant::now() + Duration::from_secs(5);
            while link_listed(&ns, &name) {
                assert!(Instant::now() < deadline, "{name} still there after close");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
}

#[test]
fn kit_namespace_is_removed_on_drop_even_after_a_panic() {
    require_root();
    let ns = Netns::new("tdm-kit-drop");
    let path = ns.path();
    assert!(path.exists());
    let moved = ns;
    let result = std::panic::catch_unwind(move || {
        let _owned = moved;
        panic!("test failure inside the namespace's scope");
    });
    assert!(result.is_err());
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn kit_spawned_process_is_killed_on_drop() {
    require_root();
    let ns = Netns::new("tdm-kit-spawn");
    let guard = ns.spawn("sleep", &["30"]);
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", guard.id()));
    assert!(proc_dir.exists());
    drop(guard);
    assert!(
        !proc_dir.exists(),
        "process {} survived",
        proc_dir.display()
    );

    let out = ns
        .spawn("ip", &["-o", "link", "show", "lo"])
        .output_timeout(Duration::from_secs(10));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("lo"));
    let exec = ns.exec_ok("ip", &["-o", "addr", "show", "lo"]);
    assert!(
        exec.contains("127.0.0.1"),
        "loopback is up with its address: {exec}"
    );
}

#[test]
fn kit_veth_pair_joins_two_namespaces() {
    require_root();
    let a = Netns::new("tdm-kit-va");
    let b = Netns::new("tdm-kit-vb");
    let pair = veth_pair(
        &a,
        &b,
        &["10.77.0.1/24", "fd00:77::1/64"],
        &["10.77.0.2/24", "fd00:77::2/64"],
    );
    assert!(link_addresses(&a, &pair.a).contains(&pfx("fd00:77::1", 64)));
    assert!(link_addresses(&b, &pair.b).contains(&pfx("10.77.0.2", 24)));

    // One UDP datagram per address family, from a to b, across the pair.
    for (src, dst) in [
        ("10.77.0.1", "10.77.0.2:47001"),
        ("fd00:77::1", "[fd00:77::2]:47002"),
    ] {
        let receiver = b.run(|| UdpSocket::bind(dst).expect("bind in b"));
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        a.run(|| {
            let sender = UdpSocket::bind((ip(src), 0)).expect("bind in a");
            sender.send_to(b"tandem", dst).expect("send");
        });
        let mut buf = [0u8; 16];
        let (n, from) = receiver
            .recv_from(&mut buf)
            .expect("datagram across the veth pair");
        assert_eq!(buf.get(..n), Some(&b"tandem"[..]));
        assert_eq!(from.ip(), ip(src));
    }
}

/// `ip -FAMILY rule` and `ip -FAMILY route show table all`, the state a full tunnel changes.
fn policy_state(ns: &Netns, family: &str) -> String {
    format!(
        "{}{}",
        ns.ip(&[family, "rule", "show"]),
        ns.ip(&[family, "route", "show", "table", "all"])
    )
}

/// `ip -FAMILY rule` lines.
fn rules(ns: &Netns, family: &str) -> Vec<String> {
    ns.ip(&[family, "rule", "show"])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_full_tunnel_is_added_synced_replaced_after_a_kill_and_removed() {
    use tandem::netconf::{Family, FullTunnel, Placed, PolicyPart};
    require_root();
    let ns = Netns::new("tdm-nc-full");
    let ifname = "tdmfull0";
    // Someone else's rule, which must survive everything.
    ns.ip(&[
        "rule",
        "add",
        "from",
        "10.99.0.0/24",
        "lookup",
        "100",
        "priority",
        "1000",
    ]);
    ns.ip(&[
        "-6",
        "rule",
        "add",
        "from",
        "fd99::/64",
        "lookup",
        "100",
        "priority",
        "1000",
    ]);
    let before4 = policy_state(&ns, "-4");
    let before6 = policy_state(&ns, "-6");
    let before_rules4 = rules(&ns, "-4");
    let before_rules6 = rules(&ns, "-6");
    ns.block_on(|| async {
        let plan = InterfacePlan {
            ifname: ifname.into(),
            mtu: 1420,
            addresses: vec![pfx("10.22.0.2", 32), pfx("fd22::2", 128)],
            routes: vec![],
            table: None,
            full_tunnel: Some(FullTunnel {
                mark: 51820,
                v4: true,
                v6: true,
            }),
        };
        let tun = open_tun(ifname, false).expect("open TUN");
        let nc = NetConf::new().await.expect("netlink socket");
        let applied = netconf::apply(&nc, &plan).await.expect("apply");
        assert_eq!(applied.policy.len(), 6);
        assert_eq!(applied.full_tunnel_mark(), Some(51820));
        for family in ["-4", "-6"] {
            let r = rules(&ns, family);
            // As wg-quick's: the suppress rule first, then the mark rule, before the
            // foreign rule at 1000 (the kernel places them above the first one).
            let suppress = r.iter().position(|l| l.contains("suppress_prefixlength 0"));
            let marked = r.iter().position(|l| l.contains("not from all fwmark 0xca6c lookup 51820"));
            let foreign = r.iter().position(|l| l.contains("lookup 100"));
            assert!(
                matches!((suppress, marked, foreign), (Some(s), Some(m), Some(f)) if s < m && m < f),
                "{family} rules: {r:#?}"
            );
            let routes = link_routes(&ns, family, "51820", ifname);
            assert!(has_route(&routes, "default", "static"), "{routes:?}");
        }
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/src_valid_mark")
                .expect("read src_valid_mark")
                .trim(),
            "1"
        );

        // A reload that drops ::/0 removes only the IPv6 parts.
        let v4_only = InterfacePlan {
            full_tunnel: Some(FullTunnel {
                mark: 51820,
                v4: true,
                v6: false,
            }),
            ..plan.clone()
        };
        let synced = netconf::sync(&nc, &applied, &v4_only).await.expect("sync");
        assert!(
            synced.applied.policy.iter().all(|p| p.part.family() == Family::V4),
            "{:?}",
            synced.applied.policy
        );
        assert_eq!(rules(&ns, "-6"), before_rules6);
        assert!(link_routes(&ns, "-6", "51820", ifname).is_empty());
        assert_ne!(rules(&ns, "-4"), before_rules4);
        // Undone, the IPv6 parts come back in their order.
        synced.undo(&nc).await;
        let r = rules(&ns, "-6");
        let suppress = r.iter().position(|l| l.contains("suppress_prefixlength 0"));
        let marked = r.iter().position(|l| l.contains("not from all fwmark 0xca6c"));
        assert!(
            matches!((suppress, marked), (Some(s), Some(m)) if s < m),
            "after undo: {r:#?}"
        );

        // A `kill -9`: the interface goes (and its routes with it) but the rules stay.
        drop(tun);
        drop(applied);
        let deadline = Instant::now() + Duration::from_secs(5);
        while nc.link_exists(ifname).await.expect("link query") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(rules(&ns, "-4").iter().any(|l| l.contains("fwmark 0xca6c")));
        // The next start replaces them instead of adding a second copy.
        let tun = open_tun(ifname, false).expect("open TUN again");
        let applied = netconf::apply(&nc, &plan).await.expect("apply again");
        for family in ["-4", "-6"] {
            let r = rules(&ns, family);
            assert_eq!(
                r.iter().filter(|l| l.contains("fwmark 0xca6c")).count(),
                2,
                "{family}: {r:#?}"
            );
        }

        // A failed apply (the IPv6 default route is refused) leaves nothing behind.
        let mut refused = plan.clone();
        refused.full_tunnel = Some(FullTunnel {
            mark: 51900,
            v4: true,
            v6: true,
        });
        let with_tunnel4 = policy_state(&ns, "-4");
        ns.ip(&["-6", "route", "add", "blackhole", "default", "table", "51900"]);
        let with_tunnel6 = policy_state(&ns, "-6");
        let err = netconf::sync(&nc, &applied, &refused)
            .await
            .expect_err("the blackhole default route is in the way");
        assert!(
            matches!(
                err.step,
                Some(netconf::Step::AddPolicy(Placed {
                    part: PolicyPart::DefaultRoute {
                        family: Family::V6,
                        ..
                    },
                    ..
                }))
            ),
            "{err:?}"
        );
        assert_eq!(policy_state(&ns, "-4"), with_tunnel4);
        assert_eq!(policy_state(&ns, "-6"), with_tunnel6);
        ns.ip(&["-6", "route", "del", "blackhole", "default", "table", "51900"]);

        netconf::teardown(&nc, &applied).await.expect("teardown");
        drop(tun);
        let deadline = Instant::now() + Duration::from_secs(5);
        while nc.link_exists(ifname).await.expect("link query") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert_eq!(policy_state(&ns, "-4"), before4);
    assert_eq!(policy_state(&ns, "-6"), before6);
}
