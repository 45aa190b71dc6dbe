//! The wg-quick `.conf` a new client (a phone, a laptop) imports to reach the server.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::{Config, Prefix};
use crate::proto::keys::{PresharedKey, PrivateKey};

/// Seconds between the client's keepalives: it usually sits behind NAT, and the server
/// cannot reach it otherwise (the wg-quick documentation's usual 25).
pub const CLIENT_KEEPALIVE: u16 = 25;

/// What goes into the client's `.conf`.
pub struct ClientConf<'a> {
    /// The server's configuration.
    pub server: &'a Config,
    /// The client's private key; `None` when the client made its own (`--public-key`).
    pub private_key: Option<&'a PrivateKey>,
    /// The client's tunnel addresses.
    pub addresses: &'a [IpAddr],
    pub preshared_key: Option<&'a PresharedKey>,
    /// `host:port` clients reach the server at.
    pub endpoint: Option<&'a str>,
    /// Only the server's networks through the tunnel (else everything).
    pub split: bool,
}

impl ClientConf<'_> {
    /// The networks a split-tunnel client routes to the server: the server interface's
    /// subnets.
    pub fn split_networks(&self) -> Vec<Prefix> {
        let mut nets: Vec<Prefix> = Vec::new();
        for a in &self.server.interface.addresses {
            let n = a.network();
            if !nets.contains(&n) {
                nets.push(n);
            }
        }
        nets
    }

    pub fn render(&self) -> String {
        let server = &self.server.interface;
        let mut out = String::new();
        out.push_str("[Interface]\n");
        match self.private_key {
            Some(k) => {
                let _ = writeln!(out, "PrivateKey = {}", k.to_base64());
            }
            None => out.push_str("# PrivateKey = the private key you generated for this peer\n"),
        }
        let addrs: Vec<String> = self
            .addresses
            .iter()
            .map(|a| Prefix::host(*a).to_string())
            .collect();
        let _ = writeln!(out, "Address = {}", addrs.join(", "));
        let dns: Vec<String> = server
            .dns
            .iter()
            .map(ToString::to_string)
            .chain(server.dns_search.iter().cloned())
            .collect();
        if !dns.is_empty() {
            let _ = writeln!(out, "DNS = {}", dns.join(", "));
        }
        out.push_str("\n[Peer]\n");
        let _ = writeln!(out, "PublicKey = {}", server.public_key().to_base64());
        if let Some(psk) = self.preshared_key {
            let _ = writeln!(out, "PresharedKey = {}", psk.to_base64());
        }
        let allowed: Vec<String> = if self.split {
            self.split_networks()
                .iter()
                .map(ToString::to_string)
                .collect()
        } else {
            vec!["0.0.0.0/0".into(), "::/0".into()]
        };
        let _ = writeln!(out, "AllowedIPs = {}", allowed.join(", "));
        match self.endpoint {
            Some(e) => {
                let _ = writeln!(out, "Endpoint = {e}");
            }
            None => out.push_str(
                "# Endpoint = the server's address and port (tandem peer add --endpoint)\n",
            ),
        }
        let _ = writeln!(out, "PersistentKeepalive = {CLIENT_KEEPALIVE}");
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse_toml, parse_wg_quick};

    fn server(dns: &str) -> Config {
        let k = PrivateKey::from_bytes([1; 32]).clamped();
        parse_toml(
            Path::new("srv.toml"),
            &format!(
                "[interface]\nprivate_key = \"{}\"\nlisten_port = 51820\n\
                 address = [\"10.10.0.1/24\", \"fd10::1/64\"]\n{dns}",
                k.to_base64()
            ),
        )
        .unwrap()
    }

    #[test]
    fn full_tunnel_conf_parses_as_wg_quick_with_everything() {
        let s = server("dns = [\"10.10.0.53\"]\ndns_search = [\"corp.example\"]\n");
        let client = PrivateKey::from_bytes([5; 32]).clamped();
        let psk = PresharedKey::from_bytes([6; 32]);
        let addrs = ["10.10.0.4".parse().unwrap(), "fd10::4".parse().unwrap()];
        let conf = ClientConf {
            server: &s,
            private_key: Some(&client),
            addresses: &addrs,
            preshared_key: Some(&psk),
            endpoint: Some("vpn.example.com:51820"),
            split: false,
        };
        let text = conf.render();
        let c = parse_wg_quick(Path::new("phone.conf"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.interface.private_key, client);
        assert_eq!(c.interface.dns, ["10.10.0.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.interface.dns_search, ["corp.example"]);
        let addrs: Vec<String> = c
            .interface
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["10.10.0.4/32", "fd10::4/128"]);
        let p = &c.peers[0];
        assert_eq!(p.public_key, s.interface.public_key());
        assert_eq!(p.preshared_key, Some(psk));
        let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["0.0.0.0/0", "::/0"]);
        assert_eq!(
            p.endpoint.as_ref().unwrap().to_string(),
            "vpn.example.com:51820"
        );
        assert_eq!(p.persistent_keepalive, Some(CLIENT_KEEPALIVE));
    }

    #[test]
    fn split_tunnel_routes_the_servers_networks_and_no_dns_line_without_dns() {
        let s = server("");
        let addrs = ["10.10.0.4".parse().unwrap()];
        let conf = ClientConf {
            server: &s,
            private_key: None,
            addresses: &addrs,
            preshared_key: None,
            endpoint: None,
            split: true,
        };
        let text = conf.render();
        assert!(
            text.contains("AllowedIPs = 10.10.0.0/24, fd10::/64\n"),
            "{text}"
        );
        assert!(!text.contains("DNS"), "{text}");
        assert!(!text.contains("PresharedKey"), "{text}");
        assert!(text.contains("# PrivateKey"), "{text}");
    }
}
