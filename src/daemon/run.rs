//! The daemon's life: set up, run the data plane until told to stop, take everything down.
//!
//! Two ways in, one loop:
//! - [`up`] (`tandem up CONFIG`): the interface of a config file, with its addresses, MTU and
//!   routes (netconf); SIGHUP reloads the file.
//! - [`bare`] (`tandem [-f] IFNAME`, wireguard-go's command line): only the TUN device and
//!   the UAPI socket; `wg` and `wg-quick` configure the rest. SIGHUP is ignored.
//!
//! Both serve the UAPI socket `/var/run/wireguard/IFNAME.sock` (see `control::server`), whose
//! requests the event loop answers on its own thread (the data plane, see `driver::plane`);
//! this tokio runtime keeps signals, the socket's connections, netlink and reloads. The
//! daemon stops on SIGINT or SIGTERM, when its socket file is deleted (checked every second),
//! or when its interface is deleted (`ip link del`, as `wg-quick down` does); the last two are
//! clean exits, as in wireguard-go.
//! On the way out the socket goes first, then addresses and routes, then the device.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use super::dns::{self, DnsSettings};
use super::endpoints::{self, Resolver, Timing};
use super::hooks::{self, Stage};
use super::notify;
use super::privileges;
use super::reload::{self, Managed, Prepared};
use super::settings::{self, Resolved};
use crate::config::{Config, DEFAULT_MTU, Hooks};
use crate::control::server::{PeerNames, SOCKET_DIR, ServerError, SocketFile, UapiServer};
use crate::driver::oplog::log_changes;
use crate::driver::tun::{Tun, TunError, open_tun};
use crate::driver::{
    Clock, ControlRequest, ControlSender, DataPlane, Driver, DriverError, UdpSockets,
};
use crate::keygen::os_random;
use crate::metrics::{MetricsListener, MetricsServer};
use crate::netconf::{self, NetConf};
use crate::os;
use crate::proto::Device;

/// How often the daemon checks that its socket file is still there (and syncs the MTU).
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The environment variable naming a file to write the interface's name to (wireguard-go's;
/// removed again on exit).
pub const TUN_NAME_FILE_ENV: &str = "WG_TUN_NAME_FILE";

/// The state the main loop keeps besides the driver.
pub(crate) struct Running {
    /// The event loop, on its own thread.
    pub plane: DataPlane,
    /// The interface's kernel name and index.
    pub ifname: String,
    pub ifindex: u32,
    /// None only in config mode when the socket is served by someone else.
    pub uapi: Option<UapiServer>,
    /// Config mode only.
    pub managed: Option<Managed>,
    /// The `WG_TUN_NAME_FILE` written at start.
    pub name_file: Option<PathBuf>,
    /// Config mode: follows the config's endpoint names (replaced on each reload).
    pub resolver: Option<Resolver>,
    /// The Prometheus endpoint, when asked for (`[metrics]`, `--metrics`).
    pub metrics: Option<MetricsServer>,
}

/// Signals the daemon handles, registered before anything is set up so that none is missed.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        let register =
            |kind, name| signal(kind).with_context(|| format!("cannot install the {name} handler"));
        Ok(Signals {
            interrupt: register(SignalKind::interrupt(), "SIGINT")?,
            terminate: register(SignalKind::terminate(), "SIGTERM")?,
            hangup: register(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// Runs the interface described by the (already checked) `config` read from `path`, until it
/// is told to stop. Everything set up is taken down on the way out, also after an error.
///
/// Privileges: before anything else, the plan (CAP_NET_ADMIN only, perhaps as `user`) is
/// published, so every thread the daemon starts drops as it starts; the main thread drops
/// once the interface is up and PostUp has run (see `privileges` and `os::privilege`).
pub async fn up(
    path: &Path,
    config: Config,
    no_offload: bool,
    user: Option<&str>,
) -> anyhow::Result<()> {
    privileges::publish(privileges::plan_for(&config, user)?)?;
    let signals = Signals::new()?;
    // Before anything is set up, so a taken address changes nothing.
    let metrics = bind_metrics(config.metrics.map(|m| m.listen))?;
    for warning in &config.warnings {
        tracing::warn!("{}", warning.to_string().trim_start_matches("warning: "));
    }
    // Never fails: a name that does not resolve yet leaves its peer without an endpoint, and
    // the resolver started below keeps trying it.
    // PreUp, before anything exists: a failure stops the start with nothing to undo.
    let ifname = config.interface.name.clone();
    let hooks = config.interface.hooks.clone();
    hooks::run_up(Stage::PreUp, &hooks.pre_up, &ifname).await?;
    let resolved = settings::resolve(config).await;
    let seeds = endpoints::seeds(&resolved.config, &resolved.endpoints);
    let (mut running, status) = set_up(path, resolved).await?;
    let names = running.managed.as_ref().map(|m| peer_names(&m.config));
    match serve_metrics(metrics, &running, names.unwrap_or_default()) {
        Ok(server) => running.metrics = server,
        Err(e) => {
            tear_down(running, false).await;
            return Err(e);
        }
    }
    // DNS, then PostUp, as wg-quick orders them; either failing takes everything down again
    // (without the down hooks, as wg-quick's trap does) and the start fails.
    if let Err(e) = finish_up(&mut running, &hooks).await {
        tear_down(running, false).await;
        return Err(e);
    }
    // Setup is done: the main thread gives up what it no longer needs, before systemd hears
    // that the interface is ready.
    privileges::hand_over_socket(running.uapi.as_ref());
    if let Err(e) = privileges::finish(Some(path)) {
        tear_down(running, false).await;
        return Err(e);
    }
    tracing::info!(interface = %running.ifname, "interface up");
    notify::ready(&status);
    running.resolver = Some(Resolver::start(
        running.plane.control().clone(),
        seeds,
        None,
        Timing::from_env(),
    ));
    if let Some(managed) = running.managed.as_mut() {
        managed.no_offload = no_offload;
    }
    run(running, signals).await
}

/// `tandem -f IFNAME`: creates the TUN device `ifname` (down, MTU 1420, no addresses) and its
/// UAPI socket, and serves them until told to stop; `wg` configures keys and peers,
/// `ip`/`wg-quick` addresses, MTU and routes. `detached`: started by `detach::spawn_detached`,
/// whose parent reads our stderr until the socket is up; then stdio goes to /dev/null.
/// Privileges as in [`up`], CAP_NET_ADMIN only; the main thread drops once the socket and
/// the data plane are up.
pub async fn bare(ifname: &str, detached: bool, metrics: Option<SocketAddr>) -> anyhow::Result<()> {
    privileges::publish(privileges::bare_plan())?;
    let signals = Signals::new()?;
    let metrics = bind_metrics(metrics)?;
    let tun = open_interface(ifname, true)?;
    // wireguard-go's default MTU (wg-quick sets its own afterwards).
    if let Err(e) = tun.device.set_mtu(DEFAULT_MTU) {
        tracing::warn!(error = %e, "cannot set the interface MTU");
    }
    let udp = UdpSockets::bind(None, 0).context("cannot open the UDP sockets")?;
    let seed = os_random::<32>().context("cannot seed the protocol's random number generator")?;
    let mut device = Device::new(None, seed);
    device.set_mtu(usize::from(DEFAULT_MTU));
    let mut driver = Driver::new(device, tun, udp, Clock::new())?;
    let control = control_channel(&mut driver)?;
    let uapi = UapiServer::start(
        Path::new(SOCKET_DIR),
        &driver.tun.name,
        control.clone(),
        PeerNames::new(),
    )
    .with_context(|| format!("cannot serve the UAPI socket of {}", driver.tun.name))?;
    let name_file = write_name_file(&driver.tun.name);
    tracing::info!(
        interface = %driver.tun.name,
        port = driver.udp().port(),
        offload = driver.tun.offload,
        socket = %uapi.path().display(),
        "interface created; configure it with wg (e.g. wg setconf) and ip"
    );
    let (ifname, ifindex) = (driver.tun.name.clone(), driver.tun.index);
    let mut running = Running {
        plane: start_data_plane(driver, control)?,
        ifname,
        ifindex,
        uapi: Some(uapi),
        managed: None,
        name_file,
        resolver: None,
        metrics: None,
    };
    // No names without a config: `wg` knows none.
    let served = serve_metrics(metrics, &running, PeerNames::new())
        .and_then(|m| privileges::finish(None).map(|()| m));
    match served {
        Ok(server) => running.metrics = server,
        Err(e) => {
            tear_down(running, false).await;
            return Err(e);
        }
    }
    notify::ready(&format!(
        "{} created, waiting for configuration over UAPI",
        running.ifname
    ));
    if detached && let Err(e) = os::detach_stdio() {
        tracing::warn!(error = %e, "cannot point stdio at /dev/null");
    }
    run(running, signals).await
}

/// The event loop's control channel (made before the loop starts, for the UAPI server).
fn control_channel(driver: &mut Driver) -> anyhow::Result<ControlSender> {
    driver
        .control_channel()
        .context("cannot set up the event loop's control channel")
}

fn start_data_plane(driver: Driver, control: ControlSender) -> anyhow::Result<DataPlane> {
    DataPlane::spawn(driver, control).context("cannot start the data plane thread")
}

/// After a reload: new DNS settings replace the old ones (a failure is logged; the rest of
/// the reload stands). Hooks take effect at the next start and stop.
async fn follow_dns(ifname: &str, managed: &mut Managed) {
    let wanted = DnsSettings::of(&managed.config);
    let current = managed
        .dns
        .as_ref()
        .map(|d| d.settings.clone())
        .unwrap_or_default();
    if wanted == current {
        return;
    }
    // resolvconf's files are root's: as another user the change would half apply.
    if let Some(user) = privileges::switched_user() {
        tracing::error!(
            "the new DNS settings are not applied: DNS cannot be changed as user {user} \
             (--user); restart the daemon without --user"
        );
        return;
    }
    if let Some(old) = managed.dns.take() {
        old.remove().await;
    }
    match dns::apply(ifname, &wanted).await {
        Ok(applied) => managed.dns = applied,
        Err(e) => tracing::error!("cannot apply the new DNS settings: {e:#}"),
    }
}

/// DNS and PostUp of a freshly set up interface.
async fn finish_up(running: &mut Running, hooks: &Hooks) -> anyhow::Result<()> {
    if let Some(managed) = running.managed.as_mut() {
        managed.dns = dns::apply(&running.ifname, &DnsSettings::of(&managed.config)).await?;
    }
    hooks::run_up(Stage::PostUp, &hooks.post_up, &running.ifname).await
}

async fn run(mut running: Running, signals: Signals) -> anyhow::Result<()> {
    let result = main_loop(&mut running, signals).await;
    notify::stopping();
    tear_down(running, true).await;
    result
}

/// Opens the TUN device, with segmentation offload when asked for: a kernel that refuses it
/// still gets a working, slower device.
fn open_interface(name: &str, offload: bool) -> anyhow::Result<Tun> {
    let tun = match open_tun(name, offload) {
        Ok(tun) => Ok(tun),
        Err(TunError::Open { source, .. })
            if offload && !matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) =>
        {
            tracing::warn!(error = %source, "TUN offload unavailable, running without it");
            open_tun(name, false)
        }
        Err(e) => Err(e),
    };
    tun.map_err(|e| {
        let hint = match &e {
            TunError::Open { source, .. }
                if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) =>
            {
                " (needs root or CAP_NET_ADMIN)"
            }
            _ => "",
        };
        anyhow::Error::new(e).context(format!("cannot create interface {name}{hint}"))
    })
}

/// Writes the interface's name to `$WG_TUN_NAME_FILE` when set, as wireguard-go does.
fn write_name_file(ifname: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(TUN_NAME_FILE_ENV)?);
    match std::fs::write(&path, format!("{ifname}\n")) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot write {TUN_NAME_FILE_ENV}");
            None
        }
    }
}

/// The names `get=tandem` reports: the config's peer names.
fn peer_names(config: &Config) -> PeerNames {
    config
        .peers
        .iter()
        .filter_map(|p| p.name.clone().map(|name| (p.public_key, name)))
        .collect()
}

/// The interface of `resolved`, up and configured (device, addresses, routes, UAPI socket),
/// and the status line for systemd.
async fn set_up(path: &Path, mut resolved: Resolved) -> anyhow::Result<(Running, String)> {
    let tun = open_interface(
        &resolved.config.interface.name,
        resolved.config.interface.offload,
    )?;
    let nc = NetConf::new()
        .await
        .context("cannot open a netlink socket")?;
    // Before the sockets: a full tunnel's mark is chosen by looking at the routing tables.
    let fwmark = settings::fwmark(&nc, &resolved.config, None).await?;
    // Without an `mtu`, the path to the endpoints decides (looked up before any rule of a
    // full tunnel exists); from here on the config holds the value in force.
    resolved.config.interface.mtu = Some(settings::automatic_mtu(&nc, &resolved, fwmark).await);
    let udp = UdpSockets::bind(resolved.config.interface.listen_port, fwmark)
        .context("cannot open the UDP sockets")?;
    let seed = os_random::<32>().context("cannot seed the protocol's random number generator")?;
    let mut driver = Driver::new(Device::new(None, seed), tun, udp, Clock::new())?;
    driver.set_names(reload::log_names(&resolved.config));
    // The same path as every later change: from an empty device to the config's.
    let changes = driver
        .reconcile(&settings::desired(&resolved, fwmark))
        .context("cannot configure the device")?;
    log_changes("configuration applied", &changes, driver.names(), &[]);

    // After the device: the sockets carry the mark before a full tunnel's rules would send
    // their packets into the tunnel.
    let plan = settings::interface_plan(&resolved.config, &driver.tun.name, fwmark);
    let applied = netconf::apply(&nc, &plan)
        .await
        .with_context(|| format!("cannot configure interface {}", driver.tun.name))?;
    // A full tunnel's rules outlive the interface: from here on a failed start removes them.
    match start(path, resolved, driver, nc, applied).await {
        Ok(running) => Ok(running),
        Err((e, nc, applied)) => {
            if let Err(undo) = netconf::teardown(&nc, &applied).await {
                tracing::warn!("interface teardown incomplete: {undo:#}");
            }
            Err(e)
        }
    }
}

/// The rest of [`set_up`] once the interface is configured; on error, hands the netlink
/// socket and what was applied back for the teardown.
async fn start(
    path: &Path,
    resolved: Resolved,
    mut driver: Driver,
    nc: NetConf,
    applied: netconf::Applied,
) -> Result<(Running, String), (anyhow::Error, NetConf, netconf::Applied)> {
    let iface = &resolved.config.interface;
    let control = match control_channel(&mut driver) {
        Ok(control) => control,
        Err(e) => return Err((e, nc, applied)),
    };
    // The socket is a convenience here (the config file is the source of truth), so a daemon
    // without it still runs: e.g. one interface name used in two network namespaces, which
    // share /var/run/wireguard.
    let uapi = match UapiServer::start(
        Path::new(SOCKET_DIR),
        &driver.tun.name,
        control.clone(),
        peer_names(&resolved.config),
    ) {
        Ok(server) => Some(server),
        Err(e @ ServerError::InUse { .. }) => {
            tracing::warn!("no UAPI socket (wg cannot see this interface): {e}");
            None
        }
        Err(e) => {
            tracing::warn!(
                "no UAPI socket (wg cannot see this interface): {:#}",
                anyhow::Error::new(e)
            );
            None
        }
    };
    let status = format!(
        "{} up: listening on UDP port {}, {} peer(s)",
        driver.tun.name,
        driver.udp().port(),
        resolved.config.peers.len()
    );
    tracing::info!(
        interface = %driver.tun.name,
        public_key = %iface.private_key.public_key(),
        port = driver.udp().port(),
        offload = driver.tun.offload,
        peers = resolved.config.peers.len(),
        "interface configured"
    );
    let (ifname, ifindex) = (driver.tun.name.clone(), driver.tun.index);
    let plane = match start_data_plane(driver, control) {
        Ok(plane) => plane,
        Err(e) => return Err((e, nc, applied)),
    };
    let running = Running {
        plane,
        ifname,
        ifindex,
        uapi,
        managed: Some(Managed {
            netconf: nc,
            applied,
            config: resolved.config,
            path: path.to_path_buf(),
            no_offload: false,
            dns: None,
        }),
        name_file: None,
        resolver: None,
        metrics: None,
    };
    Ok((running, status))
}

fn bind_metrics(addr: Option<SocketAddr>) -> anyhow::Result<Option<MetricsListener>> {
    addr.map(MetricsListener::bind)
        .transpose()
        .context("cannot serve metrics")
}

fn serve_metrics(
    listener: Option<MetricsListener>,
    running: &Running,
    names: PeerNames,
) -> anyhow::Result<Option<MetricsServer>> {
    listener
        .map(|l| l.serve(&running.ifname, running.plane.control().clone(), names))
        .transpose()
        .context("cannot serve metrics")
}

/// Once a second: stops the daemon when its socket file is gone (or replaced), and asks the
/// event loop to follow the interface's MTU.
async fn watch(socket: Option<SocketFile>, control: ControlSender, stop: mpsc::Sender<String>) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(file) = &socket
            && !file.is_present()
        {
            let _ = stop
                .send(format!(
                    "the UAPI socket {} was removed",
                    file.path().display()
                ))
                .await;
            return;
        }
        // Skipped when the loop is busy: the next tick asks again.
        control.try_send(ControlRequest::SyncMtu);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn main_loop(running: &mut Running, mut signals: Signals) -> anyhow::Result<()> {
    let (stop_tx, mut stop_rx) = mpsc::channel::<String>(1);
    let _watcher = AbortOnDrop(tokio::spawn(watch(
        running.uapi.as_ref().map(UapiServer::file),
        running.plane.control().clone(),
        stop_tx,
    )));
    // Reloads are prepared (file read, checked, names resolved) off the loop, so traffic keeps
    // flowing meanwhile; only the newest one is applied.
    let (prepared_tx, mut prepared_rx) = mpsc::channel::<(u64, anyhow::Result<Prepared>)>(4);
    let mut generation = 0u64;
    loop {
        tokio::select! {
            r = running.plane.stopped() => {
                return data_plane_stopped(&running.ifname, running.ifindex, r);
            }
            _ = signals.interrupt.recv() => {
                tracing::info!("SIGINT received, shutting down");
                return Ok(());
            }
            _ = signals.terminate.recv() => {
                tracing::info!("SIGTERM received, shutting down");
                return Ok(());
            }
            Some(reason) = stop_rx.recv() => {
                tracing::info!("{reason}, shutting down");
                return Ok(());
            }
            _ = signals.hangup.recv() => {
                let Some(managed) = &running.managed else {
                    tracing::info!("SIGHUP ignored: this interface has no config file to reload");
                    continue;
                };
                tracing::info!(config = %managed.path.display(), "SIGHUP received, reloading");
                notify::reloading();
                generation += 1;
                let tx = prepared_tx.clone();
                let path = managed.path.clone();
                let no_offload = managed.no_offload;
                let this = generation;
                tokio::spawn(async move {
                    let result = reload::prepare(&path, no_offload).await;
                    // The loop holds the receiver for as long as it runs.
                    let _ = tx.send((this, result)).await;
                });
            }
            Some((this, result)) = prepared_rx.recv() => {
                if this != generation {
                    continue; // a newer SIGHUP came meanwhile: its result follows
                }
                let Some(managed) = running.managed.as_mut() else {
                    continue;
                };
                match result {
                    Ok(prepared) => {
                        let seeds =
                            endpoints::seeds(&prepared.resolved.config, &prepared.resolved.endpoints);
                        let applied =
                            reload::apply(&running.plane, &running.ifname, managed, prepared).await;
                        match applied {
                            Ok(()) => {
                                if let Some(uapi) = &running.uapi {
                                    uapi.set_names(peer_names(&managed.config));
                                }
                                follow_dns(&running.ifname, managed).await;
                                if let Some(metrics) = &running.metrics {
                                    metrics.set_names(peer_names(&managed.config));
                                }
                                // The new config's names from now on (a failed reload keeps
                                // the old resolver, like the rest of the old config).
                                running.resolver = Some(Resolver::start(
                                    running.plane.control().clone(),
                                    seeds,
                                    running.resolver.take(),
                                    Timing::from_env(),
                                ));
                            }
                            // The error says what, if anything, was applied.
                            Err(e) => tracing::error!("reload failed: {e:#}"),
                        }
                    }
                    Err(e) => tracing::error!("reload failed, configuration unchanged: {e:#}"),
                }
                notify::ready(&format!("{} up (reloaded)", running.ifname));
            }
        }
    }
}

/// The event loop ended: a clean stop when the interface was deleted under it (reads then
/// fail with EBADFD), an error otherwise.
fn data_plane_stopped(
    ifname: &str,
    ifindex: u32,
    result: Result<(), DriverError>,
) -> anyhow::Result<()> {
    match result {
        Err(DriverError::TunRead(e))
            if e.raw_os_error() == Some(libc::EBADFD)
                || os::if_nametoindex(ifname) != Some(ifindex) =>
        {
            tracing::info!(interface = %ifname, "the interface was deleted, shutting down");
            Ok(())
        }
        Ok(()) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("the data plane stopped")),
    }
}

/// Takes everything down, in wg-quick's order: PreDown (the link still exists), DNS, the
/// socket, addresses and routes, the device, then PostDown. `down_hooks` is false when a start
/// failed half way (wg-quick's trap runs no hooks then either).
async fn tear_down(running: Running, down_hooks: bool) {
    let Running {
        plane,
        ifname,
        uapi,
        managed,
        name_file,
        resolver,
        ..
    } = running;
    let hooks = managed
        .as_ref()
        .map(|m| m.config.interface.hooks.clone())
        .filter(|_| down_hooks)
        .unwrap_or_default();
    hooks::run_down(Stage::PreDown, &hooks.pre_down, &ifname).await;
    // No endpoint updates while the device goes away.
    drop(resolver);
    // The socket first, so `wg` stops listing the interface before it goes.
    drop(uapi);
    if let Some(managed) = managed {
        if let Some(dns) = &managed.dns {
            dns.remove().await;
        }
        if let Err(e) = netconf::teardown(&managed.netconf, &managed.applied).await {
            tracing::warn!("interface teardown incomplete: {e:#}");
        }
    }
    if let Some(path) = name_file
        && let Err(e) = std::fs::remove_file(&path)
    {
        tracing::debug!(file = %path.display(), error = %e, "cannot remove {TUN_NAME_FILE_ENV}");
    }
    // Closing the TUN descriptor removes the interface, and with it anything left on it.
    drop(plane.stop().await);
    tracing::info!(interface = %ifname, "interface removed");
    hooks::run_down(Stage::PostDown, &hooks.post_down, &ifname).await;
}
