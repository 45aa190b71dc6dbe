//! Static keys as users handle them: 32 bytes, base64 like `wg genkey`, secrets zeroized on drop
//! and never printed (a public key shows as a short fingerprint).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Why a base64 key string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not valid base64")]
    Base64,
    #[error("decodes to {0} bytes, a key is 32")]
    Length(usize),
    #[error("not 64 hex digits")]
    Hex,
}

fn decode_base64(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = BASE64.decode(text.trim()).map_err(|_| KeyError::Base64)?;
    let len = bytes.len();
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(len))
}

fn decode_hex(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return Err(KeyError::Hex);
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or(KeyError::Hex)?;
        let lo = (pair[1] as char).to_digit(16).ok_or(KeyError::Hex)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

fn encode_hex(bytes: &[u8; 32]) -> String {
    // Digit by digit, not `write!("{:02x}")` per byte: a UAPI `get` of a large device
    // encodes a few keys per peer, and the formatter was a fifth of the uapi_set fuzz
    // target's time.
    let digit = |n: u8| char::from_digit(u32::from(n), 16).unwrap_or('0');
    let mut s = String::with_capacity(64);
    for b in bytes {
        s.push(digit(b >> 4));
        s.push(digit(b & 0x0f));
    }
    s
}

/// Clamps an X25519 scalar as RFC 7748 section 5 does: clear the three low bits (a multiple
/// of the cofactor 8), clear bit 255 and set bit 254. X25519 does this to every scalar it
/// uses; `wg genkey` and wireguard-go also store keys clamped, so the stored bytes match.
pub fn clamp(scalar: &mut [u8; 32]) {
    scalar[0] &= 248;
    scalar[31] &= 127;
    scalar[31] |= 64;
}

/// What every 32-byte key type shares: raw bytes, base64 (as `wg` prints keys) and hex (as
/// the UAPI speaks them).
macro_rules! key_encodings {
    ($name:ident) => {
        impl $name {
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }
            pub fn from_base64(text: &str) -> Result<Self, KeyError> {
                decode_base64(text).map($name)
            }
            pub fn from_hex(text: &str) -> Result<Self, KeyError> {
                decode_hex(text).map($name)
            }
            pub fn to_base64(&self) -> String {
                BASE64.encode(self.0)
            }
            pub fn to_hex(&self) -> String {
                encode_hex(&self.0)
            }
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }
    };
}

/// A secret key type: zeroized on drop, compared in constant time, and shown in `Debug` as
/// `Name(<redacted>)` (with `hint(&key)` after it when given: never the secret itself).
macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident $(, hint = $hint:path)?) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; 32]);

        key_encodings!($name);

        impl $name {
            /// All zeros: the UAPI's way to say "none".
            pub fn is_zero(&self) -> bool {
                self.0.ct_eq(&[0u8; 32]).into()
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.ct_eq(&other.0).into()
            }
        }
        impl Eq for $name {}

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>"))?;
                $(write!(f, ", {}", $hint(self))?;)?
                f.write_str(")")
            }
        }
    };
}

secret_key!(
    /// A Curve25519 private key (clamped when used, as X25519 does).
    PrivateKey,
    hint = private_key_hint
);

/// Which identity a private key is, for `Debug`: its public key's fingerprint.
fn private_key_hint(key: &PrivateKey) -> String {
    format!("public {}", key.public_key())
}

impl PrivateKey {
    /// A fresh key from the caller's RNG, clamped like `wg genkey` prints it.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut key = PrivateKey([0u8; 32]);
        rng.fill_bytes(&mut key.0);
        key.clamped()
    }
    /// The same key with its bytes clamped (see [`clamp`]): what wireguard-go stores.
    pub fn clamped(mut self) -> Self {
        clamp(&mut self.0);
        self
    }
    pub fn public_key(&self) -> PublicKey {
        PublicKey(super::crypto::dh_pubkey(&self.0))
    }
}

secret_key!(
    /// The optional symmetric key mixed in at the `psk` token; all zeros when a peer has none.
    #[derive(Default)]
    PresharedKey
);

impl PresharedKey {
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut key = PresharedKey([0u8; 32]);
        rng.fill_bytes(&mut key.0);
        key
    }
}

/// A Curve25519 public key. `Display` prints a short fingerprint (the first 8 base64
/// characters, as `wg` users recognise them); `to_base64` prints the whole key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

key_encodings!(PublicKey);

impl PublicKey {
    /// Short, log-safe identifier: the first 8 base64 characters.
    pub fn fingerprint(&self) -> String {
        let mut s = self.to_base64();
        s.truncate(8);
        s
    }
    /// Constant-time equality, for comparisons where timing could leak which peer matched.
    pub fn ct_eq(&self, other: &PublicKey) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.fingerprint())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_public_key() {
        // RFC 7748 section 6.1: Alice's private key and public key.
        let alice = PrivateKey::from_hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        )
        .unwrap();
        assert_eq!(
            alice.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let b64 = alice.to_base64();
        assert_eq!(PrivateKey::from_base64(&b64).unwrap(), alice);
        assert_eq!(b64.len(), 44);
    }

    #[test]
    fn bad_keys_are_typed_errors() {
        assert_eq!(PublicKey::from_base64("!!!"), Err(KeyError::Base64));
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyError::Length(3)));
        assert_eq!(PublicKey::from_hex("zz"), Err(KeyError::Hex));
    }

    #[test]
    fn clamp_is_rfc7748() {
        let mut k = [0xff; 32];
        clamp(&mut k);
        assert_eq!((k[0], k[31]), (0xf8, 0x7f));
        let mut k = [0; 32];
        clamp(&mut k);
        assert_eq!((k[0], k[31]), (0, 0x40));
        assert_eq!(
            PrivateKey::from_bytes([0xff; 32]).clamped().as_bytes()[..],
            [[0xf8].as_slice(), &[0xff; 30], &[0x7f]].concat()[..]
        );
        // Clamping never changes the public key: X25519 clamps anyway.
        let raw = PrivateKey::from_bytes([0xff; 32]);
        assert_eq!(raw.public_key(), raw.clone().clamped().public_key());
    }

    #[test]
    fn secrets_compare_by_value_and_zero_means_none() {
        assert_eq!(
            PrivateKey::from_bytes([3; 32]),
            PrivateKey::from_bytes([3; 32])
        );
        assert_ne!(
            PresharedKey::from_bytes([3; 32]),
            PresharedKey::from_bytes([4; 32])
        );
        assert!(PresharedKey::default().is_zero());
        assert!(!PrivateKey::from_bytes([1; 32]).is_zero());
        let psk = PresharedKey::from_bytes([5; 32]);
        assert_eq!(PresharedKey::from_hex(&psk.to_hex()).unwrap(), psk);
        assert_eq!(PresharedKey::from_base64(&psk.to_base64()).unwrap(), psk);
    }

    #[test]
    fn secrets_are_redacted() {
        let k = PrivateKey::from_bytes([7; 32]);
        let shown = format!("{k:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&k.to_base64()));
        assert!(shown.contains(&k.public_key().fingerprint()));
        let p = PresharedKey::from_bytes([9; 32]);
        assert_eq!(format!("{p:?}"), "PresharedKey(<redacted>)");
    }
}
