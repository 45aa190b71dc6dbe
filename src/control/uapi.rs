//! The UAPI text protocol, as wireguard-go serves it (`device/uapi.go`) and the `wg` tool
//! speaks it (`wireguard-tools/src/ipc-uapi.h`).
//!
//! A connection carries requests, each one operation line and then `key=value` lines:
//!
//! ```text
//! get=1            set=1
//! {blank line}     private_key=<hex>
//!                  public_key=<hex>
//!                  allowed_ip=10.0.0.2/32
//!                  {blank line}
//! ```
//!
//! A `get` is answered with the device's `key=value` lines, a `set` with nothing; both end in
//! `errno=N` and a blank line, where N is 0 or a negated `errno.h` code (`errno=-22` for
//! EINVAL), which is what wireguard-go sends and what `wg` turns back into `errno`.
//!
//! Unlike wireguard-go, which applies a `set` line by line and stops at the first bad one
//! (leaving the lines before it applied), a `set` here is parsed whole ([`parse_set`]) into
//! checked operations, which the event loop turns into a desired device and applies through
//! the one reconciler (`crate::reconcile`): on an error nothing changed. The simulation
//! follows wireguard-go's line-by-line semantics, so a request that succeeds there ends in the
//! same state here.
//!
//! This module is text only: the loop answers a `get` with a [`Snapshot`], which
//! [`format_get`] writes out here, off the loop's thread.

mod parse;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use crate::driver::SetError;
use crate::reconcile::{InvalidSet, Snapshot};

pub use crate::reconcile::{MAX_PEERS, SetRequest};
pub use parse::parse_set;

/// The longest line accepted in a request. The longest line `wg` writes (an endpoint with an
/// IPv6 address and a zone) is under 100 bytes; wireguard-go's own reader stops at 64 KiB.
pub const MAX_LINE_LEN: usize = 4096;
/// The most lines one `set` may carry: 8 for each of `MAX_PEERS` (2^20) peers. `wg setconf`
/// writes at most 6 for a peer with one AllowedIP (`public_key`, `preshared_key`,
/// `endpoint`, `persistent_keepalive_interval`, `replace_allowed_ips`, `allowed_ip`).
pub const MAX_SET_LINES: usize = 8 * MAX_PEERS;
/// The most bytes one request may take before the framer gives up on it: 384 for each of
/// `MAX_PEERS` peers (384 MiB); the longest such peer `wg` writes is about 300 bytes (see
/// the test `the_largest_setconf_fits_the_limits`).
///
/// Memory stays proportional to what a client actually sends: the buffer grows as bytes
/// arrive. The worst case, one connection sending the largest request, is that buffer
/// (384 MiB), its parsed operations (up to `MAX_SET_LINES` of 72 bytes each: ~600 MiB if
/// all 8 Mi lines are, say, `fwmark=1`, though then the text is only 75 MiB; a real setconf
/// of 2^20 peers is ~3 lines a peer, ~250 MiB), and while it is planned a snapshot,
/// a model and a plan of the peers (a few hundred bytes a peer). Each connection is bounded
/// so; only root can connect (the socket is made under umask 077), as with wireguard-go.
pub const MAX_REQUEST_BYTES: usize = 384 * MAX_PEERS;
/// A failed request, answered as `errno=N` with N the value in `errno`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("UAPI error {errno}: {message}")]
pub struct UapiError {
    /// The value on the wire: a negated `errno.h` code, as wireguard-go sends it.
    pub errno: i32,
    /// For the log; never holds key material.
    pub message: String,
}

impl UapiError {
    /// A value or key that does not parse, an unknown key, too many peers (wireguard-go's
    /// `IpcErrorInvalid`).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(libc::EINVAL, message)
    }
    /// A line that is not `key=value` (wireguard-go's `IpcErrorProtocol`).
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(libc::EPROTO, message)
    }
    /// The request could not be read, e.g. an over-long line (wireguard-go's `IpcErrorIO`).
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(libc::EIO, message)
    }
    /// Binding the new listen port or setting the fwmark failed (wireguard-go's
    /// `IpcErrorPortInUse`).
    pub fn addr_in_use(message: impl Into<String>) -> Self {
        Self::new(libc::EADDRINUSE, message)
    }

    fn new(code: i32, message: impl Into<String>) -> Self {
        UapiError {
            errno: -code,
            message: message.into(),
        }
    }

    /// The reply text: `errno=N` and a blank line.
    pub fn reply(&self) -> String {
        format!("errno={}\n\n", self.errno)
    }
}

impl From<InvalidSet> for UapiError {
    fn from(e: InvalidSet) -> Self {
        UapiError::invalid(e.0)
    }
}

impl From<&SetError> for UapiError {
    fn from(e: &SetError) -> Self {
        match e {
            SetError::Invalid(e) => UapiError::invalid(e.0.clone()),
            SetError::Apply(e) => UapiError::addr_in_use(error_chain(e)),
        }
    }
}

/// The error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The reply to a successful `set`.
pub const SET_OK: &str = "errno=0\n\n";

/// One request, read from the text the framer delimited.
#[derive(Debug)]
pub enum Request {
    Get,
    Set(SetRequest),
    /// A malformed `get` or `set`: answer with this error.
    Invalid(UapiError),
    /// Not a UAPI operation, or the stream ended before `get=1` was followed by its blank
    /// line: wireguard-go closes the connection without a reply, and so should the driver.
    Close,
}

/// Reads one request. Input that is not UTF-8 can be passed through
/// `String::from_utf8_lossy`: a replacement character never parses as a key or value.
pub fn parse_request(input: &str) -> Request {
    let Some((op, rest)) = input.split_once('\n') else {
        return Request::Close;
    };
    match op {
        // wireguard-go reads exactly one more byte after `get=1\n` and wants the newline.
        "get=1" => match rest.as_bytes().first() {
            None => Request::Close,
            Some(b'\n') => Request::Get,
            Some(_) => Request::Invalid(UapiError::invalid("trailing character in UAPI get")),
        },
        "set=1" => match parse_set(rest) {
            Ok(req) => Request::Set(req),
            Err(e) => Request::Invalid(e),
        },
        _ => Request::Close,
    }
}

/// The reply to `get=1`, in wireguard-go's key order, ending in `errno=0` and a blank line.
///
/// Device: `private_key` (when set), `listen_port` and `fwmark` (when not 0). Then per peer:
/// `public_key`, `preshared_key` (all zeros when none), `protocol_version=1`, `endpoint` (when
/// known), `last_handshake_time_sec`, `last_handshake_time_nsec` (0 and 0 when none),
/// `tx_bytes`, `rx_bytes`, `persistent_keepalive_interval` and one `allowed_ip` per prefix.
pub fn format_get(device: &Snapshot) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    if let Some(key) = device.private_key.as_ref().filter(|k| !k.is_zero()) {
        let _ = writeln!(out, "private_key={}", key.to_hex());
    }
    if device.listen_port != 0 {
        let _ = writeln!(out, "listen_port={}", device.listen_port);
    }
    if device.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", device.fwmark);
    }
    for peer in &device.peers {
        let _ = writeln!(out, "public_key={}", peer.public_key.to_hex());
        let psk = peer.preshared_key.clone().unwrap_or_default();
        let _ = writeln!(out, "preshared_key={}", psk.to_hex());
        out.push_str("protocol_version=1\n");
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        let (secs, nanos) = peer
            .stats
            .last_handshake
            .map_or((0, 0), |t| (t.as_secs(), t.subsec_nanos()));
        let _ = writeln!(out, "last_handshake_time_sec={secs}");
        let _ = writeln!(out, "last_handshake_time_nsec={nanos}");
        let _ = writeln!(out, "tx_bytes={}", peer.stats.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", peer.stats.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            peer.persistent_keepalive
        );
        for prefix in &peer.allowed_ips {
            let _ = writeln!(out, "allowed_ip={prefix}");
        }
    }
    out.push_str(SET_OK);
    out
}

/// Where the first request in a stream buffer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Read more bytes and ask again.
    Incomplete,
    /// The first request is `buf[..n]`: hand it to [`parse_request`],
    /// then drop those bytes from the buffer.
    Complete(usize),
    /// The request grew past [`MAX_REQUEST_BYTES`] (or its first line past
    /// [`MAX_LINE_LEN`]) without ending: close the connection.
    TooLarge,
}

/// Finds request boundaries in a growing stream buffer without rescanning it: each call
/// continues where the previous one stopped. Between calls the buffer may only grow at its
/// end; after `Complete` the caller removes the request and the framer starts afresh.
#[derive(Debug, Default)]
pub struct Framer {
    /// Bytes of the current request already known to hold no terminating blank line.
    scanned: usize,
}

impl Framer {
    pub fn new() -> Self {
        Framer::default()
    }

    pub fn poll(&mut self, buf: &[u8]) -> Frame {
        let frame = self.find(buf);
        if matches!(frame, Frame::Complete(_) | Frame::TooLarge) {
            self.scanned = 0;
        }
        frame
    }

    fn find(&mut self, buf: &[u8]) -> Frame {
        let Some(op_end) = buf.iter().position(|&b| b == b'\n') else {
            return if buf.len() > MAX_LINE_LEN {
                Frame::TooLarge
            } else {
                Frame::Incomplete
            };
        };
        match buf.get(..op_end) {
            Some(b"get=1") => {
                // The operation line, then one byte that should be the blank line.
                if buf.len() > op_end + 1 {
                    Frame::Complete(op_end + 2)
                } else {
                    Frame::Incomplete
                }
            }
            Some(b"set=1") => {
                let mut start = self.scanned.max(op_end + 1);
                while let Some(rest) = buf.get(start..) {
                    let Some(len) = rest.iter().position(|&b| b == b'\n') else {
                        break;
                    };
                    // A blank line ends the set; like Go's line scanner, "\r\n" counts too.
                    if matches!(rest.get(..len), Some(b"" | b"\r")) {
                        return Frame::Complete(start + len + 1);
                    }
                    start += len + 1;
                }
                self.scanned = start;
                if buf.len() > MAX_REQUEST_BYTES {
                    Frame::TooLarge
                } else {
                    Frame::Incomplete
                }
            }
            // Not an operation: the reply is to close, so the request ends here.
            _ => Frame::Complete(op_end + 1),
        }
    }
}
