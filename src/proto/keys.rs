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
    use std::fmt::Write as _;
    let mut s = String::with_capacity(64);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A Curve25519 private key (clamped when used, as X25519 does).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PrivateKey(bytes)
    }
    /// A fresh key from the caller's RNG, clamped like `wg genkey` prints it.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(bytes)
    }
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_base64(text).map(PrivateKey)
    }
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        decode_hex(text).map(PrivateKey)
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
    pub fn is_zero(&self) -> bool {
        self.0.ct_eq(&[0u8; 32]).into()
    }
    pub fn public_key(&self) -> PublicKey {
        PublicKey(super::crypto::dh_pubkey(&self.0))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted>, public {})", self.public_key())
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for PrivateKey {}

/// A Curve25519 public key. `Display` prints a short fingerprint (the first 8 base64
/// characters, as `wg` users recognise them); `to_base64` prints the whole key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_base64(text).map(PublicKey)
    }
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        decode_hex(text).map(PublicKey)
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

/// The optional symmetric key mixed in at the `psk` token; all zeros when a peer has none.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey([u8; 32]);

impl PresharedKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PresharedKey(bytes)
    }
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        PresharedKey(bytes)
    }
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_base64(text).map(PresharedKey)
    }
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        decode_hex(text).map(PresharedKey)
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
    pub fn is_zero(&self) -> bool {
        self.0.ct_eq(&[0u8; 32]).into()
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for PresharedKey {}

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
    fn secrets_are_redacted() {
        let k = PrivateKey::from_bytes([7; 32]);
        let shown = format!("{k:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&k.to_base64()));
        let p = PresharedKey::from_bytes([9; 32]);
        assert!(!format!("{p:?}").contains(&p.to_base64()));
    }
}
