//! `peer add` and `peer remove` on files, with no daemon running (the namespace tests in
//! tests/provision.rs cover the reload).

use std::path::{Path, PathBuf};

use super::*;
use crate::proto::keys::PrivateKey;

/// A temporary directory with a server config in it, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("tandem-prov-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from_bytes([seed; 32]).clamped()
}

fn server(extra: &str) -> String {
    format!(
        "# Road-warrior server: hand-written\n[interface]\nname = \"prov0\"\n\
         private_key = \"{}\"  # secret\nlisten_port = 51820\n\
         address = [\"10.10.0.1/24\", \"fd10::1/64\"]\n{extra}\n\
         # Alice, since 2024\n[[peer]]\nname = \"alice\"\npublic_key = \"{}\"\n\
         allowed_ips = [\"10.10.0.2/32\", \"fd10::2/128\"]\n",
        key(1).to_base64(),
        key(2).public_key().to_base64()
    )
}

fn request(config: &Path, name: &str, dir: &Dir) -> AddRequest {
    AddRequest {
        config: config.to_path_buf(),
        name: name.into(),
        public_key: None,
        addresses: None,
        endpoint: Some("vpn.example.com".into()),
        split: false,
        psk: false,
        // No daemon socket there.
        socket_dir: dir.0.join("sockets"),
    }
}

#[test]
fn add_into_the_toml_keeps_comments_and_numbers_the_next_address() {
    let dir = Dir::new("add-main");
    let original = server("");
    let path = dir.write("prov0.toml", &original);
    let added = add(&request(&path, "phone", &dir)).unwrap();
    assert_eq!(added.reloaded.as_ref().ok(), Some(&Reloaded::NotRunning));
    assert_eq!(added.written, path);
    let ips: Vec<String> = added.addresses.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["10.10.0.3", "fd10::3"]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(&original), "{text}");
    let c = crate::config::load(&path).unwrap();
    assert_eq!(c.peers.len(), 2);
    assert_eq!(c.peers[1].name.as_deref(), Some("phone"));
    assert_eq!(c.peers[1].public_key, added.public_key);
    // The client's side: the conf holds the key pair's private half and the endpoint with
    // the server's port.
    assert!(
        added
            .client_conf
            .contains("Address = 10.10.0.3/32, fd10::3/128\n")
    );
    assert!(
        added
            .client_conf
            .contains("Endpoint = vpn.example.com:51820\n")
    );
    let client =
        crate::config::parse_wg_quick(Path::new("phone.conf"), &added.client_conf).unwrap();
    assert_eq!(client.interface.public_key(), added.public_key);

    // The next one gets the next address; duplicates are refused and change nothing.
    let second = add(&request(&path, "tablet", &dir)).unwrap();
    assert_eq!(second.addresses[0].to_string(), "10.10.0.4");
    let before = std::fs::read_to_string(&path).unwrap();
    let e = add(&request(&path, "phone", &dir)).unwrap_err();
    assert!(
        e.to_string()
            .contains("a peer named \"phone\" already exists"),
        "{e}"
    );
    let mut same_key = request(&path, "other", &dir);
    same_key.public_key = Some(added.public_key.to_base64());
    let e = add(&same_key).unwrap_err();
    assert!(
        e.to_string()
            .contains("peer phone already has this public key"),
        "{e}"
    );
    let mut own_key = request(&path, "other", &dir);
    own_key.public_key = Some(key(1).public_key().to_base64());
    assert!(
        add(&own_key)
            .unwrap_err()
            .to_string()
            .contains("own public key")
    );
    let mut taken = request(&path, "other", &dir);
    taken.addresses = Some(vec!["10.10.0.2".parse().unwrap()]);
    let e = add(&taken).unwrap_err();
    assert!(
        e.to_string()
            .contains("10.10.0.2 is already routed to peer alice"),
        "{e}"
    );
    taken.addresses = Some(vec!["10.10.0.1".parse().unwrap()]);
    assert!(
        add(&taken)
            .unwrap_err()
            .to_string()
            .contains("the interface itself")
    );
    let mut bad_key = request(&path, "other", &dir);
    bad_key.public_key = Some("AAAA".into());
    assert!(
        add(&bad_key)
            .unwrap_err()
            .to_string()
            .contains("--public-key")
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);

    // Removing by name takes exactly that block out again.
    let removed = remove(&path, "tablet", &dir.0.join("sockets")).unwrap();
    assert_eq!(
        (removed.label.as_str(), removed.deleted_file),
        ("tablet", false)
    );
    let removed = remove(&path, &added.public_key.to_base64(), &dir.0.join("sockets")).unwrap();
    assert_eq!(removed.label, "phone");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    let e = remove(&path, "nobody", &dir.0.join("sockets")).unwrap_err();
    assert!(e.to_string().contains("no peer is named \"nobody\""), "{e}");
}

#[test]
fn add_with_include_writes_a_peer_file_and_remove_deletes_it() {
    let dir = Dir::new("add-include");
    let original = server("include = [\"peers.d/*.toml\"]");
    let path = dir.write("prov0.toml", &original);
    let mut req = request(&path, "Bob's phone", &dir);
    req.split = true;
    req.psk = true;
    let added = add(&req).unwrap();
    let file = dir.0.join("peers.d/Bob-s-phone.toml");
    assert_eq!(added.written, file);
    // The main config is untouched.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    let c = crate::config::load(&path).unwrap();
    let bob = c
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some("Bob's phone"))
        .unwrap();
    assert_eq!(bob.file.as_deref(), Some(file.as_path()));
    assert!(bob.preshared_key.is_some());
    assert!(
        added
            .client_conf
            .contains("AllowedIPs = 10.10.0.0/24, fd10::/64\n"),
        "{}",
        added.client_conf
    );
    assert!(added.client_conf.contains(&format!(
        "PresharedKey = {}\n",
        bob.preshared_key.as_ref().unwrap().to_base64()
    )));
    let removed = remove(&path, "Bob's phone", &dir.0.join("sockets")).unwrap();
    assert!(removed.deleted_file);
    assert!(!file.exists());
    assert_eq!(crate::config::load(&path).unwrap().peers.len(), 1);
}

#[test]
fn wg_quick_configs_and_full_subnets_are_refused() {
    let dir = Dir::new("refuse");
    let conf = dir.write("wg0.conf", "[Interface]\nPrivateKey = x\n");
    let e = add(&request(&conf, "a", &dir)).unwrap_err();
    assert!(e.to_string().contains("tandem import"), "{e}");
    let host_only = server("").replace("[\"10.10.0.1/24\", \"fd10::1/64\"]", "[\"10.10.0.1/32\"]");
    let path = dir.write("prov0.toml", &host_only);
    let e = add(&request(&path, "a", &dir)).unwrap_err();
    assert!(e.to_string().contains("give --address"), "{e}");
    // With an address it works.
    let mut req = request(&path, "a", &dir);
    req.addresses = Some(vec!["10.10.0.9".parse().unwrap()]);
    req.endpoint = None;
    let added = add(&req).unwrap();
    assert!(
        added.client_conf.contains("# Endpoint"),
        "{}",
        added.client_conf
    );
}

#[test]
fn file_names_for_peers() {
    assert_eq!(file_stem_for("phone"), "phone");
    assert_eq!(file_stem_for("Bob's phone/2"), "Bob-s-phone-2");
    assert_eq!(file_stem_for("..hidden"), "hidden");
}

#[test]
fn address_option() {
    assert_eq!(parse_addresses("auto").unwrap(), None);
    assert_eq!(parse_addresses(" AUTO ").unwrap(), None);
    let both = parse_addresses("10.10.0.50, fd10::50/128")
        .unwrap()
        .unwrap();
    let shown: Vec<String> = both.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["10.10.0.50", "fd10::50"]);
    assert!(parse_addresses("10.10.0.0/24").is_err());
    assert!(parse_addresses("phone").is_err());
    assert!(parse_addresses("").is_err());
}

#[test]
fn a_literally_included_file_is_kept_when_its_last_peer_goes() {
    let dir = Dir::new("literal");
    let path = dir.write("prov0.toml", &server("include = [\"bob.toml\"]"));
    let bob = dir.write(
        "bob.toml",
        &format!(
            "# bob\n[[peer]]\nname = \"bob\"\npublic_key = \"{}\"\nallowed_ips = [\"10.10.0.7/32\"]\n",
            key(7).public_key().to_base64()
        ),
    );
    let removed = remove(&path, "bob", &dir.0.join("sockets")).unwrap();
    assert!(!removed.deleted_file);
    assert!(bob.exists());
    let c = crate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.peers.len(), 1);
}
