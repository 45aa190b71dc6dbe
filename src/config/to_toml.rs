//! Writes a [`Config`] back out as tandem TOML (`tandem import wg0.conf`): the output parses to
//! an equal `Config`.

use std::fmt::Write as _;
use std::path::Path;

use super::{Config, Table};

/// A TOML basic string: quoted, with `"`, `\` and control characters escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

fn list<T: ToString>(items: &[T]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quote(&i.to_string())).collect();
    format!("[{}]", quoted.join(", "))
}

/// The configuration as tandem TOML. Secrets are written as they were held: an inline key
/// stays inline (so protect the output like the input), a key read from a file stays a
/// `*_file` reference. Warnings are not carried over. `include` patterns are written as they
/// were (still relative to the directory the output is read from) and the peers of included
/// files are left to those files.
pub fn to_toml(config: &Config) -> String {
    let mut out = String::new();
    let i = &config.interface;
    let _ = writeln!(
        out,
        "# tandem configuration, written from {}",
        config.source.display()
    );
    out.push_str("\n[interface]\n");
    let _ = writeln!(out, "name = {}", quote(&i.name));
    match &i.private_key_file {
        Some(path) => {
            let _ = writeln!(out, "private_key_file = {}", quote_path(path));
        }
        None => {
            let _ = writeln!(out, "private_key = {}", quote(&i.private_key.to_base64()));
        }
    }
    if let Some(port) = i.listen_port {
        let _ = writeln!(out, "listen_port = {port}");
    }
    let _ = writeln!(out, "address = {}", list(&i.addresses));
    if let Some(mtu) = i.mtu {
        let _ = writeln!(out, "mtu = {mtu}");
    }
    if i.fwmark != 0 {
        let _ = writeln!(out, "fwmark = {}", i.fwmark);
    }
    let table = match i.table {
        Table::Auto => quote("auto"),
        Table::Off => quote("off"),
        Table::Id(id) => id.to_string(),
    };
    let _ = writeln!(out, "table = {table}");
    let _ = writeln!(out, "offload = {}", i.offload);
    if !i.dns.is_empty() {
        let _ = writeln!(out, "dns = {}", list(&i.dns));
    }
    if !i.dns_search.is_empty() {
        let _ = writeln!(out, "dns_search = {}", list(&i.dns_search));
    }
    for (key, commands) in [
        ("pre_up", &i.hooks.pre_up),
        ("post_up", &i.hooks.post_up),
        ("pre_down", &i.hooks.pre_down),
        ("post_down", &i.hooks.post_down),
    ] {
        if !commands.is_empty() {
            let _ = writeln!(out, "{key} = {}", list(commands));
        }
    }

    if !i.include.is_empty() {
        let _ = writeln!(out, "include = {}", list(&i.include));
    }

    for p in config.peers.iter().filter(|p| p.file.is_none()) {
        out.push_str("\n[[peer]]\n");
        if let Some(name) = &p.name {
            let _ = writeln!(out, "name = {}", quote(name));
        }
        let _ = writeln!(out, "public_key = {}", quote(&p.public_key.to_base64()));
        match (&p.preshared_key_file, &p.preshared_key) {
            (Some(path), _) => {
                let _ = writeln!(out, "preshared_key_file = {}", quote_path(path));
            }
            (None, Some(psk)) => {
                let _ = writeln!(out, "preshared_key = {}", quote(&psk.to_base64()));
            }
            (None, None) => {}
        }
        if let Some(endpoint) = &p.endpoint {
            let _ = writeln!(out, "endpoint = {}", quote(&endpoint.to_string()));
        }
        let _ = writeln!(out, "allowed_ips = {}", list(&p.allowed_ips));
        if let Some(secs) = p.persistent_keepalive {
            let _ = writeln!(out, "persistent_keepalive = {secs}");
        }
    }
    if let Some(metrics) = &config.metrics {
        out.push_str("\n[metrics]\n");
        let _ = writeln!(out, "listen = {}", quote(&metrics.listen.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(quote("plain"), "\"plain\"");
    }
}

#[cfg(test)]
mod round_trip {
    use crate::config::test_util::{TempFile, file, private, public};
    use crate::config::{parse_toml, parse_wg_quick, to_toml};
    use crate::proto::keys::PresharedKey;

    #[test]
    fn wg_quick_import_round_trips() {
        let text = format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.0.0.1/24, fd00::1/64\nListenPort = 51820\n\
             MTU = 1400\nFwMark = 0x10\nTable = 1234\nDNS = 10.0.0.53, corp.example\n\
             PostUp = echo \"up %i\" > /tmp/x\nPostUp = true\nPreDown = logger down\nSaveConfig = true\n\
             [Peer]\nPublicKey = {}\nPresharedKey = {}\nAllowedIPs = 0.0.0.0/0, ::/0\n\
             Endpoint = [2001:db8::1]:51820\nPersistentKeepalive = 25\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = 10.0.0.3/32\nEndpoint = vpn.example.com:443\n",
            private(1),
            public(2),
            PresharedKey::from_bytes([3; 32]).to_base64(),
            public(4)
        );
        let imported = parse_wg_quick(file("/etc/wireguard/wg9.conf"), &text).unwrap();
        assert_eq!(imported.warnings.len(), 1); // SaveConfig
        let i = &imported.interface;
        assert_eq!(i.dns_search, ["corp.example"]);
        assert_eq!(i.hooks.post_up, ["echo \"up %i\" > /tmp/x", "true"]);
        assert_eq!(i.hooks.pre_down, ["logger down"]);
        let written = to_toml(&imported);
        let again = parse_toml(file("/etc/tandem/wg9.toml"), &written)
            .unwrap_or_else(|e| panic!("{e}\n---\n{written}"));
        assert_eq!(again.interface, imported.interface);
        assert_eq!(again.peers, imported.peers);
        assert!(again.warnings.is_empty());
        // The name is written out, so renaming the file does not rename the interface.
        let renamed = parse_toml(file("other.toml"), &written).unwrap();
        assert_eq!(renamed.interface.name, "wg9");
    }

    #[test]
    fn toml_round_trips_with_defaults_off_and_key_files() {
        let key = TempFile::new("rt.key", &private(5), 0o600);
        let text = format!(
            "[interface]\nname = \"odd\\\"name\"\nprivate_key_file = \"{}\"\noffload = false\n\
             table = \"off\"\n[[peer]]\nname = \"weird \\\\ \\\"label\\\"\"\npublic_key = \"{}\"\n\
             allowed_ips = []\n",
            key.path.display(),
            public(6)
        );
        // The odd interface name is refused; fix it and compare the rest.
        assert!(parse_toml(file("a.toml"), &text).is_err());
        let text = text.replace("odd\\\"name", "odd");
        let c = parse_toml(file("a.toml"), &text).unwrap();
        let written = to_toml(&c);
        assert!(written.contains("private_key_file"), "{written}");
        assert!(
            !written.contains(&private(5)),
            "the secret stays in its file:\n{written}"
        );
        let again = parse_toml(file("b.toml"), &written).unwrap();
        assert_eq!((&again.interface, &again.peers), (&c.interface, &c.peers));
        assert_eq!(again.peers[0].name.as_deref(), Some("weird \\ \"label\""));
    }
}
