//! Tests of the batched send and receive over loopback.

use super::*;
use crate::os::{bind_udp, set_udp_gro, udp_gso_supported};
use std::io::IoSlice;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn pair() -> (UdpSocket, UdpSocket) {
    let a = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
    let b = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
    (a, b)
}

/// Receives until `want` datagrams (GRO segments counted by stride) arrived, or 5 s.
fn recv_all(sock: &UdpSocket, want: usize) -> Vec<(Vec<u8>, RecvMeta)> {
    let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 65536]).collect();
    let mut meta = [RecvMeta::default(); 8];
    let mut got = Vec::new();
    let mut datagrams = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while datagrams < want {
        match recv_mmsg(sock, &mut bufs, &mut meta) {
            Ok(n) => {
                for i in 0..n {
                    let m = meta[i];
                    datagrams += m.len.div_ceil(m.stride.max(1));
                    got.push((bufs[i][..m.len].to_vec(), m));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "only {datagrams} of {want} arrived"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("recvmmsg: {e}"),
        }
    }
    got
}

#[test]
fn small_receives_take_what_fits_and_leave_the_rest() {
    let (a, b) = pair();
    let to = b.local_addr().expect("addr");
    for i in 0..6u8 {
        a.send_to(&[i; 10], to).expect("send");
    }
    // Loopback delivers synchronously, but allow the queue a moment anyway.
    std::thread::sleep(Duration::from_millis(20));
    let mut bufs: Vec<Vec<u8>> = (0..SMALL_MMSG).map(|_| vec![0u8; 64]).collect();
    let mut meta = [RecvMeta::default(); SMALL_MMSG];
    let first = recv_mmsg(&b, &mut bufs, &mut meta).expect("first receive");
    assert_eq!(first, SMALL_MMSG);
    for (i, (buf, m)) in bufs.iter().zip(&meta).enumerate() {
        assert_eq!((m.len, buf[0]), (10, i as u8));
    }
    let second = recv_mmsg(&b, &mut bufs, &mut meta).expect("second receive");
    assert_eq!(second, 6 - SMALL_MMSG);
    assert_eq!(bufs[0][0], SMALL_MMSG as u8);
    let empty = recv_mmsg(&b, &mut bufs, &mut meta);
    assert!(
        matches!(&empty, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "{empty:?}"
    );
}

#[test]
fn sendmmsg_and_recvmmsg_carry_several_messages_in_order() {
    let (a, b) = pair();
    let to = b.local_addr().expect("addr");
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = payloads.iter().map(|p| [IoSlice::new(p)]).collect();
    let msgs: Vec<SendMsg<'_>> = iovs
        .iter()
        .map(|iov| SendMsg {
            to,
            iov,
            segment_size: 0,
            local: None,
        })
        .collect();
    assert_eq!(send_mmsg(&a, &msgs).expect("sendmmsg"), 5);
    let got = recv_all(&b, 5);
    let from = a.local_addr().expect("addr");
    for (i, (data, meta)) in got.iter().enumerate() {
        assert_eq!(data, &payloads[i]);
        assert_eq!(meta.src, Some(from));
        assert_eq!(meta.stride, meta.len);
        assert!(!meta.truncated);
    }
}

#[test]
fn sends_of_every_scratch_size_arrive_whole_with_their_source() {
    // send_mmsg uses a small scratch array up to SMALL_MMSG messages and the full one
    // above; recv_mmsg copies each source out of an uninitialised buffer.
    let (a, b) = pair();
    let to = b.local_addr().expect("addr");
    let from = a.local_addr().expect("addr");
    for n in [1usize, SMALL_MMSG, SMALL_MMSG + 1, MAX_MMSG] {
        let payloads: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 20 + i]).collect();
        let iovs: Vec<[IoSlice<'_>; 1]> = payloads.iter().map(|p| [IoSlice::new(p)]).collect();
        let msgs: Vec<SendMsg<'_>> = iovs
            .iter()
            .map(|iov| SendMsg {
                to,
                iov,
                segment_size: 0,
                local: None,
            })
            .collect();
        let mut sent = 0;
        while sent < n {
            sent += send_mmsg(&a, &msgs[sent..]).expect("sendmmsg");
        }
        let got = recv_all(&b, n);
        assert_eq!(got.len(), n, "{n} messages sent");
        for (i, (data, meta)) in got.iter().enumerate() {
            assert_eq!(data, &payloads[i], "message {i} of {n}");
            assert_eq!(meta.src, Some(from), "source of message {i} of {n}");
        }
    }
}

#[test]
fn gso_send_arrives_as_separate_datagrams_or_a_gro_batch() {
    let (a, b) = pair();
    assert!(
        udp_gso_supported(&a),
        "this kernel lacks UDP_SEGMENT (4.18+)"
    );
    // Three 100-byte segments and a 40-byte tail, from four separate buffers.
    let parts: Vec<Vec<u8>> = vec![vec![1; 100], vec![2; 100], vec![3; 100], vec![4; 40]];
    let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let to = b.local_addr().expect("addr");
    let msg = SendMsg {
        to,
        iov: &iov,
        segment_size: 100,
        local: None,
    };
    // Without GRO on the receiver: four datagrams.
    assert_eq!(send_mmsg(&a, &[msg]).expect("sendmmsg with GSO"), 1);
    let got = recv_all(&b, 4);
    let lens: Vec<usize> = got.iter().map(|(d, _)| d.len()).collect();
    assert_eq!(lens, [100, 100, 100, 40]);
    for (i, (d, _)) in got.iter().enumerate() {
        assert!(d.iter().all(|&x| usize::from(x) == i + 1));
    }
    // With GRO on: the same data, possibly coalesced, split back by the stride.
    set_udp_gro(&b, true).expect("UDP_GRO");
    assert_eq!(send_mmsg(&a, &[msg]).expect("sendmmsg with GSO"), 1);
    let got = recv_all(&b, 4);
    let mut segments = Vec::new();
    for (d, m) in &got {
        assert!(m.stride > 0);
        segments.extend(d.chunks(m.stride).map(<[u8]>::to_vec));
    }
    assert_eq!(segments, parts);
}

#[test]
fn truncation_is_reported() {
    let (a, b) = pair();
    a.send_to(&[7u8; 300], b.local_addr().expect("addr"))
        .expect("send");
    let mut bufs = [vec![0u8; 100]];
    let mut meta = [RecvMeta::default(); 1];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match recv_mmsg(&b, &mut bufs, &mut meta) {
            Ok(1) => break,
            Ok(n) => panic!("{n} messages"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("recvmmsg: {e}"),
        }
    }
    assert!(meta[0].truncated);
}

/// `raw` laid out as the kernel writes a source address: `fields` at their offsets, zeros
/// elsewhere.
fn storage(fields: &[(usize, &[u8])]) -> [u8; STORAGE_LEN] {
    let mut raw = [0u8; STORAGE_LEN];
    for (at, bytes) in fields {
        raw[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    raw
}

#[test]
fn source_addresses_are_read_at_the_c_offsets() {
    use std::mem::offset_of;
    let v4 = storage(&[
        (0, &(libc::AF_INET as libc::sa_family_t).to_ne_bytes()),
        (
            offset_of!(libc::sockaddr_in, sin_port),
            &51820u16.to_be_bytes(),
        ),
        (offset_of!(libc::sockaddr_in, sin_addr), &[192, 0, 2, 7]),
    ]);
    assert_eq!(
        socket_addr(&v4),
        Some("192.0.2.7:51820".parse().expect("addr"))
    );
    let ip: std::net::Ipv6Addr = "fe80::1".parse().expect("addr");
    let v6 = storage(&[
        (0, &(libc::AF_INET6 as libc::sa_family_t).to_ne_bytes()),
        (
            offset_of!(libc::sockaddr_in6, sin6_port),
            &443u16.to_be_bytes(),
        ),
        (
            offset_of!(libc::sockaddr_in6, sin6_flowinfo),
            &7u32.to_ne_bytes(),
        ),
        (offset_of!(libc::sockaddr_in6, sin6_addr), &ip.octets()),
        (
            offset_of!(libc::sockaddr_in6, sin6_scope_id),
            &3u32.to_ne_bytes(),
        ),
    ]);
    assert_eq!(
        socket_addr(&v6),
        Some(SocketAddr::V6(std::net::SocketAddrV6::new(ip, 443, 7, 3)))
    );
    let unix = storage(&[(0, &(libc::AF_UNIX as libc::sa_family_t).to_ne_bytes())]);
    assert_eq!(socket_addr(&unix), None);
    assert_eq!(socket_addr(&[0; STORAGE_LEN]), None);
}

#[test]
fn ipv6_sources_survive_the_round_trip() {
    let bind = |addr: &str| bind_udp(addr.parse().expect("addr"), true);
    let (a, b) = match (bind("[::1]:0"), bind("[::1]:0")) {
        (Ok(a), Ok(b)) => (a, b),
        // A kernel or namespace without IPv6 cannot run this check.
        (Err(e), _) | (_, Err(e)) => {
            assert!(
                matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                ),
                "{e}"
            );
            return;
        }
    };
    let iov = [IoSlice::new(b"six")];
    let msg = SendMsg {
        to: b.local_addr().expect("addr"),
        iov: &iov,
        segment_size: 0,
        local: None,
    };
    assert_eq!(send_mmsg(&a, &[msg]).expect("sendmmsg"), 1);
    let got = recv_all(&b, 1);
    assert_eq!(got[0].0, b"six");
    assert_eq!(got[0].1.src, Some(a.local_addr().expect("addr")));
}
