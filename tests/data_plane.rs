//! The data plane on its own thread (`driver::plane`): requests reach its epoll loop while it
//! sleeps, it hands the driver back when stopped, and it reports the loss of its interface.
//! Real TUN devices and sockets in a namespace of the test's own (needs root).

mod common;
use common::netns;

use std::time::Duration;

use netns::{Netns, require_root};
use tandem::control::server::ControlRequest;
use tandem::driver::tun::open_tun;
use tandem::driver::{Clock, DataPlane, Driver, DriverError, UdpSockets, sys};
use tandem::proto::{Device, PrivateKey};
use tokio::sync::oneshot;

/// How long a request may take to be answered by an idle loop: generous, since it only has
/// to wake from `epoll_wait`.
const ANSWER: Duration = Duration::from_secs(5);

/// A driver with no peers (so no timer: the loop sleeps until woken) on a new TUN device.
fn idle_driver(ifname: &str) -> Driver {
    let tun = open_tun(ifname, true).expect("open TUN device");
    let udp = UdpSockets::bind(None, 0).expect("bind UDP");
    let device = Device::new(Some(PrivateKey::from_bytes([7; 32])), [9; 32]);
    Driver::new(device, tun, udp, Clock::new()).expect("driver")
}

#[test]
fn requests_wake_a_sleeping_loop_and_stop_hands_the_driver_back() {
    require_root();
    let ns = Netns::new("dp");
    ns.block_on(|| async {
        let mut driver = idle_driver("tdp0");
        let port = driver.udp().port();
        let control = driver.control_channel().expect("control channel");
        let plane = DataPlane::spawn(driver, control.clone()).expect("spawn");
        // Let the loop go to sleep in epoll_wait (no deadline: no timeout).
        tokio::time::sleep(Duration::from_millis(200)).await;

        // A closure runs on the loop's thread, with the driver.
        let seen =
            tokio::time::timeout(ANSWER, plane.run(|d| (d.udp().port(), d.tun.name.clone())))
                .await
                .expect("the loop answered in time")
                .expect("the loop is running");
        assert_eq!(seen, (port, "tdp0".to_owned()));
        assert_ne!(
            std::thread::current().name(),
            Some("tandem-data"),
            "the test runs elsewhere"
        );
        let thread = tokio::time::timeout(
            ANSWER,
            plane.run(|_| std::thread::current().name().map(str::to_owned)),
        )
        .await
        .expect("in time")
        .expect("running");
        assert_eq!(thread.as_deref(), Some("tandem-data"));

        // A UAPI get, as the socket server sends it.
        let (reply, answer) = oneshot::channel();
        control
            .send(ControlRequest::Get { reply })
            .await
            .expect("queued");
        let text = tokio::time::timeout(ANSWER, answer)
            .await
            .expect("in time")
            .expect("answered");
        assert!(text.contains(&format!("listen_port={port}\n")), "{text}");
        assert!(text.ends_with("errno=0\n\n"), "{text}");

        // Stop: the driver comes back, and the interface lives until it is dropped.
        let driver = tokio::time::timeout(ANSWER, plane.stop())
            .await
            .expect("stopped in time")
            .expect("the loop did not panic");
        assert_eq!(sys::if_nametoindex("tdp0"), Some(driver.tun.index));
        drop(driver);
        assert_eq!(sys::if_nametoindex("tdp0"), None);
        // The channel is closed: requests fail instead of waiting forever.
        let (reply, _answer) = oneshot::channel();
        assert!(control.send(ControlRequest::Get { reply }).await.is_err());
    });
}

#[test]
fn the_loop_reports_that_its_interface_was_deleted() {
    require_root();
    let ns = Netns::new("dpdel");
    ns.block_on(|| async {
        let mut driver = idle_driver("tdp1");
        let control = driver.control_channel().expect("control channel");
        let mut plane = DataPlane::spawn(driver, control).expect("spawn");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let out = std::process::Command::new("ip")
            .args(["link", "del", "tdp1"])
            .output()
            .expect("run ip");
        assert!(out.status.success(), "{out:?}");
        let result = tokio::time::timeout(ANSWER, plane.stopped())
            .await
            .expect("the loop noticed in time");
        assert!(matches!(result, Err(DriverError::TunRead(_))), "{result:?}");
        // Requests fail at once instead of waiting for a loop that is gone, even more of them
        // than the queue holds.
        for _ in 0..40 {
            let answer = tokio::time::timeout(ANSWER, plane.run(|_| ()))
                .await
                .expect("refused in time, not left waiting");
            assert!(answer.is_err(), "answered by a stopped loop");
        }
        // The driver still comes back for an orderly teardown.
        assert!(
            tokio::time::timeout(ANSWER, plane.stop())
                .await
                .expect("stopped in time")
                .is_some()
        );
    });
}
