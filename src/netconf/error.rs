//! The typed error of interface setup.

use std::io;
use std::net::IpAddr;

/// Why an interface setup step failed.
#[derive(Debug, thiserror::Error)]
pub enum NetconfError {
    /// The netlink socket could not be opened (no such protocol, or out of descriptors).
    #[error("cannot open a netlink route socket")]
    Socket(#[source] io::Error),

    /// The interface name is not one the kernel would accept.
    #[error("invalid interface name {0:?} (1 to 15 bytes, no '/', ':' or whitespace)")]
    InvalidIfname(String),

    /// No interface by that name exists in this network namespace.
    #[error("no interface named {0:?}")]
    LinkNotFound(String),

    /// A prefix length longer than the address family allows.
    #[error("invalid prefix {addr}/{prefix_len}: longer than the address")]
    InvalidPrefix { addr: IpAddr, prefix_len: u8 },

    /// An interface address that cannot be assigned (unspecified or multicast).
    #[error("invalid interface address {0}: unspecified or multicast")]
    InvalidAddress(IpAddr),

    /// The same interface address appears twice in one plan.
    #[error("interface address {addr}/{prefix_len} is listed twice")]
    DuplicateAddress { addr: IpAddr, prefix_len: u8 },

    /// A full tunnel's firewall mark (which is also its routing table) that names no table
    /// of its own: 0, or the kernel's default (253), main (254) or local (255) table.
    #[error("fwmark {0} cannot be a full tunnel's routing table (0 and 253..=255 are taken)")]
    ReservedTable(u32),

    /// The kernel refused a request, or the netlink exchange broke down.
    #[error("netlink: {op} failed")]
    Netlink {
        /// What was being done, e.g. "add route 10.0.0.0/24 dev #4 table main".
        op: String,
        /// The kernel's errno as an `io::Error` (raw OS error kept), or a protocol failure.
        #[source]
        source: io::Error,
    },
}

impl NetconfError {
    pub(crate) fn netlink(op: String, err: rtnetlink::Error) -> Self {
        let source = match err {
            rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
            other => io::Error::other(other.to_string()),
        };
        NetconfError::Netlink { op, source }
    }

    /// The kernel's errno when the kernel refused a request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetconfError::Netlink { source, .. } => source.raw_os_error(),
            NetconfError::Socket(source) => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object to create is already there (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object to remove is already gone: no such route (ESRCH/ENOENT), address
    /// (EADDRNOTAVAIL) or interface (ENODEV), as after the TUN device was closed.
    pub fn is_already_gone(&self) -> bool {
        matches!(self, NetconfError::LinkNotFound(_))
            || matches!(
                self.errno(),
                Some(libc::ESRCH | libc::ENOENT | libc::EADDRNOTAVAIL | libc::ENODEV)
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_error(errno: i32) -> NetconfError {
        NetconfError::Netlink {
            op: "test".into(),
            source: io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn errno_classification() {
        assert!(kernel_error(libc::EEXIST).is_exists());
        assert!(!kernel_error(libc::EEXIST).is_already_gone());
        for errno in [libc::ESRCH, libc::ENOENT, libc::EADDRNOTAVAIL, libc::ENODEV] {
            assert!(kernel_error(errno).is_already_gone(), "errno {errno}");
            assert!(!kernel_error(errno).is_exists(), "errno {errno}");
        }
        assert!(!kernel_error(libc::EPERM).is_already_gone());
        assert!(NetconfError::LinkNotFound("x".into()).is_already_gone());
        assert_eq!(NetconfError::InvalidIfname("".into()).errno(), None);
    }

    #[test]
    fn kernel_nack_keeps_its_errno() {
        let mut msg = netlink_packet_core_error();
        msg.code = std::num::NonZeroI32::new(-libc::EEXIST);
        let err = NetconfError::netlink("op".into(), rtnetlink::Error::NetlinkError(msg));
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(err.to_string().contains("op"));
    }

    #[test]
    fn protocol_failure_has_no_errno() {
        let err = NetconfError::netlink("op".into(), rtnetlink::Error::RequestFailed);
        assert_eq!(err.errno(), None);
        assert!(!err.is_exists() && !err.is_already_gone());
    }

    fn netlink_packet_core_error() -> rtnetlink::packet_core::ErrorMessage {
        rtnetlink::packet_core::ErrorMessage::default()
    }
}
