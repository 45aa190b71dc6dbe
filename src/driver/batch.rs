//! Batched UDP output and input around the kernel's segmentation offload.
//!
//! Sending: sealed datagrams go out in `sendmmsg` batches. Consecutive datagrams of equal
//! length to the same endpoint (the usual case: the segments of one TCP burst) form one
//! message with UDP_SEGMENT set, whose buffers the kernel reads through an `iovec` each
//! (no copy), and cuts into datagrams as late as possible, often only at the receiving
//! socket. Receiving: one `recvmmsg` message may be several datagrams back to back (UDP_GRO);
//! [`segments`] splits it by the stride the kernel reported.
//!
//! Each datagram may name the local address it leaves from (the peer's remembered source, see
//! `proto::Endpoint`); a GSO run shares it, since all its datagrams go to one peer. When the
//! kernel refuses that address (it was removed from this host), the message goes again
//! without one and the caller hears of it, so the core forgets it for that peer.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::time::Duration;

use super::mmsg::{self, MAX_MMSG, MAX_SEND_IOV, SendMsg};
use super::udp::{GSO_MAX_SEGMENTS, UdpSockets};
use crate::os;
use crate::proto::PeerId;

/// Most bytes of payload one UDP send may carry: a 16-bit IPv4 total length less the IPv4
/// and UDP headers (IPv6 allows a little more; the smaller limit serves both).
pub const GSO_MAX_BYTES: usize = 65535 - 20 - 8;

/// Longest wait for room in a full socket send buffer before the rest of a batch is dropped
/// (counted as errors): UDP is lossy, and a loop stuck on one socket would starve the others
/// and the timers. With 8 MiB buffers a full one drains in well under this.
const SEND_WAIT: Duration = Duration::from_millis(100);

/// One sealed datagram waiting to be sent: `bufs[buf][..len]` goes to `endpoint`, from
/// `local` when set. `peer` identifies whose it is to the caller (for forgetting a source
/// address that no longer works); [`send_sealed`] does not look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    pub buf: usize,
    pub len: usize,
    pub endpoint: SocketAddr,
    pub local: Option<IpAddr>,
    pub peer: Option<PeerId>,
}

/// What a [`send_sealed`] call did, in datagrams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOutcome {
    pub sent: u64,
    pub errors: u64,
    /// Messages sent with GSO (several datagrams each).
    pub gso_messages: u64,
    /// A socket's send buffer stayed full for [`SEND_WAIT`]: the rest of the batch was
    /// dropped without waiting again, so one call never waits longer than that.
    pub stalled: bool,
}

/// The end (exclusive) of the run of datagrams starting at `start` that can go as one GSO
/// send: same endpoint, same length (the last may be shorter, and then ends the run), at most
/// `max_segments` of them and [`GSO_MAX_BYTES`] in all. `start + 1` when GSO is off
/// (`max_segments` <= 1) or nothing can join.
pub fn gso_run_end(sealed: &[Sealed], start: usize, max_segments: usize) -> usize {
    let Some(first) = sealed.get(start) else {
        return start;
    };
    let mut end = start + 1;
    let mut total = first.len;
    while let Some(next) = sealed.get(end) {
        if end - start >= max_segments
            || next.endpoint != first.endpoint
            || next.local != first.local
            || next.len > first.len
            || next.len == 0
            || total + next.len > GSO_MAX_BYTES
        {
            break;
        }
        total += next.len;
        end += 1;
        if next.len < first.len {
            break;
        }
    }
    end
}

/// The datagrams in a received message of `len` bytes with the kernel's `stride` (UDP_GRO):
/// consecutive ranges of `stride` bytes, the last possibly shorter.
pub fn segments(len: usize, stride: usize) -> impl Iterator<Item = Range<usize>> {
    let stride = if stride == 0 { len.max(1) } else { stride };
    (0..len)
        .step_by(stride)
        .map(move |start| start..(start + stride).min(len))
}

/// Whether a failed GSO send means this path or kernel cannot do GSO at all, rather than this
/// one message being unsendable as one (then it is retried datagram by datagram). Linux
/// reports it as EIO (the outgoing device has no checksum offload) or, from some drivers and
/// paths, EINVAL; quinn-udp turns GSO off on both. Either way the message itself is retried
/// datagram by datagram, so a wrong guess costs GSO, never packets.
fn gso_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL))
}

/// Whether a failed send that named a source address means that address is unusable: not
/// (or no longer) one of this host's. IPv4's route lookup reports EINVAL (older kernels; the
/// kernel module retries without the source on exactly that) or ENETUNREACH (newer ones,
/// checked in a_source_address_the_host_does_not_have_is_refused); IPv6 EINVAL from the
/// control-message check or EADDRNOTAVAIL. Where the errno has another cause (a GSO refusal
/// is EINVAL too, a network really unreachable), the retry without the source fails again
/// the same way, and the source is learnt again from the peer's next packet: a wrong guess
/// costs one system call and one forgotten address, never a packet.
pub fn local_unusable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EADDRNOTAVAIL | libc::ENETUNREACH)
    )
}

/// Sends `sealed` (in order) from `bufs` through the socket of each endpoint's family.
/// `gso_segments` is the most datagrams per GSO message (0 or 1: no GSO); it is set to 0
/// when the kernel turns out to refuse GSO. Waits (up to [`SEND_WAIT`] each time) while a
/// socket's buffer is full. `local_gone` hears of each datagram (the first of its message)
/// whose source address the kernel refused; the message was sent again without it.
pub fn send_sealed(
    udp: &UdpSockets,
    gso_segments: &mut usize,
    bufs: &[Box<[u8]>],
    sealed: &[Sealed],
    local_gone: &mut dyn FnMut(&Sealed),
) -> SendOutcome {
    let mut out = SendOutcome::default();
    let mut next = 0;
    while next < sealed.len() {
        if sealed
            .get(next)
            .and_then(|s| udp.route(s.endpoint))
            .is_none()
        {
            out.errors += 1;
            tracing::debug!("no UDP socket of this address family");
            next += 1;
            continue;
        }
        // The scratch arrays are zeroed on every call (about 10 KiB at full size): the last
        // few datagrams, which is every send when idle, get small ones.
        next = if sealed.len() - next <= SMALL_SEND {
            send_some::<SMALL_SEND, SMALL_SEND>(
                udp,
                gso_segments,
                bufs,
                sealed,
                next,
                &mut out,
                local_gone,
            )
        } else {
            send_some::<MAX_MMSG, MAX_SEND_IOV>(
                udp,
                gso_segments,
                bufs,
                sealed,
                next,
                &mut out,
                local_gone,
            )
        };
    }
    out
}

/// Datagrams left for which [`send_sealed`] uses small scratch arrays.
const SMALL_SEND: usize = 4;

/// Sends one `sendmmsg` worth (at most `M` messages, `V` datagrams) of `sealed[next..]`
/// through the socket of `sealed[next]`'s family (the caller checked there is one), stopping
/// at the first datagram for another socket; returns where the next call starts.
fn send_some<const M: usize, const V: usize>(
    udp: &UdpSockets,
    gso_segments: &mut usize,
    bufs: &[Box<[u8]>],
    sealed: &[Sealed],
    mut next: usize,
    out: &mut SendOutcome,
    local_gone: &mut dyn FnMut(&Sealed),
) -> usize {
    let base = next;
    let Some((socket, _)) = sealed.get(next).and_then(|s| udp.route(s.endpoint)) else {
        return next + 1;
    };
    // (first datagram, end, target) of each message.
    let mut runs = [(0usize, 0usize, None::<SocketAddr>); M];
    let mut nruns = 0;
    let mut niov = 0;
    while nruns < M && next < sealed.len() {
        let Some((s, to)) = sealed.get(next).and_then(|d| udp.route(d.endpoint)) else {
            break; // handled by the caller
        };
        if !std::ptr::eq(s, socket) {
            break;
        }
        let end = gso_run_end(sealed, next, *gso_segments).min(next + V - niov);
        if end <= next {
            break; // iovecs used up
        }
        runs[nruns] = (next, end, Some(to));
        nruns += 1;
        niov += end - next;
        next = end;
    }
    let mut iov = [IoSlice::new(&[]); V];
    for (k, d) in sealed[base..next].iter().enumerate() {
        iov[k] = IoSlice::new(bufs.get(d.buf).and_then(|b| b.get(..d.len)).unwrap_or(&[]));
    }
    let mut msgs = [SendMsg {
        to: SocketAddr::from(([0, 0, 0, 0], 0)),
        iov: &[],
        segment_size: 0,
        local: None,
    }; M];
    for (m, &(start, end, to)) in msgs.iter_mut().zip(&runs[..nruns]) {
        let Some(to) = to else { continue };
        let segment_size = if end - start > 1 {
            u16::try_from(sealed[start].len).unwrap_or(0)
        } else {
            0
        };
        *m = SendMsg {
            to,
            iov: &iov[start - base..end - base],
            segment_size,
            local: sealed[start].local,
        };
    }
    send_messages(socket, &mut msgs[..nruns], gso_segments, out, &mut |k| {
        if let Some(&(start, _, _)) = runs.get(k) {
            local_gone(&sealed[start]);
        }
    });
    next
}

/// Sends `msgs` (all through `socket`), waiting for room in the socket buffer as needed. A
/// message whose source address the kernel refuses is reported to `local_gone` (by its
/// index in `msgs`) and sent again without it.
fn send_messages(
    socket: &UdpSocket,
    msgs: &mut [SendMsg<'_>],
    gso_segments: &mut usize,
    out: &mut SendOutcome,
    local_gone: &mut dyn FnMut(usize),
) {
    let mut done = 0;
    while done < msgs.len() {
        match mmsg::send_mmsg(socket, &msgs[done..]) {
            Err(e) if msgs[done].local.is_some() && local_unusable(&e) => {
                // The address went away: as the kernel module and wireguard-go do, the same
                // message goes again from whatever source the routes pick.
                tracing::debug!(endpoint = %msgs[done].to, local = ?msgs[done].local, error = %e, "source address refused, sending without it");
                msgs[done].local = None;
                local_gone(done);
            }
            Ok(k) if k > 0 => {
                for m in &msgs[done..done + k] {
                    out.sent += m.iov.len() as u64;
                    if m.segment_size > 0 {
                        out.gso_messages += 1;
                    }
                }
                done += k;
            }
            Ok(_) => {
                // The kernel took nothing and reported nothing: skip the message rather
                // than try it forever.
                out.errors += msgs[done].iov.len() as u64;
                done += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if out.stalled || !matches!(os::wait_writable(socket, SEND_WAIT), Ok(true)) {
                    let dropped: usize = msgs[done..].iter().map(|m| m.iov.len()).sum();
                    out.errors += dropped as u64;
                    out.stalled = true;
                    tracing::debug!(dropped, "UDP send buffer stayed full, datagrams dropped");
                    return;
                }
            }
            Err(e) => {
                let m = msgs[done];
                let index = done;
                done += 1;
                if m.segment_size == 0 {
                    out.errors += m.iov.len() as u64;
                    tracing::debug!(endpoint = %m.to, error = %e, "UDP send failed");
                    continue;
                }
                if gso_unsupported(&e) && *gso_segments > 1 {
                    tracing::warn!(error = %e, "UDP GSO refused by the kernel, sending without it");
                    *gso_segments = 0;
                } else {
                    tracing::debug!(endpoint = %m.to, error = %e, "UDP GSO send failed, sending datagram by datagram");
                }
                // The same datagrams, one message each.
                let mut singles = [m; GSO_MAX_SEGMENTS];
                let n = m.iov.len().min(GSO_MAX_SEGMENTS);
                for (s, one) in singles.iter_mut().zip(m.iov.chunks(1)) {
                    *s = SendMsg {
                        to: m.to,
                        iov: one,
                        segment_size: 0,
                        local: m.local,
                    };
                }
                out.errors += (m.iov.len() - n) as u64;
                send_messages(socket, &mut singles[..n], gso_segments, out, &mut |_| {
                    local_gone(index)
                });
            }
        }
    }
}

/// Sends one datagram (from `local` when set), waiting up to [`SEND_WAIT`] for room when the
/// socket's buffer is full, unless a wait already timed out this turn (`stalled`, then set
/// by a timeout). The caller handles a refused source address ([`local_unusable`]).
pub fn send_one(
    socket: &UdpSocket,
    to: SocketAddr,
    local: Option<IpAddr>,
    datagram: &[u8],
    stalled: &mut bool,
) -> io::Result<usize> {
    let iov = [IoSlice::new(datagram)];
    let msg = [SendMsg {
        to,
        iov: &iov,
        segment_size: 0,
        local,
    }];
    loop {
        match mmsg::send_mmsg(socket, &msg).map(|_| datagram.len()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if *stalled || !os::wait_writable(socket, SEND_WAIT)? {
                    *stalled = true;
                    return Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(lens: &[usize], endpoint: &str) -> Vec<Sealed> {
        let endpoint: SocketAddr = endpoint.parse().expect("addr");
        lens.iter()
            .enumerate()
            .map(|(buf, &len)| Sealed {
                buf,
                len,
                endpoint,
                local: None,
                peer: None,
            })
            .collect()
    }

    /// The GSO runs `gso_run_end` cuts `s` into, as (start, end) pairs.
    fn runs(s: &[Sealed], max: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let end = gso_run_end(s, i, max);
            assert!(end > i, "no progress at {i}");
            out.push((i, end));
            i = end;
        }
        out
    }

    #[test]
    fn equal_lengths_to_one_endpoint_form_one_run_and_a_shorter_one_ends_it() {
        let s = sealed(&[100, 100, 100, 60, 100, 100], "192.0.2.1:1");
        assert_eq!(runs(&s, 64), [(0, 4), (4, 6)]);
        // A longer datagram cannot join a run of shorter ones.
        let s = sealed(&[60, 100, 100], "192.0.2.1:1");
        assert_eq!(runs(&s, 64), [(0, 1), (1, 3)]);
    }

    #[test]
    fn gso_off_gives_single_datagrams() {
        let s = sealed(&[100, 100, 100], "192.0.2.1:1");
        assert_eq!(runs(&s, 0), [(0, 1), (1, 2), (2, 3)]);
        assert_eq!(runs(&s, 1), [(0, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn gso_is_given_up_on_eio_and_einval_only() {
        for errno in [libc::EIO, libc::EINVAL] {
            assert!(
                gso_unsupported(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        // A message too big, a full buffer, an unreachable peer: this send failed, GSO did not.
        for errno in [
            libc::EMSGSIZE,
            libc::EAGAIN,
            libc::ENOBUFS,
            libc::ENETUNREACH,
            libc::EPERM,
        ] {
            assert!(
                !gso_unsupported(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        assert!(!gso_unsupported(&io::Error::other("no errno")));
    }

    #[test]
    fn runs_respect_the_segment_and_byte_limits_and_endpoints() {
        let s = sealed(&[10; 10], "192.0.2.1:1");
        assert_eq!(runs(&s, 4), [(0, 4), (4, 8), (8, 10)]);
        // 1452-byte datagrams: 45 fit in 65507 bytes.
        let s = sealed(&[1452; 100], "192.0.2.1:1");
        let r = runs(&s, 64);
        assert_eq!(r[0], (0, 45));
        assert!(r.iter().all(|&(a, b)| (b - a) * 1452 <= GSO_MAX_BYTES));
        let mut s = sealed(&[100; 4], "192.0.2.1:1");
        s[2].endpoint = "192.0.2.2:1".parse().expect("addr");
        assert_eq!(runs(&s, 64), [(0, 2), (2, 3), (3, 4)]);
    }

    /// Sends a mixed batch through real sockets on loopback and checks that every receiver
    /// gets exactly its datagrams, in order.
    fn send_mixed(gso: usize) -> SendOutcome {
        {
            let udp = UdpSockets::bind(None, 0).expect("bind");
            let r1 = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let r2 = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let (e1, e2) = (r1.local_addr().expect("a"), r2.local_addr().expect("a"));
            // Lengths and endpoints: a GSO run with a short tail, a lone one to e2, a run to
            // e2, then longer ones to e1 again.
            let plan: Vec<(usize, SocketAddr)> = [100, 100, 100, 60]
                .iter()
                .map(|&l| (l, e1))
                .chain([(80, e2), (90, e2), (90, e2), (300, e1), (300, e1)])
                .collect();
            let bufs: Vec<Box<[u8]>> = plan
                .iter()
                .enumerate()
                .map(|(i, &(len, _))| vec![i as u8 + 1; len].into_boxed_slice())
                .collect();
            let sealed: Vec<Sealed> = plan
                .iter()
                .enumerate()
                .map(|(buf, &(len, endpoint))| Sealed {
                    buf,
                    len,
                    endpoint,
                    local: None,
                    peer: None,
                })
                .collect();
            let mut gso_segments = gso;
            let out = send_sealed(&udp, &mut gso_segments, &bufs, &sealed, &mut |_| {
                panic!("no source address was named")
            });
            assert_eq!(gso_segments, gso, "GSO stays on over loopback");
            for (r, ep) in [(&r1, e1), (&r2, e2)] {
                r.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .expect("timeout");
                let mut buf = [0u8; 2048];
                for (i, &(len, to)) in plan.iter().enumerate() {
                    if to != ep {
                        continue;
                    }
                    let n = r.recv(&mut buf).expect("datagram");
                    assert_eq!(n, len, "datagram {i}");
                    assert!(buf[..n].iter().all(|&b| b == i as u8 + 1), "datagram {i}");
                }
            }
            out
        }
    }

    #[test]
    fn mixed_batches_arrive_whole_and_in_order_with_and_without_gso() {
        let with = send_mixed(GSO_MAX_SEGMENTS);
        assert_eq!(with.sent, 9);
        assert_eq!(with.errors, 0);
        // [100 100 100 60] to e1, [90 90] to e2 and [300 300] to e1 go as GSO sends.
        assert_eq!(with.gso_messages, 3);
        let without = send_mixed(0);
        assert_eq!(without.sent, 9);
        assert_eq!(without.gso_messages, 0);
    }

    #[test]
    fn a_refused_source_is_reported_and_the_datagrams_go_without_it() {
        let udp = UdpSockets::bind(None, 0).expect("bind");
        let r = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        let port = r.local_addr().expect("addr").port();
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        // A GSO run of three from an address this host lacks, then one from 127.0.0.4 (of
        // `lo`, usable), then one more from the lacking address.
        let gone = Some(IpAddr::from([192, 0, 2, 1]));
        let ok = Some(IpAddr::from([127, 0, 0, 4]));
        let plan = [(100, gone), (100, gone), (100, gone), (50, ok), (60, gone)];
        let bufs: Vec<Box<[u8]>> = plan
            .iter()
            .enumerate()
            .map(|(i, &(len, _))| vec![i as u8; len].into_boxed_slice())
            .collect();
        let sealed: Vec<Sealed> = plan
            .iter()
            .enumerate()
            .map(|(buf, &(len, local))| Sealed {
                buf,
                len,
                endpoint: to,
                local,
                peer: None,
            })
            .collect();
        let mut reported = Vec::new();
        let mut gso = GSO_MAX_SEGMENTS;
        let out = send_sealed(&udp, &mut gso, &bufs, &sealed, &mut |s| {
            reported.push(s.buf)
        });
        assert_eq!((out.sent, out.errors), (5, 0), "{out:?}");
        assert_eq!(
            gso, GSO_MAX_SEGMENTS,
            "a refused source is not a refused GSO"
        );
        // Once per message: the GSO run (by its first datagram) and the last one.
        assert_eq!(reported, [0, 4]);
        r.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..plan.len() {
            let (n, from) = r.recv_from(&mut buf).expect("datagram");
            got.push((n, buf[0], from.ip()));
        }
        let lo: IpAddr = [127, 0, 0, 1].into();
        let four: IpAddr = [127, 0, 0, 4].into();
        assert_eq!(
            got,
            [
                (100, 0, lo),
                (100, 1, lo),
                (100, 2, lo),
                (50, 3, four),
                (60, 4, lo)
            ]
        );
    }

    #[test]
    fn segments_split_by_stride() {
        let v: Vec<_> = segments(250, 100).collect();
        assert_eq!(v, [0..100, 100..200, 200..250]);
        let v: Vec<_> = segments(200, 100).collect();
        assert_eq!(v, [0..100, 100..200]);
        let v: Vec<_> = segments(80, 0).collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0], 0..80);
        assert_eq!(segments(0, 100).count(), 0);
    }
}
