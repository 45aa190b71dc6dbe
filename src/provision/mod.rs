//! Provisioning: `tandem peer add` and `tandem peer remove` change a server's TOML config
//! (keeping the user's comments and layout, or in a file of its `include` directory), check
//! the result with the normal checker before writing it atomically, then make the running
//! daemon reload it and wait until the change is in effect. `peer add` also writes the
//! client's wg-quick `.conf`, as text and as a QR code.

pub mod address;
pub mod client;
pub mod edit;
pub mod qr;
pub mod reload;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::{self, Config, Prefix};
use crate::keygen;
use crate::proto::keys::PublicKey;

pub use client::ClientConf;
pub use edit::NewPeer;
pub use reload::Reloaded;

/// `tandem peer add` as asked on the command line.
#[derive(Debug, Clone)]
pub struct AddRequest {
    pub config: PathBuf,
    pub name: String,
    /// The client's public key; `None`: generate a key pair.
    pub public_key: Option<String>,
    /// `None`: the next free address per family of the interface; else these addresses.
    pub addresses: Option<Vec<IpAddr>>,
    /// `host:port` (or `host`, then the server's listen port) the client connects to.
    pub endpoint: Option<String>,
    pub split: bool,
    /// Also generate a preshared key for this peer.
    pub psk: bool,
    /// Where the daemons' UAPI sockets are (`/var/run/wireguard`).
    pub socket_dir: PathBuf,
}

/// What `tandem peer add` did.
#[derive(Debug)]
pub struct Added {
    /// The client's wg-quick `.conf`.
    pub client_conf: String,
    /// The file the peer was written to.
    pub written: PathBuf,
    pub addresses: Vec<IpAddr>,
    pub public_key: PublicKey,
    /// The running daemon's reload. An error here leaves the peer written (and the client's
    /// `.conf` above is valid): print the `.conf`, then report it.
    pub reloaded: anyhow::Result<Reloaded>,
}

/// Holds an exclusive lock on the config's directory while `peer add/remove` read, check and
/// write, so two of them at once cannot both take the same address or lose each other's
/// change. (The file itself is replaced by a rename, so its own lock would not hold.)
fn lock_config_dir(config: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = config::include::base_dir(config);
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let file =
        std::fs::File::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", dir.display()))
}

/// Loads a config that `peer add/remove` may edit: tandem TOML, checked.
fn load_editable(path: &Path) -> anyhow::Result<(Config, String)> {
    if config::is_wg_quick_path(path) {
        bail!(
            "{} is a wg-quick file: `tandem peer` edits tandem TOML configs (convert it with \
             `tandem import`)",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = config::parse_toml(path, &text)?;
    Ok((config, text))
}

/// A name usable as a file name: letters, digits, `.`, `_` and `-` kept, the rest `-`.
fn file_stem_for(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    stem.trim_start_matches('.').to_owned()
}

/// Where a new peer goes: a new file named after it in the directory of the first `include`
/// pattern with wildcards, which must match that file; `None`: into the config itself.
fn include_target(config: &Config, name: &str) -> anyhow::Result<Option<PathBuf>> {
    let Some(pattern) = config
        .interface
        .include
        .iter()
        .find(|p| config::include::is_glob(p))
    else {
        return Ok(None);
    };
    let stem = file_stem_for(name);
    if stem.is_empty() {
        bail!("the name {name:?} gives no usable file name");
    }
    let rel_dir = Path::new(pattern).parent().unwrap_or(Path::new(""));
    if config::include::is_glob(&rel_dir.to_string_lossy()) {
        bail!(
            "the include pattern {pattern:?} has wildcards in its directory: cannot tell where to put a new peer file"
        );
    }
    let rel = rel_dir.join(format!("{stem}.toml"));
    let matcher = glob::Pattern::new(pattern)
        .with_context(|| format!("the include pattern {pattern:?} is not valid"))?;
    if !matcher.matches_path(&rel) {
        bail!(
            "a new peer file {} would not match the include pattern {pattern:?}",
            rel.display()
        );
    }
    Ok(Some(config::include::base_dir(&config.source).join(rel)))
}

/// The addresses the new peer gets, checked against the interface and the other peers.
fn choose_addresses(config: &Config, wanted: Option<&[IpAddr]>) -> anyhow::Result<Vec<IpAddr>> {
    let iface = &config.interface;
    let taken: Vec<Prefix> = config
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.clone())
        .collect();
    if let Some(wanted) = wanted {
        if wanted.is_empty() {
            bail!("--address needs at least one address");
        }
        for ip in wanted {
            if iface.addresses.iter().any(|a| a.addr == *ip) {
                bail!("{ip} is an address of the interface itself");
            }
            if let Some(p) = config
                .peers
                .iter()
                .find(|p| p.allowed_ips.iter().any(|c| c.contains(ip)))
            {
                bail!("{ip} is already routed to peer {}", p.label());
            }
        }
        return Ok(wanted.to_vec());
    }
    let subnets = address::subnets(&iface.addresses);
    if subnets.is_empty() {
        bail!(
            "the interface has no address with room for peers (such as 10.10.0.1/24): give \
             --address"
        );
    }
    subnets
        .iter()
        .map(|s| {
            address::next_free(s, &iface.addresses, &taken)
                .with_context(|| format!("no free address left in {}", s.network()))
        })
        .collect()
}

/// `--address`: `auto` (`None`), or addresses separated by commas, each optionally written
/// with `/32` or `/128`.
pub fn parse_addresses(text: &str) -> anyhow::Result<Option<Vec<IpAddr>>> {
    if text.trim().eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        let bare = match part.split_once('/') {
            Some((ip, "32")) if !ip.contains(':') => ip,
            Some((ip, "128")) if ip.contains(':') => ip,
            Some(_) => bail!("--address {part:?}: give a single address (or auto)"),
            None => part,
        };
        out.push(
            bare.parse()
                .with_context(|| format!("--address {part:?}: not an address (or auto)"))?,
        );
    }
    Ok(Some(out))
}

/// The client's endpoint: `host:port` as given, or `host` with the server's listen port.
fn client_endpoint(config: &Config, given: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(given) = given else { return Ok(None) };
    if let Ok(spec) = given.parse::<config::EndpointSpec>() {
        return Ok(Some(spec.to_string()));
    }
    let Some(port) = config.interface.listen_port else {
        bail!(
            "--endpoint {given:?} has no port and the server has no fixed listen_port: give \
             HOST:PORT"
        );
    };
    let host = given.trim_start_matches('[').trim_end_matches(']');
    let with_port = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let spec: config::EndpointSpec = with_port
        .parse()
        .map_err(|e| anyhow::anyhow!("--endpoint {given:?}: {e}"))?;
    Ok(Some(spec.to_string()))
}

/// `tandem peer add`: everything is checked before anything is written; once written, the
/// running daemon (if any) reloads and this returns when the peer is live.
pub fn add(req: &AddRequest) -> anyhow::Result<Added> {
    let lock = lock_config_dir(&req.config)?;
    let (config, text) = load_editable(&req.config)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().any(char::is_control) {
        bail!("a peer name must be non-empty and free of control characters");
    }
    if let Some(p) = config
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
    {
        bail!(
            "a peer named {name:?} already exists{}",
            p.file
                .as_ref()
                .map(|f| format!(" (in {})", f.display()))
                .unwrap_or_default()
        );
    }
    let private_key = match &req.public_key {
        Some(_) => None,
        None => Some(keygen::generate_private_key().context("cannot generate a key pair")?),
    };
    let public_key = match (&req.public_key, &private_key) {
        (Some(text), _) => {
            PublicKey::from_base64(text.trim()).map_err(|e| anyhow::anyhow!("--public-key: {e}"))?
        }
        (None, Some(k)) => k.public_key(),
        (None, None) => bail!("internal error: no key"),
    };
    if public_key.ct_eq(&config.interface.public_key()) {
        bail!("--public-key is the server's own public key");
    }
    if let Some(p) = config
        .peers
        .iter()
        .find(|p| p.public_key.ct_eq(&public_key))
    {
        bail!("peer {} already has this public key", p.label());
    }
    let addresses = choose_addresses(&config, req.addresses.as_deref())?;
    let endpoint = client_endpoint(&config, req.endpoint.as_deref())?;
    let preshared_key = if req.psk {
        Some(keygen::generate_preshared_key().context("cannot generate a preshared key")?)
    } else {
        None
    };
    let new = NewPeer {
        name: name.to_owned(),
        public_key,
        preshared_key: preshared_key.clone(),
        allowed_ips: addresses.iter().map(|a| Prefix::host(*a)).collect(),
    };

    // The new text, checked with the normal checker (a peer file is checked as part of the
    // config it will belong to: the same blocks, the same rules).
    let target = include_target(&config, name)?;
    let (path, new_text, like) = match &target {
        Some(file) => {
            if file.exists() {
                bail!("{} exists already", file.display());
            }
            let block = edit::peer_file(&new);
            config::parse_toml(&req.config, &format!("{text}\n{block}"))?;
            (file.clone(), block, req.config.clone())
        }
        None => {
            let edited = edit::add_peer(&text, &new)?;
            config::parse_toml(&req.config, &edited)?;
            (req.config.clone(), edited, req.config.clone())
        }
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    edit::write_atomically(&path, &new_text, &like)?;
    drop(lock);

    let client_conf = ClientConf {
        server: &config,
        private_key: private_key.as_ref(),
        addresses: &addresses,
        preshared_key: preshared_key.as_ref(),
        endpoint: endpoint.as_deref(),
        split: req.split,
    }
    .render();

    let reloaded =
        reload::reload_and_wait(&req.socket_dir, &config.interface.name, &req.config, |d| {
            d.peers.iter().any(|p| p.public_key.ct_eq(&public_key))
        })
        .with_context(|| format!("the peer is written to {}", path.display()));
    Ok(Added {
        client_conf,
        written: path,
        addresses,
        public_key,
        reloaded,
    })
}

/// What `tandem peer remove` did.
#[derive(Debug)]
pub struct Removed {
    pub label: String,
    /// The file changed (or deleted, when the peer was its only one).
    pub file: PathBuf,
    pub deleted_file: bool,
    pub reloaded: Reloaded,
}

/// `tandem peer remove CONFIG NAME|KEY`.
pub fn remove(config_path: &Path, which: &str, socket_dir: &Path) -> anyhow::Result<Removed> {
    let lock = lock_config_dir(config_path)?;
    let (config, _) = load_editable(config_path)?;
    let by_name: Vec<_> = config
        .peers
        .iter()
        .filter(|p| p.name.as_deref() == Some(which))
        .collect();
    let peer = match by_name.as_slice() {
        [one] => *one,
        [] => match PublicKey::from_base64(which.trim()) {
            Ok(k) => config
                .peers
                .iter()
                .find(|p| p.public_key.ct_eq(&k))
                .with_context(|| format!("no peer has the public key {which}"))?,
            Err(_) => bail!("no peer is named {which:?} (give a name or a public key)"),
        },
        _ => bail!(
            "{} peers are named {which:?}: give the public key instead",
            by_name.len()
        ),
    };
    let key = peer.public_key;
    let file = peer
        .file
        .clone()
        .unwrap_or_else(|| config_path.to_path_buf());
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let (new_text, left) = edit::remove_peer(&text, &key)?;
    // A peer file left empty is deleted, unless `include` names it literally (then it must
    // exist, and stays without peers).
    let named_literally = config.interface.include.iter().any(|p| {
        !config::include::is_glob(p) && config::include::base_dir(config_path).join(p) == file
    });
    let deleted_file = peer.file.is_some() && left == 0 && !named_literally;
    // Taking a peer away cannot break the others; what is checked is that the edited file
    // still reads as the same config without it.
    if peer.file.is_none() {
        let check = config::parse_toml(config_path, &new_text)?;
        if check.peers.len() + 1 != config.peers.len() {
            bail!("internal error: the edited file does not have one peer less");
        }
    }
    if deleted_file {
        std::fs::remove_file(&file).with_context(|| format!("cannot remove {}", file.display()))?;
    } else {
        edit::write_atomically(&file, &new_text, &file)?;
    }
    drop(lock);
    let reloaded = reload::reload_and_wait(socket_dir, &config.interface.name, config_path, |d| {
        !d.peers.iter().any(|p| p.public_key.ct_eq(&key))
    })
    .with_context(|| format!("the peer is removed from {}", file.display()))?;
    Ok(Removed {
        label: peer.label(),
        file,
        deleted_file,
        reloaded,
    })
}

#[cfg(test)]
mod tests;
