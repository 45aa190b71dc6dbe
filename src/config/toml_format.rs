//! TOML front end: walks toml's spanned document tree (`toml::de::DeTable`) rather than
//! deserializing through serde, because serde stops at the first error while this walk records
//! every unknown key and wrong type, each with the line of its span.

use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Config;
use super::compile::{At, Dialect, Draft, InterfaceDraft, MetricsDraft, PeerDraft, compile};
use super::error::{ConfigErrors, Diagnostics, LineIndex};

const ROOT_KEYS: &[&str] = &["interface", "peer", "metrics"];
const METRICS_KEYS: &[&str] = &["listen"];
const INTERFACE_KEYS: &[&str] = &[
    "name",
    "private_key",
    "private_key_file",
    "listen_port",
    "address",
    "mtu",
    "fwmark",
    "table",
    "offload",
    "dns",
    "dns_search",
    "pre_up",
    "post_up",
    "pre_down",
    "post_down",
    "include",
];
const PEER_KEYS: &[&str] = &[
    "name",
    "public_key",
    "preshared_key",
    "preshared_key_file",
    "endpoint",
    "allowed_ips",
    "persistent_keepalive",
];

pub(crate) fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut diag = Diagnostics::new(file);
    let mut draft = Draft {
        dialect: Dialect::Toml,
        interface: None,
        peers: Vec::new(),
        metrics: None,
        included: Vec::new(),
    };
    walk_file(&mut diag, &mut draft, text, None);
    let patterns = draft
        .interface
        .as_ref()
        .map(|i| i.include.clone())
        .unwrap_or_default();
    for path in super::include::expand(&mut diag, &patterns) {
        // A file that matched but cannot be read is reported under its own name.
        let read = std::fs::read_to_string(&path);
        diag.set_file(&path);
        match read {
            Ok(text) => walk_file(&mut diag, &mut draft, &text, Some(&path)),
            Err(e) => diag.error(None, "", format!("cannot read this included file: {e}")),
        }
        draft.included.push(path);
    }
    compile(draft, diag)
}

/// Walks one file's TOML into `draft`. `included`: the path of an included peer file, which
/// may hold `[[peer]]` blocks only.
fn walk_file(diag: &mut Diagnostics, draft: &mut Draft, text: &str, included: Option<&Path>) {
    let lines = LineIndex::new(text);
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    for e in &syntax_errors {
        let line = e.span().map(|s| lines.line_of(s.start));
        diag.syntax(line, e.message().trim_end());
    }
    let mut w = Walker {
        diag,
        lines: &lines,
        file: included.map(Path::to_path_buf),
        peers_in_file: 0,
    };
    for (key, value) in doc.get_ref().iter() {
        if included.is_some() && key.get_ref().as_ref() != "peer" {
            let line = w.line(key);
            w.diag.error(
                line,
                key.get_ref().as_ref(),
                "an included file holds [[peer]] blocks only; this belongs in the main \
                 configuration file",
            );
            continue;
        }
        match key.get_ref().as_ref() {
            "interface" => match value.get_ref() {
                DeValue::Table(table) => {
                    draft.interface = Some(w.interface(table, w.line(value)));
                }
                other => w.wrong_type("interface", value, "a table ([interface])", other),
            },
            "peer" => match value.get_ref() {
                DeValue::Array(items) => {
                    for item in items.iter() {
                        w.peers_in_file += 1;
                        let index = w.peers_in_file;
                        match item.get_ref() {
                            DeValue::Table(table) => {
                                draft.peers.push(w.peer(table, index, w.line(item)));
                            }
                            other => w.wrong_type(
                                &format!("peer[{index}]"),
                                item,
                                "a table ([[peer]])",
                                other,
                            ),
                        }
                    }
                }
                DeValue::Table(_) => w.diag.error(
                    w.line(value),
                    "peer",
                    "write [[peer]] (double brackets): peers are an array of tables, \
                     even when there is only one",
                ),
                other => w.wrong_type("peer", value, "an array of tables ([[peer]])", other),
            },
            "metrics" => match value.get_ref() {
                DeValue::Table(table) => {
                    draft.metrics = Some(w.metrics(table, w.line(value)));
                }
                other => w.wrong_type("metrics", value, "a table ([metrics])", other),
            },
            _ => w.unknown_key("", key, ROOT_KEYS),
        }
    }
}

struct Walker<'a> {
    diag: &'a mut Diagnostics,
    lines: &'a LineIndex,
    /// The included file being walked (`None`: the main file).
    file: Option<std::path::PathBuf>,
    /// `[[peer]]` blocks seen in this file so far.
    peers_in_file: usize,
}

impl Walker<'_> {
    fn line<T>(&self, spanned: &Spanned<T>) -> Option<usize> {
        Some(self.lines.line_of(spanned.span().start))
    }

    fn wrong_type(
        &mut self,
        key: &str,
        at: &Spanned<DeValue<'_>>,
        expected: &str,
        found: &DeValue<'_>,
    ) {
        let line = self.line(at);
        self.diag.error(
            line,
            key,
            format!("expected {expected}, found {}", found.type_str()),
        );
    }

    fn unknown_key(
        &mut self,
        prefix: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        known: &[&str],
    ) {
        let name = key.get_ref().as_ref();
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        };
        let mut message = "unknown key".to_owned();
        if let Some(s) = suggest(name, known) {
            message.push_str(&format!(" (did you mean {s}?)"));
        } else {
            message.push_str(&format!(" (known here: {})", known.join(", ")));
        }
        let line = self.line(key);
        self.diag.error(line, path, message);
    }

    fn string(&mut self, key: String, v: &Spanned<DeValue<'_>>) -> Option<At<String>> {
        match v.get_ref() {
            DeValue::String(s) => Some(At {
                value: s.to_string(),
                line: self.line(v),
                key,
            }),
            other => {
                self.wrong_type(&key, v, "a string", other);
                None
            }
        }
    }

    fn integer(&mut self, key: String, v: &Spanned<DeValue<'_>>) -> Option<At<i128>> {
        match v.get_ref() {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(value) => Some(At {
                    value,
                    line: self.line(v),
                    key,
                }),
                Err(_) => {
                    let line = self.line(v);
                    self.diag.error(line, key, format!("{i} is out of range"));
                    None
                }
            },
            other => {
                self.wrong_type(&key, v, "an integer", other);
                None
            }
        }
    }

    fn boolean(&mut self, key: String, v: &Spanned<DeValue<'_>>) -> Option<At<bool>> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(At {
                value: *b,
                line: self.line(v),
                key,
            }),
            other => {
                self.wrong_type(&key, v, "a boolean (true or false)", other);
                None
            }
        }
    }

    /// An array of strings, each element located on its own line.
    fn string_list(&mut self, key: String, v: &Spanned<DeValue<'_>>) -> Vec<At<String>> {
        match v.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .filter_map(|item| self.string(key.clone(), item))
                .collect(),
            DeValue::String(_) => {
                let line = self.line(v);
                self.diag.error(
                    line,
                    key,
                    "expected an array of strings, found string (write [\"...\"])",
                );
                Vec::new()
            }
            other => {
                self.wrong_type(&key, v, "an array of strings", other);
                Vec::new()
            }
        }
    }

    /// `table`: "auto", "off" or a number, given as a TOML integer or a numeric string.
    fn table(&mut self, key: String, v: &Spanned<DeValue<'_>>) -> Option<At<String>> {
        match v.get_ref() {
            DeValue::Integer(_) => self.integer(key, v).map(|at| At {
                value: at.value.to_string(),
                line: at.line,
                key: at.key,
            }),
            DeValue::String(_) => self.string(key, v),
            other => {
                self.wrong_type(&key, v, "\"auto\", \"off\" or a table number", other);
                None
            }
        }
    }

    fn interface(&mut self, table: &DeTable<'_>, line: Option<usize>) -> InterfaceDraft {
        let mut d = InterfaceDraft {
            line,
            ..InterfaceDraft::default()
        };
        for (key, v) in table.iter() {
            let name = key.get_ref().as_ref();
            let path = format!("interface.{name}");
            match name {
                "name" => d.name = self.string(path, v),
                "private_key" => d.private_key = self.string(path, v),
                "private_key_file" => d.private_key_file = self.string(path, v),
                "listen_port" => d.listen_port = self.integer(path, v),
                "address" => d.addresses = self.string_list(path, v),
                "mtu" => d.mtu = self.integer(path, v),
                "fwmark" => d.fwmark = self.integer(path, v),
                "table" => d.table = self.table(path, v),
                "offload" => d.offload = self.boolean(path, v),
                "dns" => d.dns = self.string_list(path, v),
                "dns_search" => d.dns_search = self.string_list(path, v),
                "pre_up" => d.pre_up = self.string_list(path, v),
                "post_up" => d.post_up = self.string_list(path, v),
                "pre_down" => d.pre_down = self.string_list(path, v),
                "post_down" => d.post_down = self.string_list(path, v),
                "include" => d.include = self.string_list(path, v),
                _ => self.unknown_key("interface", key, INTERFACE_KEYS),
            }
        }
        d
    }

    fn metrics(&mut self, table: &DeTable<'_>, line: Option<usize>) -> MetricsDraft {
        let mut d = MetricsDraft {
            line,
            ..MetricsDraft::default()
        };
        for (key, v) in table.iter() {
            let name = key.get_ref().as_ref();
            match name {
                "listen" => d.listen = self.string(format!("metrics.{name}"), v),
                _ => self.unknown_key("metrics", key, METRICS_KEYS),
            }
        }
        d
    }

    fn peer(&mut self, table: &DeTable<'_>, index: usize, line: Option<usize>) -> PeerDraft {
        let mut d = PeerDraft {
            file: self.file.clone(),
            line,
            index,
            ..PeerDraft::default()
        };
        let prefix = format!("peer[{index}]");
        for (key, v) in table.iter() {
            let name = key.get_ref().as_ref();
            let path = format!("{prefix}.{name}");
            match name {
                "name" => d.name = self.string(path, v),
                "public_key" => d.public_key = self.string(path, v),
                "preshared_key" => d.preshared_key = self.string(path, v),
                "preshared_key_file" => d.preshared_key_file = self.string(path, v),
                "endpoint" => d.endpoint = self.string(path, v),
                "allowed_ips" => d.allowed_ips = self.string_list(path, v),
                "persistent_keepalive" => d.persistent_keepalive = self.integer(path, v),
                _ => self.unknown_key(&prefix, key, PEER_KEYS),
            }
        }
        d
    }
}

/// The known key closest to `name`, matching wg-quick spellings (`AllowedIPs`) and small typos.
pub(crate) fn suggest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    fn norm(s: &str) -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    }
    let n = norm(name);
    known
        .iter()
        .map(|k| (edit_distance(&n, &norm(k)), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev
                .get(j)
                .copied()
                .unwrap_or(usize::MAX)
                .saturating_add(usize::from(ca != *cb));
            let delete = prev
                .get(j + 1)
                .copied()
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            let insert = cur.get(j).copied().unwrap_or(usize::MAX).saturating_add(1);
            cur.push(substitute.min(delete).min(insert));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{assert_error, error_for, file, private, public};
    use crate::config::{Table, parse_toml};

    fn doc(lines: &[&str]) -> String {
        lines.join("\n")
    }

    #[test]
    fn metrics_listen_is_parsed_and_checked_with_lines() {
        let base = format!("[interface]\nprivate_key = \"{}\"\n", private(1));
        let ok = parse_toml(
            file("m.toml"),
            &format!("{base}\n[metrics]\nlisten = \"127.0.0.1:9586\"\n"),
        )
        .expect("valid");
        assert_eq!(
            ok.metrics.map(|m| m.listen),
            Some("127.0.0.1:9586".parse().expect("addr"))
        );
        assert_eq!(
            parse_toml(file("m.toml"), &base).expect("valid").metrics,
            None
        );
        let bad = format!(
            "{base}\n[metrics]\nlisten = \"localhost\"\nport = 1\n\n[[peer]]\n\
             public_key = \"{}\"\n",
            public(2)
        );
        let errors = parse_toml(file("m.toml"), &bad).expect_err("invalid");
        assert_error(&errors, "metrics.listen", 5, "is not an address and port");
        assert_error(&errors, "metrics.port", 6, "unknown key");
        let zero = format!("{base}[metrics]\nlisten = \"[::1]:0\"\n");
        let errors = parse_toml(file("m.toml"), &zero).expect_err("port 0");
        assert_error(&errors, "metrics.listen", 4, "port 0");
        let empty = format!("{base}[metrics]\n");
        let errors = parse_toml(file("m.toml"), &empty).expect_err("no listen");
        assert_error(&errors, "metrics.listen", 3, "missing");
        let wrong = format!("{base}metrics = 1\n");
        let errors = parse_toml(file("m.toml"), &wrong).expect_err("not a table");
        assert!(
            errors.iter().any(|e| e.key == "interface.metrics"),
            "{errors}"
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let text = doc(&["[interface]", &format!("private_key = \"{}\"", private(1))]);
        let c = parse_toml(file("/etc/tandem/tnd7.toml"), &text).unwrap();
        assert_eq!(c.interface.name, "tnd7");
        assert_eq!(c.interface.listen_port, None);
        assert_eq!(c.interface.mtu, None, "absent: automatic");
        assert_eq!(c.interface.fwmark, 0);
        assert_eq!(c.interface.table, Table::Auto);
        assert!(c.interface.offload);
        assert!(c.interface.addresses.is_empty());
        assert!(c.peers.is_empty());
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn integers_in_any_toml_radix_and_duplicate_names() {
        let text = doc(&[
            "[interface]",
            &format!("private_key = \"{}\"", private(1)),
            "fwmark = 0xca6c",
            "mtu = 1_400",
            "[[peer]]",
            "name = \"twin\"",
            &format!("public_key = \"{}\"", public(2)),
            "allowed_ips = [\"10.0.0.2/32\"]",
            "[[peer]]",
            "name = \"twin\"",
            &format!("public_key = \"{}\"", public(3)),
            "allowed_ips = [\"10.0.0.3/32\"]",
        ]);
        let c = parse_toml(file("r.toml"), &text).unwrap();
        assert_eq!((c.interface.fwmark, c.interface.mtu), (0xca6c, Some(1400)));
        // Names are labels: a repeat is allowed but worth a warning.
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].key, "peer[2].name");
        assert_eq!(c.warnings[0].line, Some(10));
        assert!(c.warnings[0].message.contains("peer[1] (line 6)"));
    }

    #[test]
    fn table_forms() {
        for (value, want) in [
            ("\"auto\"", Table::Auto),
            ("\"off\"", Table::Off),
            ("1234", Table::Id(1234)),
            ("\"51820\"", Table::Id(51820)),
        ] {
            let text = doc(&[
                "[interface]",
                &format!("private_key = \"{}\"", private(1)),
                &format!("table = {value}"),
            ]);
            let c = parse_toml(file("t.toml"), &text).unwrap();
            assert_eq!(c.interface.table, want, "{value}");
        }
        for bad in ["0", "-3", "\"main\"", "true"] {
            let text = doc(&[
                "[interface]",
                &format!("private_key = \"{}\"", private(1)),
                &format!("table = {bad}"),
            ]);
            let e = parse_toml(file("t.toml"), &text).unwrap_err();
            assert_eq!(error_for(&e, "interface.table").line, Some(3), "{bad}");
        }
    }

    #[test]
    fn syntax_error_reports_tomls_line_and_other_errors_too() {
        let text = doc(&[
            "[interface]",                                // 1
            &format!("private_key = \"{}\"", private(1)), // 2
            "mtu = ",                                     // 3: no value
            "colour = \"blue\"",                          // 4: unknown key
            "[[peer]]",                                   // 5
            &format!("public_key = \"{}\"", public(2)),   // 6
            "allowed_ips = [\"10.0.0.1/24\"]",            // 7: host bits
        ]);
        let e = parse_toml(file("s.toml"), &text).unwrap_err();
        assert_error(&e, "syntax", 3, "");
        assert_error(&e, "interface.colour", 4, "unknown key");
        assert_error(&e, "peer[1].allowed_ips", 7, "host bits");
        // The broken line gets one error (the syntax one), not a second about its value.
        assert_eq!(e.iter().filter(|e| e.line == Some(3)).count(), 1, "{e}");
        let shown = e.to_string();
        assert!(shown.starts_with("s.toml:3: syntax: "), "{shown}");
    }

    #[test]
    fn syntax_error_suppresses_missing_key_complaints() {
        // The private key line is broken; "missing private_key" would be noise.
        let text = doc(&["[interface]", "private_key = \"unterminated"]);
        let e = parse_toml(file("s.toml"), &text).unwrap_err();
        assert_eq!(e.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "syntax");
        assert_eq!(e.0[0].line, Some(2));
    }

    #[test]
    fn unknown_keys_at_every_level() {
        let text = doc(&[
            "verbose = true",                             // 1
            "[interface]",                                // 2
            &format!("private_key = \"{}\"", private(1)), // 3
            "listen_prot = 51820",                        // 4
            "dns_servers = [\"10.0.0.53\"]",              // 5
            "[interface.extra]",                          // 6
            "x = 1",                                      // 7
            "[[peer]]",                                   // 8
            &format!("public_key = \"{}\"", public(2)),   // 9
            "AllowedIPs = [\"10.0.0.2/32\"]",             // 10
        ]);
        let e = parse_toml(file("u.toml"), &text).unwrap_err();
        assert_error(&e, "verbose", 1, "unknown key");
        assert_error(&e, "interface.listen_prot", 4, "did you mean listen_port?");
        assert_error(&e, "interface.dns_servers", 5, "unknown key");
        assert_error(&e, "interface.extra", 6, "unknown key");
        assert_error(&e, "peer[1].AllowedIPs", 10, "did you mean allowed_ips?");
        assert_eq!(e.len(), 5, "{e}");
    }

    #[test]
    fn dns_and_hooks_are_checked_with_lines() {
        let text = doc(&[
            "[interface]",                                    // 1
            &format!("private_key = \"{}\"", private(1)),     // 2
            "dns = [\"10.0.0.53\", \"corp.example\"]",        // 3
            "dns_search = [\"corp.example\", \"no spaces\"]", // 4
            "post_up = [\"echo %i\", 5]",                     // 5
            "pre_down = \"echo down\"",                       // 6
        ]);
        let e = parse_toml(file("h.toml"), &text).unwrap_err();
        assert_error(&e, "interface.dns", 3, "not an IPv4 or IPv6 address");
        assert_error(
            &e,
            "interface.dns_search",
            4,
            "neither an address nor a domain",
        );
        assert_error(&e, "interface.post_up", 5, "expected a string");
        assert_error(&e, "interface.pre_down", 6, "expected an array of strings");
        assert_eq!(e.len(), 4, "{e}");

        let good = doc(&[
            "[interface]",
            &format!("private_key = \"{}\"", private(1)),
            "dns = [\"10.0.0.53\", \"fd10::53\"]",
            "dns_search = [\"corp.example\"]",
            "pre_up = [\"true\"]",
            "post_up = [\"echo up %i\", \"echo again\"]",
            "pre_down = [\"echo down\"]",
            "post_down = [\"echo gone\"]",
        ]);
        let c = parse_toml(file("h.toml"), &good).unwrap();
        let i = &c.interface;
        assert_eq!(i.dns.len(), 2);
        assert_eq!(i.dns_search, ["corp.example"]);
        assert_eq!(i.hooks.post_up, ["echo up %i", "echo again"]);
        assert_eq!(
            (
                i.hooks.pre_up.len(),
                i.hooks.pre_down.len(),
                i.hooks.post_down.len()
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn wrong_types() {
        let text = doc(&[
            "[interface]",                                // 1
            &format!("private_key = \"{}\"", private(1)), // 2
            "mtu = \"1420\"",                             // 3
            "address = \"10.0.0.1/24\"",                  // 4
            "offload = \"yes\"",                          // 5
            "listen_port = 1.5",                          // 6
            "name = 7",                                   // 7
            "[[peer]]",                                   // 8
            &format!("public_key = \"{}\"", public(2)),   // 9
            "allowed_ips = [\"10.0.0.2/32\", 5]",         // 10
            "persistent_keepalive = true",                // 11
        ]);
        let e = parse_toml(file("t.toml"), &text).unwrap_err();
        assert_error(&e, "interface.mtu", 3, "expected an integer, found string");
        assert_error(&e, "interface.address", 4, "array of strings");
        assert_error(&e, "interface.offload", 5, "expected a boolean");
        assert_error(&e, "interface.listen_port", 6, "found float");
        assert_error(&e, "interface.name", 7, "expected a string, found integer");
        assert_error(&e, "peer[1].allowed_ips", 10, "found integer");
        assert_error(&e, "peer[1].persistent_keepalive", 11, "found boolean");
        assert_eq!(e.len(), 7, "{e}");
    }

    #[test]
    fn peer_must_be_an_array_of_tables() {
        let text = doc(&[
            "[interface]",
            &format!("private_key = \"{}\"", private(1)),
            "[peer]",
            &format!("public_key = \"{}\"", public(2)),
        ]);
        let e = parse_toml(file("p.toml"), &text).unwrap_err();
        assert_error(&e, "peer", 3, "[[peer]]");
        let text = "interface = 3\n";
        let e = parse_toml(file("p.toml"), text).unwrap_err();
        assert_error(&e, "interface", 1, "expected a table");
    }

    #[test]
    fn values_in_multiline_arrays_get_their_own_lines() {
        let text = doc(&[
            "[interface]",                                // 1
            &format!("private_key = \"{}\"", private(1)), // 2
            "[[peer]]",                                   // 3
            &format!("public_key = \"{}\"", public(2)),   // 4
            "allowed_ips = [",                            // 5
            "  \"10.0.0.2/32\",",                         // 6
            "  \"10.0.1.0/33\",",                         // 7
            "  \"10.0.2.1/24\",",                         // 8
            "]",                                          // 9
        ]);
        let e = parse_toml(file("m.toml"), &text).unwrap_err();
        assert_error(
            &e,
            "peer[1].allowed_ips",
            7,
            "prefix length 33 is out of range for IPv4",
        );
        assert_error(&e, "peer[1].allowed_ips", 8, "did you mean 10.0.2.0/24?");
        assert_eq!(e.len(), 2, "{e}");
    }
}
