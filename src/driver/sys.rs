//! Thin wrappers over the system calls the driver needs that std and tokio do not offer.
//!
//! This is the only file in the crate allowed to contain `unsafe`; every block carries a
//! `// SAFETY:` note saying why the call is sound.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Moves the calling thread into the network namespace at `path` (for example
/// `/run/netns/NAME` or `/proc/PID/ns/net`).
///
/// Only the calling thread changes namespace (`setns(2)` with `CLONE_NEWNET` acts per thread),
/// so sockets and TUN devices it opens afterwards live in that namespace while the rest of the
/// process stays where it was. Needs `CAP_SYS_ADMIN`.
pub fn enter_netns(path: &Path) -> io::Result<()> {
    // The file only has to stay open for the duration of the call: the thread then holds its
    // own reference to the namespace.
    let file = File::open(path)?;
    // SAFETY: `setns` takes a file descriptor and a flag, and touches no memory of ours. The
    // descriptor is valid for the whole call because `file` is borrowed until the end of this
    // function. A descriptor that is not a namespace file makes the call fail with EINVAL,
    // which is reported as an error, not undefined behaviour.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The effective user id of this process, so callers can explain a missing privilege
/// (e.g. "needs root or CAP_NET_ADMIN") before the kernel answers EPERM.
pub fn effective_uid() -> u32 {
    // SAFETY: `geteuid` has no arguments, cannot fail and reads only process credentials.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_netns_reports_a_missing_path() {
        let err = enter_netns(Path::new("/run/netns/tandem-no-such-namespace-for-test"))
            .expect_err("a missing namespace file must be an error");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn enter_netns_rejects_a_file_that_is_not_a_namespace() {
        // The kernel checks the file type before any privilege, so this holds for any user and
        // never changes this thread's namespace.
        let err =
            enter_netns(Path::new("/dev/null")).expect_err("/dev/null is not a namespace file");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn effective_uid_matches_proc_status() {
        // /proc/self/status lists "Uid: real effective saved fs".
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .expect("a Uid: line");
        let euid: u32 = line
            .split_whitespace()
            .nth(2)
            .expect("effective uid field")
            .parse()
            .expect("numeric uid");
        assert_eq!(effective_uid(), euid);
    }
}
