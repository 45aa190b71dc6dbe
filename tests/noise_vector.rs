//! The cacophony known-answer vector for Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, run through the
//! same Noise code WireGuard's handshake uses (only the prologue and payloads differ).

use serde_json::Value;
use tandem::proto::crypto::{TAG_LEN, aead_open, aead_seal, dh, dh_pubkey};
use tandem::proto::noise::{self, Protocol};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vector hex")
}
fn key(v: &Value, field: &str) -> [u8; 32] {
    unhex(v[field].as_str().expect(field))
        .try_into()
        .expect("32 bytes")
}

#[test]
fn cacophony_ikpsk2_vector() {
    let text = include_str!("data/noise-IKpsk2_25519_ChaChaPoly_BLAKE2s.json");
    let all: Value = serde_json::from_str(text).expect("json");
    let v = &all[0];
    assert_eq!(v["protocol_name"], "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s");
    let prologue = unhex(v["init_prologue"].as_str().unwrap());
    let psk: [u8; 32] = unhex(v["init_psks"][0].as_str().unwrap())
        .try_into()
        .unwrap();
    let init_static = key(v, "init_static");
    let init_ephemeral = key(v, "init_ephemeral");
    let resp_static = key(v, "resp_static");
    let resp_ephemeral = key(v, "resp_ephemeral");
    let resp_public = key(v, "init_remote_static");
    assert_eq!(dh_pubkey(&resp_static), resp_public);
    let messages = v["messages"].as_array().unwrap();
    let msg = |i: usize| {
        (
            unhex(messages[i]["payload"].as_str().unwrap()),
            unhex(messages[i]["ciphertext"].as_str().unwrap()),
        )
    };

    let protocol = Protocol::new(noise::CONSTRUCTION, &prologue);
    let responder_hash = protocol.hash_with_responder(&resp_public);
    let init_public = dh_pubkey(&init_static);
    let ss = dh(&init_static, &resp_public).unwrap();

    // Message 0: initiator -> responder.
    let (payload0, cipher0) = msg(0);
    let mut out0 = vec![0u8; noise::initiation_body_len(payload0.len())];
    let init_state = noise::write_initiation(
        &protocol,
        &responder_hash,
        &resp_public,
        &init_public,
        &ss,
        init_ephemeral,
        &payload0,
        &mut out0,
    )
    .unwrap();
    assert_eq!(hex::encode(&out0), hex::encode(&cipher0), "message 0");

    let partial =
        noise::read_initiation_static(&protocol, &responder_hash, &resp_static, &cipher0).unwrap();
    assert_eq!(partial.initiator_static, init_public);
    let ss_r = dh(&resp_static, &partial.initiator_static).unwrap();
    let mut got0 = vec![0u8; payload0.len()];
    let resp_state = noise::read_initiation_payload(partial, &ss_r, &cipher0, &mut got0).unwrap();
    assert_eq!(got0, payload0);

    // Message 1: responder -> initiator.
    let (payload1, cipher1) = msg(1);
    let mut out1 = vec![0u8; noise::response_body_len(payload1.len())];
    let resp_keys =
        noise::write_response(resp_state, resp_ephemeral, &psk, &payload1, &mut out1).unwrap();
    assert_eq!(hex::encode(&out1), hex::encode(&cipher1), "message 1");
    let mut got1 = vec![0u8; payload1.len()];
    let init_keys =
        noise::read_response(&init_state, &init_static, &psk, &cipher1, &mut got1).unwrap();
    assert_eq!(got1, payload1);

    let expected_hash = key(v, "handshake_hash");
    assert_eq!(init_keys.handshake_hash, expected_hash);
    assert_eq!(resp_keys.handshake_hash, expected_hash);
    assert_eq!(init_keys.sending, resp_keys.receiving);
    assert_eq!(init_keys.receiving, resp_keys.sending);

    // Transport messages alternate initiator, responder with per-direction counters.
    let mut counters = [0u64; 2];
    for (i, m) in messages.iter().enumerate().skip(2) {
        let payload = unhex(m["payload"].as_str().unwrap());
        let cipher = unhex(m["ciphertext"].as_str().unwrap());
        let from_initiator = i % 2 == 0;
        let (send, recv) = if from_initiator {
            (&init_keys.sending, &resp_keys.receiving)
        } else {
            (&resp_keys.sending, &init_keys.receiving)
        };
        let n = &mut counters[usize::from(!from_initiator)];
        let mut buf = payload.clone();
        buf.extend_from_slice(&[0; TAG_LEN]);
        aead_seal(send, *n, &mut buf, &[]);
        assert_eq!(
            hex::encode(&buf),
            hex::encode(&cipher),
            "transport message {i}"
        );
        aead_open(recv, *n, &mut buf, &[]).unwrap();
        assert_eq!(&buf[..payload.len()], &payload[..]);
        *n += 1;
    }
}

#[test]
fn tampered_initiation_and_wrong_psk_fail_cleanly() {
    let protocol = Protocol::wireguard();
    let (i_priv, r_priv) = ([1u8; 32], [2u8; 32]);
    let (i_pub, r_pub) = (dh_pubkey(&i_priv), dh_pubkey(&r_priv));
    let rh = protocol.hash_with_responder(&r_pub);
    let ss = dh(&i_priv, &r_pub).unwrap();
    let mut body = vec![0u8; noise::initiation_body_len(12)];
    let st = noise::write_initiation(
        &protocol, &rh, &r_pub, &i_pub, &ss, [3u8; 32], &[9; 12], &mut body,
    )
    .unwrap();
    for i in 0..body.len() {
        let mut bad = body.clone();
        bad[i] ^= 0x80;
        let ok = noise::read_initiation_static(&protocol, &rh, &r_priv, &bad).and_then(|p| {
            let mut out = [0u8; 12];
            noise::read_initiation_payload(p, &ss, &bad, &mut out)
        });
        assert!(ok.is_err(), "flipped byte {i} accepted");
    }
    let p = noise::read_initiation_static(&protocol, &rh, &r_priv, &body).unwrap();
    let mut ts = [0u8; 12];
    let rs = noise::read_initiation_payload(p, &ss, &body, &mut ts).unwrap();
    let mut resp = vec![0u8; noise::response_body_len(0)];
    noise::write_response(rs, [4u8; 32], &[5u8; 32], &[], &mut resp).unwrap();
    // The initiator with a different preshared key refuses the response.
    assert_eq!(
        noise::read_response(&st, &i_priv, &[6u8; 32], &resp, &mut []).err(),
        Some(noise::NoiseError::Decrypt)
    );
    assert!(noise::read_response(&st, &i_priv, &[5u8; 32], &resp, &mut []).is_ok());
}
