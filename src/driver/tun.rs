//! Opening the TUN device: a layer-3 device without the packet-information header, left down
//! (netconf configures it and brings it up, as `wg-quick` does for wireguard-go).

use std::fmt;
use std::io;

use tun_rs::{DeviceBuilder, SyncDevice};

use crate::netconf::NetconfError;
use crate::netconf::prefix::check_ifname;

/// Why the TUN device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error(transparent)]
    InvalidName(NetconfError),
    /// The kernel refused (no /dev/net/tun, no CAP_NET_ADMIN, the name is in use by another
    /// kind of interface or another process's TUN device, ...).
    #[error("cannot open TUN device {name:?}")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// An open TUN device, its kernel name and interface index. The interface exists as long as
/// this value lives: dropping it closes the descriptor and the kernel removes the link.
pub struct Tun {
    /// Non-blocking: the data plane's epoll loop waits for it.
    pub device: SyncDevice,
    /// The name the kernel gave the device (a `%d` in the requested name is filled in).
    pub name: String,
    pub index: u32,
    /// Whether IFF_VNET_HDR offload is on: then every packet read or written carries a
    /// virtio-net header and goes through `recv_multiple`/`send_multiple`.
    pub offload: bool,
}

impl fmt::Debug for Tun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("index", &self.index)
            .field("offload", &self.offload)
            .finish_non_exhaustive()
    }
}

/// Opens (creating it if needed) the TUN device `name` in the calling thread's network
/// namespace. The descriptor is non-blocking; the data plane's event loop polls it.
/// With `offload`, IFF_VNET_HDR is set and TCP (and, on Linux 6.2+, UDP) segmentation
/// offload is negotiated. `name` may be a kernel template with one `%d` (`tnd%d`), which the
/// kernel turns into the first free number; the rest follows the one interface-name rule.
pub fn open_tun(name: &str, offload: bool) -> Result<Tun, TunError> {
    let concrete = match name.split_once("%d") {
        Some((head, tail)) if !tail.contains('%') => format!("{head}0{tail}"),
        _ => name.to_owned(),
    };
    check_ifname(&concrete).map_err(|_| {
        TunError::InvalidName(crate::netconf::NetconfError::InvalidIfname(name.to_owned()))
    })?;
    let open_err = |source| TunError::Open {
        name: name.to_owned(),
        source,
    };
    let device = DeviceBuilder::new()
        .name(name)
        .packet_information(false)
        .offload(offload)
        // Left down: addresses and routes come first, then netconf brings it up.
        .enable(false)
        .build_sync()
        .map_err(open_err)?;
    device.set_nonblocking(true).map_err(open_err)?;
    let actual = device.name().map_err(open_err)?;
    let index = device.if_index().map_err(open_err)?;
    Ok(Tun {
        device,
        name: actual,
        index,
        offload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Opening a real device needs root and a network namespace of the test's own (never the
    // host's): that is covered by tests/netconf.rs. Here, only what needs no kernel.

    #[test]
    fn invalid_names_fail_before_the_kernel_is_asked() {
        for bad in ["", "much-too-long-name", "a/b", "a b"] {
            assert!(
                matches!(open_tun(bad, false), Err(TunError::InvalidName(NetconfError::InvalidIfname(n))) if n == bad),
                "{bad:?}"
            );
        }
    }
}
