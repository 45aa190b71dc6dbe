//! Writes a [`Config`] as a wg-quick `.conf` (`tandem export`): the inverse of the wg-quick
//! front end, so that importing the output gives the same interface and peers back.
//!
//! What wg-quick cannot say is handled so that nothing that matters for security disappears
//! silently:
//! - key files (`private_key_file`, `preshared_key_file`): the key is written inline, with a
//!   warning (the output is then as secret as the key file);
//! - peers of `include` files: written with the others, with a warning (one file out);
//! - peer names: written as `# friendly_name = NAME` comments, the convention of
//!   prometheus_wireguard_exporter, which the wg-quick front end reads back;
//! - `offload = false` and `[metrics]`: left out, with a warning (neither changes who may
//!   talk to whom);
//! - a hook command, DNS entry or name containing `#` or a line break cannot be written (wg-quick
//!   would cut it at the `#`, or read a second line): an error, nothing is written.

use std::fmt::Write as _;

use super::{Config, Table};

/// The `.conf` text and what it leaves out or changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgQuickExport {
    pub text: String,
    /// One line each, for stderr.
    pub warnings: Vec<String>,
}

/// A value wg-quick would not read back as written.
fn unwritable(value: &str) -> bool {
    value.contains(['#', '\n', '\r'])
}

/// The configuration as a wg-quick `.conf`, or the values wg-quick cannot hold.
pub fn to_wg_quick(config: &Config) -> Result<WgQuickExport, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut out = String::new();
    let i = &config.interface;
    let _ = writeln!(
        out,
        "# wg-quick configuration of interface {}, written from {}\n# (wg-quick takes the interface name from the file name: save as {}.conf)",
        i.name,
        config.source.display(),
        i.name
    );
    out.push_str("[Interface]\n");
    if let Some(path) = &i.private_key_file {
        warnings.push(format!(
            "the private key from {} is written inline: keep this output as secret as that file",
            path.display()
        ));
    }
    let _ = writeln!(out, "PrivateKey = {}", i.private_key.to_base64());
    if !i.addresses.is_empty() {
        let _ = writeln!(out, "Address = {}", join(&i.addresses));
    }
    if let Some(port) = i.listen_port {
        let _ = writeln!(out, "ListenPort = {port}");
    }
    if let Some(mtu) = i.mtu {
        let _ = writeln!(out, "MTU = {mtu}");
    }
    if i.fwmark != 0 {
        let _ = writeln!(out, "FwMark = {:#x}", i.fwmark);
    }
    match i.table {
        Table::Auto => {}
        Table::Off => out.push_str("Table = off\n"),
        Table::Id(id) => {
            let _ = writeln!(out, "Table = {id}");
        }
    }
    let dns: Vec<String> = i
        .dns
        .iter()
        .map(ToString::to_string)
        .chain(i.dns_search.iter().cloned())
        .collect();
    if !dns.is_empty() {
        for d in dns
            .iter()
            .filter(|d| unwritable(d) || d.contains([',', ' ']))
        {
            errors.push(format!(
                "DNS entry {d:?} cannot be written in wg-quick's format"
            ));
        }
        let _ = writeln!(out, "DNS = {}", dns.join(", "));
    }
    for (key, commands) in [
        ("PreUp", &i.hooks.pre_up),
        ("PostUp", &i.hooks.post_up),
        ("PreDown", &i.hooks.pre_down),
        ("PostDown", &i.hooks.post_down),
    ] {
        for command in commands {
            if unwritable(command) {
                errors.push(format!(
                    "the {key} command {command:?} contains '#' or a line break, which \
                     wg-quick would cut off"
                ));
            }
            let _ = writeln!(out, "{key} = {command}");
        }
    }
    if !i.offload {
        warnings.push("offload = false is not expressible in wg-quick's format; left out".into());
    }
    if let Some(m) = &config.metrics {
        warnings.push(format!(
            "[metrics] listen = \"{}\" is not expressible in wg-quick's format; left out \
             (use tandem's --metrics flag)",
            m.listen
        ));
    }
    if !config.included.is_empty() {
        warnings.push(format!(
            "the peers of {} included file(s) are written into this one file",
            config.included.len()
        ));
    }

    for p in &config.peers {
        out.push_str("\n[Peer]\n");
        if let Some(name) = &p.name {
            if name.contains(['\n', '\r']) {
                warnings.push(format!("the peer name {name:?} has a line break; left out"));
            } else {
                let _ = writeln!(out, "# friendly_name = {name}");
            }
        }
        let _ = writeln!(out, "PublicKey = {}", p.public_key.to_base64());
        if let Some(psk) = &p.preshared_key {
            if let Some(path) = &p.preshared_key_file {
                warnings.push(format!(
                    "the preshared key from {} is written inline: keep this output as secret \
                     as that file",
                    path.display()
                ));
            }
            let _ = writeln!(out, "PresharedKey = {}", psk.to_base64());
        }
        if !p.allowed_ips.is_empty() {
            let _ = writeln!(out, "AllowedIPs = {}", join(&p.allowed_ips));
        }
        if let Some(endpoint) = &p.endpoint {
            let _ = writeln!(out, "Endpoint = {endpoint}");
        }
        if let Some(secs) = p.persistent_keepalive {
            let _ = writeln!(out, "PersistentKeepalive = {secs}");
        }
    }
    if errors.is_empty() {
        Ok(WgQuickExport {
            text: out,
            warnings,
        })
    } else {
        Err(errors)
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::test_util::{TempFile, private, public};
    use crate::config::{load, parse_toml, parse_wg_quick};

    /// What wg-quick can express of a config: everything but where keys and peers were
    /// read from, `offload` and `[metrics]`.
    fn expressible(
        c: &Config,
    ) -> (
        crate::config::InterfaceConfig,
        Vec<crate::config::PeerConfig>,
    ) {
        let mut i = c.interface.clone();
        i.private_key_file = None;
        i.include.clear();
        i.offload = true;
        let peers = c
            .peers
            .iter()
            .cloned()
            .map(|mut p| {
                p.file = None;
                p.preshared_key_file = None;
                p
            })
            .collect();
        (i, peers)
    }

    fn round_trip(c: &Config) -> Config {
        let export = to_wg_quick(c).unwrap_or_else(|e| panic!("{e:?}"));
        let path = PathBuf::from(format!("/etc/wireguard/{}.conf", c.interface.name));
        parse_wg_quick(&path, &export.text).unwrap_or_else(|e| panic!("{e}\n---\n{}", export.text))
    }

    #[test]
    fn every_example_config_round_trips() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let c = load(&path).unwrap();
            let again = round_trip(&c);
            assert_eq!(expressible(&again), expressible(&c), "{}", path.display());
            assert!(again.warnings.is_empty(), "{:?}", again.warnings);
        }
    }

    #[test]
    fn key_files_offload_and_metrics_are_warned_about() {
        let key = TempFile::new("exp.key", &private(3), 0o600);
        let text = format!(
            "[interface]\nname = \"exp0\"\nprivate_key_file = \"{}\"\noffload = false\n\
             table = \"off\"\nfwmark = 51820\n[[peer]]\nname = \"phone\"\npublic_key = \"{}\"\n\
             allowed_ips = [\"10.0.0.2/32\"]\n[metrics]\nlisten = \"127.0.0.1:9586\"\n",
            key.path.display(),
            public(4)
        );
        let c = parse_toml(Path::new("exp0.toml"), &text).unwrap();
        let export = to_wg_quick(&c).unwrap();
        assert!(
            export
                .text
                .contains(&format!("PrivateKey = {}", private(3)))
        );
        assert!(export.text.contains("# friendly_name = phone\n"));
        assert!(
            export.text.contains("FwMark = 0xca6c\nTable = off\n"),
            "{}",
            export.text
        );
        assert_eq!(export.warnings.len(), 3, "{:?}", export.warnings);
        assert!(export.warnings[0].contains("written inline"));
        assert!(export.warnings[1].contains("offload"));
        assert!(export.warnings[2].contains("metrics"));
        let again = round_trip(&c);
        assert_eq!(again.peers[0].name.as_deref(), Some("phone"));
        assert_eq!(expressible(&again), expressible(&c));
    }

    #[test]
    fn values_wg_quick_would_cut_are_refused() {
        let text = format!(
            "[interface]\nprivate_key = \"{}\"\npost_up = [\"echo a # b\", \"true\"]\n",
            private(1)
        );
        let c = parse_toml(Path::new("x.toml"), &text).unwrap();
        let errors = to_wg_quick(&c).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("PostUp"), "{errors:?}");
    }
}
