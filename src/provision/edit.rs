//! Changes to the user's TOML files that keep everything else as written: comments, blank
//! lines, key order and quoting (`toml_edit`), and writes that are all or nothing (a
//! temporary file beside the target, renamed over it).

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context, bail};
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use crate::config::Prefix;
use crate::proto::keys::{PresharedKey, PublicKey};

/// A peer as `tandem peer add` writes it into the server's configuration.
#[derive(Debug, Clone)]
pub struct NewPeer {
    pub name: String,
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub allowed_ips: Vec<Prefix>,
}

fn peer_table(peer: &NewPeer) -> Table {
    let mut t = Table::new();
    t.insert("name", value(peer.name.as_str()));
    t.insert("public_key", value(peer.public_key.to_base64()));
    if let Some(psk) = &peer.preshared_key {
        t.insert("preshared_key", value(psk.to_base64()));
    }
    let mut ips = toml_edit::Array::new();
    for p in &peer.allowed_ips {
        ips.push(p.to_string());
    }
    t.insert("allowed_ips", value(ips));
    t.decor_mut().set_prefix("\n");
    t
}

/// `text` (a tandem TOML file) with `peer` added as a `[[peer]]` block after the last one
/// (at the end when there is none); the rest of the text is unchanged.
pub fn add_peer(text: &str, peer: &NewPeer) -> anyhow::Result<String> {
    let mut doc: DocumentMut = text.parse().context("the file is not valid TOML")?;
    let table = peer_table(peer);
    match doc.get_mut("peer") {
        Some(Item::ArrayOfTables(peers)) => peers.push(table),
        Some(_) => bail!("`peer` in this file is not a list of [[peer]] blocks"),
        None => {
            let mut peers = ArrayOfTables::new();
            peers.push(table);
            doc.insert("peer", Item::ArrayOfTables(peers));
        }
    }
    Ok(doc.to_string())
}

/// A new peer file (for an `include` directory) holding `peer` alone.
pub fn peer_file(peer: &NewPeer) -> String {
    let header = format!(
        "# peer \"{}\", written by `tandem peer add`\n",
        peer.name.replace('\n', " ")
    );
    let empty = DocumentMut::new();
    let Ok(with_peer) = add_peer(&empty.to_string(), peer) else {
        // An empty document always parses; keep the header alone otherwise.
        return header;
    };
    format!("{header}{}", with_peer.trim_start_matches('\n'))
}

/// `text` without the `[[peer]]` block whose `public_key` is `key` (its comments go with
/// it), and how many peers are left in the file.
pub fn remove_peer(text: &str, key: &PublicKey) -> anyhow::Result<(String, usize)> {
    let mut doc: DocumentMut = text.parse().context("the file is not valid TOML")?;
    let Some(Item::ArrayOfTables(peers)) = doc.get_mut("peer") else {
        bail!("the file has no [[peer]] blocks");
    };
    let before = peers.len();
    peers.retain(|t| {
        t.get("public_key")
            .and_then(Item::as_str)
            .and_then(|s| PublicKey::from_base64(s).ok())
            .is_none_or(|k| !k.ct_eq(key))
    });
    let left = peers.len();
    if left == before {
        bail!(
            "no [[peer]] block with public key {} in the file",
            key.fingerprint()
        );
    }
    if left == 0 {
        doc.remove("peer");
    }
    Ok((doc.to_string(), left))
}

/// Writes `text` to `path` all or nothing: a temporary file in the same directory (same
/// file system), flushed to disk, then renamed over `path`. Mode and owner come from
/// `like` (the file replaced, or the main configuration for a new peer file), so a daemon
/// running as another user can still read it.
pub fn write_atomically(path: &Path, text: &str, like: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tandem-{}.tmp", std::process::id()));
    let meta =
        std::fs::metadata(like).with_context(|| format!("cannot read {}", like.display()))?;
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        // Keeping the owner needs privilege; without it the file stays ours.
        let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Writes a file that holds a secret (the client's QR code), readable by its owner only:
/// created 0600, replacing what was there.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0600()
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `OpenOptions::mode(0o600)` spelled so the temporary file is never readable by others,
/// even for a moment.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keys::PrivateKey;

    fn key(seed: u8) -> PublicKey {
        PrivateKey::from_bytes([seed; 32]).clamped().public_key()
    }

    fn phone() -> NewPeer {
        NewPeer {
            name: "phone".into(),
            public_key: key(7),
            preshared_key: None,
            allowed_ips: vec![
                "10.10.0.4/32".parse().unwrap(),
                "fd10::4/128".parse().unwrap(),
            ],
        }
    }

    const SERVER: &str = "# Road-warrior server\n\
        [interface]\n\
        private_key = \"x\"   # keep this secret\n\
        address = [\"10.10.0.1/24\"]\n\
        \n\
        # Alice's laptop\n\
        [[peer]]\n\
        name = \"alice\"\n\
        public_key = \"KEY2\"\n\
        allowed_ips = [ \"10.10.0.2/32\" ]   # odd spacing kept\n\
        \n\
        [metrics]\n\
        listen = \"127.0.0.1:9586\"\n";

    #[test]
    fn add_keeps_comments_and_layout() {
        let out = add_peer(SERVER, &phone()).unwrap();
        // Everything before the new block is byte for byte the same...
        let alice_end = SERVER.find("\n\n[metrics]").unwrap() + 1;
        assert!(out.starts_with(&SERVER[..alice_end]), "{out}");
        // ...the new peer follows the last one, and [metrics] is unchanged after it.
        let want = format!(
            "\n[[peer]]\nname = \"phone\"\npublic_key = \"{}\"\nallowed_ips = [\"10.10.0.4/32\", \"fd10::4/128\"]\n",
            key(7).to_base64()
        );
        assert_eq!(&out[alice_end..alice_end + want.len()], want, "{out}");
        assert!(
            out.ends_with("\n[metrics]\nlisten = \"127.0.0.1:9586\"\n"),
            "{out}"
        );
    }

    #[test]
    fn add_to_a_file_without_peers_and_a_new_peer_file() {
        let text = "[interface]\n# the key\nprivate_key = \"x\"\n";
        let out = add_peer(text, &phone()).unwrap();
        assert!(out.starts_with(text), "{out}");
        assert!(out.contains("\n[[peer]]\nname = \"phone\"\n"), "{out}");
        let file = peer_file(&phone());
        assert!(
            file.starts_with("# peer \"phone\", written by `tandem peer add`\n[[peer]]\n"),
            "{file}"
        );
        let again: DocumentMut = file.parse().unwrap();
        assert_eq!(again["peer"][0]["name"].as_str(), Some("phone"));
    }

    #[test]
    fn remove_takes_one_block_and_keeps_the_rest() {
        let with_phone = add_peer(SERVER, &phone()).unwrap();
        let (out, left) = remove_peer(&with_phone, &key(7)).unwrap();
        assert_eq!(left, 1);
        assert_eq!(out, SERVER);
        // Unknown keys and files without peers are errors, not silent successes.
        assert!(remove_peer(SERVER, &key(9)).is_err());
        assert!(remove_peer("[interface]\n", &key(7)).is_err());
        assert!(add_peer("peer = 3\n", &phone()).is_err());
        assert!(add_peer("[interface\n", &phone()).is_err());
    }

    #[test]
    fn atomic_write_keeps_mode_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("tandem-edit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("srv.toml");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, "new", &path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
