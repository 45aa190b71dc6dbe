//! Control plane: the WireGuard cross-platform userspace API (UAPI) that `wg` and `wg-quick`
//! speak over `/var/run/wireguard/<iface>.sock`. Only the pure protocol lives here; the socket
//! server belongs to the driver.

pub mod uapi;

pub use uapi::{
    Frame, Framer, InterfaceState, Request, SetOutcome, SetRequest, UapiError, apply_set,
    format_get, handle_request, parse_request, parse_set,
};
