//! TOML front end: walks toml's spanned document tree (`toml::de::DeTable`) rather than
//! deserializing through serde, because serde stops at the first error while this walk records
//! every unknown key and wrong type, each with the line of its span.

use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Config;
use super::compile::{At, Dialect, Draft, InterfaceDraft, PeerDraft, compile};
use super::error::{ConfigErrors, Diagnostics, LineIndex};

const ROOT_KEYS: &[&str] = &["interface", "peer"];
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
    let lines = LineIndex::new(text);
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    for e in &syntax_errors {
        let line = e.span().map(|s| lines.line_of(s.start));
        diag.syntax(line, e.message().trim_end());
    }

    let mut w = Walker {
        diag,
        lines: &lines,
    };
    let mut draft = Draft {
        dialect: Dialect::Toml,
        interface: None,
        peers: Vec::new(),
    };
    for (key, value) in doc.get_ref().iter() {
        match key.get_ref().as_ref() {
            "interface" => match value.get_ref() {
                DeValue::Table(table) => {
                    draft.interface = Some(w.interface(table, w.line(value)));
                }
                other => w.wrong_type("interface", value, "a table ([interface])", other),
            },
            "peer" => match value.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let index = i + 1;
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
            _ => w.unknown_key("", key, ROOT_KEYS),
        }
    }
    compile(draft, w.diag)
}

struct Walker<'a> {
    diag: Diagnostics,
    lines: &'a LineIndex,
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
                _ => self.unknown_key("interface", key, INTERFACE_KEYS),
            }
        }
        d
    }

    fn peer(&mut self, table: &DeTable<'_>, index: usize, line: Option<usize>) -> PeerDraft {
        let mut d = PeerDraft {
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
