//! The configuration reference cannot drift. Its one source is `src/config/reference.toml`:
//! the `config` module's rustdoc includes that file, and the README's "Configuration
//! reference" block must be the same text (Markdown cannot include a file, so this test
//! compares them). The reference must also be a working config once its `<base64>`
//! placeholders are filled in, and its keys must be exactly the keys the parser knows.

use std::collections::BTreeSet;
use std::path::Path;

use tandem::config::{Config, ConfigErrors, parse_toml};
use tandem::proto::PresharedKey;
use tandem::testkit::key;

const REFERENCE: &str = include_str!("../src/config/reference.toml");
const README: &str = include_str!("../README.md");

/// The body of the first ```toml block after the "## Configuration reference" heading.
fn readme_block() -> &'static str {
    let section = README
        .split_once("\n## Configuration reference\n")
        .expect("README.md has a \"## Configuration reference\" section")
        .1;
    let body = section
        .split_once("```toml\n")
        .expect("the section has a ```toml block")
        .1;
    let end = body.find("\n```\n").expect("the ```toml block ends");
    &body[..=end]
}

#[test]
fn readme_block_is_the_reference_file() {
    let readme = readme_block();
    if readme != REFERENCE {
        let (n, (r, f)) = readme
            .lines()
            .zip(REFERENCE.lines())
            .enumerate()
            .find(|(_, (r, f))| r != f)
            .unwrap_or((
                readme.lines().count().min(REFERENCE.lines().count()),
                ("<end>", "<end>"),
            ));
        panic!(
            "README.md's configuration reference differs from src/config/reference.toml \
             (the source) at line {} of the block:\n  README: {r}\n  file:   {f}\n\
             Copy the file into the README's ```toml block.",
            n + 1
        );
    }
}

/// The reference with its placeholders replaced: distinct real keys for `private_key`,
/// `public_key` and `preshared_key`.
fn filled_in() -> String {
    let private = key(1).to_base64();
    let public = key(2).public_key().to_base64();
    let psk = PresharedKey::from_bytes([3; 32]).to_base64();
    let mut out = String::new();
    for line in REFERENCE.lines() {
        let value = match line.split_once(" = ").map(|(k, _)| k) {
            Some("private_key") => &private,
            Some("public_key") => &public,
            Some("preshared_key") => &psk,
            _ => "<base64>",
        };
        out.push_str(&line.replace("<base64>", value));
        out.push('\n');
    }
    assert!(
        !out.contains("<base64>"),
        "a placeholder this test does not fill in:\n{out}"
    );
    out
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_toml(Path::new("reference.toml"), text)
}

#[test]
fn reference_is_a_valid_config_with_the_values_it_shows() {
    let config = match parse(&filled_in()) {
        Ok(c) => c,
        Err(e) => panic!("the reference does not load once its keys are filled in:\n{e}"),
    };
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let i = &config.interface;
    assert_eq!(i.name, "tnd0");
    assert_eq!(i.public_key(), key(1).public_key());
    assert_eq!(
        (i.listen_port, i.mtu, i.fwmark),
        (Some(51820), Some(1420), 0)
    );
    assert_eq!(
        i.addresses,
        ["10.9.0.1/24", "fd09::1/64"].map(|a| a.parse().unwrap())
    );
    assert_eq!(config.peers.len(), 1);
    let p = &config.peers[0];
    assert_eq!(p.public_key, key(2).public_key());
    assert!(p.preshared_key.is_some());
    assert_eq!(
        p.allowed_ips,
        ["10.9.0.2/32", "192.168.20.0/24"].map(|c| c.parse().unwrap())
    );
    assert_eq!(p.persistent_keepalive, Some(25));
    assert_eq!(
        config.metrics.map(|m| m.listen),
        Some("127.0.0.1:9586".parse().unwrap())
    );
}

/// The keys the reference documents in `[interface]` and in `[[peer]]`: `key = ...` lines,
/// also the commented-out alternatives (`# private_key_file = ...`).
fn documented() -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let (mut interface, mut peer, mut metrics) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut section = None;
    for line in REFERENCE.lines() {
        if line.starts_with("[interface]") {
            section = Some(&mut interface);
        } else if line.starts_with("[[peer]]") {
            section = Some(&mut peer);
        } else if line.starts_with("[metrics]") {
            section = Some(&mut metrics);
        } else if let Some((k, _)) = line.trim_start_matches("# ").split_once(" = ") {
            let k = k.trim();
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                let s = section.as_mut().expect("a key before the first section");
                assert!(s.insert(k.to_owned()), "{k} documented twice");
            }
        }
    }
    (interface, peer, metrics)
}

/// The keys the parser knows in one section, as its error for an unknown key there lists
/// them: `text` has the unknown key `zzzzzzzz` at the key path `at`.
fn known(text: &str, at: &str) -> BTreeSet<String> {
    let errors = parse(text).expect_err("an unknown key is an error");
    let e = errors
        .iter()
        .find(|e| e.key == at)
        .unwrap_or_else(|| panic!("no error for the unknown key {at}: {errors}"));
    e.message
        .split_once("(known here: ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("the error does not list the known keys: {}", e.message))
        .split(", ")
        .map(str::to_owned)
        .collect()
}

#[test]
fn documented_keys_are_the_keys_the_parser_knows() {
    let (interface, peer, metrics) = documented();
    assert!(interface.contains("private_key_file") && peer.contains("endpoint"));
    let text = filled_in();
    let in_interface = text.replacen("[interface]\n", "[interface]\nzzzzzzzz = 1\n", 1);
    let in_peer = format!("{text}\n[[peer]]\nzzzzzzzz = 1\n");
    assert_eq!(
        interface,
        known(&in_interface, "interface.zzzzzzzz"),
        "[interface]: documented keys (left) vs keys the parser knows (right)"
    );
    assert_eq!(
        peer,
        known(&in_peer, "peer[2].zzzzzzzz"),
        "[[peer]]: documented keys (left) vs keys the parser knows (right)"
    );
    // (The `[metrics]` header line carries a comment; its first key follows it.)
    let in_metrics = text.replacen("\nlisten = ", "\nzzzzzzzz = 1\nlisten = ", 1);
    assert_eq!(
        metrics,
        known(&in_metrics, "metrics.zzzzzzzz"),
        "[metrics]: documented keys (left) vs keys the parser knows (right)"
    );
}
