//! Tests of the batched send and receive over loopback.

use super::*;
use crate::os::{bind_udp, set_udp_gro, udp_gso_supported};
use std::io::IoSlice;
use std::net::{IpAddr, Ipv6Addr, UdpSocket};
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

/// A receive's control area as the kernel lays it out: each (level, type, data) as one
/// control message, in order.
fn control_area(messages: &[(libc::c_int, libc::c_int, &[u8])]) -> CmsgBuf<RECV_CMSG_LEN> {
    let mut buf = CmsgBuf([0u8; RECV_CMSG_LEN]);
    let mut at = 0;
    for (level, kind, data) in messages {
        // SAFETY: CMSG_LEN/CMSG_SPACE are arithmetic only.
        let (len, space) = unsafe {
            (
                libc::CMSG_LEN(data.len() as u32) as usize,
                libc::CMSG_SPACE(data.len() as u32) as usize,
            )
        };
        assert!(at + space <= RECV_CMSG_LEN, "test control area too small");
        let header = libc::cmsghdr {
            cmsg_len: len as _,
            cmsg_level: *level,
            cmsg_type: *kind,
        };
        // SAFETY: the header is written (unaligned) within `buf`, checked just above; the
        // data follows it at CMSG_LEN - data.len(), inside the same CMSG_SPACE.
        unsafe {
            let base = buf.0.as_mut_ptr().add(at);
            std::ptr::write_unaligned(base.cast::<libc::cmsghdr>(), header);
            std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(len - data.len()), data.len());
        }
        at += space;
    }
    buf
}

/// Parses `area`'s first `len` bytes as a receive's control messages.
fn parse_area(area: &mut CmsgBuf<RECV_CMSG_LEN>, len: usize) -> Received {
    // SAFETY: all-zero bytes are a valid msghdr.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_control = (&raw mut *area).cast::<libc::c_void>();
    hdr.msg_controllen = len as _;
    // SAFETY: the area is `len` <= RECV_CMSG_LEN initialised bytes, aligned for cmsghdr,
    // holding whole messages laid out by `control_area` as the kernel does.
    unsafe { parse_control(&hdr) }
}

/// The bytes of a C struct, as the kernel copies it into a control message.
fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    let mut out = vec![0u8; std::mem::size_of::<T>()];
    // SAFETY: reads size_of::<T>() bytes of a live value into a buffer of that size. Only
    // used with the padding-free in_pktinfo, in6_pktinfo and c_int.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (value as *const T).cast::<u8>(),
            out.as_mut_ptr(),
            out.len(),
        );
    }
    out
}

fn pktinfo4(spec_dst: [u8; 4], addr: [u8; 4], ifindex: i32) -> libc::in_pktinfo {
    libc::in_pktinfo {
        ipi_ifindex: ifindex,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from_ne_bytes(spec_dst),
        },
        ipi_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr),
        },
    }
}

#[test]
fn gro_stride_and_local_address_are_parsed_side_by_side() {
    let stride: libc::c_int = 1452;
    let v4 = pktinfo4([192, 0, 2, 7], [192, 0, 2, 7], 2);
    let mut area = control_area(&[
        (libc::SOL_UDP, libc::UDP_GRO, &bytes_of(&stride)),
        (libc::IPPROTO_IP, libc::IP_PKTINFO, &bytes_of(&v4)),
    ]);
    let got = parse_area(
        &mut area,
        SEGMENT_SPACE.max(INT_LEN.next_multiple_of(8)) + PKTINFO4_SPACE,
    );
    assert_eq!(got.stride, Some(1452));
    assert_eq!(got.local, Some(IpAddr::from([192, 0, 2, 7])));

    // IPv6, first; and a message we did not ask for is skipped.
    let local6: Ipv6Addr = "2001:db8::7".parse().expect("addr");
    let v6 = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: local6.octets(),
        },
        ipi6_ifindex: 3,
    };
    let mark: libc::c_int = 7;
    let mut area = control_area(&[
        (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &bytes_of(&v6)),
        (libc::SOL_SOCKET, libc::SO_MARK, &bytes_of(&mark)),
        (libc::SOL_UDP, libc::UDP_GRO, &bytes_of(&stride)),
    ]);
    let got = parse_area(&mut area, RECV_CMSG_LEN.min(PKTINFO6_SPACE + 2 * 24));
    assert_eq!(got.local, Some(IpAddr::V6(local6)));
    assert_eq!(got.stride, Some(1452));

    // Nothing: neither. The unspecified address (no information) is no local address.
    let mut area = control_area(&[]);
    assert_eq!(parse_area(&mut area, 0), Received::default());
    let zero = pktinfo4([0; 4], [0; 4], 0);
    let mut area = control_area(&[(libc::IPPROTO_IP, libc::IP_PKTINFO, &bytes_of(&zero))]);
    assert_eq!(parse_area(&mut area, PKTINFO4_SPACE).local, None);
}

#[test]
fn a_control_message_too_short_for_its_type_is_ignored() {
    let v4 = pktinfo4([192, 0, 2, 7], [192, 0, 2, 7], 2);
    let short = &bytes_of(&v4)[..8];
    let mut area = control_area(&[(libc::IPPROTO_IP, libc::IP_PKTINFO, short)]);
    assert_eq!(parse_area(&mut area, RECV_CMSG_LEN.min(32)).local, None);
    let mut area = control_area(&[(libc::SOL_UDP, libc::UDP_GRO, &[1, 2])]);
    assert_eq!(parse_area(&mut area, 16).stride, None);
}

/// The control messages `build_control` wrote, as (level, type, data).
fn built(msg: &SendMsg<'_>) -> Vec<(libc::c_int, libc::c_int, Vec<u8>)> {
    let mut buf = CmsgBuf([0u8; SEND_CMSG_LEN]);
    let len = build_control(&mut buf, msg);
    assert!(len <= SEND_CMSG_LEN);
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        // SAFETY: `at` stays below `len`, within the buffer build_control wrote; the header
        // is read unaligned and its cmsg_len checked against the buffer before the data is
        // sliced out.
        let header =
            unsafe { std::ptr::read_unaligned(buf.0.as_ptr().add(at).cast::<libc::cmsghdr>()) };
        let clen = header.cmsg_len as usize;
        // SAFETY: arithmetic only.
        let (hdr_len, space) = unsafe {
            (
                libc::CMSG_LEN(0) as usize,
                libc::CMSG_SPACE((clen - libc::CMSG_LEN(0) as usize) as u32) as usize,
            )
        };
        assert!(at + clen <= SEND_CMSG_LEN);
        out.push((
            header.cmsg_level,
            header.cmsg_type,
            buf.0[at + hdr_len..at + clen].to_vec(),
        ));
        at += space;
    }
    assert_eq!(at, len, "the length covers the messages exactly");
    out
}

#[test]
fn sends_carry_the_segment_size_and_the_source_address() {
    let iov = [IoSlice::new(b"x")];
    let v4_to: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
    let mut msg = SendMsg {
        to: v4_to,
        iov: &iov,
        segment_size: 0,
        local: None,
    };
    assert!(
        built(&msg).is_empty(),
        "nothing to say: no control messages"
    );

    msg.segment_size = 1400;
    msg.local = Some(IpAddr::from([198, 51, 100, 9]));
    let v4 = built(&msg);
    assert_eq!(v4.len(), 2);
    assert_eq!((v4[0].0, v4[0].1), (libc::SOL_UDP, libc::UDP_SEGMENT));
    assert_eq!(v4[0].2, 1400u16.to_ne_bytes());
    assert_eq!((v4[1].0, v4[1].1), (libc::IPPROTO_IP, libc::IP_PKTINFO));
    assert_eq!(v4[1].2, bytes_of(&pktinfo4([198, 51, 100, 9], [0; 4], 0)));

    // The source alone; IPv6 with a global address: no interface.
    let local6: Ipv6Addr = "2001:db8::9".parse().expect("addr");
    let msg6 = SendMsg {
        to: "[2001:db8::1]:51820".parse().expect("addr"),
        iov: &iov,
        segment_size: 0,
        local: Some(IpAddr::V6(local6)),
    };
    let v6 = built(&msg6);
    assert_eq!(v6.len(), 1);
    assert_eq!((v6[0].0, v6[0].1), (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO));
    let want = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: local6.octets(),
        },
        ipi6_ifindex: 0,
    };
    assert_eq!(v6[0].2, bytes_of(&want));

    // A link-local source goes out on the interface the peer's address is scoped to.
    let ll: Ipv6Addr = "fe80::9".parse().expect("addr");
    let msg_ll = SendMsg {
        to: SocketAddr::V6(std::net::SocketAddrV6::new(
            "fe80::1".parse().expect("addr"),
            51820,
            0,
            5,
        )),
        segment_size: 1280,
        local: Some(IpAddr::V6(ll)),
        ..msg6
    };
    let got = built(&msg_ll);
    assert_eq!(got.len(), 2);
    let want = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: ll.octets(),
        },
        ipi6_ifindex: 5,
    };
    assert_eq!(got[1].2, bytes_of(&want));

    // A source of the other family cannot be used on this socket: left out.
    let mixed = SendMsg {
        local: Some(IpAddr::V6(local6)),
        ..msg
    };
    let got = built(&mixed);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, libc::UDP_SEGMENT);
}

/// A wildcard-bound IPv4 socket with the local address report on.
fn wildcard_v4() -> UdpSocket {
    let s = bind_udp("0.0.0.0:0".parse().expect("addr"), false).expect("bind");
    crate::os::set_recv_pktinfo(&s, false).expect("IP_PKTINFO");
    s
}

#[test]
fn receives_report_the_address_each_datagram_was_sent_to() {
    // All of 127/8 is this host's (on `lo`): a wildcard socket receives on each of them.
    let b = wildcard_v4();
    let port = b.local_addr().expect("addr").port();
    let a = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
    for last in [1u8, 3, 77] {
        a.send_to(&[last], SocketAddr::from(([127, 0, 0, last], port)))
            .expect("send");
    }
    let got = recv_all(&b, 3);
    let locals: Vec<_> = got.iter().map(|(_, m)| m.local).collect();
    assert_eq!(
        locals,
        [1u8, 3, 77].map(|l| Some(IpAddr::from([127, 0, 0, l])))
    );
}

#[test]
fn sends_leave_from_the_source_address_named() {
    let a = wildcard_v4();
    let b = wildcard_v4();
    let to = SocketAddr::from(([127, 0, 0, 1], b.local_addr().expect("addr").port()));
    let payloads = [[1u8; 40], [2u8; 40], [3u8; 40]];
    let iov: Vec<IoSlice<'_>> = payloads.iter().map(|p| IoSlice::new(p)).collect();
    // A GSO message and a plain one, each from another address of the host.
    let msgs = [
        SendMsg {
            to,
            iov: &iov[..2],
            segment_size: 40,
            local: Some(IpAddr::from([127, 0, 0, 5])),
        },
        SendMsg {
            to,
            iov: &iov[2..],
            segment_size: 0,
            local: Some(IpAddr::from([127, 0, 0, 6])),
        },
    ];
    assert_eq!(send_mmsg(&a, &msgs).expect("sendmmsg"), 2);
    let got = recv_all(&b, 3);
    let mut sources = Vec::new();
    for (data, m) in &got {
        for _ in data.chunks(m.stride.max(1)) {
            sources.push(m.src.map(|s| s.ip()));
        }
    }
    let five = Some(IpAddr::from([127, 0, 0, 5]));
    assert_eq!(sources, [five, five, Some(IpAddr::from([127, 0, 0, 6]))]);
}

#[test]
fn a_source_address_the_host_does_not_have_is_refused() {
    // What batch::local_unusable must recognise, per family: the address went away.
    let a = wildcard_v4();
    let iov = [IoSlice::new(b"gone")];
    let msg = SendMsg {
        to: "127.0.0.1:9".parse().expect("addr"),
        iov: &iov,
        segment_size: 0,
        local: Some(IpAddr::from([192, 0, 2, 1])),
    };
    let e = send_mmsg(&a, &[msg]).expect_err("192.0.2.1 is not ours");
    assert!(super::super::batch::local_unusable(&e), "IPv4: {e:?}");
    let Ok(a6) = bind_udp("[::1]:0".parse().expect("addr"), true) else {
        return; // no IPv6 here
    };
    let msg = SendMsg {
        to: "[::1]:9".parse().expect("addr"),
        local: Some("2001:db8::1".parse().expect("addr")),
        ..msg
    };
    let e = send_mmsg(&a6, &[msg]).expect_err("2001:db8::1 is not ours");
    assert!(super::super::batch::local_unusable(&e), "IPv6: {e:?}");
}
