//! Fuzz bodies for the text inputs: TOML and wg-quick configs ([`config`]), UAPI `set`
//! streams and `get` replies ([`uapi`]), and what they share: a reader of fuzz bytes, a small
//! pool of real keys, and a generator of plausible UAPI `set` lines, so that the fuzzer gets
//! past the first parse error into the simulation and the device.
//!
//! Netlink replies are not parsed by tandem (the `rtnetlink` crate does), so there is no
//! netlink target; see fuzz/README.md.

#[path = "text_config.rs"]
pub mod config;
#[path = "text_uapi.rs"]
pub mod uapi;

use std::fmt::Write as _;
use std::sync::OnceLock;

use crate::proto::{PresharedKey, PrivateKey, PublicKey};

pub use config::{fuzz_config_toml, fuzz_wg_quick};
pub use uapi::{fuzz_get_reply, fuzz_uapi_set};

/// The text targets (name, body).
pub const TARGETS: &[super::Target] = &[
    ("config_toml", fuzz_config_toml),
    ("wg_quick", fuzz_wg_quick),
    ("uapi_set", fuzz_uapi_set),
    ("get_reply", fuzz_get_reply),
];

/// Fuzz bytes read front to back; past the end every byte is 0, so a short input is still a
/// complete (if dull) choice.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Keys 1..=KEYS are real key pairs (from one repeated byte, clamped); 1 is the fuzzed
/// device's own.
pub const KEYS: usize = 6;

/// `(private, public)` of key `i` (1-based), computed once per process: X25519 is most of the
/// cost of an input otherwise.
pub fn key_pair(i: usize) -> &'static (PrivateKey, PublicKey) {
    static POOL: OnceLock<Vec<(PrivateKey, PublicKey)>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        (1..=KEYS)
            .map(|seed| {
                let private = PrivateKey::from_bytes([seed as u8; 32]).clamped();
                let public = private.public_key();
                (private, public)
            })
            .collect()
    });
    &pool[(i.max(1) - 1) % KEYS]
}

/// A decimal number as UAPI writes them, or one of the spellings a parser may trip on.
fn number(b: &mut Bytes<'_>) -> String {
    match b.byte() % 8 {
        0 => b.byte().to_string(),
        1 => b.u16().to_string(),
        2 => b.u32().to_string(),
        3 => u64::from(b.u32()).wrapping_mul(1 << 32).to_string(),
        4 => format!("0{}", b.byte()),
        5 => format!("+{}", b.byte()),
        6 => String::new(),
        _ => format!("-{}", b.byte()),
    }
}

/// `true`, mostly; sometimes a value wireguard-go refuses.
fn truth(b: &mut Bytes<'_>) -> &'static str {
    match b.byte() % 8 {
        0 => "false",
        1 => "1",
        2 => "True",
        _ => "true",
    }
}

fn key_hex(b: &mut Bytes<'_>, private: bool) -> String {
    match b.byte() % 8 {
        0 => "0".repeat(64),
        1 => hex(b.take(32)),
        2 => hex(b.take(31)),
        3 => hex(&[b.byte(); 32]).to_uppercase(),
        n => {
            let (sk, pk) = key_pair(usize::from(n) + usize::from(b.byte()));
            if private { sk.to_hex() } else { pk.to_hex() }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for x in bytes {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// An address (IPv4 or IPv6, from a few fuzz bytes, often in a small range so that prefixes
/// collide between peers).
fn addr(b: &mut Bytes<'_>) -> String {
    let kind = b.byte();
    if kind & 1 == 0 {
        let last = b.byte();
        match kind % 6 {
            0 => format!("10.0.0.{last}"),
            2 => format!("10.0.{}.{last}", b.byte() % 4),
            _ => format!("{}.{}.{}.{last}", b.byte(), b.byte(), b.byte()),
        }
    } else {
        match kind % 6 {
            1 => format!("fd00::{:x}", b.byte()),
            3 => format!("fe80::{:x}", b.u16()),
            _ => std::net::Ipv6Addr::from(u128::from_le_bytes({
                let mut a = [0u8; 16];
                a.iter_mut()
                    .zip(b.take(16))
                    .for_each(|(dst, src)| *dst = *src);
                a
            }))
            .to_string(),
        }
    }
}

fn endpoint(b: &mut Bytes<'_>) -> String {
    let host = addr(b);
    let port = match b.byte() % 4 {
        0 => "51820".to_owned(),
        1 => "0".to_owned(),
        _ => number(b),
    };
    if host.contains(':') {
        match b.byte() % 6 {
            0 => format!("[{host}%lo]:{port}"),
            1 => format!("[{host}%{}]:{port}", b.byte()),
            2 => format!("[{host}%nosuch]:{port}"),
            3 => format!("{host}:{port}"),
            _ => format!("[{host}]:{port}"),
        }
    } else {
        format!("{host}:{port}")
    }
}

fn prefix(b: &mut Bytes<'_>) -> String {
    let sign = if b.byte() % 5 == 0 { "-" } else { "" };
    let a = addr(b);
    let len = match b.byte() % 4 {
        0 => {
            if a.contains(':') {
                128
            } else {
                32
            }
        }
        1 => 0,
        _ => b.byte() % 140,
    };
    format!("{sign}{a}/{len}")
}

/// `set=1` lines (each ending in '\n', without the blank line) built from the fuzz bytes:
/// real keys, addresses and numbers in every UAPI key, with now and then a raw line or a raw
/// value, so that most requests parse and the simulation and the device see deep states.
pub fn set_lines(b: &mut Bytes<'_>, max_lines: usize) -> String {
    let mut out = String::new();
    for _ in 0..max_lines {
        if b.is_empty() {
            break;
        }
        let choice = b.byte();
        let line = match choice % 16 {
            0 => format!("private_key={}", key_hex(b, true)),
            1 => format!("listen_port={}", number(b)),
            2 => format!("fwmark={}", number(b)),
            3 => format!("replace_peers={}", truth(b)),
            4..=6 => format!("public_key={}", key_hex(b, false)),
            7 => format!("update_only={}", truth(b)),
            8 => format!("remove={}", truth(b)),
            9 => format!("preshared_key={}", key_hex(b, false)),
            10 => format!("endpoint={}", endpoint(b)),
            11 => format!("persistent_keepalive_interval={}", number(b)),
            12 => format!("replace_allowed_ips={}", truth(b)),
            13 => format!("allowed_ip={}", prefix(b)),
            14 => match choice >> 4 {
                0 => format!("protocol_version={}", number(b)),
                1 => "protocol_version=1\r".to_owned(),
                _ => "protocol_version=1".to_owned(),
            },
            _ => {
                // A raw line: up to 15 bytes, lossily UTF-8, without its line breaks.
                let n = usize::from(choice >> 4);
                String::from_utf8_lossy(b.take(n)).replace('\n', "")
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A preshared key from one repeated byte (for seeding devices).
pub fn psk(byte: u8) -> PresharedKey {
    PresharedKey::from_bytes([byte; 32])
}
