//! The data plane on its own thread (`driver::plane`): requests reach its epoll loop while it
//! sleeps and are answered by the one dispatch (`Driver::answer`), it hands the driver back
//! when stopped, and it reports the loss of its interface.
//! Real TUN devices and sockets in a namespace of the test's own (needs root).

mod common;
use common::netns;

use std::time::Duration;

use netns::{Netns, require_root};
use tandem::control::uapi::{format_get, parse_set};
use tandem::driver::tun::open_tun;
use tandem::driver::{
    ApplyError, Clock, ControlRequest, DataPlane, Driver, DriverError, SetError, UdpSockets,
};
use tandem::os;
use tandem::proto::{Device, PrivateKey};
use tandem::reconcile::{DesiredDevice, DesiredPeer};
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

        // A UAPI get, as the socket server sends it.
        let (reply, answer) = oneshot::channel();
        control
            .send(ControlRequest::Get { reply })
            .await
            .expect("queued");
        let snapshot = tokio::time::timeout(ANSWER, answer)
            .await
            .expect("in time")
            .expect("answered");
        assert_eq!(snapshot.listen_port, port);
        assert!(snapshot.peers.is_empty());

        // Stop: the driver comes back, and the interface lives until it is dropped.
        let driver = tokio::time::timeout(ANSWER, plane.stop())
            .await
            .expect("stopped in time")
            .expect("the loop did not panic");
        assert_eq!(os::if_nametoindex("tdp0"), Some(driver.tun.index));
        drop(driver);
        assert_eq!(os::if_nametoindex("tdp0"), None);
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
            let answer = tokio::time::timeout(ANSWER, plane.control().get())
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

/// The production dispatch on a real driver: a UAPI `set` and a whole desired device (a
/// config file's) both go through the one reconciler; one whose new port is taken is refused
/// whole (keys, peers, port and fwmark as before), and a good one is applied.
#[test]
fn set_and_apply_are_all_or_nothing_on_a_real_driver() {
    require_root();
    let ns = Netns::new("dprec");
    ns.block_on(|| async {
        let mut driver = idle_driver("tdp2");
        let port = driver.udp().port();
        let control = driver.control_channel().expect("control channel");
        let plane = DataPlane::spawn(driver, control.clone()).expect("spawn");
        let get = || async {
            tokio::time::timeout(ANSWER, control.get())
                .await
                .expect("in time")
                .expect("running")
        };
        // A port another socket holds (both families, as the driver binds both).
        let taken4 = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind v4");
        let busy = taken4.local_addr().expect("addr").port();
        let _taken6 = std::net::UdpSocket::bind(("::", busy)).ok();
        let peer = PrivateKey::from_bytes([8; 32]).public_key();

        let before = format_get(&get().await);
        let request = parse_set(&format!(
            "listen_port={busy}\nfwmark=9\npublic_key={}\nallowed_ip=10.0.0.2/32\n\n",
            peer.to_hex()
        ))
        .expect("parses");
        let refused = control.set(request).await.expect("running");
        assert!(
            matches!(refused, Err(SetError::Apply(ApplyError::Bind { port, .. })) if port == busy),
            "{refused:?}"
        );
        assert_eq!(
            format_get(&get().await),
            before,
            "a refused set changed something"
        );

        // The same without the taken port: applied, fwmark and all.
        let request = parse_set(&format!(
            "fwmark=9\npublic_key={}\nallowed_ip=10.0.0.2/32\npersistent_keepalive_interval=0\n\n",
            peer.to_hex()
        ))
        .expect("parses");
        let changes = control
            .set(request)
            .await
            .expect("running")
            .expect("applied");
        assert_eq!(changes.added, vec![peer]);
        assert_eq!(changes.fwmark, Some(9));
        let after = get().await;
        assert_eq!((after.listen_port, after.fwmark), (port, 9));
        assert_eq!(after.peers.len(), 1);

        // A whole desired device with the taken port: refused whole, too.
        let mut desired = DesiredDevice {
            private_key: Some(PrivateKey::from_bytes([7; 32])),
            listen_port: busy,
            fwmark: 0,
            mtu: Some(1300),
            peers: vec![DesiredPeer::new(
                PrivateKey::from_bytes([6; 32]).public_key(),
            )],
        };
        let before = format_get(&get().await);
        let refused = control.apply(desired.clone()).await.expect("running");
        assert!(
            matches!(refused, Err(ApplyError::Bind { .. })),
            "{refused:?}"
        );
        assert_eq!(format_get(&get().await), before);
        assert_ne!(get().await.mtu, 1300);
        // Port 0 means "any port": the bound one stays; the peers become the desired ones.
        desired.listen_port = 0;
        let changes = control
            .apply(desired)
            .await
            .expect("running")
            .expect("applied");
        assert_eq!(changes.removed, vec![peer]);
        assert_eq!(changes.added.len(), 1);
        let after = get().await;
        assert_eq!(
            (after.listen_port, after.fwmark, after.mtu),
            (port, 0, 1300)
        );
        drop(plane.stop().await);
    });
}
