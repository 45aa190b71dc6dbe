//! Handshake messages on the wire: framing, the Noise steps of `noise.rs`, and mac1/mac2.
//! (whitepaper 5.4.2 `create/consume_initiation`, 5.4.3 `create/consume_response`)

use super::cookie::CookieChecker;
use super::error::DropReason;
use super::keys::{PrivateKey, PublicKey};
use super::messages::{
    INITIATION_LEN, MESSAGE_INITIATION, MESSAGE_RESPONSE, RESPONSE_LEN, initiation, read_u32,
    response, write_type,
};
use super::noise::{
    self, InitiatorState, NoiseError, Protocol, ResponderPartial, ResponderState, SessionKeys,
};
use super::peer::Peer;
use super::tai64n::Tai64N;
use super::time::Now;

/// Our static identity and what derives from it.
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub(crate) struct Identity {
    pub private: PrivateKey,
    pub public: PublicKey,
    /// HASH(H0 || S_pub_ours): the responder's hash after `<- s`.
    pub own_hash: [u8; 32],
    pub checker: CookieChecker,
}

impl Identity {
    pub fn new(private: PrivateKey, protocol: &Protocol) -> Self {
        let public = private.public_key();
        Identity {
            own_hash: protocol.hash_with_responder(public.as_bytes()),
            checker: CookieChecker::new(public.as_bytes()),
            private,
            public,
        }
    }
}

fn noise_drop(e: NoiseError) -> DropReason {
    match e {
        NoiseError::LowOrderPoint => DropReason::LowOrderPoint,
        NoiseError::Decrypt | NoiseError::Length => DropReason::HandshakeDecrypt,
    }
}

/// create_initiation: msg = type || sender || e || static || timestamp || mac1 || mac2.
pub(crate) fn create_initiation(
    protocol: &Protocol,
    identity: &Identity,
    peer: &mut Peer,
    local_index: u32,
    ephemeral: [u8; 32],
    now: Now,
    out: &mut [u8; INITIATION_LEN],
) -> Result<InitiatorState, DropReason> {
    write_type(out, MESSAGE_INITIATION);
    out[initiation::SENDER..initiation::SENDER + 4].copy_from_slice(&local_index.to_le_bytes());
    let timestamp = Tai64N::from_unix(now.unix);
    let state = noise::write_initiation(
        protocol,
        &peer.responder_hash,
        peer.public_key.as_bytes(),
        identity.public.as_bytes(),
        &peer.static_static,
        ephemeral,
        timestamp.as_bytes(),
        &mut out[initiation::BODY],
    )
    .map_err(noise_drop)?;
    peer.cookie.add_macs(out, now.monotonic);
    Ok(state)
}

/// consume_initiation, first half: `e, es, s` reveal the initiator's static key.
pub(crate) fn read_initiation_static(
    protocol: &Protocol,
    identity: &Identity,
    msg: &[u8; INITIATION_LEN],
) -> Result<ResponderPartial, DropReason> {
    noise::read_initiation_static(
        protocol,
        &identity.own_hash,
        identity.private.as_bytes(),
        &msg[initiation::BODY],
    )
    .map_err(noise_drop)
}

/// consume_initiation, second half: `ss` and the timestamp, with the peer's precomputed DH.
pub(crate) fn read_initiation_payload(
    partial: ResponderPartial,
    peer: &Peer,
    msg: &[u8; INITIATION_LEN],
) -> Result<(ResponderState, Tai64N), DropReason> {
    let mut ts = [0u8; Tai64N::LEN];
    let state = noise::read_initiation_payload(
        partial,
        &peer.static_static,
        &msg[initiation::BODY],
        &mut ts,
    )
    .map_err(noise_drop)?;
    Ok((state, Tai64N(ts)))
}

/// The sender index of an initiation or response.
pub(crate) fn sender_index(msg: &[u8]) -> u32 {
    read_u32(msg, 4)
}

/// create_response: msg = type || sender || receiver || e || empty || mac1 || mac2.
pub(crate) fn create_response(
    state: ResponderState,
    peer: &mut Peer,
    local_index: u32,
    remote_index: u32,
    ephemeral: [u8; 32],
    now: Now,
    out: &mut [u8; RESPONSE_LEN],
) -> Result<SessionKeys, DropReason> {
    write_type(out, MESSAGE_RESPONSE);
    out[response::SENDER..response::SENDER + 4].copy_from_slice(&local_index.to_le_bytes());
    out[response::RECEIVER..response::RECEIVER + 4].copy_from_slice(&remote_index.to_le_bytes());
    let keys = noise::write_response(
        state,
        ephemeral,
        peer.preshared_key.as_bytes(),
        &[],
        &mut out[response::BODY],
    )
    .map_err(noise_drop)?;
    peer.cookie.add_macs(out, now.monotonic);
    Ok(keys)
}

/// consume_response against our initiation in flight.
pub(crate) fn consume_response(
    identity: &Identity,
    peer: &Peer,
    state: &InitiatorState,
    msg: &[u8; RESPONSE_LEN],
) -> Result<SessionKeys, DropReason> {
    noise::read_response(
        state,
        identity.private.as_bytes(),
        peer.preshared_key.as_bytes(),
        &msg[response::BODY],
        &mut [],
    )
    .map_err(noise_drop)
}
