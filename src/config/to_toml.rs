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
/// `*_file` reference. Warnings are not carried over.
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
    let _ = writeln!(out, "mtu = {}", i.mtu);
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

    for p in &config.peers {
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
