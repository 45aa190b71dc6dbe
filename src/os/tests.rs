//! Tests of the process and socket calls, against the running kernel.

use super::*;

#[test]
fn enter_netns_reports_a_missing_path() {
    let err = enter_netns(Path::new("/run/netns/tandem-no-such-namespace-for-test"))
        .expect_err("a missing namespace file must be an error");
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

#[test]
fn enter_netns_rejects_a_file_that_is_not_a_namespace() {
    // The kernel checks the file type before any privilege, so this holds for any user and
    // never changes this thread's namespace.
    let err = enter_netns(Path::new("/dev/null")).expect_err("/dev/null is not a namespace file");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn effective_uid_matches_proc_status() {
    // /proc/self/status lists "Uid: real effective saved fs".
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("a Uid: line");
    let euid: u32 = line
        .split_whitespace()
        .nth(2)
        .expect("effective uid field")
        .parse()
        .expect("numeric uid");
    assert_eq!(effective_uid(), euid);
}

#[test]
fn dual_stack_sockets_share_one_port() {
    let v4 = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind v4");
    let port = v4.local_addr().expect("local addr").port();
    let v6 = match bind_udp(SocketAddr::new("::1".parse().expect("addr"), port), true) {
        Ok(s) => s,
        // A kernel without IPv6 cannot run this half of the check.
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => return,
        Err(e) => panic!("bind [::1]:{port} with IPV6_V6ONLY: {e}"),
    };
    assert!(ipv6_only(&v6).expect("getsockopt"));
    assert_eq!(v6.local_addr().expect("local addr").port(), port);
    // A second v4 socket on the same port is refused: the port really is taken.
    let again = bind_udp(
        SocketAddr::new("127.0.0.1".parse().expect("addr"), port),
        false,
    );
    assert_eq!(
        again.expect_err("port in use").kind(),
        io::ErrorKind::AddrInUse
    );
}

#[test]
fn bound_socket_is_nonblocking_and_works() {
    let a = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
    let b = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
    let mut buf = [0u8; 8];
    assert_eq!(
        a.recv_from(&mut buf).expect_err("nothing sent yet").kind(),
        io::ErrorKind::WouldBlock
    );
    b.send_to(b"ping", a.local_addr().expect("addr"))
        .expect("send");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match a.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(&buf[..n], b"ping");
                assert_eq!(from, b.local_addr().expect("addr"));
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "datagram never arrived"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[test]
fn mark_round_trips_with_privilege() {
    let s = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
    match set_mark(&s, 51820) {
        Ok(()) => assert_eq!(mark(&s).expect("getsockopt"), 51820),
        // Without CAP_NET_ADMIN the kernel refuses, which must surface as EPERM.
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
    }
}

#[test]
fn send_signal_refuses_groups_and_reports_missing_processes() {
    assert_eq!(
        send_signal(0, libc::SIGTERM).expect_err("group").kind(),
        io::ErrorKind::InvalidInput
    );
    // Signal 0 only checks that the process exists: this one does.
    send_signal(std::process::id(), 0).expect("own process exists");
}

#[test]
fn buffers_can_be_read_back() {
    let a = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
    set_buffer_sizes(&a, 1 << 20).expect("setsockopt");
    let (rcv, snd) = buffer_sizes(&a).expect("getsockopt");
    assert!(rcv > 0 && snd > 0);
    match force_buffer_sizes(&a, 8 << 20) {
        Ok(()) => assert!(buffer_sizes(&a).expect("getsockopt").0 >= 8 << 20),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
    }
}

#[test]
fn buffer_requests_past_an_int_are_capped_not_wrapped() {
    assert_eq!(buffer_request(8 << 20), 8 << 20);
    assert_eq!(buffer_request(usize::MAX), libc::c_int::MAX as usize);
}

#[test]
fn udp_offload_options_are_known_and_gro_toggles() {
    let s = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
    assert!(
        udp_gso_supported(&s),
        "this kernel lacks UDP_SEGMENT (4.18+)"
    );
    set_udp_gro(&s, true).expect("UDP_GRO on");
    set_udp_gro(&s, false).expect("UDP_GRO off");
}

#[test]
fn an_idle_socket_is_writable_at_once() {
    let s = bind_udp("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
    // A timeout too long for poll's int of milliseconds is capped, not refused.
    assert!(wait_writable(&s, Duration::from_secs(u64::MAX)).expect("poll"));
    assert!(wait_writable(&s, Duration::ZERO).expect("poll"));
}

#[test]
fn send_signal_rejects_an_unknown_signal_number() {
    let err = send_signal(std::process::id(), 12345).expect_err("no such signal");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn interface_names_and_indices_resolve_both_ways() {
    // Loopback is index 1 in every network namespace.
    assert_eq!(if_nametoindex("lo"), Some(1));
    assert_eq!(if_indextoname(1).as_deref(), Some("lo"));
    assert_eq!(if_nametoindex("tandem-nope9"), None);
    assert_eq!(if_nametoindex("nul\0byte"), None);
    // An unknown index is None, not an empty name (nix reports it as success).
    assert_eq!(if_indextoname(u32::MAX), None);
}
