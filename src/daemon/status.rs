//! `tandem show [IFACE]`: asks interfaces' UAPI sockets for their state and prints it the
//! way `wg show` does, with the peer names of tandem's config (`get=tandem`, falling back to
//! `get=1` for daemons that do not know it, such as wireguard-go).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::control::server::{SOCKET_DIR, query, socket_path};
use crate::control::show::{
    DeviceStatus, ShowError, format_interface, format_json, name_zones, parse_get_reply,
};
use crate::os;

/// How long one interface may take to answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The status text of one interface, from its socket in `dir`.
pub fn interface_status(dir: &Path, ifname: &str) -> anyhow::Result<String> {
    let device = interface_device(dir, ifname)?;
    Ok(format_interface(ifname, &device, now_unix()))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The state of one interface, from its socket in `dir`.
pub fn interface_device(dir: &Path, ifname: &str) -> anyhow::Result<DeviceStatus> {
    let path = socket_path(dir, ifname);
    let ask = |request: &str| {
        query(&path, request, QUERY_TIMEOUT).with_context(|| {
            format!(
                "cannot query interface {ifname} at {} (is a daemon serving it?)",
                path.display()
            )
        })
    };
    let reply = ask("get=tandem\n\n")?;
    let mut device = match parse_get_reply(&reply) {
        Ok(device) => device,
        // Closed without an answer, or refused: not tandem. Ask the standard way.
        Err(ShowError::Truncated | ShowError::Errno(_)) => parse_get_reply(&ask("get=1\n\n")?)
            .with_context(|| format!("interface {ifname} answered get=1 wrongly"))?,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("interface {ifname}")));
        }
    };
    name_zones(&mut device, os::if_indextoname);
    Ok(device)
}

/// The interfaces with a socket in `dir`, sorted; sockets nobody answers on (left by a daemon
/// that died) are skipped, as `wg` does.
pub fn interfaces(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".sock")) else {
            continue;
        };
        let path: PathBuf = entry.path();
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `tandem show [IFACE]`: prints one interface, or every one with a live socket (separated
/// by a blank line, as `wg show` does). An interface that fails is reported on stderr and the
/// others still shown; the result is then an error. `json`: one JSON document instead.
pub fn show(iface: Option<&str>, json: bool) -> anyhow::Result<()> {
    let dir = Path::new(SOCKET_DIR);
    if json {
        return show_json(dir, iface);
    }
    if let Some(iface) = iface {
        print!("{}", interface_status(dir, iface)?);
        return Ok(());
    }
    let mut first = true;
    let mut failed = 0usize;
    for name in interfaces(dir)? {
        match interface_status(dir, &name) {
            Ok(text) => {
                if !first {
                    println!();
                }
                first = false;
                print!("{text}");
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} interface(s) could not be shown");
    }
    Ok(())
}

/// `tandem show --json [IFACE]`: one document for one interface or every live one; an
/// interface that fails is reported on stderr, left out, and makes the result an error.
fn show_json(dir: &Path, iface: Option<&str>) -> anyhow::Result<()> {
    let names = match iface {
        Some(iface) => vec![iface.to_owned()],
        None => interfaces(dir)?,
    };
    let mut devices = Vec::new();
    let mut failed = 0usize;
    for name in names {
        match interface_device(dir, &name) {
            Ok(device) => devices.push((name, device)),
            // One interface asked for: its error is the command's.
            Err(e) if iface.is_some() => return Err(e),
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    print!("{}", format_json(&devices, now_unix()));
    if failed > 0 {
        bail!("{failed} interface(s) could not be shown");
    }
    Ok(())
}
