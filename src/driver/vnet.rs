//! One TUN packet at a time with IFF_VNET_HDR, for the quiet case (an idle ping, an
//! interactive keystroke), without tun-rs's batch machinery.
//!
//! Why: `recv_multiple` reads into a separate 64 KiB buffer, checks every one of the pool's
//! ~200 output buffers before it copies the packet into the first, and `send_multiple` runs
//! the GRO tables (hashing, and an allocation per TCP packet) even for a single packet. After
//! an idle sleep all of that memory is cold, and those cache misses were the largest user-space
//! item of an idle round trip (see benches/README.md, "Profile (issue 14)"). Here a single
//! packet is read straight into its pool buffer in front of HEADROOM (the virtio-net header in
//! the last bytes of the headroom), and a single decrypted packet is written from where it was
//! decrypted, behind a zeroed header (what `send_multiple` writes for a packet it does not
//! coalesce). A GSO packet read here (the first of a burst) is split with tun-rs's
//! `gso_split`, after the same header checks `recv_multiple` makes.

use std::io;

use tun_rs::{SyncDevice, VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_LEN, VirtioNetHdr, gso_split};

use crate::proto::HEADROOM;

/// virtio_net.h: no segmentation; the checksum is partial (CHECKSUM_PARTIAL); TCP with ECN.
const GSO_NONE: u8 = 0;
const F_NEEDS_CSUM: u8 = 1;
const GSO_ECN: u8 = 0x80;

// The header must fit in the headroom, in front of the packet.
const _: () = assert!(VIRTIO_NET_HDR_LEN <= HEADROOM);

fn malformed(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one packet from `device` into `bufs[0]` at HEADROOM (a GSO packet: its segments into
/// `bufs[0..]`, through `raw`), with every checksum complete; returns how many packets,
/// their lengths in `sizes`. An error with an OS code is the kernel's (WouldBlock when
/// empty); one without is a malformed packet, dropped.
pub fn read_one(
    device: &SyncDevice,
    raw: &mut [u8],
    bufs: &mut [Box<[u8]>],
    sizes: &mut [usize],
) -> io::Result<usize> {
    let (hdr, len) = {
        let first = bufs.first_mut().ok_or_else(|| malformed("no buffer"))?;
        let room = first
            .get_mut(HEADROOM - VIRTIO_NET_HDR_LEN..)
            .ok_or_else(|| malformed("buffer too small"))?;
        let n = device.recv(room)?;
        if n <= VIRTIO_NET_HDR_LEN {
            return Err(malformed("shorter than the virtio-net header"));
        }
        let hdr = VirtioNetHdr::decode(&room[..VIRTIO_NET_HDR_LEN])?;
        let len = n - VIRTIO_NET_HDR_LEN;
        if hdr.gso_type == GSO_NONE {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                let packet = &mut room[VIRTIO_NET_HDR_LEN..n];
                complete_checksum(packet, hdr.csum_start, hdr.csum_offset)?;
            }
            let size = sizes.first_mut().ok_or_else(|| malformed("no size slot"))?;
            *size = len;
            return Ok(1);
        }
        // A GSO packet: its segments go to bufs[0..], so it moves out of bufs[0] first.
        let target = raw
            .get_mut(..len)
            .ok_or_else(|| malformed("GSO packet larger than the raw buffer"))?;
        target.copy_from_slice(&room[VIRTIO_NET_HDR_LEN..n]);
        (hdr, len)
    };
    split(&mut raw[..len], hdr, bufs, sizes)
}

/// The checksum of a CHECKSUM_PARTIAL packet: the field at `start + offset` holds the
/// pseudo-header sum; the sum over `packet[start..]` completes it.
pub fn complete_checksum(packet: &mut [u8], start: u16, offset: u16) -> io::Result<()> {
    let start = usize::from(start);
    let at = start + usize::from(offset);
    if at + 2 > packet.len() {
        return Err(malformed("checksum field outside the packet"));
    }
    let initial = u16::from_be_bytes([packet[at], packet[at + 1]]);
    packet[at] = 0;
    packet[at + 1] = 0;
    let sum = !tun_rs::checksum(&packet[start..], u64::from(initial));
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Splits a GSO packet into segments at HEADROOM of `bufs`. The kernel's `hdr_len` is not
/// trusted (it may cover a whole packet on the forward path): it is recomputed from the
/// transport header, as `recv_multiple` does.
fn split(
    raw: &mut [u8],
    mut hdr: VirtioNetHdr,
    bufs: &mut [Box<[u8]>],
    sizes: &mut [usize],
) -> io::Result<usize> {
    let is_v6 = match raw.first().map(|b| b >> 4) {
        Some(4) => false,
        Some(6) => true,
        _ => return Err(malformed("GSO packet is not IPv4 or IPv6")),
    };
    let transport = if hdr.gso_type & !GSO_ECN == VIRTIO_NET_HDR_GSO_UDP_L4 {
        8
    } else {
        let offset_byte = raw
            .get(usize::from(hdr.csum_start) + 12)
            .ok_or_else(|| malformed("GSO packet too short for its TCP header"))?;
        let tcp = u16::from(offset_byte >> 4) * 4;
        if !(20..=60).contains(&tcp) {
            return Err(malformed("TCP header length out of range"));
        }
        tcp
    };
    hdr.hdr_len = hdr
        .csum_start
        .checked_add(transport)
        .ok_or_else(|| malformed("header length overflows"))?;
    let csum_end = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
    if raw.len() < usize::from(hdr.hdr_len) || csum_end > raw.len() {
        return Err(malformed("GSO packet shorter than its headers"));
    }
    gso_split(raw, hdr, bufs, sizes, HEADROOM, is_v6)
}

/// Writes the packet `buf[range]` to `device` behind a zeroed virtio-net header (no
/// offload asked), which overwrites the `VIRTIO_NET_HDR_LEN` bytes in front of it (the
/// transport header of the message it was decrypted from, no longer needed).
pub fn write_one(
    device: &SyncDevice,
    buf: &mut [u8],
    range: std::ops::Range<usize>,
) -> io::Result<()> {
    let start = range
        .start
        .checked_sub(VIRTIO_NET_HDR_LEN)
        .ok_or_else(|| malformed("no room for the virtio-net header"))?;
    let framed = buf
        .get_mut(start..range.end)
        .ok_or_else(|| malformed("packet outside its buffer"))?;
    framed[..VIRTIO_NET_HDR_LEN].fill(0);
    device.send(framed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one's-complement sum of `data` folded to 16 bits (RFC 1071), written out plainly.
    fn rfc1071(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        // 20 bytes of "IP header", then a UDP header and an odd-length payload.
        let mut packet = vec![0u8; 20];
        packet.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 13, 0, 0]);
        packet.extend_from_slice(b"hello");
        // The pseudo-header part the kernel leaves in the field (any value will do here).
        let pseudo = 0xbeefu16;
        packet[26..28].copy_from_slice(&pseudo.to_be_bytes());
        complete_checksum(&mut packet, 20, 6).expect("in range");
        // Summing the transport part with its checksum gives the pseudo-header's complement.
        let total = {
            let s = u32::from(rfc1071(&packet[20..])) + u32::from(pseudo);
            ((s & 0xffff) + (s >> 16)) as u16
        };
        assert_eq!(total, 0xffff);
    }

    #[test]
    fn a_checksum_field_outside_the_packet_is_refused() {
        let mut packet = vec![0u8; 24];
        assert!(complete_checksum(&mut packet, 20, 6).is_err());
        assert!(complete_checksum(&mut packet, 30, 0).is_err());
    }

    #[test]
    fn gso_headers_are_checked_before_splitting() {
        let mut bufs = vec![vec![0u8; 2048].into_boxed_slice(); 4];
        let mut sizes = vec![0usize; 4];
        let hdr = VirtioNetHdr {
            gso_type: 1, // TCPv4
            gso_size: 100,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        // Not IP.
        let mut raw = vec![0u8; 200];
        assert!(split(&mut raw, hdr, &mut bufs, &mut sizes).is_err());
        // IPv4, but a TCP data offset of 4 bytes.
        raw[0] = 0x45;
        raw[32] = 0x10;
        assert!(split(&mut raw, hdr, &mut bufs, &mut sizes).is_err());
        // Too short for the TCP header at all.
        let mut short = vec![0x45u8; 30];
        assert!(split(&mut short, hdr, &mut bufs, &mut sizes).is_err());
    }
}
