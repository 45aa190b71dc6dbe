//! The config targets: tandem TOML (`config_toml`) and wg-quick `.conf` (`wg_quick`) text
//! through the parser, the exporters and back, and the daemon's steps after a load (the
//! desired device, the netconf plan, the reconciler on a real `Device`).
//!
//! A TOML config reads files: key files (`private_key_file`) and peer files (`include`
//! globs), relative to its own directory. The config is placed in a sandbox directory (made
//! once, atomically, under the temp dir) that holds key files and peer files for it to
//! find; an input whose strings could reach outside it (an absolute path, `..`, or the
//! recursive glob `**`, which would walk the whole tree) is skipped, so a campaign never
//! reads `/dev/zero` or walks `/proc`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::config::{
    Config, ConfigErrors, EndpointSpec, InterfaceConfig, PeerConfig, parse_toml, parse_wg_quick,
    to_toml, to_wg_quick,
};
use crate::daemon::settings::{self, Resolved};
use crate::proto::{Device, Now};
use crate::reconcile::{self, Snapshot};

use super::{key_pair, psk};

/// Configs with more peers than this are not applied to a device (each new peer costs an
/// X25519 operation; the parser and exporters still see them all).
const MAX_APPLIED_PEERS: usize = 8;

/// The sandbox: `fuzz.toml` / `wg0.conf` are read from here (the files themselves are not
/// written; the text is the fuzz input), with key files and peer files beside them.
pub fn sandbox() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("tandem-fuzz-text-v1");
        if !dir.join("ready").exists() {
            // Built aside and renamed into place, so that parallel fuzz jobs never see it
            // half written; if another process won the race, its copy is as good.
            let tmp = std::env::temp_dir()
                .join(format!("tandem-fuzz-text-v1.{}.tmp", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            build_sandbox(&tmp).expect("building the fuzz sandbox");
            if std::fs::rename(&tmp, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        assert!(dir.join("ready").exists(), "{}: no sandbox", dir.display());
        dir
    })
}

fn build_sandbox(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let write = |name: &str, text: &str, mode: u32| -> std::io::Result<()> {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
    };
    let peer = |seed: usize, ip: &str| {
        format!(
            "[[peer]]\nname = \"p{seed}\"\npublic_key = \"{}\"\nallowed_ips = [\"{ip}\"]\n",
            key_pair(seed).1.to_base64()
        )
    };
    std::fs::create_dir_all(dir.join("sub"))?;
    write("private.key", &key_pair(1).0.to_base64(), 0o600)?;
    write("open.key", &key_pair(2).0.to_base64(), 0o644)?;
    write("psk.key", &format!("{}\n", psk(7).to_base64()), 0o600)?;
    write("bad.key", "not a key\n", 0o600)?;
    write("empty.key", "", 0o600)?;
    write("peers.d/a.toml", &peer(4, "10.1.0.4/32"), 0o644)?;
    write(
        "peers.d/b.toml",
        &(peer(5, "10.1.0.5/32") + &peer(6, "fd01::6/128")),
        0o644,
    )?;
    write(
        "peers.d/psk.toml",
        &format!(
            "{}preshared_key_file = \"../psk.key\"\n",
            peer(3, "10.1.0.3/32")
        ),
        0o644,
    )?;
    write("broken.d/x.toml", "[[peer]\nname = 1\n", 0o644)?;
    write("broken.d/iface.toml", "[interface]\nmtu = 1400\n", 0o644)?;
    write("ready", "", 0o644)
}

/// True when a string in the TOML could name a file outside the sandbox.
fn escapes_sandbox(text: &str) -> bool {
    use toml::de::{DeTable, DeValue};
    fn walk(v: &DeValue<'_>) -> bool {
        match v {
            DeValue::String(s) => s.starts_with('/') || s.contains("..") || s.contains("**"),
            DeValue::Array(items) => items.iter().any(|i| walk(i.get_ref())),
            DeValue::Table(t) => t.values().any(|i| walk(i.get_ref())),
            _ => false,
        }
    }
    let (doc, _) = DeTable::parse_recoverable(text);
    doc.get_ref().values().any(|v| walk(v.get_ref()))
}

/// Every error names the file it is in (the config or a sandbox file) and the line of the
/// problem, within that file; only whole-file problems have no line.
fn assert_located(errors: &ConfigErrors, main: &Path, text: &str) {
    assert!(!errors.is_empty(), "an Err without errors");
    let lines = text.lines().count().max(1) + 1;
    let rendered = errors.to_string();
    assert_eq!(rendered.lines().count(), errors.len(), "one line per error");
    for (shown, e) in rendered.lines().zip(errors) {
        // Sandbox paths have no control characters, so they show as they are.
        assert!(
            shown.starts_with(&e.file.display().to_string()),
            "error does not start with its file: {shown}"
        );
        assert!(
            e.file == main || e.file.starts_with(sandbox()),
            "error in an unexpected file: {shown}"
        );
        assert!(!e.message.starts_with("internal error"), "{shown}");
        match e.line {
            Some(l) => {
                assert!(l >= 1, "line 0: {shown}");
                if e.file == main {
                    assert!(l <= lines, "line past the end ({lines} lines): {shown}");
                }
            }
            None => assert!(
                e.message.starts_with("missing [")
                    || e.message.starts_with("cannot read this included file")
                    || e.key == "syntax",
                "an error without a line: {shown}"
            ),
        }
    }
}

/// The parts of a config a rewrite must keep.
fn essence(
    c: &Config,
) -> (
    &InterfaceConfig,
    &[PeerConfig],
    &Option<crate::config::MetricsConfig>,
    &[PathBuf],
) {
    (&c.interface, &c.peers, &c.metrics, &c.included)
}

/// What survives `tandem export` to wg-quick and back: key files become inline keys,
/// included peers become the file's own, `offload`, `include` and `[metrics]` are left out,
/// and a peer name with a line break is dropped (with a warning). wg-quick trims every value,
/// so hook commands and names lose leading and trailing white space (which `sh -c` ignores).
fn wg_quick_form(c: &Config) -> (InterfaceConfig, Vec<PeerConfig>) {
    let mut interface = c.interface.clone();
    interface.private_key_file = None;
    interface.offload = true;
    interface.include.clear();
    let hooks = &mut interface.hooks;
    for commands in [
        &mut hooks.pre_up,
        &mut hooks.post_up,
        &mut hooks.pre_down,
        &mut hooks.post_down,
    ] {
        commands.iter_mut().for_each(|c| *c = c.trim().to_owned());
    }
    let peers = c
        .peers
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.file = None;
            p.preshared_key_file = None;
            p.name = p
                .name
                .as_deref()
                .filter(|n| !n.contains(['\n', '\r']))
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned);
            p
        })
        .collect();
    (interface, peers)
}

/// The daemon's steps after a load, with endpoints that are IP literals resolved (names
/// are left unresolved, as when DNS fails): the netconf plan, the desired device, and the
/// reconciler applying it to a fresh `Device`, after which planning again changes nothing.
fn apply_like_the_daemon(config: &Config) {
    let fwmark = config.interface.fwmark;
    let plan = settings::interface_plan(config, &config.interface.name, fwmark);
    assert_eq!(plan.ifname, config.interface.name);
    if config.peers.len() > MAX_APPLIED_PEERS {
        return;
    }
    let resolved = Resolved {
        endpoints: config
            .peers
            .iter()
            .map(|p| p.endpoint.as_ref().and_then(EndpointSpec::literal))
            .collect(),
        config: config.clone(),
    };
    let desired = settings::desired(&resolved, fwmark);
    let mut device = Device::new(None, [3; 32]);
    let now = Now::new(Duration::from_secs(10), Duration::from_secs(1_700_000_000));
    let running = Snapshot::of(&device, 0, 0);
    let plan = reconcile::plan(&running, &desired);
    reconcile::apply_to_device(&mut device, &plan, now);
    let port = desired.listen_port;
    let again = reconcile::plan(&Snapshot::of(&device, port, fwmark), &desired).changes();
    assert!(
        again.is_empty(),
        "a loaded config is not idempotent: {again:?}"
    );
}

/// An accepted config: exported to TOML and to wg-quick, each parses back to the same
/// config (as far as the format can say it), and the daemon can apply it.
fn check_accepted(config: &Config, main: &Path) {
    let toml_text = to_toml(config);
    let again = parse_toml(main, &toml_text)
        .unwrap_or_else(|e| panic!("to_toml output refused:\n{e}\n---\n{toml_text}"));
    assert_eq!(
        essence(&again),
        essence(config),
        "TOML round trip\n{toml_text}"
    );

    if let Ok(export) = to_wg_quick(config) {
        let conf = sandbox().join(format!("{}.conf", config.interface.name));
        let back = parse_wg_quick(&conf, &export.text)
            .unwrap_or_else(|e| panic!("to_wg_quick output refused:\n{e}\n---\n{}", export.text));
        assert_eq!(
            wg_quick_form(&back),
            wg_quick_form(config),
            "wg-quick round trip\n{}",
            export.text
        );
    }
    apply_like_the_daemon(config);
}

/// The small parsers of values that also come from outside, on the input's first lines:
/// `tandem add-peer --address` (`provision::parse_addresses`) and `host:port` endpoints
/// (`EndpointSpec`, which the config parsers use too), whose text form must read back to
/// the same endpoint.
fn small_parsers(text: &str) {
    for line in text.lines().take(4) {
        let _ = crate::provision::parse_addresses(line);
        if let Ok(spec) = line.parse::<EndpointSpec>() {
            let written = spec.to_string();
            let again: EndpointSpec = written
                .parse()
                .unwrap_or_else(|e| panic!("endpoint {line:?} written as {written:?}: {e}"));
            assert_eq!(again, spec, "endpoint {line:?} written as {written:?}");
        }
    }
}

/// `config_toml`: the input (lossily UTF-8) as `fuzz.toml` in the sandbox. Invariants: no
/// panic; a refusal names the file and line of every problem ([`assert_located`]); an
/// accepted config round-trips through `tandem import`'s TOML writer and `tandem export`'s
/// wg-quick writer and applies to a device ([`check_accepted`]).
pub fn fuzz_config_toml(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    if escapes_sandbox(&text) {
        return;
    }
    small_parsers(&text);
    let main = sandbox().join("fuzz.toml");
    match parse_toml(&main, &text) {
        Ok(config) => check_accepted(&config, &main),
        Err(errors) => assert_located(&errors, &main, &text),
    }
}

/// `wg_quick`: the input (lossily UTF-8) as `wg0.conf`. The same invariants; the accepted
/// config also goes through `tandem import` (TOML) and back.
pub fn fuzz_wg_quick(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let main = sandbox().join("wg0.conf");
    match parse_wg_quick(&main, &text) {
        Ok(config) => {
            assert_eq!(config.interface.name, "wg0");
            let toml_text = to_toml(&config);
            let imported = parse_toml(&sandbox().join("wg0.toml"), &toml_text)
                .unwrap_or_else(|e| panic!("import output refused:\n{e}\n---\n{toml_text}"));
            assert_eq!(
                (&imported.interface, &imported.peers),
                (&config.interface, &config.peers),
                "import round trip\n{toml_text}"
            );
            check_accepted(&config, &main);
        }
        Err(errors) => assert_located(&errors, &main, &text),
    }
}
