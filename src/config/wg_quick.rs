//! wg-quick `.conf` front end, for `tandem import wg0.conf` and for running existing configs.
//!
//! Reads the INI-like format as `wg` and `wg-quick` do: `[Interface]` and `[Peer]` sections,
//! `Key = Value` lines, `#` starts a comment anywhere on a line, section and key names are
//! case-insensitive, lists are comma-separated and `Address`, `AllowedIPs` and `DNS` accumulate
//! when repeated. A repeated single-valued key replaces the earlier value, as in `wg`, with a
//! warning. wg-quick's own settings that tandem does not apply (DNS, hooks, SaveConfig) are
//! warnings; anything else unknown is an error.

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
];
const PEER_KEYS: &[&str] = &[
    "PublicKey",
    "PresharedKey",
    "AllowedIPs",
    "Endpoint",
    "PersistentKeepalive",
];
/// wg-quick interface settings tandem accepts but does not act on.
const IGNORED_INTERFACE_KEYS: &[&str] = &[
    "DNS",
    "PreUp",
    "PostUp",
    "PreDown",
    "PostDown",
    "SaveConfig",
];

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
    };
    let mut section = Section::None;

    for (i, raw) in text.lines().enumerate() {
        let line = Some(i + 1);
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
    value
        .split(',')
        .map(str::trim)
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
