//! One scrape's text: a device [`Snapshot`] and the config's peer names in, the OpenMetrics
//! text out (Prometheus reads it). Pure: the wall-clock second comes in as an argument.
//!
//! Per peer, with labels `interface`, `public_key` (base64), `name` (the config's, empty when
//! none) and `allowed_ips` (comma-separated), the names prometheus_wireguard_exporter uses, so
//! existing dashboards work: `wireguard_sent_bytes_total`, `wireguard_received_bytes_total`,
//! `wireguard_latest_handshake_seconds` (unix seconds, 0 = never); and tandem's
//! `tandem_peer_connected` (latest handshake younger than 180 s) and
//! `tandem_peer_handshakes_failed_total` (retry series that gave up after 90 s). Per
//! interface: `tandem_drops_total{reason}` for every drop reason (also those still at 0, so a
//! rate can be taken from the first scrape on), `tandem_handshakes_completed_total`,
//! `tandem_handshakes_failed_total`, `tandem_peers` and `tandem_under_load`.

use std::collections::HashMap;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::control::show::connected as is_connected;
use crate::proto::{DropReason, PublicKey};
use crate::reconcile::Snapshot;

/// Peer names from the config, by public key.
pub type PeerNames = HashMap<PublicKey, String>;

type Labels = Vec<(&'static str, String)>;

/// The OpenMetrics text of one scrape of interface `ifname`.
pub fn render(ifname: &str, snapshot: &Snapshot, names: &PeerNames, now_unix: u64) -> String {
    let mut registry = Registry::default();
    // Counters get their `_total` suffix from the encoder.
    let sent = Family::<Labels, Counter>::default();
    let received = Family::<Labels, Counter>::default();
    let handshake = Family::<Labels, Gauge>::default();
    let connected = Family::<Labels, Gauge>::default();
    let drops = Family::<Labels, Counter>::default();
    let handshakes = Family::<Labels, Counter>::default();
    let failed = Family::<Labels, Counter>::default();
    let peer_failed = Family::<Labels, Counter>::default();
    let peers = Family::<Labels, Gauge>::default();
    let under_load = Family::<Labels, Gauge>::default();
    registry.register(
        "wireguard_sent_bytes",
        "Bytes sent to the peer",
        sent.clone(),
    );
    registry.register(
        "wireguard_received_bytes",
        "Bytes received from the peer",
        received.clone(),
    );
    registry.register(
        "wireguard_latest_handshake_seconds",
        "Unix time of the latest handshake with the peer (0: never)",
        handshake.clone(),
    );
    registry.register(
        "tandem_peer_connected",
        "1 while the latest handshake is younger than 180 s",
        connected.clone(),
    );
    registry.register(
        "tandem_drops",
        "Packets and datagrams dropped, by reason",
        drops.clone(),
    );
    registry.register(
        "tandem_handshakes_completed",
        "Handshakes completed since the interface started",
        handshakes.clone(),
    );
    registry.register(
        "tandem_handshakes_failed",
        "Handshake attempts that gave up (no response for 90 s) since the interface started",
        failed.clone(),
    );
    registry.register(
        "tandem_peer_handshakes_failed",
        "Handshake attempts with the peer that gave up (no response for 90 s)",
        peer_failed.clone(),
    );
    registry.register("tandem_peers", "Peers configured", peers.clone());
    registry.register(
        "tandem_under_load",
        "1 while handshakes need a cookie (mac2) because of a backlog",
        under_load.clone(),
    );

    let iface = || vec![("interface", ifname.to_owned())];
    for peer in &snapshot.peers {
        let allowed: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
        let labels = vec![
            ("interface", ifname.to_owned()),
            ("public_key", peer.public_key.to_base64()),
            (
                "name",
                names.get(&peer.public_key).cloned().unwrap_or_default(),
            ),
            ("allowed_ips", allowed.join(",")),
        ];
        sent.get_or_create(&labels).inc_by(peer.stats.tx_bytes);
        received.get_or_create(&labels).inc_by(peer.stats.rx_bytes);
        let latest = peer.stats.last_handshake.map_or(0, |t| t.as_secs());
        handshake.get_or_create(&labels).set(gauge_value(latest));
        connected
            .get_or_create(&labels)
            .set(i64::from(is_connected(latest, now_unix)));
        peer_failed
            .get_or_create(&labels)
            .inc_by(peer.stats.handshakes_failed);
    }
    for reason in DropReason::ALL {
        let mut labels = iface();
        labels.push(("reason", reason.as_str().to_owned()));
        drops
            .get_or_create(&labels)
            .inc_by(snapshot.drops.get(reason));
    }
    handshakes
        .get_or_create(&iface())
        .inc_by(snapshot.handshakes_completed);
    failed
        .get_or_create(&iface())
        .inc_by(snapshot.handshakes_failed);
    peers
        .get_or_create(&iface())
        .set(gauge_value(snapshot.peers.len() as u64));
    under_load
        .get_or_create(&iface())
        .set(i64::from(snapshot.under_load));

    let mut out = String::new();
    // Writing to a String cannot fail; an empty body would be the symptom if it did.
    let _ = encode(&mut out, &registry);
    out
}

/// Gauges hold an i64: values beyond it (never for seconds or peer counts) saturate.
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proto::{Device, PeerConfig, PrivateKey};

    const NOW: u64 = 1_700_000_000;

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from_bytes([seed; 32])
    }

    fn snapshot() -> Snapshot {
        let mut device = Device::new(Some(key(1)), [7; 32]);
        for seed in [2, 3] {
            let mut config = PeerConfig::new(key(seed).public_key());
            config.allowed_ips = vec![format!("10.0.0.{seed}/32").parse().unwrap()];
            device.upsert_peer(&config).expect("peer");
        }
        let mut snapshot = Snapshot::of(&device, 51820, 0);
        snapshot.peers[0].stats.tx_bytes = 4096;
        snapshot.peers[0].stats.rx_bytes = 1234;
        snapshot.peers[0].stats.last_handshake = Some(Duration::from_secs(NOW - 10));
        snapshot.drops.count(DropReason::InvalidMac1);
        snapshot.drops.count(DropReason::InvalidMac1);
        snapshot.handshakes_completed = 3;
        snapshot.peers[0].stats.handshakes_failed = 2;
        snapshot.handshakes_failed = 5;
        snapshot
    }

    #[test]
    fn exporter_names_labels_and_every_drop_reason() {
        let mut names = PeerNames::new();
        // A name with characters that need escaping stays one label value.
        names.insert(key(2).public_key(), "site \"b\"\\".to_owned());
        let text = render("tnd0", &snapshot(), &names, NOW);
        let pk2 = key(2).public_key().to_base64();
        let labels2 = format!(
            "{{interface=\"tnd0\",public_key=\"{pk2}\",name=\"site \\\"b\\\"\\\\\",allowed_ips=\"10.0.0.2/32\"}}"
        );
        for line in [
            format!("wireguard_sent_bytes_total{labels2} 4096"),
            format!("wireguard_received_bytes_total{labels2} 1234"),
            format!("wireguard_latest_handshake_seconds{labels2} {}", NOW - 10),
            format!("tandem_peer_connected{labels2} 1"),
            "tandem_drops_total{interface=\"tnd0\",reason=\"invalid_mac1\"} 2".to_owned(),
            "tandem_drops_total{interface=\"tnd0\",reason=\"truncated\"} 0".to_owned(),
            "tandem_handshakes_completed_total{interface=\"tnd0\"} 3".to_owned(),
            "tandem_handshakes_failed_total{interface=\"tnd0\"} 5".to_owned(),
            format!("tandem_peer_handshakes_failed_total{labels2} 2"),
            "tandem_peers{interface=\"tnd0\"} 2".to_owned(),
            "tandem_under_load{interface=\"tnd0\"} 0".to_owned(),
            "# TYPE wireguard_sent_bytes counter".to_owned(),
            "# EOF".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("tandem_drops_total{"))
                .count(),
            DropReason::COUNT
        );
        // The unnamed peer without a handshake.
        let pk3 = key(3).public_key().to_base64();
        let labels3 = format!(
            "{{interface=\"tnd0\",public_key=\"{pk3}\",name=\"\",allowed_ips=\"10.0.0.3/32\"}}"
        );
        assert!(text.contains(&format!("wireguard_latest_handshake_seconds{labels3} 0")));
        assert!(text.contains(&format!("tandem_peer_connected{labels3} 0")));
        assert!(text.contains(&format!("tandem_peer_handshakes_failed_total{labels3} 0")));
        // Never a private key.
        assert!(!text.contains(&key(1).to_base64()));
    }

    #[test]
    fn connected_means_younger_than_180_seconds() {
        let mut s = snapshot();
        s.peers[0].stats.last_handshake = Some(Duration::from_secs(NOW - 180));
        let text = render("tnd0", &s, &PeerNames::new(), NOW);
        let pk2 = key(2).public_key().to_base64();
        assert!(
            text.lines().any(|l| l.starts_with("tandem_peer_connected{")
                && l.contains(&pk2)
                && l.ends_with(" 0")),
            "{text}"
        );
    }
}
