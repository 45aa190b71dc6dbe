//! Minimal inner packets: an IP header (no options, protocol UDP, no checksums: the core
//! reads only version, addresses and lengths) and a payload.

/// An IPv4 packet from `src` to `dst` carrying `payload`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..].copy_from_slice(payload);
    p
}

/// An IPv6 packet from `src` to `dst` carrying `payload`.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    p[40..].copy_from_slice(payload);
    p
}

/// `len` bytes that depend on `tag` and on their position, so a swapped, shifted or
/// truncated packet shows.
pub fn payload(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag))
        .collect()
}

/// The message type byte of a WireGuard datagram (0 for an empty one).
pub fn ty(datagram: &[u8]) -> u8 {
    datagram.first().copied().unwrap_or(0)
}
