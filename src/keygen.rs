//! `tandem genkey`, `pubkey` and `genpsk`: keys as base64 lines, exactly as `wg` prints them.
//!
//! Randomness comes from the operating system (getrandom through `rand`'s `OsRng`); the core
//! itself never draws any.

use std::io;

use rand::SeedableRng;
use rand::TryRngCore;
use rand::rngs::{OsRng, StdRng};

use crate::proto::{KeyError, PresharedKey, PrivateKey};

/// `N` bytes from the operating system's CSPRNG.
pub fn os_random<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| io::Error::other(format!("the OS random number generator failed: {e}")))?;
    Ok(bytes)
}

/// A CSPRNG seeded once from the OS.
fn rng() -> io::Result<StdRng> {
    Ok(StdRng::from_seed(os_random()?))
}

/// A fresh private key (clamped, as `wg genkey` prints it).
pub fn generate_private_key() -> io::Result<PrivateKey> {
    Ok(PrivateKey::generate(&mut rng()?))
}

/// A fresh preshared key.
pub fn generate_preshared_key() -> io::Result<PresharedKey> {
    Ok(PresharedKey::generate(&mut rng()?))
}

/// `wg genkey`: a new private key in base64.
pub fn genkey() -> io::Result<String> {
    Ok(generate_private_key()?.to_base64())
}

/// `wg genpsk`: a new preshared key in base64.
pub fn genpsk() -> io::Result<String> {
    Ok(generate_preshared_key()?.to_base64())
}

/// `wg pubkey`: the public key (base64) of the base64 private key in `input` (surrounding
/// whitespace, such as the newline `genkey` prints, is ignored).
pub fn pubkey(input: &str) -> Result<String, KeyError> {
    Ok(PrivateKey::from_base64(input.trim())?
        .public_key()
        .to_base64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PublicKey;

    #[test]
    fn genkey_pubkey_round_trip_and_clamping() {
        let private = genkey().expect("genkey");
        assert_eq!(private.len(), 44, "32 bytes of standard base64");
        let key = PrivateKey::from_base64(&private).expect("valid base64 key");
        let bytes = key.as_bytes();
        assert_eq!(bytes[0] & 7, 0, "low bits cleared");
        assert_eq!(bytes[31] & 0xc0, 0x40, "top bit cleared, next set");
        let public = pubkey(&format!("{private}\n")).expect("pubkey");
        assert_eq!(
            PublicKey::from_base64(&public).expect("public key"),
            key.public_key()
        );
        assert_ne!(genkey().expect("genkey"), private, "fresh keys differ");
    }

    #[test]
    fn pubkey_matches_rfc7748() {
        // RFC 7748 section 6.1, Alice: private 77076d0a..., public 8520f009....
        let alice = PrivateKey::from_hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        )
        .expect("hex");
        let public = pubkey(&alice.to_base64()).expect("pubkey");
        assert_eq!(
            PublicKey::from_base64(&public).expect("b64").to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn pubkey_rejects_garbage() {
        assert_eq!(pubkey("not a key"), Err(KeyError::Base64));
        assert_eq!(pubkey("AAAA"), Err(KeyError::Length(3)));
    }

    #[test]
    fn genpsk_is_32_random_bytes() {
        let a = genpsk().expect("genpsk");
        let b = genpsk().expect("genpsk");
        assert_eq!(a.len(), 44);
        assert_ne!(a, b);
        assert!(PresharedKey::from_base64(&a).is_ok());
    }
}
