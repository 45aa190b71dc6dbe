//! Control plane: the WireGuard cross-platform userspace API (UAPI) that `wg` and `wg-quick`
//! speak over `/var/run/wireguard/<iface>.sock`: the pure text protocol ([`uapi`]), the socket
//! server that hands requests to the event loop's mailbox (`driver::control`) ([`server`]), and `tandem show`'s formatting
//! ([`show`]).

pub mod server;
pub mod show;
pub mod uapi;

pub use uapi::{
    Frame, Framer, Request, SetRequest, UapiError, format_get, parse_request, parse_set,
};
