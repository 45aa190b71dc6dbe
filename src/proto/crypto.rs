//! The whitepaper's primitives (section 5.4): HASH, MAC, HMAC, KDF_n, DH, AEAD and XAEAD.
//!
//! Handshake-time primitives use RustCrypto (`blake2`, `hmac`, `chacha20poly1305`); the
//! transport data path uses aws-lc (see `transport.rs`), which seals 1420-byte packets about
//! 4.5 times faster here (benches/README.md). All produce byte-identical output for the same
//! key and nonce.

use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::aead::consts::U16;
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use hmac::SimpleHmac;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Size of a Poly1305 tag.
pub const TAG_LEN: usize = 16;

/// `HASH(input)`: BLAKE2s-256 of the concatenation of `parts`.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `MAC(key, input)`: keyed BLAKE2s with a 16-byte output (mac1, mac2, cookies).
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // A BLAKE2s key is at most 32 bytes; every caller passes 16 or 32.
    let Ok(mut m) = <Blake2sMac<U16> as KeyInit>::new_from_slice(key) else {
        unreachable!("BLAKE2s MAC keys here are 16 or 32 bytes")
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// `HMAC(key, input)`: HMAC over BLAKE2s-256, as the whitepaper uses inside KDF.
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let Ok(mut m) = <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// `KDF_n(key, input)`: τ0 = HMAC(key, input); τi = HMAC(τ0, τ(i-1) || i); returns τ1..τn.
pub fn kdf<const N: usize>(key: &[u8; 32], input: &[u8]) -> [[u8; 32]; N] {
    let mut t0 = hmac(key, &[input]);
    let mut out = [[0u8; 32]; N];
    let mut prev: &[u8] = &[];
    let mut prev_buf = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = hmac(&t0, &[prev, &[(i + 1) as u8]]);
        prev_buf = *slot;
        prev = &prev_buf;
    }
    t0.zeroize();
    prev_buf.zeroize();
    out
}

/// Why a Diffie-Hellman result was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowOrderPoint;

/// `DH(private, public)`: X25519. An all-zero result (a low-order public point) is refused,
/// as the kernel and wireguard-go do, so a peer cannot force a known shared secret.
///
/// The ladder is aws-lc's (assembly, about 1.7x x25519-dalek's here); it clamps the scalar
/// exactly as RFC 7748 says, so the result is byte-identical (checked against the RFC 7748
/// vectors and x25519-dalek in the tests below).
pub fn dh(private: &[u8; 32], public: &[u8; 32]) -> Result<[u8; 32], LowOrderPoint> {
    #[cfg(fuzzing)]
    return super::dh_memo::memo(private, public, || dh_compute(private, public).ok())
        .ok_or(LowOrderPoint);
    #[cfg(not(fuzzing))]
    dh_compute(private, public)
}

fn dh_compute(private: &[u8; 32], public: &[u8; 32]) -> Result<[u8; 32], LowOrderPoint> {
    use aws_lc_rs::agreement::{PrivateKey, UnparsedPublicKey, X25519, agree};
    // Any 32 bytes are a valid X25519 private key, so the import cannot fail in practice;
    // treat a failure like a refused point rather than panicking.
    let key = PrivateKey::from_private_key(&X25519, private).map_err(|_| LowOrderPoint)?;
    let mut shared = [0u8; 32];
    // aws-lc refuses an all-zero result itself; the check below keeps the rule explicit.
    agree(
        &key,
        UnparsedPublicKey::new(&X25519, public),
        LowOrderPoint,
        |s| {
            shared.copy_from_slice(s);
            Ok(())
        },
    )?;
    if bool::from(shared.ct_eq(&[0u8; 32])) {
        return Err(LowOrderPoint);
    }
    Ok(shared)
}

/// `DH_PUBKEY(private)`: a fixed-base multiplication, one per handshake side for the
/// ephemeral key. aws-lc's takes about 6 µs here, against 11 µs for curve25519-dalek's
/// precomputed table and 40 µs for a generic ladder (benches/README.md), so one provider does
/// every X25519; the result is byte-identical (RFC 7748's vectors and x25519-dalek, in the
/// tests below).
pub fn dh_pubkey(private: &[u8; 32]) -> [u8; 32] {
    #[cfg(fuzzing)]
    {
        // Keyed with the base point's encoding (9), which no `dh` call can confuse: the
        // same scalar and point give the same product either way.
        let mut base = [0u8; 32];
        base[0] = 9;
        super::dh_memo::memo(private, &base, || Some(dh_pubkey_compute(private)))
            .unwrap_or_default()
    }
    #[cfg(not(fuzzing))]
    dh_pubkey_compute(private)
}

fn dh_pubkey_compute(private: &[u8; 32]) -> [u8; 32] {
    use aws_lc_rs::agreement::{PrivateKey, X25519};
    let mut out = [0u8; 32];
    // Any 32 bytes are an X25519 private key and its public key is 32 bytes, so neither step
    // fails; if one ever did, the all-zero key left here is a low-order point that every peer
    // refuses, which fails the handshake instead of the daemon.
    if let Ok(key) = PrivateKey::from_private_key(&X25519, private)
        && let Ok(public) = key.compute_public_key()
        && let Some(bytes) = public.as_ref().get(..32)
    {
        out.copy_from_slice(bytes);
    }
    out
}

/// The 96-bit AEAD nonce: 32 zero bits, then the 64-bit little-endian counter.
pub fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// Authentication failed: wrong key, tampered bytes or wrong associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AeadError;

/// `AEAD(key, counter, plaintext, ad)` in place: `buf` holds the plaintext followed by
/// `TAG_LEN` spare bytes, which receive the tag.
pub fn aead_seal(key: &[u8; 32], counter: u64, buf: &mut [u8], ad: &[u8]) {
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    let split = buf.len() - TAG_LEN;
    let (msg, tag_out) = buf.split_at_mut(split);
    let nonce = nonce_bytes(counter).into();
    // Lengths here are handshake-sized, far below the AEAD's limits.
    let Ok(tag) = cipher.encrypt_inout_detached(&nonce, ad, msg.into()) else {
        unreachable!("ChaCha20-Poly1305 accepts handshake-sized messages")
    };
    tag_out.copy_from_slice(&tag);
}

/// Inverse of [`aead_seal`]: `buf` holds ciphertext || tag; on success the first
/// `buf.len() - TAG_LEN` bytes are the plaintext.
pub fn aead_open(key: &[u8; 32], counter: u64, buf: &mut [u8], ad: &[u8]) -> Result<(), AeadError> {
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    let split = buf.len().checked_sub(TAG_LEN).ok_or(AeadError)?;
    let (msg, tag) = buf.split_at_mut(split);
    let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| AeadError)?;
    let nonce = nonce_bytes(counter).into();
    cipher
        .decrypt_inout_detached(&nonce, ad, msg.into(), &tag.into())
        .map_err(|_| AeadError)
}

/// `XAEAD(key, nonce, plaintext, ad)` in place (cookie replies): XChaCha20-Poly1305.
pub fn xaead_seal(key: &[u8; 32], nonce: &[u8; 24], buf: &mut [u8], ad: &[u8]) {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let split = buf.len() - TAG_LEN;
    let (msg, tag_out) = buf.split_at_mut(split);
    let Ok(tag) = cipher.encrypt_inout_detached(&(*nonce).into(), ad, msg.into()) else {
        unreachable!("XChaCha20-Poly1305 accepts cookie-sized messages")
    };
    tag_out.copy_from_slice(&tag);
}

/// Inverse of [`xaead_seal`].
pub fn xaead_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    buf: &mut [u8],
    ad: &[u8],
) -> Result<(), AeadError> {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let split = buf.len().checked_sub(TAG_LEN).ok_or(AeadError)?;
    let (msg, tag) = buf.split_at_mut(split);
    let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| AeadError)?;
    cipher
        .decrypt_inout_detached(&(*nonce).into(), ad, msg.into(), &tag.into())
        .map_err(|_| AeadError)
}

/// Constant-time equality of two byte strings of equal length (MACs, cookies, keys).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
    fn arr32(s: &str) -> [u8; 32] {
        unhex(s).try_into().unwrap()
    }

    #[test]
    fn rfc7748_x25519_vectors() {
        // Section 5.2, first test vector.
        let k = arr32("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
        let u = arr32("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
        assert_eq!(
            dh(&k, &u).unwrap().to_vec(),
            unhex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
        );
        // Section 6.1: Diffie-Hellman between Alice and Bob.
        let a = arr32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let b = arr32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        let a_pub = dh_pubkey(&a);
        let b_pub = dh_pubkey(&b);
        assert_eq!(
            b_pub.to_vec(),
            unhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = unhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(dh(&a, &b_pub).unwrap().to_vec(), shared);
        assert_eq!(dh(&b, &a_pub).unwrap().to_vec(), shared);
    }

    #[test]
    fn dh_matches_x25519_dalek_on_many_keys() {
        let mut k = [0u8; 32];
        let mut p = dh_pubkey(&[9u8; 32]);
        for i in 0..64u8 {
            k.iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = i.wrapping_mul(31).wrapping_add(j as u8));
            let ours = dh(&k, &p).unwrap();
            assert_eq!(ours, x25519_dalek::x25519(k, p), "key {i}");
            p = ours;
        }
    }

    #[test]
    fn dh_pubkey_matches_x25519_dalek_on_many_keys() {
        for i in 0..64u8 {
            let k: [u8; 32] = std::array::from_fn(|j| i.wrapping_mul(77).wrapping_add(j as u8));
            let theirs = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(k));
            assert_eq!(dh_pubkey(&k), theirs.to_bytes(), "key {i}");
        }
    }

    #[test]
    fn low_order_points_are_refused() {
        let k = [0x42u8; 32];
        // The zero point and the point of order 8 from the kernel's curve25519 selftest.
        let zero = [0u8; 32];
        let order8 = arr32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        assert_eq!(dh(&k, &zero), Err(LowOrderPoint));
        assert_eq!(dh(&k, &order8), Err(LowOrderPoint));
    }

    #[test]
    fn rfc8439_chacha20poly1305_vector() {
        // Section 2.8.2.
        let key = arr32("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
        let nonce = unhex("070000004041424344454647");
        let ad = unhex("50515253c0c1c2c3c4c5c6c7");
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let expected_ct = unhex(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
             3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
             92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
             3ff4def08e4b7a9de576d26586cec64b6116",
        );
        let expected_tag = unhex("1ae10b594f09e26a7e902ecbd0600691");
        // Our nonce layout is 4 zero bytes + LE counter; this vector's nonce has a non-zero
        // prefix, so check the cipher itself through the same crate calls.
        let cipher = ChaCha20Poly1305::new(&key.into());
        let mut buf = plaintext.to_vec();
        let n: [u8; 12] = nonce.clone().try_into().unwrap();
        let tag = cipher
            .encrypt_inout_detached(&n.into(), &ad, buf.as_mut_slice().into())
            .unwrap();
        assert_eq!(buf, expected_ct);
        assert_eq!(tag.to_vec(), expected_tag);

        // And through our wrapper with a counter-shaped nonce: round trip and tamper check.
        let mut sealed = plaintext.to_vec();
        sealed.extend_from_slice(&[0; TAG_LEN]);
        aead_seal(&key, 7, &mut sealed, &ad);
        let mut opened = sealed.clone();
        aead_open(&key, 7, &mut opened, &ad).unwrap();
        assert_eq!(&opened[..plaintext.len()], plaintext);
        let mut bad = sealed.clone();
        bad[3] ^= 1;
        assert_eq!(aead_open(&key, 7, &mut bad, &ad), Err(AeadError));
        assert_eq!(aead_open(&key, 8, &mut sealed.clone(), &ad), Err(AeadError));
    }

    #[test]
    fn xchacha20poly1305_vector() {
        // draft-irtf-cfrg-xchacha-03, appendix A.3.1.
        let key = arr32("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
        let nonce: [u8; 24] = unhex("404142434445464748494a4b4c4d4e4f5051525354555657")
            .try_into()
            .unwrap();
        let ad = unhex("50515253c0c1c2c3c4c5c6c7");
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let expected = unhex(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
             731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
             2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
             21f9664c97637da9768812f615c68b13b52e
             c0875924c1c7987947deafd8780acf49",
        );
        let mut buf = plaintext.to_vec();
        buf.extend_from_slice(&[0; TAG_LEN]);
        xaead_seal(&key, &nonce, &mut buf, &ad);
        assert_eq!(buf, expected);
        xaead_open(&key, &nonce, &mut buf, &ad).unwrap();
        assert_eq!(&buf[..plaintext.len()], plaintext);
    }

    #[test]
    fn blake2s_and_kdf_shapes() {
        // BLAKE2s-256("abc"), RFC 7693 appendix B.
        assert_eq!(
            hash(&[b"a", b"bc"]).to_vec(),
            unhex("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")
        );
        // KDF outputs chain: KDF2's first output equals KDF1's.
        let key = [3u8; 32];
        let [a] = kdf::<1>(&key, b"x");
        let [b, c] = kdf::<2>(&key, b"x");
        let [d, e, f] = kdf::<3>(&key, b"x");
        assert_eq!(a, b);
        assert_eq!((b, c), (d, e));
        assert_ne!(e, f);
    }
}
