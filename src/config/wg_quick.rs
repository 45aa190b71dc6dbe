//! wg-quick `.conf` front end, for `tandem import wg0.conf` and for running existing configs.
//!
//! Reads the INI-like format as `wg` and `wg-quick` do: `[Interface]` and `[Peer]` sections,
//! `Key = Value` lines, `#` starts a comment anywhere on a line, section and key names are
//! case-insensitive, lists are comma-separated and `Address`, `AllowedIPs` and `DNS` accumulate
//! when repeated. A repeated single-valued key replaces the earlier value, as in `wg`, with a
//! warning. `DNS` and the hooks (`PreUp`, `PostUp`, `PreDown`, `PostDown`) are applied as
//! wg-quick applies them; `SaveConfig`, which tandem does not do, is a warning; anything else
//! unknown is an error.

use std::path::Path;

use super::Config;
use super::compile::{At, Dialect, Draft, InterfaceDraft, PeerDraft, compile};
use super::error::{ConfigErrors, Diagnostics};
use super::toml_format::suggest;

const INTERFACE_KEYS: &[&str] = &[
    "PrivateKey",
    "Address",
    "ListenPort",
    "MTU",
    "Table",
    "FwMark",
    "DNS",
    "PreUp",
    "PostUp",
    "PreDown",
    "PostDown",
];
const PEER_KEYS: &[&str] = &[
    "PublicKey",
    "PresharedKey",
    "AllowedIPs",
    "Endpoint",
    "PersistentKeepalive",
];
/// wg-quick interface settings tandem accepts but does not act on.
const IGNORED_INTERFACE_KEYS: &[&str] = &["SaveConfig"];

enum Section {
    /// Before the first section header.
    None,
    Interface,
    /// Index into the draft's peers.
    Peer(usize),
    /// An unknown section: its keys were not checked (the header already got an error).
    Unknown,
}

pub(crate) fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut diag = Diagnostics::new(file);
    let mut draft = Draft {
        dialect: Dialect::WgQuick,
        interface: None,
        peers: Vec::new(),
        metrics: None,
        included: Vec::new(),
    };
    let mut section = Section::None;

    for (i, raw) in text.lines().enumerate() {
        let line = Some(i + 1);
        // `# friendly_name = NAME` in a [Peer] section names the peer (the convention of
        // prometheus_wireguard_exporter; `tandem export` writes it). To wg-quick a comment.
        if let (Section::Peer(i), Some(name)) = (&section, friendly_name(raw))
            && let Some(peer) = draft.peers.get_mut(*i)
        {
            let key = format!("Peer[{}].friendly_name", peer.index);
            set_once(&mut diag, &mut peer.name, at(name.to_owned(), line, key));
            continue;
        }
        let content = raw.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }

        if let Some(rest) = content.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                diag.syntax(
                    line,
                    format!("\"{content}\" is not a section header ([Name])"),
                );
                section = Section::Unknown;
                continue;
            };
            let name = name.trim();
            if name.eq_ignore_ascii_case("interface") {
                if draft.interface.is_some() {
                    diag.error(line, "Interface", "a second [Interface] section");
                } else {
                    draft.interface = Some(InterfaceDraft {
                        line,
                        ..InterfaceDraft::default()
                    });
                }
                section = Section::Interface;
            } else if name.eq_ignore_ascii_case("peer") {
                draft.peers.push(PeerDraft {
                    line,
                    index: draft.peers.len() + 1,
                    ..PeerDraft::default()
                });
                section = Section::Peer(draft.peers.len() - 1);
            } else {
                diag.error(
                    line,
                    name,
                    format!("unknown section [{name}] (expected [Interface] or [Peer])"),
                );
                section = Section::Unknown;
            }
            continue;
        }

        let Some((key, value)) = content.split_once('=') else {
            diag.syntax(line, format!("expected Key = Value, found \"{content}\""));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            diag.syntax(line, "a key name is missing before =");
            continue;
        }
        match section {
            Section::None => diag.error(
                line,
                key,
                "setting outside a section (put it under [Interface] or [Peer])",
            ),
            Section::Unknown => {}
            Section::Interface => {
                if let Some(iface) = draft.interface.as_mut() {
                    interface_key(&mut diag, iface, key, value, line);
                }
            }
            Section::Peer(i) => {
                if let Some(peer) = draft.peers.get_mut(i) {
                    peer_key(&mut diag, peer, key, value, line);
                }
            }
        }
    }
    compile(draft, diag)
}

/// The NAME of a `# friendly_name = NAME` comment line.
fn friendly_name(raw: &str) -> Option<&str> {
    let comment = raw.trim().strip_prefix('#')?;
    let (key, value) = comment.split_once('=')?;
    let value = value.trim();
    (key.trim().eq_ignore_ascii_case("friendly_name") && !value.is_empty()).then_some(value)
}

/// Canonical spelling of `key` among `known`, compared case-insensitively.
fn canonical<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known.iter().copied().find(|k| k.eq_ignore_ascii_case(key))
}

fn at<T>(value: T, line: Option<usize>, key: String) -> At<T> {
    At { value, line, key }
}

/// Sets a single-valued key; a repeat replaces the earlier value, as in `wg`.
fn set_once<T>(diag: &mut Diagnostics, slot: &mut Option<At<T>>, new: At<T>) {
    if let Some(old) = slot.as_ref() {
        let was = old
            .line
            .map(|l| format!(" on line {l}"))
            .unwrap_or_default();
        diag.warn(
            new.line,
            &new.key,
            format!("given again; this value replaces the one{was}"),
        );
    }
    *slot = Some(new);
}

fn list(value: &str, line: Option<usize>, key: &str) -> impl Iterator<Item = At<String>> {
    // wg-quick word-splits Address and DNS after turning commas into spaces; accepting both
    // separators everywhere reads every file wg-quick reads.
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(move |s| at(s.to_owned(), line, key.to_owned()))
        .collect::<Vec<_>>()
        .into_iter()
}

/// A decimal number; `off_is_zero` also takes "off" (FwMark, PersistentKeepalive) and
/// `hex` takes `0x...` (FwMark).
fn number(
    diag: &mut Diagnostics,
    value: &str,
    line: Option<usize>,
    key: String,
    off_is_zero: bool,
    hex: bool,
) -> Option<At<i128>> {
    let parsed = if off_is_zero && value.eq_ignore_ascii_case("off") {
        Some(0)
    } else if let Some(h) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
        .filter(|_| hex)
    {
        (!h.is_empty() && h.len() <= 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| i128::from_str_radix(h, 16).ok())
            .flatten()
    } else {
        (!value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<i128>().ok())
            .flatten()
    };
    match parsed {
        Some(n) => Some(at(n, line, key)),
        None => {
            let mut accepted = "a decimal number".to_owned();
            if hex {
                accepted.push_str(", 0x hex");
            }
            if off_is_zero {
                accepted.push_str(" or \"off\"");
            }
            diag.error(line, key, format!("\"{value}\" is not {accepted}"));
            None
        }
    }
}

fn interface_key(
    diag: &mut Diagnostics,
    d: &mut InterfaceDraft,
    key: &str,
    value: &str,
    line: Option<usize>,
) {
    if let Some(ignored) = canonical(key, IGNORED_INTERFACE_KEYS) {
        diag.warn(
            line,
            format!("Interface.{ignored}"),
            format!("{ignored} is a wg-quick setting tandem does not apply; ignored"),
        );
        return;
    }
    let Some(name) = canonical(key, INTERFACE_KEYS) else {
        let message = if let Some(peer_key) = canonical(key, PEER_KEYS) {
            format!("{peer_key} belongs in a [Peer] section")
        } else if let Some(s) = suggest(key, INTERFACE_KEYS) {
            format!("unknown key (did you mean {s}?)")
        } else {
            format!("unknown key (known here: {})", INTERFACE_KEYS.join(", "))
        };
        diag.error(line, format!("Interface.{key}"), message);
        return;
    };
    let path = format!("Interface.{name}");
    match name {
        "PrivateKey" => set_once(diag, &mut d.private_key, at(value.to_owned(), line, path)),
        "Address" => d.addresses.extend(list(value, line, &path)),
        "ListenPort" => {
            if let Some(n) = number(diag, value, line, path, false, false) {
                set_once(diag, &mut d.listen_port, n);
            }
        }
        "MTU" => {
            if let Some(n) = number(diag, value, line, path, false, false) {
                set_once(diag, &mut d.mtu, n);
            }
        }
        "FwMark" => {
            if let Some(n) = number(diag, value, line, path, true, true) {
                set_once(diag, &mut d.fwmark, n);
            }
        }
        "Table" => set_once(diag, &mut d.table, at(value.to_owned(), line, path)),
        // As wg-quick: each entry that is an address is a server, anything else a search
        // domain (checked as one when compiled).
        "DNS" => {
            for entry in list(value, line, &path) {
                if entry.value.parse::<std::net::IpAddr>().is_ok() {
                    d.dns.push(entry);
                } else {
                    d.dns_search.push(entry);
                }
            }
        }
        // The whole rest of the line is one command, and each line adds one, as wg-quick.
        "PreUp" => d.pre_up.push(at(value.to_owned(), line, path)),
        "PostUp" => d.post_up.push(at(value.to_owned(), line, path)),
        "PreDown" => d.pre_down.push(at(value.to_owned(), line, path)),
        "PostDown" => d.post_down.push(at(value.to_owned(), line, path)),
        _ => diag.error(line, path, "internal error: key listed but not handled"),
    }
}

fn peer_key(
    diag: &mut Diagnostics,
    d: &mut PeerDraft,
    key: &str,
    value: &str,
    line: Option<usize>,
) {
    let section = format!("Peer[{}]", d.index);
    let Some(name) = canonical(key, PEER_KEYS) else {
        let message = if let Some(iface_key) =
            canonical(key, INTERFACE_KEYS).or_else(|| canonical(key, IGNORED_INTERFACE_KEYS))
        {
            format!("{iface_key} belongs in the [Interface] section")
        } else if let Some(s) = suggest(key, PEER_KEYS) {
            format!("unknown key (did you mean {s}?)")
        } else {
            format!("unknown key (known here: {})", PEER_KEYS.join(", "))
        };
        diag.error(line, format!("{section}.{key}"), message);
        return;
    };
    let path = format!("{section}.{name}");
    match name {
        "PublicKey" => set_once(diag, &mut d.public_key, at(value.to_owned(), line, path)),
        "PresharedKey" => set_once(diag, &mut d.preshared_key, at(value.to_owned(), line, path)),
        "AllowedIPs" => d.allowed_ips.extend(list(value, line, &path)),
        "Endpoint" => set_once(diag, &mut d.endpoint, at(value.to_owned(), line, path)),
        "PersistentKeepalive" => {
            if let Some(n) = number(diag, value, line, path, true, false) {
                set_once(diag, &mut d.persistent_keepalive, n);
            }
        }
        _ => diag.error(line, path, "internal error: key listed but not handled"),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{assert_error, file, private, public};
    use crate::config::{Prefix, Table, parse_wg_quick};
    use crate::proto::keys::PresharedKey;

    #[test]
    fn realistic_wg0_conf_with_warnings() {
        let psk = PresharedKey::from_bytes([7; 32]).to_base64();
        let text = [
            "# /etc/wireguard/wg0.conf".to_owned(),                    // 1
            "[Interface]".to_owned(),                                  // 2
            format!("PrivateKey = {}  # ours", private(1)),            // 3
            "Address = 10.0.0.1/24,fd00::1/64".to_owned(),             // 4
            "address = 10.0.1.1/24".to_owned(),                        // 5 (accumulates)
            "ListenPort = 51820".to_owned(),                           // 6
            "DNS = 1.1.1.1, 9.9.9.9".to_owned(),                       // 7
            "MTU = 1380".to_owned(),                                   // 8
            "FwMark = 0x1234".to_owned(),                              // 9
            "Table = 1000".to_owned(),                                 // 10
            "PostUp = iptables -A FORWARD -i %i -j ACCEPT".to_owned(), // 11
            "SaveConfig = true".to_owned(),                            // 12
            String::new(),                                             // 13
            "[peer]".to_owned(),                                       // 14
            format!("publickey = {}", public(2)),                      // 15
            format!("PresharedKey = {psk}"),                           // 16
            "AllowedIPs = 10.0.0.2/32, 192.168.1.0/24,".to_owned(),    // 17
            "AllowedIPs = fd00::2/128 ".to_owned(),                    // 18
            "Endpoint = [2001:db8::2]:51820".to_owned(),               // 19
            "PersistentKeepalive = 25".to_owned(),                     // 20
            "[Peer]".to_owned(),                                       // 21
            format!("PublicKey = {}", public(3)),                      // 22
            "AllowedIPs = 10.0.0.3/32".to_owned(),                     // 23
            "Endpoint = peer3.example.net:4500".to_owned(),            // 24
            "PersistentKeepalive = off".to_owned(),                    // 25
        ]
        .join("\r\n");
        let c = parse_wg_quick(file("/etc/wireguard/wg0.conf"), &text).unwrap();
        let i = &c.interface;
        assert_eq!(i.name, "wg0");
        assert_eq!(i.private_key.to_base64(), private(1));
        assert_eq!(i.listen_port, Some(51820));
        let addrs: Vec<String> = i.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(addrs, ["10.0.0.1/24", "fd00::1/64", "10.0.1.1/24"]);
        assert_eq!(
            (i.mtu, i.fwmark, i.table),
            (Some(1380), 0x1234, Table::Id(1000))
        );
        assert_eq!(c.peers.len(), 2);
        let p = &c.peers[0];
        assert_eq!(p.public_key.to_base64(), public(2));
        assert_eq!(p.preshared_key, Some(PresharedKey::from_bytes([7; 32])));
        let want: Vec<Prefix> = ["10.0.0.2/32", "192.168.1.0/24", "fd00::2/128"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(p.allowed_ips, want);
        assert_eq!(
            p.endpoint.as_ref().unwrap().to_string(),
            "[2001:db8::2]:51820"
        );
        assert_eq!(p.persistent_keepalive, Some(25));
        let q = &c.peers[1];
        assert_eq!(q.endpoint.as_ref().unwrap().host, "peer3.example.net");
        assert_eq!(q.persistent_keepalive, None);

        let warned: Vec<(Option<usize>, &str)> = c
            .warnings
            .iter()
            .map(|w| (w.line, w.key.as_str()))
            .collect();
        assert_eq!(warned, [(Some(12), "Interface.SaveConfig")]);
        assert!(
            c.warnings[0]
                .to_string()
                .starts_with("warning: /etc/wireguard/wg0.conf:12: Interface.SaveConfig: ")
        );
        // DNS and the hooks are taken, not warned about.
        let dns: Vec<String> = i.dns.iter().map(ToString::to_string).collect();
        assert_eq!(dns, ["1.1.1.1", "9.9.9.9"]);
        assert_eq!(i.hooks.post_up, ["iptables -A FORWARD -i %i -j ACCEPT"]);
    }

    #[test]
    fn dns_entries_split_into_servers_and_search_domains_and_bad_ones_are_errors() {
        let text = format!(
            "[Interface]\nPrivateKey = {}\nDNS = 10.0.0.53, fd00::53 corp.example\n\
             DNS = ~., bad_domain!\nPostUp = echo %i\n",
            private(1)
        );
        let e = parse_wg_quick(file("/etc/wireguard/wg1.conf"), &text).unwrap_err();
        assert_error(&e, "Interface.DNS", 4, "neither an address nor a domain");
        assert_eq!(e.len(), 1, "{e}");
        let ok = text.replace(", bad_domain!", "");
        let c = parse_wg_quick(file("/etc/wireguard/wg1.conf"), &ok).unwrap();
        let dns: Vec<String> = c.interface.dns.iter().map(ToString::to_string).collect();
        assert_eq!(dns, ["10.0.0.53", "fd00::53"]);
        assert_eq!(c.interface.dns_search, ["corp.example", "~."]);
    }

    #[test]
    fn errors_with_lines_and_keys() {
        let text = [
            "ListenPort = 1".to_owned(),                       // 1: outside a section
            "[Interface]".to_owned(),                          // 2
            format!("PrivateKey = {}", private(1)),            // 3
            "ListenPort = many".to_owned(),                    // 4
            "FwMark = 0xzz".to_owned(),                        // 5
            "PublicKey = abc".to_owned(),                      // 6: wrong section
            "Adress = 10.0.0.1/24".to_owned(),                 // 7: typo
            "PrivateKey".to_owned(),                           // 8: no =
            "[Peer]".to_owned(),                               // 9
            format!("PublicKey = {}", public(2)),              // 10
            "AllowedIPs = 10.0.0.0/8, 10.9.9.9/24".to_owned(), // 11
            "Endpoint = example.org".to_owned(),               // 12
            "DNS = 1.1.1.1".to_owned(),                        // 13
            "PersistentKeepalive = 100000".to_owned(),         // 14
            "[Wat]".to_owned(),                                // 15
            "Anything = goes".to_owned(),                      // 16: not checked
            "[Peer]".to_owned(),                               // 17
            format!("PublicKey = {}", public(2)),              // 18: duplicate
            "AllowedIPs = 10.0.0.0/8".to_owned(),              // 19: taken by Peer[1]
        ]
        .join("\n");
        let e = parse_wg_quick(file("wg1.conf"), &text).unwrap_err();
        assert_error(&e, "ListenPort", 1, "outside a section");
        assert_error(
            &e,
            "Interface.ListenPort",
            4,
            "\"many\" is not a decimal number",
        );
        assert_error(&e, "Interface.FwMark", 5, "0x hex");
        assert_error(&e, "Interface.PublicKey", 6, "belongs in a [Peer] section");
        assert_error(&e, "Interface.Adress", 7, "did you mean Address?");
        assert_error(&e, "syntax", 8, "expected Key = Value");
        assert_error(&e, "Peer[1].AllowedIPs", 11, "did you mean 10.9.9.0/24?");
        assert_error(&e, "Peer[1].Endpoint", 12, "has no port");
        assert_error(&e, "Peer[1].DNS", 13, "belongs in the [Interface] section");
        assert_error(&e, "Peer[1].PersistentKeepalive", 14, "out of range");
        assert_error(&e, "Wat", 15, "unknown section");
        assert_error(
            &e,
            "Peer[2].PublicKey",
            18,
            "duplicate peer: Peer[1] (line 10)",
        );
        assert_error(
            &e,
            "Peer[2].AllowedIPs",
            19,
            "10.0.0.0/8 is also in the allowed IPs of Peer[1]",
        );
        assert_eq!(e.len(), 13, "{e}");
    }

    #[test]
    fn missing_pieces() {
        let e = parse_wg_quick(file("wg2.conf"), "[Peer]\nAllowedIPs = 10.0.0.2/32\n").unwrap_err();
        assert_error(&e, "Peer[1].PublicKey", 1, "missing public key");
        assert!(
            e.iter().any(|e| e.key == "Interface" && e.line.is_none()),
            "{e}"
        );
        let e = parse_wg_quick(file("wg2.conf"), "[Interface]\nListenPort = 5\n").unwrap_err();
        assert_error(&e, "Interface.PrivateKey", 1, "missing PrivateKey");
    }

    #[test]
    fn repeated_single_key_warns_and_last_wins() {
        let text = format!(
            "[Interface]\nPrivateKey = {}\nMTU = 1400\nmtu = 1500\n",
            private(1)
        );
        let c = parse_wg_quick(file("wg3.conf"), &text).unwrap();
        assert_eq!(c.interface.mtu, Some(1500));
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(
            (c.warnings[0].line, c.warnings[0].key.as_str()),
            (Some(4), "Interface.MTU")
        );
        assert!(c.warnings[0].message.contains("line 3"));
    }

    #[test]
    fn table_and_fwmark_forms() {
        for (table, fwmark, want_table, want_mark) in [
            ("auto", "off", Table::Auto, 0),
            ("Off", "51820", Table::Off, 51820),
            ("51820", "0xCA6C", Table::Id(51820), 0xca6c),
        ] {
            let text = format!(
                "[Interface]\nPrivateKey = {}\nTable = {table}\nFwMark = {fwmark}\n",
                private(1)
            );
            let c = parse_wg_quick(file("wg4.conf"), &text).unwrap();
            assert_eq!(
                (c.interface.table, c.interface.fwmark),
                (want_table, want_mark)
            );
        }
        let text = format!("[Interface]\nPrivateKey = {}\nTable = main\n", private(1));
        let e = parse_wg_quick(file("wg4.conf"), &text).unwrap_err();
        assert_error(
            &e,
            "Interface.Table",
            3,
            "not \"auto\", \"off\" or a table number",
        );
    }
}
