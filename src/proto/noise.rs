//! Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, the handshake pattern WireGuard runs:
//!
//! ```text
//!   <- s
//!   ...
//!   -> e, es, s, ss
//!   <- e, ee, se, psk
//! ```
//!
//! The prologue and the payloads are parameters, so the same code runs WireGuard (prologue =
//! the identifier, payload = a TAI64N timestamp, then an empty payload) and the cacophony
//! known-answer vector. Names follow the whitepaper: `C` is the chaining key `ck`, `H` the
//! hash `h`. This layer knows nothing of message framing, indices or MACs (`handshake.rs`).

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::crypto::{
    self, AeadError, LowOrderPoint, TAG_LEN, aead_open, aead_seal, dh, dh_pubkey, hash, kdf,
};

/// Why a handshake message was refused by the Noise layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseError {
    /// A Diffie-Hellman result was all zeros.
    LowOrderPoint,
    /// An AEAD tag did not verify.
    Decrypt,
    /// The message or payload buffer has the wrong length.
    Length,
}

impl From<LowOrderPoint> for NoiseError {
    fn from(_: LowOrderPoint) -> Self {
        NoiseError::LowOrderPoint
    }
}
impl From<AeadError> for NoiseError {
    fn from(_: AeadError) -> Self {
        NoiseError::Decrypt
    }
}

/// The state before the first token: `C = HASH(name)` (name > 32 bytes), `H = HASH(C || prologue)`.
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub struct Protocol {
    initial_chaining_key: [u8; 32],
    initial_hash: [u8; 32],
}

/// WireGuard's construction string, which is also the Noise protocol name.
pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's identifier, mixed in as the Noise prologue.
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";

impl Protocol {
    pub fn new(name: &[u8], prologue: &[u8]) -> Self {
        // Noise InitializeSymmetric: a name longer than HASHLEN is hashed, shorter is padded.
        let ck = if name.len() <= 32 {
            let mut padded = [0u8; 32];
            padded[..name.len()].copy_from_slice(name);
            padded
        } else {
            hash(&[name])
        };
        let h = hash(&[&ck, prologue]);
        Protocol {
            initial_chaining_key: ck,
            initial_hash: h,
        }
    }

    pub fn wireguard() -> Self {
        Protocol::new(CONSTRUCTION, IDENTIFIER)
    }

    /// `H = HASH(H || S_pub_r)`: the pre-message `<- s` for a responder's static key.
    /// The responder computes this once for its own key; an initiator once per peer.
    pub fn hash_with_responder(&self, responder_static: &[u8; 32]) -> [u8; 32] {
        hash(&[&self.initial_hash, responder_static])
    }

    pub fn initial_chaining_key(&self) -> &[u8; 32] {
        &self.initial_chaining_key
    }
}

/// Length of the Noise body of the first message for a payload of `payload_len` bytes.
pub const fn initiation_body_len(payload_len: usize) -> usize {
    32 + 32 + TAG_LEN + payload_len + TAG_LEN
}

/// Length of the Noise body of the second message.
pub const fn response_body_len(payload_len: usize) -> usize {
    32 + payload_len + TAG_LEN
}

/// The initiator between sending `-> e, es, s, ss` and reading the response.
#[derive(Zeroize, ZeroizeOnDrop)]
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub struct InitiatorState {
    chaining_key: [u8; 32],
    hash: [u8; 32],
    ephemeral_private: [u8; 32],
}

/// Transport keys after `Split()`, plus the final handshake hash (for channel binding tests).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    pub sending: [u8; 32],
    pub receiving: [u8; 32],
    pub handshake_hash: [u8; 32],
}

/// Initiator: `-> e, es, s, ss` followed by the encrypted payload, written to `out`
/// (exactly `initiation_body_len(payload.len())` bytes).
///
/// `responder_hash` is `protocol.hash_with_responder(S_pub_r)`; `static_static` is the
/// precomputed `DH(S_priv_i, S_pub_r)`.
#[allow(clippy::too_many_arguments)]
pub fn write_initiation(
    protocol: &Protocol,
    responder_hash: &[u8; 32],
    responder_static: &[u8; 32],
    static_public: &[u8; 32],
    static_static: &[u8; 32],
    ephemeral_private: [u8; 32],
    payload: &[u8],
    out: &mut [u8],
) -> Result<InitiatorState, NoiseError> {
    if out.len() != initiation_body_len(payload.len()) {
        return Err(NoiseError::Length);
    }
    let (e_out, rest) = out.split_at_mut(32);
    let (s_out, p_out) = rest.split_at_mut(32 + TAG_LEN);
    let mut state = InitiatorState {
        chaining_key: protocol.initial_chaining_key,
        hash: *responder_hash,
        ephemeral_private,
    };
    let ck = &mut state.chaining_key;
    let h = &mut state.hash;

    // e: E_pub_i = DH_PUBKEY(E_priv_i); C = KDF1(C, E_pub_i); H = HASH(H || E_pub_i)
    let e_pub = dh_pubkey(&state.ephemeral_private);
    e_out.copy_from_slice(&e_pub);
    [*ck] = kdf::<1>(ck, &e_pub);
    *h = hash(&[h, &e_pub]);

    // es: (C, κ) = KDF2(C, DH(E_priv_i, S_pub_r)); static = AEAD(κ, 0, S_pub_i, H); H = HASH(H || static)
    let mut es = dh(&state.ephemeral_private, responder_static)?;
    let [c, mut key] = kdf::<2>(ck, &es);
    es.zeroize();
    *ck = c;
    s_out[..32].copy_from_slice(static_public);
    aead_seal(&key, 0, s_out, h);
    *h = hash(&[h, s_out]);

    // ss: (C, κ) = KDF2(C, DH(S_priv_i, S_pub_r)); payload = AEAD(κ, 0, payload, H); H = HASH(H || payload)
    if crypto::ct_eq(static_static, &[0u8; 32]) {
        key.zeroize();
        return Err(NoiseError::LowOrderPoint);
    }
    let [c, key2] = kdf::<2>(ck, static_static);
    key.zeroize();
    key = key2;
    *ck = c;
    p_out[..payload.len()].copy_from_slice(payload);
    aead_seal(&key, 0, p_out, h);
    *h = hash(&[h, p_out]);
    key.zeroize();
    Ok(state)
}

/// The responder after `e, es, s` of an initiation: the initiator's static key is known, the
/// payload (after `ss`) not yet. Splitting here lets the caller look the peer up (and refuse
/// unknown keys) before the second Diffie-Hellman.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ResponderPartial {
    chaining_key: [u8; 32],
    hash: [u8; 32],
    pub initiator_ephemeral: [u8; 32],
    pub initiator_static: [u8; 32],
}

/// Responder: read `e, es, s` from the first `32 + 48` bytes of `body`.
/// `own_hash` is `protocol.hash_with_responder(own S_pub)`.
pub fn read_initiation_static(
    protocol: &Protocol,
    own_hash: &[u8; 32],
    static_private: &[u8; 32],
    body: &[u8],
) -> Result<ResponderPartial, NoiseError> {
    let (Some(e), Some(enc_static)) = (body.get(..32), body.get(32..32 + 32 + TAG_LEN)) else {
        return Err(NoiseError::Length);
    };
    let mut partial = ResponderPartial {
        chaining_key: protocol.initial_chaining_key,
        hash: *own_hash,
        initiator_ephemeral: e.try_into().map_err(|_| NoiseError::Length)?,
        initiator_static: [0u8; 32],
    };
    let ck = &mut partial.chaining_key;
    let h = &mut partial.hash;
    let e_pub = partial.initiator_ephemeral;

    // e: C = KDF1(C, E_pub_i); H = HASH(H || E_pub_i)
    [*ck] = kdf::<1>(ck, &e_pub);
    *h = hash(&[h, &e_pub]);

    // es: (C, κ) = KDF2(C, DH(S_priv_r, E_pub_i)); S_pub_i = AEAD-open(κ, 0, static, H)
    let mut es = dh(static_private, &e_pub)?;
    let [c, mut key] = kdf::<2>(ck, &es);
    es.zeroize();
    *ck = c;
    let mut buf = [0u8; 32 + TAG_LEN];
    buf.copy_from_slice(enc_static);
    let opened = aead_open(&key, 0, &mut buf, h);
    key.zeroize();
    opened?;
    partial.initiator_static.copy_from_slice(&buf[..32]);
    buf.zeroize();
    // H = HASH(H || static)
    *h = hash(&[h, enc_static]);
    Ok(partial)
}

/// The responder after reading a whole initiation, ready to answer.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ResponderState {
    chaining_key: [u8; 32],
    hash: [u8; 32],
    pub initiator_ephemeral: [u8; 32],
    pub initiator_static: [u8; 32],
}

/// Responder: `ss` and the payload, from the bytes after `e, s` in `body`; the plaintext goes
/// to `payload_out` (exactly the ciphertext length minus the tag).
pub fn read_initiation_payload(
    mut partial: ResponderPartial,
    static_static: &[u8; 32],
    body: &[u8],
    payload_out: &mut [u8],
) -> Result<ResponderState, NoiseError> {
    let enc_payload = body.get(32 + 32 + TAG_LEN..).ok_or(NoiseError::Length)?;
    if enc_payload.len() != payload_out.len() + TAG_LEN {
        return Err(NoiseError::Length);
    }
    if crypto::ct_eq(static_static, &[0u8; 32]) {
        return Err(NoiseError::LowOrderPoint);
    }
    // ss: (C, κ) = KDF2(C, DH(S_priv_r, S_pub_i)); payload = AEAD-open(κ, 0, payload, H)
    let [c, mut key] = kdf::<2>(&partial.chaining_key, static_static);
    partial.chaining_key = c;
    let opened = open_into(&key, &partial.hash, enc_payload, payload_out);
    key.zeroize();
    opened?;
    // H = HASH(H || payload)
    let h = hash(&[&partial.hash, enc_payload]);
    Ok(ResponderState {
        chaining_key: partial.chaining_key,
        hash: h,
        initiator_ephemeral: partial.initiator_ephemeral,
        initiator_static: partial.initiator_static,
    })
}

/// Open `ciphertext` (with tag) under `key`, nonce 0 and `ad`, into `out` without touching the
/// caller's input (the input stays intact when authentication fails).
fn open_into(
    key: &[u8; 32],
    ad: &[u8; 32],
    ciphertext: &[u8],
    out: &mut [u8],
) -> Result<(), NoiseError> {
    // Handshake payloads are tiny (a 12-byte timestamp); the cacophony vector uses < 64.
    let mut buf = [0u8; 256];
    let work = buf.get_mut(..ciphertext.len()).ok_or(NoiseError::Length)?;
    work.copy_from_slice(ciphertext);
    let result = aead_open(key, 0, work, ad);
    if result.is_ok() {
        out.copy_from_slice(&work[..ciphertext.len() - TAG_LEN]);
    }
    buf.zeroize();
    Ok(result?)
}

/// Responder: `<- e, ee, se, psk` and the encrypted payload into `out`
/// (exactly `response_body_len(payload.len())` bytes); returns the transport keys.
pub fn write_response(
    state: ResponderState,
    ephemeral_private: [u8; 32],
    preshared_key: &[u8; 32],
    payload: &[u8],
    out: &mut [u8],
) -> Result<SessionKeys, NoiseError> {
    if out.len() != response_body_len(payload.len()) {
        return Err(NoiseError::Length);
    }
    let mut e_priv = ephemeral_private;
    let mut ck = state.chaining_key;
    let mut h = state.hash;
    let (e_out, p_out) = out.split_at_mut(32);

    // e: E_pub_r = DH_PUBKEY(E_priv_r); C = KDF1(C, E_pub_r); H = HASH(H || E_pub_r)
    let e_pub = dh_pubkey(&e_priv);
    e_out.copy_from_slice(&e_pub);
    [ck] = kdf::<1>(&ck, &e_pub);
    h = hash(&[&h, &e_pub]);

    let result = (|| {
        // ee: C = KDF1(C, DH(E_priv_r, E_pub_i))
        let mut ee = dh(&e_priv, &state.initiator_ephemeral)?;
        [ck] = kdf::<1>(&ck, &ee);
        ee.zeroize();
        // se: C = KDF1(C, DH(E_priv_r, S_pub_i))
        let mut se = dh(&e_priv, &state.initiator_static)?;
        [ck] = kdf::<1>(&ck, &se);
        se.zeroize();
        Ok::<(), NoiseError>(())
    })();
    e_priv.zeroize();
    result?;

    // psk: (C, τ, κ) = KDF3(C, Q); H = HASH(H || τ)
    let [c, mut tau, mut key] = kdf::<3>(&ck, preshared_key);
    ck = c;
    h = hash(&[&h, &tau]);
    tau.zeroize();
    // empty: AEAD(κ, 0, payload, H); H = HASH(H || empty)
    p_out[..payload.len()].copy_from_slice(payload);
    aead_seal(&key, 0, p_out, &h);
    key.zeroize();
    h = hash(&[&h, p_out]);

    // (T_recv_r, T_send_r) = KDF2(C, ε): the initiator's sending key is our receiving key.
    let [t1, t2] = kdf::<2>(&ck, &[]);
    ck.zeroize();
    Ok(SessionKeys {
        sending: t2,
        receiving: t1,
        handshake_hash: h,
    })
}

/// Initiator: read `<- e, ee, se, psk` and the payload from `body`; the plaintext goes to
/// `payload_out` (exactly the ciphertext length minus the tag). The state is consumed only on
/// success, so a forged response leaves the handshake waiting for the real one.
pub fn read_response(
    state: &InitiatorState,
    static_private: &[u8; 32],
    preshared_key: &[u8; 32],
    body: &[u8],
    payload_out: &mut [u8],
) -> Result<SessionKeys, NoiseError> {
    let (Some(e), Some(enc_payload)) = (body.get(..32), body.get(32..)) else {
        return Err(NoiseError::Length);
    };
    if enc_payload.len() != payload_out.len() + TAG_LEN {
        return Err(NoiseError::Length);
    }
    let e_pub: [u8; 32] = e.try_into().map_err(|_| NoiseError::Length)?;
    let mut ck = state.chaining_key;
    let mut h = state.hash;

    // e: C = KDF1(C, E_pub_r); H = HASH(H || E_pub_r)
    [ck] = kdf::<1>(&ck, &e_pub);
    h = hash(&[&h, &e_pub]);
    // ee: C = KDF1(C, DH(E_priv_i, E_pub_r))
    let mut ee = dh(&state.ephemeral_private, &e_pub)?;
    [ck] = kdf::<1>(&ck, &ee);
    ee.zeroize();
    // se: C = KDF1(C, DH(S_priv_i, E_pub_r))
    let mut se = dh(static_private, &e_pub)?;
    [ck] = kdf::<1>(&ck, &se);
    se.zeroize();
    // psk: (C, τ, κ) = KDF3(C, Q); H = HASH(H || τ)
    let [c, mut tau, mut key] = kdf::<3>(&ck, preshared_key);
    ck = c;
    h = hash(&[&h, &tau]);
    tau.zeroize();
    // empty: AEAD-open(κ, 0, empty, H); H = HASH(H || empty)
    let opened = open_into(&key, &h, enc_payload, payload_out);
    key.zeroize();
    if let Err(e) = opened {
        ck.zeroize();
        return Err(e);
    }
    h = hash(&[&h, enc_payload]);
    // (T_send_i, T_recv_i) = KDF2(C, ε)
    let [t1, t2] = kdf::<2>(&ck, &[]);
    ck.zeroize();
    Ok(SessionKeys {
        sending: t1,
        receiving: t2,
        handshake_hash: h,
    })
}
