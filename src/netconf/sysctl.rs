//! `net.ipv4.conf.all.src_valid_mark`, which wg-quick turns on for an IPv4 full tunnel: with
//! it, reverse-path filtering looks a packet's source up with the packet's own firewall mark
//! (the route it would really take) instead of mark 0, which the `not fwmark` rule would send
//! into the tunnel. It matters with strict reverse-path filtering (`rp_filter = 1`) together
//! with firewall rules that restore the mark on the replies (wg-quick's CONNMARK rules,
//! which tandem does not install: it sets no firewall rules at all).
//!
//! Like wg-quick, tandem only ever turns it on and never back off: it is a setting of the
//! whole network namespace that other full tunnels may rely on, and turning it on changes
//! nothing for packets without a mark.

use std::io;
use std::path::Path;

const SRC_VALID_MARK: &str = "/proc/sys/net/ipv4/conf/all/src_valid_mark";

/// Turns `src_valid_mark` on unless it is on already (a namespace of its own has its own
/// copy). Returns whether it wrote the file.
pub fn ensure_src_valid_mark() -> io::Result<bool> {
    ensure_on(Path::new(SRC_VALID_MARK))
}

fn ensure_on(path: &Path) -> io::Result<bool> {
    // Read first, so a daemon that cannot write /proc/sys (a hardened unit without the
    // exception, see systemd/tandem@.service) is fine when it is on already.
    if std::fs::read_to_string(path)?.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(path, "1\n")?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_when_off() {
        let dir = std::env::temp_dir().join(format!("tandem-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("src_valid_mark");
        std::fs::write(&file, "0\n").expect("write");
        assert!(ensure_on(&file).expect("turn on"));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "1\n");
        assert!(!ensure_on(&file).expect("already on"));
        assert!(ensure_on(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
