//! The format-neutral middle of the config layer: both front ends (TOML and wg-quick) turn their
//! text into a [`Draft`] of located raw values, and [`compile`] checks every rule on it and
//! builds the [`Config`], reporting every problem it finds rather than stopping at the first.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::error::{ConfigErrors, Diagnostics};
use super::net::{EndpointSpec, InterfaceAddress, Prefix, check_interface_name};
use super::{Config, InterfaceConfig, MAX_MTU, MIN_MTU, MetricsConfig, PeerConfig, Table};
use crate::proto::keys::{KeyError, PresharedKey, PrivateKey, PublicKey};

/// A raw value with where it came from: its 1-based line and its key path as the user's file
/// spells it (`peer[2].allowed_ips` or `Peer[2].AllowedIPs`).
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub value: T,
    pub line: Option<usize>,
    pub key: String,
}

/// Which file format a draft came from: decides how key paths of absent keys are spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Toml,
    WgQuick,
}

impl Dialect {
    pub(crate) fn interface_section(self) -> &'static str {
        match self {
            Dialect::Toml => "interface",
            Dialect::WgQuick => "Interface",
        }
    }

    pub(crate) fn peer_section(self, index: usize) -> String {
        match self {
            Dialect::Toml => format!("peer[{index}]"),
            Dialect::WgQuick => format!("Peer[{index}]"),
        }
    }

    /// The spelling of a field (named by its TOML key) in this dialect.
    fn field(self, toml_name: &'static str) -> &'static str {
        if self == Dialect::Toml {
            return toml_name;
        }
        match toml_name {
            "name" => "Name",
            "private_key" => "PrivateKey",
            "listen_port" => "ListenPort",
            "address" => "Address",
            "mtu" => "MTU",
            "fwmark" => "FwMark",
            "table" => "Table",
            "public_key" => "PublicKey",
            "preshared_key" => "PresharedKey",
            "endpoint" => "Endpoint",
            "allowed_ips" => "AllowedIPs",
            "persistent_keepalive" => "PersistentKeepalive",
            other => other,
        }
    }

    fn interface_key(self, toml_name: &'static str) -> String {
        format!("{}.{}", self.interface_section(), self.field(toml_name))
    }

    fn peer_key(self, index: usize, toml_name: &'static str) -> String {
        format!("{}.{}", self.peer_section(index), self.field(toml_name))
    }
}

#[derive(Debug, Default)]
pub(crate) struct InterfaceDraft {
    /// Line of the section header.
    pub line: Option<usize>,
    pub name: Option<At<String>>,
    pub private_key: Option<At<String>>,
    pub private_key_file: Option<At<String>>,
    pub listen_port: Option<At<i128>>,
    pub addresses: Vec<At<String>>,
    pub mtu: Option<At<i128>>,
    pub fwmark: Option<At<i128>>,
    pub table: Option<At<String>>,
    pub offload: Option<At<bool>>,
    /// DNS server addresses (TOML `dns`; wg-quick `DNS` entries that parse as addresses).
    pub dns: Vec<At<String>>,
    /// Search domains (TOML `dns_search`; the other wg-quick `DNS` entries).
    pub dns_search: Vec<At<String>>,
    pub pre_up: Vec<At<String>>,
    pub post_up: Vec<At<String>>,
    pub pre_down: Vec<At<String>>,
    pub post_down: Vec<At<String>>,
    /// `include` patterns (TOML only); expanded by the front end, kept for writing back.
    pub include: Vec<At<String>>,
}

#[derive(Debug, Default)]
pub(crate) struct PeerDraft {
    /// The included file this peer is written in; `None`: the configuration file itself.
    pub file: Option<PathBuf>,
    /// Line of the section header.
    pub line: Option<usize>,
    /// 1-based position among the peers of its file (`peer[N]` in messages).
    pub index: usize,
    pub name: Option<At<String>>,
    pub public_key: Option<At<String>>,
    pub preshared_key: Option<At<String>>,
    pub preshared_key_file: Option<At<String>>,
    pub endpoint: Option<At<String>>,
    pub allowed_ips: Vec<At<String>>,
    pub persistent_keepalive: Option<At<i128>>,
}

#[derive(Debug)]
pub(crate) struct Draft {
    pub dialect: Dialect,
    /// `None` when the file has no interface section at all.
    pub interface: Option<InterfaceDraft>,
    pub peers: Vec<PeerDraft>,
    /// `[metrics]` (TOML only).
    pub metrics: Option<MetricsDraft>,
    /// The peer files read for `include`, in order.
    pub included: Vec<PathBuf>,
}

#[derive(Debug, Default)]
pub(crate) struct MetricsDraft {
    /// Line of the section header.
    pub line: Option<usize>,
    pub listen: Option<At<String>>,
}

/// `[metrics]`: `listen` is required and must be an `address:port` with a non-zero port
/// (a scraper has to know where to look).
fn compile_metrics(diag: &mut Diagnostics, d: &MetricsDraft) -> Option<MetricsConfig> {
    let Some(listen) = &d.listen else {
        diag.missing(
            d.line,
            "metrics.listen",
            "missing: the address to serve metrics on, e.g. \"127.0.0.1:9586\"",
        );
        return None;
    };
    match listen.value.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Some(MetricsConfig { listen: addr }),
        Ok(_) => {
            diag.error(
                listen.line,
                &listen.key,
                "port 0 is not allowed here: a scraper needs a fixed port",
            );
            None
        }
        Err(_) => {
            diag.error(
                listen.line,
                &listen.key,
                format!(
                    "\"{}\" is not an address and port (\"127.0.0.1:9586\", \"[::1]:9586\")",
                    listen.value
                ),
            );
            None
        }
    }
}

fn key_message(e: &KeyError) -> String {
    match e {
        KeyError::Base64 => {
            "not valid base64 (a key is 44 characters, as `wg genkey` prints)".into()
        }
        other => other.to_string(),
    }
}

/// Where a peer (or one of its values) was first seen, for messages about a later one.
#[derive(Debug, Clone)]
struct Seen {
    /// Position among all peers, included files too: tells "the same peer" apart.
    ordinal: usize,
    /// `peer[N]` within its file.
    index: usize,
    name: Option<String>,
    file: PathBuf,
    line: Option<usize>,
}

/// How a peer is named in messages about another peer: `peer[1] "site-b" (line 12)`, or
/// `peer[1] "site-b" (peers.d/b.toml:3)` when it is in another file than the message.
fn describe_peer(diag: &Diagnostics, dialect: Dialect, seen: &Seen, with_name: bool) -> String {
    let mut s = dialect.peer_section(seen.index);
    if let (true, Some(name)) = (with_name, &seen.name) {
        s.push_str(&format!(" \"{name}\""));
    }
    if let Some(place) = diag.place(&seen.file, seen.line) {
        s.push_str(&format!(" ({place})"));
    }
    s
}

/// Reads a key file named in the config: relative paths are taken from the config file's
/// directory. Permissions that let group or others in are a warning.
fn read_key_file(diag: &mut Diagnostics, at: &At<String>) -> Option<(String, PathBuf)> {
    if at.value.trim().is_empty() {
        diag.error(at.line, &at.key, "empty path");
        return None;
    }
    let written = Path::new(&at.value);
    let joined = match diag.file().parent() {
        Some(dir) if written.is_relative() => dir.join(written),
        _ => written.to_path_buf(),
    };
    let path = std::path::absolute(&joined).unwrap_or(joined);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            diag.error(
                at.line,
                &at.key,
                format!("cannot read key file {}: {e}", path.display()),
            );
            return None;
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(&path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                diag.warn(
                    at.line,
                    &at.key,
                    format!(
                        "key file {} is accessible by group or others (mode {mode:03o}); \
                         run chmod 600 on it",
                        path.display()
                    ),
                );
            }
        }
    }
    Some((text, path))
}

/// The result of a key given inline or in a file (exactly one of the two).
enum KeySource<K> {
    /// Neither was given; the caller decides whether that is an error.
    Absent,
    /// An error was reported (both given, bad base64, unreadable file).
    Invalid,
    /// The key, and the file it came from when it came from one.
    Found(K, Option<PathBuf>),
}

/// Decodes the key of `inline` or `file`, reporting "give either X or Y, not both" with
/// `inline_name` (the inline key's name in the file's dialect) when both are there.
fn key_or_file<K>(
    diag: &mut Diagnostics,
    inline: &Option<At<String>>,
    file: &Option<At<String>>,
    inline_name: String,
    decode: fn(&str) -> Result<K, KeyError>,
) -> KeySource<K> {
    match (inline, file) {
        (Some(_), Some(file)) => {
            diag.error(
                file.line,
                &file.key,
                format!("give either {inline_name} or {}, not both", file.key),
            );
            KeySource::Invalid
        }
        (None, None) => KeySource::Absent,
        (Some(at), None) => match decode_inline_key(diag, at, decode) {
            Some(k) => KeySource::Found(k, None),
            None => KeySource::Invalid,
        },
        (None, Some(at)) => match decode_file_key(diag, at, decode) {
            Some((k, path)) => KeySource::Found(k, Some(path)),
            None => KeySource::Invalid,
        },
    }
}

fn decode_file_key<K>(
    diag: &mut Diagnostics,
    at: &At<String>,
    decode: fn(&str) -> Result<K, KeyError>,
) -> Option<(K, PathBuf)> {
    let (text, path) = read_key_file(diag, at)?;
    match decode(text.trim()) {
        Ok(k) => Some((k, path)),
        Err(e) => {
            diag.error(
                at.line,
                &at.key,
                format!("key file {}: {}", path.display(), key_message(&e)),
            );
            None
        }
    }
}

fn decode_inline_key<K>(
    diag: &mut Diagnostics,
    at: &At<String>,
    decode: fn(&str) -> Result<K, KeyError>,
) -> Option<K> {
    match decode(&at.value) {
        Ok(k) => Some(k),
        Err(e) => {
            diag.error(at.line, &at.key, key_message(&e));
            None
        }
    }
}

/// An integer that must lie in `lo..=hi`.
fn ranged(diag: &mut Diagnostics, at: &At<i128>, lo: i128, hi: i128, what: &str) -> Option<i128> {
    if (lo..=hi).contains(&at.value) {
        Some(at.value)
    } else {
        diag.error(
            at.line,
            &at.key,
            format!("{} is out of range for {what} ({lo}..={hi})", at.value),
        );
        None
    }
}

pub(crate) fn parse_table(text: &str) -> Result<Table, String> {
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        "auto" => return Ok(Table::Auto),
        "off" => return Ok(Table::Off),
        _ => {}
    }
    match t.parse::<u32>() {
        // Table 0 is RT_TABLE_UNSPEC: the kernel would silently use main instead.
        Ok(0) => {
            Err("table 0 is not a routing table (use \"auto\", \"off\" or 1..=4294967295)".into())
        }
        Ok(id) => Ok(Table::Id(id)),
        Err(_) => Err(format!(
            "\"{t}\" is not \"auto\", \"off\" or a table number (1..=4294967295)"
        )),
    }
}

/// Turns a draft into a checked [`Config`], or every error found.
pub(crate) fn compile(draft: Draft, mut diag: Diagnostics) -> Result<Config, ConfigErrors> {
    let dialect = draft.dialect;
    let source = diag.main_file().to_path_buf();
    diag.set_file(&source);

    let interface = match &draft.interface {
        Some(iface) => compile_interface(&mut diag, dialect, iface),
        None => {
            diag.missing(
                None,
                dialect.interface_section(),
                format!("missing [{}] section", dialect.interface_section()),
            );
            None
        }
    };
    let own_public = interface
        .as_ref()
        .and_then(|i| i.private_key.as_ref().map(PrivateKey::public_key));

    let mut peers = Vec::with_capacity(draft.peers.len());
    let mut seen = SeenPeers::default();
    for (ordinal, p) in draft.peers.iter().enumerate() {
        // Messages about a peer go to the file it is written in.
        diag.set_file(p.file.as_deref().unwrap_or(&source));
        let peer = compile_peer(
            &mut diag,
            dialect,
            p,
            ordinal,
            own_public.as_ref(),
            &mut seen,
        );
        peers.push(peer);
    }
    diag.set_file(&source);

    let metrics = draft
        .metrics
        .as_ref()
        .map(|m| compile_metrics(&mut diag, m));

    let warnings = diag.finish()?;
    // No errors were reported, so every part compiled; a `None` here would be a bug in this
    // module, reported rather than panicking.
    let (Some(interface), Some(peers)) = (
        interface.and_then(PartialInterface::complete),
        peers.into_iter().collect::<Option<Vec<_>>>(),
    ) else {
        return Err(ConfigErrors(vec![super::ConfigError {
            file: source,
            line: None,
            key: String::new(),
            message: "internal error: configuration incomplete without a reported error".into(),
        }]));
    };
    Ok(Config {
        interface,
        peers,
        // Without errors, a [metrics] table compiled.
        metrics: metrics.flatten(),
        warnings,
        source,
        included: draft.included,
    })
}

/// Interface values as far as they compiled; `complete` succeeds only if all did.
struct PartialInterface {
    name: Option<String>,
    private_key: Option<PrivateKey>,
    private_key_file: Option<PathBuf>,
    listen_port: Option<Option<u16>>,
    addresses: Option<Vec<InterfaceAddress>>,
    mtu: Option<Option<u16>>,
    fwmark: Option<u32>,
    table: Option<Table>,
    offload: bool,
    dns: Option<Vec<std::net::IpAddr>>,
    dns_search: Option<Vec<String>>,
    hooks: Option<super::Hooks>,
    include: Vec<String>,
}

impl PartialInterface {
    fn complete(self) -> Option<InterfaceConfig> {
        Some(InterfaceConfig {
            name: self.name?,
            private_key: self.private_key?,
            private_key_file: self.private_key_file,
            listen_port: self.listen_port?,
            addresses: self.addresses?,
            mtu: self.mtu?,
            fwmark: self.fwmark?,
            table: self.table?,
            offload: self.offload,
            dns: self.dns?,
            dns_search: self.dns_search?,
            hooks: self.hooks?,
            include: self.include,
        })
    }
}

fn compile_interface(
    diag: &mut Diagnostics,
    dialect: Dialect,
    d: &InterfaceDraft,
) -> Option<PartialInterface> {
    let name = match &d.name {
        Some(at) => match check_interface_name(&at.value) {
            Ok(()) => Some(at.value.clone()),
            Err(e) => {
                diag.error(at.line, &at.key, e.to_string());
                None
            }
        },
        None => {
            let stem = diag
                .file()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match check_interface_name(&stem) {
                Ok(()) => Some(stem),
                Err(e) => {
                    diag.missing(
                        d.line,
                        dialect.interface_key("name"),
                        format!("no name given, and the file name stem is unusable: {e}"),
                    );
                    None
                }
            }
        }
    };

    let mut private_key_file = None;
    let private_key = match key_or_file(
        diag,
        &d.private_key,
        &d.private_key_file,
        dialect.interface_key("private_key"),
        PrivateKey::from_base64,
    ) {
        KeySource::Absent => {
            let what = match dialect {
                Dialect::Toml => "missing private_key (or private_key_file)",
                Dialect::WgQuick => "missing PrivateKey",
            };
            diag.missing(d.line, dialect.interface_key("private_key"), what);
            None
        }
        KeySource::Invalid => None,
        KeySource::Found(k, path) => {
            private_key_file = path;
            Some(k)
        }
    };
    let private_key = private_key.and_then(|k| {
        if k.is_zero() {
            let (line, key) = d
                .private_key
                .as_ref()
                .or(d.private_key_file.as_ref())
                .map(|at| (at.line, at.key.clone()))
                .unwrap_or((d.line, dialect.interface_key("private_key")));
            diag.error(line, key, "the private key is all zeros");
            None
        } else {
            Some(k)
        }
    });

    let listen_port = match &d.listen_port {
        // 0 asks for a random port, the same as leaving the key out.
        Some(at) => ranged(diag, at, 0, 65535, "a UDP port")
            .map(|p| u16::try_from(p).ok().filter(|&p| p != 0)),
        None => Some(None),
    };

    let mut addresses = Some(Vec::with_capacity(d.addresses.len()));
    let mut seen_addrs: HashMap<InterfaceAddress, Option<usize>> = HashMap::new();
    for at in &d.addresses {
        match at.value.parse::<InterfaceAddress>() {
            Ok(a) => {
                if let Some(first) = seen_addrs.get(&a) {
                    let first = first.map(|l| format!(" (line {l})")).unwrap_or_default();
                    diag.error(at.line, &at.key, format!("{a} is listed twice{first}"));
                    addresses = None;
                } else {
                    seen_addrs.insert(a, at.line);
                    if let Some(v) = addresses.as_mut() {
                        v.push(a);
                    }
                }
            }
            Err(e) => {
                diag.error(at.line, &at.key, e.to_string());
                addresses = None;
            }
        }
    }

    let mtu = match &d.mtu {
        Some(at) => ranged(
            diag,
            at,
            i128::from(MIN_MTU),
            i128::from(MAX_MTU),
            "the MTU",
        )
        .and_then(|m| u16::try_from(m).ok())
        .map(Some),
        // Automatic: the daemon derives it from the path to the endpoints.
        None => Some(None),
    };
    let fwmark = match &d.fwmark {
        Some(at) => ranged(diag, at, 0, i128::from(u32::MAX), "a firewall mark")
            .and_then(|m| u32::try_from(m).ok()),
        None => Some(0),
    };
    let table = match &d.table {
        Some(at) => match parse_table(&at.value) {
            Ok(t) => Some(t),
            Err(msg) => {
                diag.error(at.line, &at.key, msg);
                None
            }
        },
        None => Some(Table::Auto),
    };
    let offload = d.offload.as_ref().is_none_or(|at| at.value);
    let (dns, dns_search) = compile_dns(diag, d);
    let hooks = compile_hooks(diag, d);

    Some(PartialInterface {
        name,
        private_key,
        private_key_file,
        listen_port,
        addresses,
        mtu,
        fwmark,
        table,
        offload,
        dns,
        dns_search,
        hooks,
        include: d.include.iter().map(|at| at.value.clone()).collect(),
    })
}

/// DNS servers must be addresses, search domains DNS names (`~.`-style routing domains
/// included, as systemd-resolved takes them). Each mistake is reported on its own line.
fn compile_dns(
    diag: &mut Diagnostics,
    d: &InterfaceDraft,
) -> (Option<Vec<std::net::IpAddr>>, Option<Vec<String>>) {
    let mut ok = true;
    let mut servers = Vec::with_capacity(d.dns.len());
    for at in &d.dns {
        match at.value.parse::<std::net::IpAddr>() {
            Ok(a) => servers.push(a),
            Err(_) => {
                ok = false;
                diag.error(
                    at.line,
                    &at.key,
                    format!("\"{}\" is not an IPv4 or IPv6 address", at.value),
                );
            }
        }
    }
    let mut domains = Vec::with_capacity(d.dns_search.len());
    for at in &d.dns_search {
        let name = at.value.strip_prefix('~').unwrap_or(&at.value);
        if name == "." || super::is_dns_name(name) {
            domains.push(at.value.clone());
        } else {
            ok = false;
            diag.error(
                at.line,
                &at.key,
                format!("\"{}\" is neither an address nor a domain name", at.value),
            );
        }
    }
    if ok {
        (Some(servers), Some(domains))
    } else {
        (None, None)
    }
}

/// Hook commands: any non-empty text without NUL (the shell reads it).
fn compile_hooks(diag: &mut Diagnostics, d: &InterfaceDraft) -> Option<super::Hooks> {
    let mut ok = true;
    let mut take = |list: &[At<String>]| -> Vec<String> {
        list.iter()
            .filter_map(|at| {
                if at.value.trim().is_empty() || at.value.contains('\0') {
                    ok = false;
                    diag.error(at.line, &at.key, "a hook command must be non-empty text");
                    None
                } else {
                    Some(at.value.clone())
                }
            })
            .collect()
    };
    let hooks = super::Hooks {
        pre_up: take(&d.pre_up),
        post_up: take(&d.post_up),
        pre_down: take(&d.pre_down),
        post_down: take(&d.post_down),
    };
    ok.then_some(hooks)
}

/// What the peers compiled so far claimed: public keys, allowed IPs and names.
#[derive(Default)]
struct SeenPeers {
    keys: HashMap<PublicKey, Seen>,
    /// Each prefix with the line of that value (not of the peer's header).
    prefixes: BTreeMap<Prefix, Seen>,
    names: HashMap<String, Seen>,
}

fn compile_peer(
    diag: &mut Diagnostics,
    dialect: Dialect,
    d: &PeerDraft,
    ordinal: usize,
    own_public: Option<&PublicKey>,
    seen: &mut SeenPeers,
) -> Option<PeerConfig> {
    let mut ok = true;
    let file = diag.file().to_path_buf();
    let here = |name: Option<String>, line: Option<usize>| Seen {
        ordinal,
        index: d.index,
        name,
        file: file.clone(),
        line,
    };

    let name = match &d.name {
        Some(at) if at.value.is_empty() || at.value.chars().any(char::is_control) => {
            diag.error(
                at.line,
                &at.key,
                "a peer name must be non-empty and free of control characters",
            );
            ok = false;
            None
        }
        Some(at) => {
            match seen.names.get(&at.value) {
                // Within one file a repeated name is only a label used twice; across peer
                // files it is an error, since `tandem peer remove NAME` must find one file.
                Some(first) if first.file != file => {
                    let other = describe_peer(diag, dialect, first, false);
                    diag.error(
                        at.line,
                        &at.key,
                        format!(
                            "\"{}\" is also the name of {other}; names must be unique \
                             across included files",
                            at.value
                        ),
                    );
                    ok = false;
                }
                Some(first) => {
                    let other = describe_peer(diag, dialect, first, false);
                    diag.warn(
                        at.line,
                        &at.key,
                        format!("\"{}\" is also the name of {other}", at.value),
                    );
                }
                None => {
                    seen.names.insert(at.value.clone(), here(None, at.line));
                }
            }
            Some(at.value.clone())
        }
        None => None,
    };

    let public_key = match &d.public_key {
        Some(at) => match decode_inline_key(diag, at, PublicKey::from_base64) {
            Some(pk) => {
                if own_public.is_some_and(|own| own.ct_eq(&pk)) {
                    diag.error(
                        at.line,
                        &at.key,
                        "this is the interface's own public key; a peer must be another host",
                    );
                    ok = false;
                }
                if let Some(first) = seen.keys.get(&pk) {
                    let other = describe_peer(diag, dialect, first, true);
                    diag.error(
                        at.line,
                        &at.key,
                        format!("duplicate peer: {other} has the same public key"),
                    );
                    ok = false;
                } else {
                    seen.keys.insert(pk, here(name.clone(), at.line));
                }
                Some(pk)
            }
            None => None,
        },
        None => {
            diag.missing(
                d.line,
                dialect.peer_key(d.index, "public_key"),
                "missing public key",
            );
            None
        }
    };

    let mut preshared_key_file = None;
    let preshared_key = match key_or_file(
        diag,
        &d.preshared_key,
        &d.preshared_key_file,
        dialect.peer_key(d.index, "preshared_key"),
        PresharedKey::from_base64,
    ) {
        KeySource::Absent => None,
        KeySource::Invalid => {
            ok = false;
            None
        }
        KeySource::Found(k, path) => {
            preshared_key_file = path;
            Some(k)
        }
    };

    let endpoint = match &d.endpoint {
        Some(at) => match at.value.parse::<EndpointSpec>() {
            Ok(e) => Some(e),
            Err(e) => {
                diag.error(at.line, &at.key, e.to_string());
                ok = false;
                None
            }
        },
        None => None,
    };

    let mut allowed_ips = Vec::with_capacity(d.allowed_ips.len());
    for at in &d.allowed_ips {
        let cidr = match at.value.parse::<Prefix>() {
            Ok(c) => c,
            Err(e) => {
                diag.error(at.line, &at.key, e.to_string());
                ok = false;
                continue;
            }
        };
        if cidr.has_host_bits() {
            diag.error(
                at.line,
                &at.key,
                format!(
                    "{cidr} has host bits set beyond the /{} prefix (did you mean {}?)",
                    cidr.len(),
                    cidr.network()
                ),
            );
            ok = false;
            continue;
        }
        match seen.prefixes.get(&cidr) {
            Some(first) if first.ordinal == ordinal => {
                let first = first
                    .line
                    .map(|l| format!(" (line {l})"))
                    .unwrap_or_default();
                diag.warn(at.line, &at.key, format!("{cidr} is listed twice{first}"));
            }
            Some(first) => {
                let other = describe_peer(diag, dialect, first, true);
                let this = describe_peer(diag, dialect, &here(name.clone(), None), true);
                diag.error(
                    at.line,
                    &at.key,
                    format!(
                        "{cidr} is also in the allowed IPs of {other}; a prefix can route to \
                         one peer only, {this} here"
                    ),
                );
                ok = false;
            }
            None => {
                seen.prefixes.insert(cidr, here(name.clone(), at.line));
                allowed_ips.push(cidr);
            }
        }
    }
    if d.allowed_ips.is_empty() {
        diag.warn(
            d.line,
            dialect.peer_key(d.index, "allowed_ips"),
            "no allowed IPs: no traffic will be sent to or accepted from this peer",
        );
    }

    let persistent_keepalive = match &d.persistent_keepalive {
        Some(at) => match ranged(diag, at, 0, 65535, "a keepalive interval in seconds") {
            // 0 turns keepalives off, the same as leaving the key out.
            Some(s) => u16::try_from(s).ok().filter(|&s| s != 0),
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };

    let public_key = public_key?;
    ok.then_some(PeerConfig {
        file: d.file.clone(),
        name,
        public_key,
        preshared_key,
        preshared_key_file,
        endpoint,
        allowed_ips,
        persistent_keepalive,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{TempFile, assert_error, error_for, file, private, public};
    use crate::config::{ConfigErrors, parse_toml};
    use crate::proto::keys::PresharedKey;

    fn doc(lines: &[&str]) -> String {
        lines.join("\n")
    }

    fn iface(extra: &[&str]) -> Vec<String> {
        let mut v = vec![
            "[interface]".to_owned(),
            format!("private_key = \"{}\"", private(1)),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn errors(lines: &[String]) -> ConfigErrors {
        let text = lines.join("\n");
        match parse_toml(file("/etc/tandem/tnd0.toml"), &text) {
            Ok(c) => panic!("expected errors, got a config: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn malformed_and_wrong_length_keys() {
        let lines = iface(&[
            "[[peer]]",                                                                  // 3
            "public_key = \"AAAA\"",                                                     // 4
            "preshared_key = \"not base64!\"",                                           // 5
            "allowed_ips = [\"10.0.0.2/32\"]",                                           // 6
            "[[peer]]",                                                                  // 7
            "public_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"", // 8
        ]);
        let e = errors(&lines);
        assert_error(
            &e,
            "peer[1].public_key",
            4,
            "decodes to 3 bytes, a key is 32",
        );
        assert_error(&e, "peer[1].preshared_key", 5, "not valid base64");
        assert_error(
            &e,
            "peer[2].public_key",
            8,
            "decodes to 42 bytes, a key is 32",
        );

        let bad_private = doc(&["[interface]", "private_key = \"AAAA\""]);
        let e = parse_toml(file("x.toml"), &bad_private).unwrap_err();
        assert_error(
            &e,
            "interface.private_key",
            2,
            "decodes to 3 bytes, a key is 32",
        );
        // The secret itself never appears in a message.
        let secret = private(9);
        let e = parse_toml(
            file("x.toml"),
            &format!("[interface]\nprivate_key = \"{}x\"", secret),
        )
        .unwrap_err();
        assert!(!e.to_string().contains(&secret), "{e}");
    }

    #[test]
    fn private_key_both_or_neither() {
        let both = iface(&["private_key_file = \"/nonexistent/k\""]);
        let e = errors(&both);
        assert_error(&e, "interface.private_key_file", 3, "not both");
        assert_eq!(e.len(), 1, "{e}");

        let neither = vec!["[interface]".to_owned(), "mtu = 1420".to_owned()];
        let e = errors(&neither);
        assert_error(&e, "interface.private_key", 1, "missing private_key");

        let nothing = errors(&[String::new()]);
        assert_eq!(error_for(&nothing, "interface").line, None);
        assert!(nothing.0[0].message.contains("missing [interface]"));
    }

    #[test]
    fn key_files_are_read_and_checked() {
        let key = TempFile::new("priv.key", &format!("{}\n", private(3)), 0o600);
        let psk_text = PresharedKey::from_bytes([5; 32]).to_base64();
        let psk = TempFile::new("peer.psk", &psk_text, 0o600);
        let text = doc(&[
            "[interface]",
            &format!("private_key_file = \"{}\"", key.path.display()),
            "[[peer]]",
            &format!("public_key = \"{}\"", public(2)),
            &format!("preshared_key_file = \"{}\"", psk.path.display()),
            "allowed_ips = [\"10.0.0.2/32\"]",
        ]);
        let c = parse_toml(file("k.toml"), &text).unwrap();
        assert_eq!(c.interface.private_key.to_base64(), private(3));
        assert_eq!(
            c.interface.private_key_file.as_deref(),
            Some(key.path.as_path())
        );
        assert_eq!(
            c.peers[0].preshared_key,
            Some(PresharedKey::from_bytes([5; 32]))
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn key_file_relative_to_config_dir() {
        let key = TempFile::new("rel.key", &private(4), 0o600);
        let name = key.path.file_name().unwrap().to_string_lossy().into_owned();
        let config_path = std::env::temp_dir().join("tnd-rel.toml");
        let text = format!("[interface]\nprivate_key_file = \"{name}\"\n");
        let c = parse_toml(&config_path, &text).unwrap();
        assert_eq!(c.interface.private_key.to_base64(), private(4));
    }

    #[test]
    fn readable_key_file_is_a_warning() {
        let key = TempFile::new("open.key", &private(3), 0o644);
        let text = doc(&[
            "[interface]",
            &format!("private_key_file = \"{}\"", key.path.display()),
        ]);
        let c = parse_toml(file("w.toml"), &text).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        assert_eq!(
            (w.line, w.key.as_str()),
            (Some(2), "interface.private_key_file")
        );
        assert!(w.message.contains("mode 644"), "{w}");
        assert!(w.message.contains(&key.path.display().to_string()), "{w}");
        assert!(
            w.to_string()
                .starts_with("warning: w.toml:2: interface.private_key_file: ")
        );
    }

    #[test]
    fn unreadable_or_bad_key_file_is_an_error() {
        let missing = std::env::temp_dir().join(format!(
            "tandem-config-test-{}-does-not-exist.key",
            std::process::id()
        ));
        let text = doc(&[
            "[interface]",
            &format!("private_key_file = \"{}\"", missing.display()),
        ]);
        let e = parse_toml(file("r.toml"), &text).unwrap_err();
        let err = error_for(&e, "interface.private_key_file");
        assert_eq!(err.line, Some(2));
        assert!(
            err.message.contains(&missing.display().to_string()),
            "{err}"
        );
        assert!(err.message.contains("No such file"), "{err}");

        let short = TempFile::new("short.key", "AAAA\n", 0o600);
        let text = doc(&[
            "[interface]",
            &format!("private_key_file = \"{}\"", short.path.display()),
        ]);
        let e = parse_toml(file("r.toml"), &text).unwrap_err();
        assert_error(
            &e,
            "interface.private_key_file",
            2,
            "decodes to 3 bytes, a key is 32",
        );
    }

    #[test]
    fn duplicate_peer_and_own_key() {
        let lines = iface(&[
            "[[peer]]",                                 // 3
            "name = \"b\"",                             // 4
            &format!("public_key = \"{}\"", public(2)), // 5
            "allowed_ips = [\"10.0.0.2/32\"]",          // 6
            "[[peer]]",                                 // 7
            &format!("public_key = \"{}\"", public(2)), // 8
            "allowed_ips = [\"10.0.0.3/32\"]",          // 9
            "[[peer]]",                                 // 10
            &format!("public_key = \"{}\"", public(1)), // 11: our own
            "allowed_ips = [\"10.0.0.4/32\"]",          // 12
        ]);
        let e = errors(&lines);
        assert_error(
            &e,
            "peer[2].public_key",
            8,
            "duplicate peer: peer[1] \"b\" (line 5)",
        );
        assert_error(&e, "peer[3].public_key", 11, "own public key");
        assert_eq!(e.len(), 2, "{e}");
    }

    #[test]
    fn prefixes_host_bits_range_and_sharing() {
        let lines = iface(&[
            "[[peer]]",                                                                          // 3
            "name = \"first\"",                               // 4
            &format!("public_key = \"{}\"", public(2)),       // 5
            "allowed_ips = [\"10.1.0.0/16\", \"fd00::/64\"]", // 6
            "[[peer]]",                                       // 7
            "name = \"second\"",                              // 8
            &format!("public_key = \"{}\"", public(3)),       // 9
            "allowed_ips = [\"10.1.0.0/16\", \"10.2.0.1/16\", \"fd00::/129\", \"10.3.0.0/8x\"]", // 10
        ]);
        let e = errors(&lines);
        let shared = e
            .iter()
            .find(|e| e.key == "peer[2].allowed_ips" && e.message.contains("10.1.0.0/16"))
            .unwrap_or_else(|| panic!("{e}"));
        assert_eq!(shared.line, Some(10));
        // Both peers are named.
        assert!(
            shared.message.contains("peer[1] \"first\" (line 6)"),
            "{shared}"
        );
        assert!(shared.message.contains("peer[2] \"second\""), "{shared}");
        assert_error(
            &e,
            "peer[2].allowed_ips",
            10,
            "10.2.0.1/16 has host bits set",
        );
        assert_error(
            &e,
            "peer[2].allowed_ips",
            10,
            "prefix length 129 is out of range for IPv6 (0..=128)",
        );
        assert_error(
            &e,
            "peer[2].allowed_ips",
            10,
            "\"8x\" is not a prefix length",
        );
        assert_eq!(e.len(), 4, "{e}");
    }

    #[test]
    fn same_prefix_twice_in_one_peer_is_a_warning() {
        let text = doc(&[
            "[interface]",
            &format!("private_key = \"{}\"", private(1)),
            "[[peer]]",
            &format!("public_key = \"{}\"", public(2)),
            "allowed_ips = [\"10.0.0.0/24\", \"10.0.0.0/24\"]",
        ]);
        let c = parse_toml(file("d.toml"), &text).unwrap();
        assert_eq!(c.peers[0].allowed_ips.len(), 1);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].message.contains("listed twice"));
    }

    #[test]
    fn endpoints_ports_and_ranges() {
        let lines = iface(&[
            "listen_port = 70000",                      // 3
            "mtu = 1279",                               // 4
            "fwmark = -1",                              // 5
            "[[peer]]",                                 // 6
            &format!("public_key = \"{}\"", public(2)), // 7
            "endpoint = \"198.51.100.7:0\"",            // 8
            "allowed_ips = []",                         // 9
            "persistent_keepalive = 65536",             // 10
            "[[peer]]",                                 // 11
            &format!("public_key = \"{}\"", public(3)), // 12
            "endpoint = \"2001:db8::1:51820\"",         // 13
            "[[peer]]",                                 // 14
            &format!("public_key = \"{}\"", public(4)), // 15
            "endpoint = \"198.51.100.7\"",              // 16
        ]);
        let e = errors(&lines);
        assert_error(&e, "interface.listen_port", 3, "70000 is out of range");
        assert_error(
            &e,
            "interface.mtu",
            4,
            "1279 is out of range for the MTU (1280..=65535)",
        );
        assert_error(&e, "interface.fwmark", 5, "out of range");
        assert_error(&e, "peer[1].endpoint", 8, "port 0");
        assert_error(&e, "peer[1].persistent_keepalive", 10, "out of range");
        assert_error(&e, "peer[2].endpoint", 13, "needs brackets");
        assert_error(&e, "peer[3].endpoint", 16, "has no port");
        assert_eq!(e.len(), 7, "{e}");
    }

    #[test]
    fn zero_port_and_keepalive_mean_off() {
        let text = doc(&[
            "[interface]",
            &format!("private_key = \"{}\"", private(1)),
            "listen_port = 0",
            "[[peer]]",
            &format!("public_key = \"{}\"", public(2)),
            "allowed_ips = [\"10.0.0.2/32\"]",
            "persistent_keepalive = 0",
        ]);
        let c = parse_toml(file("z.toml"), &text).unwrap();
        assert_eq!(c.interface.listen_port, None);
        assert_eq!(c.peers[0].persistent_keepalive, None);
    }

    #[test]
    fn interface_names() {
        let e = errors(&iface(&["name = \"this-name-is-too-long\""]));
        assert_error(&e, "interface.name", 3, "not a valid interface name");
        let e = errors(&iface(&["name = \"wg 0\""]));
        assert_error(&e, "interface.name", 3, "not a valid interface name");
        // No name, and the file stem cannot be one.
        let text = format!("[interface]\nprivate_key = \"{}\"\n", private(1));
        let e = parse_toml(file("/etc/tandem/my tunnel.toml"), &text).unwrap_err();
        let err = error_for(&e, "interface.name");
        assert!(err.message.contains("file name stem"), "{err}");
        assert!(err.message.contains("my tunnel"), "{err}");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let lines = vec![
            "[interface]".to_owned(),                       // 1
            "name = \"way-too-long-interface\"".to_owned(), // 2
            "private_key = \"AAAA\"".to_owned(),            // 3
            "mtu = 100".to_owned(),                         // 4
            "address = [\"10.0.0.1/40\"]".to_owned(),       // 5
            "tabel = \"off\"".to_owned(),                   // 6
            "[[peer]]".to_owned(),                          // 7
            "public_key = \"short\"".to_owned(),            // 8
            "endpoint = \"host:0\"".to_owned(),             // 9
            "allowed_ips = [\"10.0.0.1/8\"]".to_owned(),    // 10
            "[[peer]]".to_owned(),                          // 11
            "allowed_ips = [\"10.1.0.0/16\"]".to_owned(),   // 12
        ];
        let e = errors(&lines);
        let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            got,
            [
                (Some(2), "interface.name"),
                (Some(3), "interface.private_key"),
                (Some(4), "interface.mtu"),
                (Some(5), "interface.address"),
                (Some(6), "interface.tabel"),
                (Some(8), "peer[1].public_key"),
                (Some(9), "peer[1].endpoint"),
                (Some(10), "peer[1].allowed_ips"),
                (Some(11), "peer[2].public_key"),
            ],
            "{e}"
        );
        // One line per error, each "FILE:LINE: KEY: MESSAGE".
        let shown = e.to_string();
        assert_eq!(shown.lines().count(), 9);
        assert!(
            shown
                .lines()
                .all(|l| l.starts_with("/etc/tandem/tnd0.toml:")),
            "{shown}"
        );
        assert!(shown.contains("/etc/tandem/tnd0.toml:11: peer[2].public_key: missing public key"));
    }
}
